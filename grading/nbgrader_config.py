# nbgrader settings of the course, for instructors who run nbgrader's own commands:
#     cd grading && nbgrader generate_assignment 01_lora_from_scratch --force
# The course's tools (python -m peftlab.nbgrade ...) use the same settings from peftlab.nbgrade.
from pathlib import Path

from peftlab import nbgrade

course = Path(__file__).resolve().parent.parent
(course / "grading" / "work").mkdir(exist_ok=True)  # gradebook, submitted/, autograded/, feedback/
c = get_config()  # noqa: F821 (nbgrader provides get_config when it reads this file)
c.merge(nbgrade.settings(course, work="grading/work"))
