"""Grades that go back into Canvas and Moodle and land on the right students.

Each importer's matching rules are re-implemented here from its source
(Canvas: `app/models/gradebook_importer.rb`; Moodle:
`mod/assign/feedback/offline/importgradeslib.php` and `locallib.php`,
`process_import_grades`), so that a round trip can be proved without a live
LMS: grade, export, "import", and every student lands on the right row, graded
or explicitly blank, with no new assignment, no unknown student and no changed
points possible. No kernel runs: the outcomes are recorded in a real nbgrader
gradebook as the batch records them.
"""

import csv
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from peftlab.grader import course as course_mod
from peftlab.grader.export import class_rows, export_all
from peftlab.grader.gradebook import open_gradebook, record, record_identity
from peftlab.grader.intake import Submission
from peftlab.grader.outcome import Outcome
from peftlab.grader.roster import Roster

FIXTURE = Path(__file__).parent / "fixtures" / "course"
ASSIGNMENT = "90_fixture"

# ------------------------------------------------------------------ Canvas's importer, its matching rules
NON_ASSIGNMENT = ["Current Score", "Current Points", "Current Grade", "Final Score", "Final Points", "Final Grade",
                  "Override Score", "Override Grade", "Override Status"]


def canvas_import(path: Path, course: dict) -> dict:
    """What Canvas's gradebook importer makes of `path` for `course`:
    {"grades": {user id: grade}, "new_assignments": [...], "missing_students": [...], "points_changed": [...]}.

    course = {"students": {user id: (name, sis user id, login)}, "assignments": {id: (title, points)}}."""
    with path.open(newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    header, body = table[0], table[1:]
    assert len(header) > 3 and "Student" in header[0] and "ID" in header[1], "Canvas: Invalid header row"
    student_columns, sis_col, login_col = 3, None, None
    if re.search(r"SIS\s+Login\s+ID", header[2]):
        login_col, student_columns = 2, 4
    elif re.search(r"SIS\s+User\s+ID", header[2]) and re.search(r"SIS\s+Login\s+ID", header[3]):
        sis_col, login_col, student_columns = 2, 3, 5
    assert "Section" in header[student_columns - 1], "Canvas: Invalid header row (no Section)"
    columns = [(i, h) for i, h in enumerate(header) if i >= student_columns
               and not re.search("|".join(NON_ASSIGNMENT), h)]
    by_title = {title: aid for aid, (title, _) in course["assignments"].items()}
    assignments = {}
    for i, h in columns:
        m = re.match(r"^(.*) \((\d+)\)$", h)
        aid = int(m[2]) if m and int(m[2]) in course["assignments"] else by_title.get(h)
        if aid is None:
            aid = f"new:{h}"
        assignments[i] = aid
    students, missing, points, matched_by = {}, [], {}, {}
    sis = {v[1]: k for k, v in course["students"].items() if v[1]}
    logins = {v[2]: k for k, v in course["students"].items() if v[2]}
    names = {v[0]: k for k, v in course["students"].items()}
    for row in body:
        if "Points Possible" in row[0]:
            points = {i: row[i] for i in assignments}
            continue
        tries = [("ID", int(row[1]) if row[1].strip().isdigit() and int(row[1]) in course["students"] else None),
                 ("SIS User ID", sis.get(row[sis_col]) if sis_col is not None and row[sis_col] else None),
                 ("SIS Login ID", logins.get(row[login_col]) if login_col is not None and row[login_col] else None),
                 ("name", names.get(row[0]))]
        how, uid = next(((how, uid) for how, uid in tries if uid is not None), (None, None))
        if uid is None:
            missing.append(row[0])
            continue
        assert uid not in students, f"Canvas: two rows for user {uid}"
        students[uid] = row
        matched_by[uid] = how
    read_only = {i for i, v in points.items() if re.search(r"read\s+only", v)}
    out = {"grades": {}, "new_assignments": [], "missing_students": missing, "points_changed": [],
           "matched_by": matched_by}
    for i, aid in assignments.items():
        if i in read_only and not missing:  # the importer drops read-only columns (when every student matched)
            continue
        if isinstance(aid, str):
            out["new_assignments"].append(aid[4:])
            continue
        if i in points and points[i] and float(points[i]) != course["assignments"][aid][1]:
            out["points_changed"].append((aid, points[i]))
        for uid, row in students.items():
            out["grades"].setdefault(uid, {})[aid] = row[i].strip()
    return out


# ------------------------------------------------------------------ Moodle's importer, its matching rules
def moodle_import(path: Path, assignment: dict, ignoremodified: bool = False) -> dict:
    """What Moodle's grading-worksheet upload does: {user: new grade} for the rows it applies.

    assignment = {"participants": {participant id: user}, "max": points,
                  "grades": {user: (grade, timemodified)} already in Moodle}."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        table = list(reader)
    for column in ("Identifier", "Grade", "Last modified (grade)"):
        assert column in header, f"Moodle: invalidgradeimport (no {column!r} column)"
    idx, grade_i, mod_i = header.index("Identifier"), header.index("Grade"), header.index("Last modified (grade)")
    applied, skipped = {}, {}
    for row in table:
        pid = row[idx][len("Participant "):]
        user = assignment["participants"].get(pid)
        if user is None:
            continue  # get_user_id_for_uniqueid finds no one: the row is ignored
        text = row[mod_i]
        modified = datetime.fromisoformat(text).timestamp() if text else 0  # strtotime('') is false: 0
        grade = float(row[grade_i]) if row[grade_i].strip() else None
        current = assignment["grades"].get(user)
        stale = current is not None and current[1] > modified + 60
        if current is not None and grade == current[0]:
            skipped[user] = "not modified"
        elif grade is None or grade < 0:
            skipped[user] = "no value"
        elif not ignoremodified and stale:
            skipped[user] = "modified in Moodle more recently"
        elif grade > assignment["max"]:
            skipped[user] = "out of range"
        else:
            applied[user] = grade
    return {"applied": applied, "skipped": skipped}


# ------------------------------------------------------------------ one class, graded without kernels
CLASS = {  # id: (name, e-mail, Canvas user id, Moodle participant id, SIS id, status, points per test)
    "jsmith": ("John Smith", "jsmith@uni.edu", "12345", "9001", "S001", "graded", {"test_double": 2, "test_halve": 1}),
    "jdoe": ("Jane Doe", "jdoe@uni.edu", "23456", "9002", "", "graded", {"test_double": 0, "test_halve": 1}),
    "zoe": ("Zoë Ångström", "zoe@uni.edu", "34567", "9003", "S003", "invalid", {}),
    "erin": ("Erin Li", "erin@uni.edu", "45678", "9004", "S004", "timeout", {}),
    "kim": ("Kim Park", "kim@uni.edu", "56789", "9005", "S005", "tampered", {}),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A gradebook holding the class as a batch would record it, from a Canvas download with a roster."""
    tmp = tmp_path_factory.mktemp("lms")
    course = tmp / "course"
    shutil.copytree(FIXTURE, course)
    work = tmp / "work"
    work.mkdir()
    course_mod.generate(course, ASSIGNMENT, db_folder=work)
    roster_path = tmp / "roster.csv"
    with roster_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "name", "email", "canvas_id", "moodle_id", "sis_id"])
        for sid, (name, email, cid, mid, sis, *_) in CLASS.items():
            w.writerow([sid, name, email, cid, mid, sis])
    roster = Roster.load(roster_path)
    with open_gradebook(work) as gb:
        cells = {c.name: (c.max_score, c.cell_type == "markdown")
                 for nb in gb.find_assignment(ASSIGNMENT).notebooks for c in nb.grade_cells}
    for i, (sid, (name, email, cid, _, _, status, points)) in enumerate(CLASS.items()):
        person = roster.students[sid]
        # Only some came with their Canvas id in the download; the roster has everyone's.
        sub = Submission(student=sid, origin=f"submissions.zip:x_{cid}_1_fixture.ipynb", sha256=f"{i:064x}",
                         name=name, email=email, layout="Canvas" if i % 2 == 0 else "nbgrader submitted",
                         lms_id=cid if i % 2 == 0 else "", canvas_id=person.canvas_id, moodle_id=person.moodle_id,
                         sis_id=person.sis_id)
        grades = {gid: {"score": None if manual else float(points.get(gid, 0)), "max": mx, "manual": manual}
                  for gid, (mx, manual) in cells.items()}
        out = Outcome(student=sid, status=status, reason="" if status == "graded" else f"{status} for a reason",
                      grades=grades if status == "graded" else {})
        record_identity(work, ASSIGNMENT, sub)
        record(work, ASSIGNMENT, sub, out)
    total = sum(mx for mx, _ in cells.values())
    return work, roster, total


