"""Grades back into the LMS, and the class at a glance.

Written after every batch, beside `ASSIGNMENT-grades.csv` in the grading folder:

| file | for |
|---|---|
| `ASSIGNMENT-grades.csv` | one row per student: status, autograded points, points awaiting hand grading, flag, points per test, reason, notes |
| `ASSIGNMENT-intake.csv` | every file found, one row each: the student it was given to (or why none), layout, lateness, fate |
| `ASSIGNMENT-canvas.csv` | Canvas, Grades > Import: `Student, ID, SIS User ID, SIS Login ID, Section, <column>, Notes (PEFT Lab)` |
| `ASSIGNMENT-moodle.csv` | Moodle, assignment > "Upload grading worksheet": `Identifier, Full name, Email address, Status, Grade, Maximum Grade, ..., Last modified (grade), Feedback comments` |
| `ASSIGNMENT-summary.md`, `ASSIGNMENT-scores.png` | statuses, score histogram, how often each test failed |

Scores are nbgrader's (autograded points, replaced by any points given by
hand in formgrader), so export again after grading by hand:
`python -m peftlab.grader.export ASSIGNMENT [--work grading/work] [--roster class.csv]
[--canvas-column 'Lab 2 (4711)'] [--moodle worksheet.csv]`. A student whose
notebook was not graded is sent blank with a note, never as 0; the ids each
LMS matches on come from the download, the roster or Moodle's own worksheet
(`tests/test_lms_round_trip.py` proves the round trip against both importers'
rules).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import text

from ..files import write_atomic
from .course import GradingError, course_root
from .gradebook import INTAKE_TABLE, LMS_TABLE, STATUS_TABLE, open_gradebook
from .intake import Submission, rows
from .outcome import FLAGGED, STATUSES
from .roster import Roster

CANVAS_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
CANVAS_NOTE = "Notes (PEFT Lab)"
READ_ONLY = "(read only)"
INTAKE_COLUMNS = ["file", "student", "lms_id", "name", "layout", "late", "fate", "reason"]
MOODLE_COLUMNS = ["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum Grade",
                  "Grade can be changed", "Last modified (submission)", "Last modified (grade)", "Feedback comments"]


def csv_bytes(header: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8", "backslashreplace")  # a file name in no encoding: shown, not fatal


def grades_csv(work: Path, assignment: str, path: Path) -> Path:
    """One row per student: status, points, reason. Sorted, no timestamps: reruns give the same file."""
    with open_gradebook(work) as gb:
        gb.db.execute(text(STATUS_TABLE))
        status = {s: (st, r, n) for s, st, r, n in gb.db.execute(
            text("SELECT student, status, reason, notes FROM peftlab_status WHERE assignment = :a"),
            {"a": assignment}).fetchall()}
        ids = [c.name for nb in gb.find_assignment(assignment).notebooks for c in nb.grade_cells]
        rows = []
        for student in sorted(status):
            sub = gb.find_submission(assignment, student)
            cells = {g.name: g for nb in sub.notebooks for g in nb.grades}
            auto = [g for g in cells.values() if g.cell.cell_type == "code"]
            st, reason, notes = status[student]
            rows.append({
                "student": student, "status": st,
                "autograded": f"{sum(g.auto_score or 0 for g in auto):g}",
                "autograded_max": f"{sum(g.max_score for g in auto):g}",
                "pending_by_hand": f"{sum(g.max_score for g in cells.values() if g.needs_manual_grade):g}",
                "flagged": "yes" if st in FLAGGED else "",
                **{gid: ("" if cells[gid].auto_score is None else f"{cells[gid].auto_score:g}") for gid in ids},
                "reason": reason, "notes": "; ".join(json.loads(notes)),
            })
    buf = io.StringIO()  # csv's own line ends (\r\n), as the file has always had them
    writer = csv.DictWriter(buf, fieldnames=["student", "status", "autograded", "autograded_max",
                                             "pending_by_hand", "flagged", *ids, "reason", "notes"])
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(path, buf.getvalue().encode("utf-8"))


def write_intake(path: Path, subs: list[Submission], rejected: list[Submission] = (),
                 statuses: dict[str, tuple[str, str]] | None = None) -> Path:
    """One row per file found: who it was given to, how the name was read, late or not, its fate and why.

    `statuses` ({student: (status, reason)} after grading) replaces the import's verdict for students' own
    files, so a file later found invalid never says `graded` (`intake.rows`)."""
    table = rows([*subs, *rejected], statuses)
    write_atomic(path, csv_bytes(INTAKE_COLUMNS, [[r[c] for c in INTAKE_COLUMNS] for r in table]))
    return path


def final_statuses(work: Path, assignment: str) -> dict[str, tuple[str, str]]:
    """{student: (status, reason)} as recorded in the gradebook."""
    with open_gradebook(work) as gb:
        gb.db.execute(text(STATUS_TABLE))
        return {s: (st, r) for s, st, r in gb.db.execute(
            text("SELECT student, status, reason FROM peftlab_status WHERE assignment = :a"), {"a": assignment})}


def class_rows(work: Path, assignment: str, roster: Roster | None = None) -> list[dict]:
    """Every recorded student of `assignment`: identity, LMS ids, status, score, lateness, points per test.

    `counted` says whether the score goes to the LMS: a graded notebook, or one whose points were given by
    hand in formgrader. Anything else is sent blank, with the status as the note, never as a 0."""
    stamp = datetime.fromtimestamp((work / "gradebook.db").stat().st_mtime, timezone.utc)
    with open_gradebook(work) as gb:
        for table in (STATUS_TABLE, INTAKE_TABLE, LMS_TABLE):
            gb.db.execute(text(table))
        status = {s: (st, r) for s, st, r in gb.db.execute(
            text("SELECT student, status, reason FROM peftlab_status WHERE assignment = :a"), {"a": assignment})}
        intake = {s: (late, layout) for s, late, layout in gb.db.execute(
            text("SELECT student, late, layout FROM peftlab_intake WHERE assignment = :a"), {"a": assignment})}
        lms = {s: (c, m, i, t) for s, c, m, i, t in gb.db.execute(
            text("SELECT student, canvas_id, moodle_id, sis_id, graded_at FROM peftlab_lms WHERE assignment = :a"),
            {"a": assignment})}
        rows = []
        for sid in sorted(status):
            sub = gb.find_submission(assignment, sid)
            st = sub.student
            late, layout = intake.get(sid, (0, ""))
            canvas, moodle, sis, graded_at = lms.get(sid, ("", "", "", ""))
            person = roster.students.get(sid) if roster else None
            if person is not None:  # the roster is the newer word on ids (a rerun skips students already graded)
                canvas, moodle, sis = person.canvas_id or canvas, person.moodle_id or moodle, person.sis_id or sis
            grades = [g for nb in sub.notebooks for g in nb.grades]
            by_hand = any(g.manual_score is not None for g in grades)
            # Moodle skips a row whose grade is older than the grade it holds: a grade changed by hand in formgrader
            # is as new as the gradebook's last write.
            # A gradebook from before grading times were kept has none: its last write is the best bound there is.
            when = max(filter(None, [graded_at, stamp.isoformat(timespec="seconds") if by_hand or not graded_at
                                     else ""]), default="")
            rows.append({
                "id": sid, "name": " ".join(x for x in (st.first_name, st.last_name) if x) or sid,
                "email": st.email or "", "lms_id": st.lms_user_id or "", "layout": layout, "late": bool(late),
                "canvas_id": canvas, "moodle_id": moodle, "sis_id": sis, "graded_at": when,
                "status": status[sid][0], "reason": status[sid][1], "score": float(sub.score or 0),
                "max": float(sub.max_score or 0), "counted": status[sid][0] == "graded" or by_hand,
                "tests": {g.name: (g.score, g.max_score) for g in grades if g.cell.cell_type == "code"},
            })
    return rows


def note(row: dict) -> str:
    """Why a student's grade is blank, in words a student may read (no paths, no hidden tests)."""
    if row["counted"]:
        return ""
    return f"not graded automatically: {row['status']} ({STATUSES[row['status']]}); see the feedback page"


