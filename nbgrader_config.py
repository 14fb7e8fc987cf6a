# nbgrader settings for JupyterLab started at the course root; exercises/nbgrader_config.py holds the same
# for JupyterLab started in exercises/. The Validate button (and `nbgrader validate`) read the file in the
# folder JupyterLab was started in. nbgrader's default of 30 s per cell stops the training cells of a
# correct solution on a laptop CPU. 180 s is the per-cell limit of the course grader (peftlab-grade), three
# times the 60 s per-cell budget the exercises aim for on 2 cores with the tiny model; bench/exercise_cells.py
# prints each exercise's slowest cell (solutions/README.md has the latest measurement).
# Instructors run nbgrader from grading/, which has its own settings.
c = get_config()  # noqa: F821 (nbgrader provides get_config when it reads this file)
c.Execute.timeout = 180