def _canvas_course(total):
    # Logins are not e-mail addresses here: a row can only match by the ids the export carries (or the name).
    return {"students": {int(cid): (name, sis, sid) for sid, (name, email, cid, _, sis, *_) in CLASS.items()},
            "assignments": {4711: ("Lab 90", total), 4712: ("Lab 91", 10.0)}}


def _expected_points(sid):
    status, points = CLASS[sid][5], CLASS[sid][6]
    return f"{sum(points.values()):g}" if status == "graded" else ""


def test_canvas_round_trip_every_student_on_their_row(graded):
    work, roster, total = graded
    exports = export_all(work, ASSIGNMENT, "Lab 90 (4711)", roster)
    result = canvas_import(exports["Canvas import"], _canvas_course(total))
    assert result["new_assignments"] == [] and result["missing_students"] == [] and result["points_changed"] == []
    assert set(result["matched_by"].values()) == {"ID"}  # Canvas's user id, from the download or the roster
    got = {uid: cols[4711] for uid, cols in result["grades"].items()}
    assert got == {int(CLASS[s][2]): _expected_points(s) for s in CLASS}  # non-graded: blank, never 0
    with exports["Canvas import"].open(newline="", encoding="utf-8") as fh:
        table = {r["ID"]: r for r in csv.DictReader(fh)}
    assert table["34567"]["Notes (PEFT Lab)"].startswith("not graded automatically: invalid")
    assert table["23456"]["SIS User ID"] == "" and table["12345"]["SIS User ID"] == "S001"  # the roster's, or blank


