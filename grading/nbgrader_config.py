# nbgrader settings of the course, for instructors who run nbgrader's own commands:
#     cd grading && nbgrader generate_assignment 01_lora_from_scratch --force
# and for formgrader (grading written answers by hand): `make formgrader` at the course root.
# The course's tools (peftlab-grade, python -m peftlab.grader.exercises) use the same settings,
# from peftlab.grader.course (layout) and peftlab.grader.settings (limits).
from pathlib import Path

from peftlab.grader.course import nbgrader_config, tools_on_path
from peftlab.grader.formgrader import Refuse, RefuseFeedback, warn_if_misplaced

course = Path(__file__).resolve().parent.parent
(course / "grading" / "work").mkdir(exist_ok=True)  # gradebook, submitted/, autograded/, feedback/
tools_on_path()  # nbgrader runs `alembic` to make a gradebook: the venv's, even when jupyter was started by path
c = get_config()  # noqa: F821 (nbgrader provides get_config when it reads this file)
c.merge(nbgrader_config(course, work="grading/work"))
# nbgrader's own autograde and feedback (formgrader's buttons, `nbgrader autograde`) would grade without the
# sandbox and show hidden tests: they stop with a message that points at peftlab-grade.
c.Autograde.sanitize_preprocessors = [Refuse]
c.GenerateFeedback.preprocessors = [RefuseFeedback]
# Started outside grading/, or without root_dir at the course root: say so on the console.
warn_if_misplaced(course)
