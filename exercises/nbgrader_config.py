# nbgrader settings where students work: JupyterLab's Validate button (and `nbgrader validate`) read this
# file from the folder JupyterLab was started in. nbgrader's default of 30 s per cell stops the training
# cells of a correct solution on a laptop CPU. 180 s is three times the 60 s per-cell budget the exercises
# aim for on 2 cores with the tiny model; bench/exercise_cells.py prints each exercise's slowest cell
# (solutions/README.md has the latest).
c = get_config()  # noqa: F821 (nbgrader provides get_config when it reads this file)
c.Execute.timeout = 180
