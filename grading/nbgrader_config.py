# nbgrader settings of the course, for instructors who run nbgrader's own commands:
#     cd grading && nbgrader generate_assignment 01_lora_from_scratch --force
# The course's tools (peftlab-grade, python -m peftlab.grader.exercises) use the same settings,
# from peftlab.grader.course (layout) and peftlab.grader.settings (limits).
from pathlib import Path

from peftlab.grader.course import nbgrader_config

course = Path(__file__).resolve().parent.parent
(course / "grading" / "work").mkdir(exist_ok=True)  # gradebook, submitted/, autograded/, feedback/
c = get_config()  # noqa: F821 (nbgrader provides get_config when it reads this file)
c.merge(nbgrader_config(course, work="grading/work"))
