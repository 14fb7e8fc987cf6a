# Read by nbgrader when Jupyter starts at the course root. The course's nbgrader settings are in
# grading/nbgrader_config.py; formgrader started here would show an empty course, so say so on the console.
from pathlib import Path

from peftlab.grader.formgrader import warn_if_misplaced

warn_if_misplaced(Path(__file__).resolve().parent)