def canvas_csv(rows: list[dict], assignment: str, path: Path, column: str = "") -> Path:
    """Canvas's gradebook import (Grades > Import).

    Canvas matches a row by `ID` (its user id), else `SIS User ID`, else `SIS Login ID`, else the name; the
    column is matched by the id in 'Name (id)', else by its exact title, and any other title becomes a new
    assignment: pass `--canvas-column 'Lab 2 (4711)'`. Students not graded are blank, with the reason in the
    `Notes` column, which Canvas's importer leaves out because the Points Possible row marks it read only (as
    Canvas's own export does for its computed columns)."""
    column = column or assignment
    points = ["Points Possible", "", "", "", "", f"{max((r['max'] for r in rows), default=0):g}", READ_ONLY]
    body = [[r["name"], r["canvas_id"], r["sis_id"], r["email"], "",
             f"{r['score']:g}" if r["counted"] else "", note(r)] for r in rows]
    write_atomic(path, csv_bytes([*CANVAS_COLUMNS, column, CANVAS_NOTE], [points, *body]))
    return path


def moodle_csv(rows: list[dict], path: Path) -> Path:
    """Moodle's grading worksheet (assignment > Upload grading worksheet), one row per student with a Moodle
    participant id (from a Moodle download or the roster's `moodle_id`, whatever the download was).

    Moodle matches `Identifier` ('Participant <id>'), reads `Grade`, and skips a row whose `Last modified
    (grade)` is more than a minute older than the grade it holds: it holds the time the grade was given here
    (ISO 8601, which PHP's strtotime reads). Students not graded are blank, which Moodle skips."""
    body = [[f"Participant {r['moodle_id']}", r["name"], r["email"],
             "Submitted for grading" + (" (late)" if r["late"] else ""),
             f"{r['score']:g}" if r["counted"] else "", f"{r['max']:g}", "Yes", "", r["graded_at"], note(r)]
            for r in rows if r["moodle_id"]]
    write_atomic(path, csv_bytes(MOODLE_COLUMNS, body))
    return path