def test_canvas_column_named_after_the_folder_makes_a_new_assignment(graded):
    """Why --canvas-column exists: the importer's rule, shown on the default name."""
    work, roster, total = graded
    exports = export_all(work, ASSIGNMENT, "", roster)
    assert canvas_import(exports["Canvas import"], _canvas_course(total))["new_assignments"] == [ASSIGNMENT]


def test_canvas_without_roster_matches_by_the_downloads_ids(graded):
    """Rerun of the export without the roster: the ids recorded at grading time still match every row."""
    work, _, total = graded
    result = canvas_import(export_all(work, ASSIGNMENT, "Lab 90 (4711)")["Canvas import"], _canvas_course(total))
    assert not result["missing_students"] and len(result["grades"]) == len(CLASS)
    assert set(result["matched_by"].values()) == {"ID"}


def test_moodle_round_trip_from_roster_ids_after_a_canvas_download(graded):
    work, roster, total = graded
    worksheet = export_all(work, ASSIGNMENT, "", roster)["Moodle worksheet"]
    moodle = {"participants": {CLASS[s][3]: s for s in CLASS}, "max": total, "grades": {}}
    result = moodle_import(worksheet, moodle)
    graded_ids = {s for s in CLASS if CLASS[s][5] == "graded"}
    assert result["applied"] == {s: float(_expected_points(s)) for s in graded_ids}
    assert {u for u, why in result["skipped"].items() if why == "no value"} == set(CLASS) - graded_ids


