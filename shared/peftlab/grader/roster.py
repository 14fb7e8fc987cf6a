"""The class list: maps whatever id a download gives (LMS id, name, login) to the course's student id.

A roster is a CSV with a header row. `id` is required; `name`, `email`,
`canvas_id` (Canvas user id), `moodle_id` (Moodle participant id), `sis_id`
(the institution's id, Canvas's "SIS User ID") and `lms_id` (ids of any LMS,
for matching only; several ids in one cell separated by `;`) are optional:

    id,name,email,canvas_id,moodle_id,sis_id
    jsmith,John Smith,jsmith@uni.edu,12345,123456,S0012345

A submission is matched by LMS id, then by id, then by e-mail, then by exact
name (only where one roster row has it). With a roster, a submission that
matches no row is rejected (with the reason), and students without a
submission are reported. The exports use `canvas_id`, `moodle_id` and `sis_id`
whatever the download was: a class downloaded from Canvas still gets a Moodle
worksheet row for every student with a `moodle_id`, and the other way round.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from .course import GradingError
from .layouts import STUDENT_ID, Named, nfc

LMS_COLUMNS = ("lms_id", "canvas_id", "moodle_id")
OPTIONAL = ("name", "email", *LMS_COLUMNS, "sis_id")


@dataclass
class Student:
    id: str
    name: str = ""
    email: str = ""
    lms_ids: list[str] = field(default_factory=list)
    canvas_id: str = ""
    moodle_id: str = ""
    sis_id: str = ""


@dataclass
class Roster:
    students: dict[str, Student]
    path: str = ""

    @classmethod
    def load(cls, path: str | Path) -> Roster:
        """Read and check a roster CSV; every problem names the line and the fix."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # Excel writes a byte-order mark
        except (OSError, UnicodeDecodeError) as exc:
            raise GradingError(f"{path}: cannot read the roster ({exc}); save it as UTF-8 CSV.") from None
        reader = csv.DictReader(text.splitlines())
        header = [h.strip().lower() for h in reader.fieldnames or []]
        if "id" not in header:
            raise GradingError(f"{path}:1: the roster needs a header row with an 'id' column "
                               f"(found {header or 'nothing'}); optional: {', '.join(OPTIONAL)}.")
        reader.fieldnames = header
        students: dict[str, Student] = {}
        owner: dict[str, tuple[str, int]] = {}
        problems = []
        for line, row in enumerate(reader, start=2):
            sid = nfc((row.get("id") or "").strip())
            if not STUDENT_ID.match(sid):
                problems.append(f"{path}:{line}: id {sid!r} is empty or not an id (letters, digits, . _ - @)")
                continue
            if sid in students:
                problems.append(f"{path}:{line}: id {sid!r} is listed twice; keep one row per student")
                continue
            lms = [x.strip() for col in LMS_COLUMNS for x in (row.get(col) or "").split(";") if x.strip()]
            for x in lms:
                if x in owner:
                    problems.append(f"{path}:{line}: LMS id {x!r} of {sid!r} is also {owner[x][0]!r}'s "
                                    f"(line {owner[x][1]}); one LMS id belongs to one student")
                owner.setdefault(x, (sid, line))
            one = {}
            for col in ("canvas_id", "moodle_id", "sis_id"):
                one[col] = (row.get(col) or "").strip()
                if ";" in one[col]:
                    problems.append(f"{path}:{line}: {col} {one[col]!r} holds several ids; one per student "
                                    "(several ids for matching go in lms_id)")
            students[sid] = Student(sid, nfc((row.get("name") or "").strip()), (row.get("email") or "").strip(), lms,
                                    **one)
        if problems:
            raise GradingError("the roster has problems:\n  " + "\n  ".join(problems))
        if not students:
            raise GradingError(f"{path}: the roster lists no students.")
        return cls(students, str(path))

    def match(self, named: Named) -> tuple[Student | None, str]:
        """(the roster's student, '') or (None, why no row matches)."""
        for s in self.students.values():
            if named.lms_id and named.lms_id in s.lms_ids:
                return s, ""
        if named.layout == "Gradescope" and named.lms_id:  # Gradescope's SID is the institution's id
            for s in self.students.values():
                if s.sis_id == named.lms_id:
                    return s, ""
        if named.student in self.students:
            return self.students[named.student], ""
        if named.email:
            same = [s for s in self.students.values() if s.email and s.email.casefold() == named.email.casefold()]
            if len(same) == 1:
                return same[0], ""
        if named.name:
            same = [s for s in self.students.values() if s.name and s.name.casefold() == named.name.casefold()]
            if len(same) == 1:
                return same[0], ""
            if len(same) > 1:
                return None, (f"the name {named.name!r} belongs to {len(same)} roster rows "
                              f"({', '.join(s.id for s in same)}); add the LMS id {named.lms_id!r} to the right row")
        what = f"LMS id {named.lms_id!r}, " if named.lms_id else ""
        return None, (f"not on the roster {self.path} ({what}id {named.student!r}"
                      + (f", name {named.name!r}" if named.name else "") + "); add a row for the student")
