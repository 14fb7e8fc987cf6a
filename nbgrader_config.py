# nbgrader settings for JupyterLab started at the course root; exercises/nbgrader_config.py holds the same
# for JupyterLab started in exercises/. The Validate button (and `nbgrader validate`) read the file in the
# folder JupyterLab was started in. nbgrader's default of 30 s per cell stops the training cells of a
# correct solution on a laptop CPU. Every cell of every exercise runs in at most 60 s on a 2-core machine
# with the tiny model (bench/exercise_cells.py), so 180 s leaves a 3x margin: the per-cell limit of the
# course grader (peftlab-grade). Instructors run nbgrader from grading/, which has its own settings.
c = get_config()  # noqa: F821 (nbgrader provides get_config when it reads this file)
c.Execute.timeout = 180