def summary(rows: list[dict], assignment: str, md: Path, png: Path) -> tuple[Path, Path]:
    """Statuses, a score histogram and each test's failure rate among students whose notebook ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = Counter(r["status"] for r in rows)
    ran = [r for r in rows if r["status"] == "graded"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    top = max((r["max"] for r in rows), default=1) or 1
    ax.hist([r["score"] for r in rows], bins=min(20, max(1, int(top) + 1)), range=(0, top), color="#4c72b0")
    ax.set(xlabel="points", ylabel="students", title=f"{assignment}: {len(rows)} students")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})  # no version stamp: reruns match
    plt.close(fig)
    write_atomic(png, buf.getvalue())

    lines = [f"# {assignment}: class summary", "", f"{len(rows)} students; {sum(r['late'] for r in rows)} late.", "",
             "| status | students | meaning |", "|---|---|---|"]
    lines += [f"| {st} | {counts[st]} | {STATUSES[st]} |" for st in STATUSES if counts[st]]
    scores = sorted(r["score"] for r in rows)
    if scores:
        lines += ["", f"Points: median {scores[len(scores) // 2]:g}, lowest {scores[0]:g}, highest {scores[-1]:g} "
                      f"of {top:g}.", "", f"![score histogram]({png.name})"]
    tests = sorted({t for r in ran for t in r["tests"]})
    if tests:
        lines += ["", f"Failure rate of each test, among the {len(ran)} notebooks graded:", "",
                  "| test | failed | rate |", "|---|---|---|"]
        for t in tests:
            failed = sum(1 for r in ran if t in r["tests"] and (r["tests"][t][0] or 0) < r["tests"][t][1])
            lines.append(f"| {t} | {failed} of {len(ran)} | {failed / len(ran):.0%} |")
    write_atomic(md, ("\n".join(lines) + "\n").encode())
    return md, png


def read_worksheet(path: str | Path) -> dict[str, dict[str, str]]:
    """Participant ids from a grading worksheet downloaded from the Moodle assignment:
    {"email": {e-mail: id}, "name": {full name: id}} (names only where one participant has them)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            table = list(csv.DictReader(fh))
            header = list(table[0]) if table else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GradingError(f"{path}: cannot read the Moodle worksheet ({exc}); download it again from the "
                           "assignment (View all submissions > Download grading worksheet).") from None
    for column in ("Identifier", "Full name"):
        if column not in header:
            raise GradingError(f"{path}: not a Moodle grading worksheet (no {column!r} column; found "
                               f"{header[:6] or 'nothing'}); download it from the assignment's 'Download grading "
                               "worksheet', in English, as CSV.")
    by_email, names = {}, {}
    for row in table:
        pid = (row.get("Identifier") or "").removeprefix("Participant ").strip()
        if not pid.isdigit():
            continue
        if row.get("Email address"):
            by_email[row["Email address"].strip().casefold()] = pid
        names.setdefault((row.get("Full name") or "").strip().casefold(), []).append(pid)
    return {"email": by_email, "name": {n: ids[0] for n, ids in names.items() if n and len(ids) == 1}}