def test_moodle_reupload_after_hand_grading_is_not_stale(graded, tmp_path):
    """Grades uploaded once (Moodle stamps them at upload), then one changed by hand in formgrader: the
    second upload carries a newer 'Last modified (grade)', so Moodle applies it without 'Allow updating'."""
    work, roster, total = graded
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    first = moodle_import(export_all(copy, ASSIGNMENT, "", roster)["Moodle worksheet"],
                          {"participants": {CLASS[s][3]: s for s in CLASS}, "max": total, "grades": {}})
    uploaded_at = time.time() + 30  # Moodle's grades are stamped when the worksheet is uploaded
    moodle_grades = {u: (g, uploaded_at) for u, g in first["applied"].items()}
    with open_gradebook(copy) as gb:  # the instructor gives jdoe a point by hand in formgrader
        grade = gb.find_grade("test_double", "fixture", ASSIGNMENT, "jdoe")
        grade.manual_score = 2.0
        gb.db.commit()
    os.utime(copy / "gradebook.db", (uploaded_at + 90, uploaded_at + 90))  # ... after the upload
    rows = {r["id"]: r for r in class_rows(copy, ASSIGNMENT, roster)}
    assert rows["jdoe"]["score"] == 3.0
    second = moodle_import(export_all(copy, ASSIGNMENT, "", roster)["Moodle worksheet"],
                           {"participants": {CLASS[s][3]: s for s in CLASS}, "max": total, "grades": moodle_grades})
    assert second["applied"] == {"jdoe": 3.0}
    assert second["skipped"]["jsmith"] == "not modified"


def test_moodle_time_is_one_strtotime_reads(graded):
    work, roster, _ = graded
    with export_all(work, ASSIGNMENT, "", roster)["Moodle worksheet"].open(newline="", encoding="utf-8") as fh:
        stamps = [r["Last modified (grade)"] for r in csv.DictReader(fh)]
    assert stamps and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", s) for s in stamps)
    assert all(abs(datetime.fromisoformat(s).timestamp() - datetime.now(timezone.utc).timestamp()) < 3600
               for s in stamps)


def test_moodle_worksheet_ids_count_over_the_rosters(graded, tmp_path):
    """Participant ids are per assignment: the worksheet downloaded from this assignment names the rows."""
    work, roster, total = graded
    sheet = tmp_path / "worksheet.csv"
    with sheet.open("w", newline="", encoding="utf-8-sig") as fh:  # as Moodle writes it (with a BOM)
        w = csv.writer(fh)
        w.writerow(["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum Grade",
                    "Grade can be changed", "Last modified (submission)", "Last modified (grade)", "Feedback comments"])
        for i, (sid, (name, email, *_)) in enumerate(CLASS.items()):
            w.writerow([f"Participant {7001 + i}", name, email if sid != "zoe" else "", "", "", f"{total:g}",
                        "Yes", "", "-", ""])
    exports = export_all(work, ASSIGNMENT, "", roster, moodle_worksheet=sheet)
    participants = {str(7001 + i): sid for i, sid in enumerate(CLASS)}  # zoe: matched by her full name
    result = moodle_import(exports["Moodle worksheet"], {"participants": participants, "max": total, "grades": {}})
    assert result["applied"] == {s: float(_expected_points(s)) for s in CLASS if CLASS[s][5] == "graded"}
    with exports["Moodle worksheet"].open(newline="", encoding="utf-8") as fh:
        assert {r["Identifier"] for r in csv.DictReader(fh)} == {f"Participant {p}" for p in participants}


def test_a_wrong_worksheet_is_refused_with_the_fix(tmp_path):
    from peftlab.grader.course import GradingError
    from peftlab.grader.export import read_worksheet

    bad = tmp_path / "grades.csv"
    bad.write_text("Student,ID\nA,1\n")
    with pytest.raises(GradingError, match=r"grades.csv: not a Moodle grading worksheet .*Download grading"):
        read_worksheet(bad)


def test_peftlab_grade_takes_the_export_options(tmp_path, capsys):
    from peftlab.grader import batch

    with pytest.raises(SystemExit):
        batch.main(["--help"])
    text = capsys.readouterr().out
    assert "--canvas-column" in text and "--moodle" in text


def test_the_console_says_when_the_moodle_worksheet_is_empty(tmp_path):
    from peftlab.grader.export import moodle_csv, moodle_warning

    empty = moodle_csv([], tmp_path / "m.csv")
    assert "no student" in moodle_warning(empty) and "--moodle" in moodle_warning(empty)
    row = {"moodle_id": "7", "name": "A", "email": "", "late": False, "counted": True, "score": 1.0, "max": 2.0,
           "graded_at": "", "status": "graded"}
    assert moodle_warning(moodle_csv([row], tmp_path / "n.csv")) == ""
