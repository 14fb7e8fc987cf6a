"""nbgrader's gradebook as the record: each student's grades and status in one transaction.

Besides nbgrader's own tables, a `peftlab_status` table keeps each student's
status, reason, notes and the submission's SHA-256, so that a rerun skips
students already graded and a killed batch resumes without counting anyone twice.
What is read back out of it for people (the grades CSV, the LMS files) is `export`'s.
"""

from __future__ import annotations

import json
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry
from sqlalchemy import text

from .course import gradebook_url, tools_on_path
from .intake import Submission
from .outcome import FLAGGED, Outcome

STATUS_TABLE = """CREATE TABLE IF NOT EXISTS peftlab_status (
    assignment TEXT NOT NULL, student TEXT NOT NULL, sha256 TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL, notes TEXT NOT NULL, PRIMARY KEY (assignment, student))"""


def open_gradebook(folder: Path) -> Gradebook:
    """nbgrader's gradebook in `folder` (nbgrader runs `alembic` from PATH to make it)."""
    tools_on_path()
    return Gradebook(gradebook_url(folder))


def read_grades(folder: Path, assignment: str, student: str) -> dict[str, dict]:
    """{grade_id: {score, max, manual}} of a student's submission in the gradebook in `folder`.

    Written answers (markdown) are graded by hand: their score is 0 if left unanswered, else None."""
    out = {}
    with open_gradebook(folder) as gb:
        for nb in gb.find_submission(assignment, student).notebooks:
            for grade in nb.grades:
                out[grade.name] = {"score": grade.auto_score, "max": grade.max_score,
                                   "manual": grade.cell.cell_type == "markdown"}
    return out


def finished(work: Path, assignment: str) -> dict[str, str]:
    """{student: sha256} of submissions whose grades are in the gradebook."""
    with open_gradebook(work) as gb:
        gb.db.execute(text(STATUS_TABLE))
        gb.db.commit()
        rows = gb.db.execute(text("SELECT student, sha256 FROM peftlab_status WHERE assignment = :a"),
                             {"a": assignment}).fetchall()
    return {s: h for s, h in rows}


def record(work: Path, assignment: str, sub: Submission, out: Outcome) -> None:
    """Write one student's grades and status in a single transaction."""
    with open_gradebook(work) as gb:
        gb.db.execute(text(STATUS_TABLE))
        gb.update_or_create_student(sub.student)
        try:
            gb.remove_submission(assignment, sub.student)
        except MissingEntry:
            pass
        submission = gb.add_submission(assignment, sub.student)
        zero = out.status != "graded"
        for nb in submission.notebooks:
            for grade in nb.grades:
                g = out.grades.get(grade.name)
                if grade.cell.cell_type == "markdown":  # written answers: by hand, unless unanswered
                    answered = g is not None and g["score"] is None and not zero
                    grade.auto_score = None if answered else 0.0
                    grade.needs_manual_grade = answered or out.status in FLAGGED
                else:
                    grade.auto_score = 0.0 if zero or g is None else float(g["score"] or 0.0)
                    grade.needs_manual_grade = out.status in FLAGGED
        gb.db.execute(
            text("INSERT OR REPLACE INTO peftlab_status VALUES (:a, :s, :h, :st, :r, :n)"),
            {"a": assignment, "s": sub.student, "h": sub.sha256, "st": out.status, "r": out.reason,
             "n": json.dumps(out.notes)},
        )
        gb.db.commit()


INTAKE_TABLE = """CREATE TABLE IF NOT EXISTS peftlab_intake (
    assignment TEXT NOT NULL, student TEXT NOT NULL, late INTEGER NOT NULL, layout TEXT NOT NULL,
    origin TEXT NOT NULL, PRIMARY KEY (assignment, student))"""


LMS_TABLE = """CREATE TABLE IF NOT EXISTS peftlab_lms (
    assignment TEXT NOT NULL, student TEXT NOT NULL, canvas_id TEXT NOT NULL, moodle_id TEXT NOT NULL,
    sis_id TEXT NOT NULL, graded_at TEXT NOT NULL, PRIMARY KEY (assignment, student))"""


def record_identity(work: Path, assignment: str, sub: Submission) -> None:
    """The student's name, e-mail and LMS id (nbgrader's student table), how the file came (lateness, layout),
    the ids each LMS's import matches on (`peftlab_lms`, per assignment: Moodle's participant ids are) and when
    it was graded (Moodle's worksheet needs it)."""
    from datetime import datetime, timezone

    first, _, last = sub.name.rpartition(" ") if " " in sub.name else ("", "", sub.name)
    with open_gradebook(work) as gb:
        gb.db.execute(text(INTAKE_TABLE))
        student = gb.update_or_create_student(sub.student)
        for key, value in (("first_name", first), ("last_name", last), ("email", sub.email),
                           ("lms_user_id", sub.lms_id)):
            if value:  # a layout without names keeps what a roster or an earlier assignment gave
                setattr(student, key, value)
        gb.db.execute(text("INSERT OR REPLACE INTO peftlab_intake VALUES (:a, :s, :l, :y, :o)"),
                      {"a": assignment, "s": sub.student, "l": int(sub.late), "y": sub.layout, "o": sub.origin})
        gb.db.execute(text(LMS_TABLE))
        gb.db.execute(text("INSERT OR REPLACE INTO peftlab_lms VALUES (:a, :s, :c, :m, :i, :t)"),
                      {"a": assignment, "s": sub.student, "c": sub.canvas_id, "m": sub.moodle_id, "i": sub.sis_id,
                       "t": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        gb.db.commit()