def export_all(work: Path, assignment: str, canvas_column: str = "", roster: Roster | None = None,
               moodle_worksheet: str | Path | None = None) -> dict[str, Path]:
    """Write every export of `assignment` from the gradebook in `work`; {what: path}.

    `moodle_worksheet`: the assignment's grading worksheet downloaded from Moodle, whose participant ids
    (matched by e-mail, then by full name) count over any other: Moodle's are per assignment."""
    table = class_rows(work, assignment, roster)
    if moodle_worksheet:
        ids = read_worksheet(moodle_worksheet)
        for r in table:
            r["moodle_id"] = (ids["email"].get(r["email"].casefold()) if r["email"] else None) \
                or ids["name"].get(r["name"].casefold()) or r["moodle_id"]
    md, png = summary(table, assignment, work / f"{assignment}-summary.md", work / f"{assignment}-scores.png")
    return {"Canvas import": canvas_csv(table, assignment, work / f"{assignment}-canvas.csv", canvas_column),
            "Moodle worksheet": moodle_csv(table, work / f"{assignment}-moodle.csv"),
            "class summary": md, "score histogram": png}


def moodle_warning(path: Path) -> str:
    """The console's word when the Moodle worksheet has no student in it."""
    try:
        empty = len(path.read_text(encoding="utf-8").splitlines()) <= 1
    except OSError:
        return ""
    return (f"note: {path.name} has no student: nobody has a Moodle participant id (from a Moodle download, the "
            "roster's moodle_id, or --moodle worksheet.csv downloaded from the assignment)") if empty else ""


def canvas_column_warning(assignment: str, column: str) -> str:
    """The console's word when the Canvas column is not named the way Canvas matches an existing assignment."""
    if column and column.rstrip().endswith(")"):
        return ""
    return (f"note: the Canvas column is named {column or assignment!r}; Canvas matches a column by 'Name (id)' "
            "or the exact title and makes a new assignment otherwise: pass --canvas-column 'Lab 2 (4711)' "
            "(the title and id from the assignment's Canvas address)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab.grader.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("assignment")
    parser.add_argument("--work", default=None, help="grading folder (default: grading/work of the course)")
    parser.add_argument("--canvas-column", default="", help="Canvas assignment column, e.g. 'Lab 2 (4711)'")
    parser.add_argument("--roster", default=None, help="class list CSV: Canvas, Moodle and SIS ids for the exports")
    parser.add_argument("--moodle", default=None, metavar="WORKSHEET.csv",
                        help="the grading worksheet downloaded from the Moodle assignment: its participant ids "
                             "(matched by e-mail, then name) fill ours, whatever the download was")
    args = parser.parse_args(argv)
    try:
        work = Path(args.work) if args.work else course_root() / "grading" / "work"
        if not (work / "gradebook.db").is_file():
            raise GradingError(f"{work}: no gradebook.db; grade the class first (peftlab-grade), or pass --work.")
        roster = Roster.load(args.roster) if args.roster else None
        exports = export_all(work, args.assignment, args.canvas_column, roster, args.moodle)
    except GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for what, path in exports.items():
        print(f"{what}: {path}")
    for warning in (canvas_column_warning(args.assignment, args.canvas_column),
                    moodle_warning(exports["Moodle worksheet"])):
        if warning:
            print(warning)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
