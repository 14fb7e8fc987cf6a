"""Grades back into the LMS, and the class at a glance.

Written after every batch, beside `ASSIGNMENT-grades.csv` in the grading folder:

| file | for |
|---|---|
| `ASSIGNMENT-grades.csv` | one row per student: status, autograded points, points awaiting hand grading, flag, points per test, reason, notes |
| `ASSIGNMENT-intake.csv` | every file found: the student it was given to (or why none), layout, lateness |
| `ASSIGNMENT-canvas.csv` | Canvas, Grades > Import: `Student, ID, SIS User ID, SIS Login ID, Section, <assignment>` |
| `ASSIGNMENT-moodle.csv` | Moodle, assignment > "Upload grading worksheet": `Identifier, Full name, Email address, Status, Grade, Maximum Grade, ...` |
| `ASSIGNMENT-summary.md`, `ASSIGNMENT-scores.png` | statuses, score histogram, how often each test failed |

Scores are nbgrader's (autograded points, replaced by any points given by
hand in formgrader), so export again after grading by hand:
`python -m peftlab.grader.export ASSIGNMENT [--work grading/work]`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections import Counter
from pathlib import Path

from sqlalchemy import text

from ..files import write_atomic
from .course import course_root
from .gradebook import INTAKE_TABLE, STATUS_TABLE, open_gradebook
from .intake import Submission
from .outcome import FLAGGED, STATUSES

CANVAS_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
MOODLE_COLUMNS = ["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum Grade",
                  "Grade can be changed", "Last modified (submission)", "Last modified (grade)", "Feedback comments"]


def _csv_bytes(header: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


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


def write_intake(path: Path, subs: list[Submission], rejected: list[Submission]) -> Path:
    """One row per file found: who it was given to, how the name was read, late or not, and any reason."""
    rows = [[s.origin, s.student, s.lms_id, s.name, s.layout, "yes" if s.late else "",
             "graded" if not s.status else s.status, s.reason] for s in subs]
    rows += [[s.origin, "", "", "", "", "", "rejected", s.reason] for s in rejected]
    write_atomic(path, _csv_bytes(["file", "student", "lms_id", "name", "layout", "late", "fate", "reason"], rows))
    return path


def class_rows(work: Path, assignment: str) -> list[dict]:
    """Every recorded student of `assignment`: identity, status, score, lateness, points per test."""
    with open_gradebook(work) as gb:
        gb.db.execute(text(STATUS_TABLE))
        gb.db.execute(text(INTAKE_TABLE))
        status = {s: (st, r) for s, st, r in gb.db.execute(
            text("SELECT student, status, reason FROM peftlab_status WHERE assignment = :a"), {"a": assignment})}
        intake = {s: (late, layout) for s, late, layout in gb.db.execute(
            text("SELECT student, late, layout FROM peftlab_intake WHERE assignment = :a"), {"a": assignment})}
        rows = []
        for sid in sorted(status):
            sub = gb.find_submission(assignment, sid)
            st = sub.student
            late, layout = intake.get(sid, (0, ""))
            rows.append({
                "id": sid, "name": " ".join(x for x in (st.first_name, st.last_name) if x) or sid,
                "email": st.email or "", "lms_id": st.lms_user_id or "", "layout": layout, "late": bool(late),
                "status": status[sid][0], "reason": status[sid][1], "score": float(sub.score or 0),
                "max": float(sub.max_score or 0),
                "tests": {g.name: (g.score, g.max_score) for nb in sub.notebooks for g in nb.grades
                          if g.cell.cell_type == "code"},
            })
    return rows


def canvas_csv(rows: list[dict], assignment: str, path: Path, column: str = "") -> Path:
    """Canvas's gradebook import. Canvas matches a row by ID (its user id), else by SIS User ID / SIS Login ID;
    a column named like no assignment becomes a new one, so pass the Canvas name, e.g. 'Lab 2 (4711)'."""
    column = column or assignment
    points = ["Points Possible", "", "", "", "", f"{max((r['max'] for r in rows), default=0):g}"]
    body = [[r["name"], r["lms_id"] if r["layout"] == "Canvas" else "", r["id"], r["email"], "", f"{r['score']:g}"]
            for r in rows]
    write_atomic(path, _csv_bytes([*CANVAS_COLUMNS, column], [points, *body]))
    return path


def moodle_csv(rows: list[dict], path: Path) -> Path:
    """Moodle's grading worksheet: rows are matched by 'Identifier' ('Participant <id>'); students whose
    submission did not come from a Moodle download have no participant id and are left out."""
    body = [[f"Participant {r['lms_id']}", r["name"], r["email"], "Submitted for grading" + (" (late)" if r["late"] else ""),
             f"{r['score']:g}", f"{r['max']:g}", "Yes", "", "", r["reason"]]
            for r in rows if r["layout"] == "Moodle" and r["lms_id"]]
    write_atomic(path, _csv_bytes(MOODLE_COLUMNS, body))
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


def export_all(work: Path, assignment: str, canvas_column: str = "") -> dict[str, Path]:
    """Write every export of `assignment` from the gradebook in `work`; {what: path}."""
    rows = class_rows(work, assignment)
    md, png = summary(rows, assignment, work / f"{assignment}-summary.md", work / f"{assignment}-scores.png")
    return {"Canvas import": canvas_csv(rows, assignment, work / f"{assignment}-canvas.csv", canvas_column),
            "Moodle worksheet": moodle_csv(rows, work / f"{assignment}-moodle.csv"),
            "class summary": md, "score histogram": png}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab.grader.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("assignment")
    parser.add_argument("--work", default=None, help="grading folder (default: grading/work of the course)")
    parser.add_argument("--canvas-column", default="", help="Canvas assignment column, e.g. 'Lab 2 (4711)'")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else course_root() / "grading" / "work"
    for what, path in export_all(work, args.assignment, args.canvas_column).items():
        print(f"{what}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
