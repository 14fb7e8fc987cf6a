"""Intake of the downloads instructors really have: Canvas, Moodle, nbgrader, JupyterHub, Colab names.

File names below are written the way each system writes them (Canvas:
`<name>[_LATE]_<user id>_<submission id>_<file>[-N].ipynb`; Moodle:
`<Full Name>_<participant id>_assignsubmission_file_/<file>`; nbgrader:
`submitted/<student>/<assignment>/<notebook>`).
"""

import csv
import json
import re
import sqlite3
import zipfile
from pathlib import Path

import pytest
from peftlab.grader.course import GradingError
from peftlab.grader.export import canvas_csv, moodle_csv
from peftlab.grader.intake import import_submissions
from peftlab.grader.layouts import identify
from peftlab.grader.roster import Roster

NB, ASSIGNMENT = "fixture.ipynb", "90_fixture"

CASES = [  # path in the download -> (student, lms id, late, attempt, layout starts with)
    ("smithjohn_12345_6789012_fixture.ipynb", ("canvas-12345", "12345", False, "000000", "Canvas")),
    ("doejane_LATE_23456_7890123_fixture.ipynb", ("canvas-23456", "23456", True, "000000", "Canvas")),
    ("smithjohn_12345_6790000_fixture-2.ipynb", ("canvas-12345", "12345", False, "000002", "Canvas")),
    ("smithjohn_12345_6789012_Copy_of_fixture.ipynb", ("canvas-12345", "12345", False, "000000", "Canvas")),
    ("John Smith_123456_assignsubmission_file_/fixture.ipynb", ("moodle-123456", "123456", False, "", "Moodle")),
    ("Zoë Ångström_777_assignsubmission_file_fixture.ipynb", ("moodle-777", "777", False, "", "Moodle")),
    ("course/submitted/alice/90_fixture/fixture.ipynb", ("alice", "", False, "000000", "nbgrader submitted")),
    ("Lab_jdoe_attempt_2026-01-01-12-00-00_fixture.ipynb", ("jdoe", "", False, "2026-01-01-12-00-00", "nbgrader zip")),
    ("jupyter-bob/90_fixture/fixture.ipynb", ("bob", "", False, "000000", "folder")),
    ("carol/Copy of fixture (2).ipynb", ("carol", "", False, "000002", "folder")),
    ("dave.ipynb", ("dave", "", False, "000000", "one file")),
    ("erin_fixture.ipynb", ("erin", "", False, "000000", "one file")),
    ("zoë/fixture.ipynb", ("zoë", "", False, "000000", "folder")),
]
REJECTED = [
    ("fixture.ipynb", "assignment's own file name"),
    ("Copy of fixture.ipynb", "assignment's own file name"),
    ("fixture (1).ipynb", "assignment's own file name"),
    ("../alice/fixture.ipynb", "outside its folder"),
    ("bad name!.ipynb", "cannot tell the student"),
]


@pytest.mark.parametrize("path,expected", CASES)
def test_identify_reads_each_layout(path, expected):
    named = identify(path, NB, ASSIGNMENT)
    assert not named.problem, named.problem
    assert (named.student, named.lms_id, named.late, named.attempt) == expected[:4]
    assert named.layout.startswith(expected[4])


@pytest.mark.parametrize("path,why", REJECTED)
def test_identify_rejects_what_it_cannot_tell(path, why):
    named = identify(path, NB, ASSIGNMENT)
    assert why in named.problem and path in named.problem


def test_id_regex_for_other_layouts():
    rx = re.compile(r"^(?P<student>[a-z]+)-(?P<late>late-)?hw\.ipynb$")
    assert (identify("amy-late-hw.ipynb", NB, id_regex=rx).student, identify("amy-late-hw.ipynb", NB, id_regex=rx).late) == ("amy", True)
    assert "does not match" in identify("Amy.ipynb", NB, id_regex=rx).problem


# ----------------------------------------------------------------- one class, three downloads
CLASS = {  # roster id: (name, e-mail, Canvas login name, Canvas user id, Moodle participant id)
    "jsmith": ("John Smith", "jsmith@uni.edu", "smithjohn", "12345", "123456"),
    "jdoe": ("Jane Doe", "jdoe@uni.edu", "doejane", "23456", "234567"),
    "zoe": ("Zoë Ångström", "zoe@uni.edu", "angstromzoe", "34567", "345678"),
}


def _nb(student: str, version: int = 0) -> bytes:
    cell = {"cell_type": "markdown", "metadata": {}, "source": f"{student} v{version}"}
    return json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode()


@pytest.fixture
def downloads(tmp_path):
    roster = tmp_path / "roster.csv"
    with roster.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "name", "email", "lms_id"])
        for sid, (name, email, _, uid, pid) in CLASS.items():
            w.writerow([sid, name, email, f"{uid};{pid}"])
    canvas = tmp_path / "submissions.zip"  # Canvas: flat zip, one file per submission
    with zipfile.ZipFile(canvas, "w") as zf:
        zf.writestr("smithjohn_12345_6789012_fixture.ipynb", _nb("jsmith", 0))  # first try
        zf.writestr("smithjohn_12345_6789013_fixture-1.ipynb", _nb("jsmith", 1))  # resubmitted: graded
        zf.writestr("doejane_LATE_23456_7890123_Copy_of_fixture.ipynb", _nb("jdoe"))
        zf.writestr("angstromzoe_34567_7890124_fixture.ipynb", _nb("zoe"))
        zf.writestr("stranger_99999_7890125_fixture.ipynb", _nb("stranger"))  # not on the roster
    moodle = tmp_path / "Lab 90-90_fixture-123.zip"  # Moodle: a folder per participant
    with zipfile.ZipFile(moodle, "w") as zf:
        for sid, (name, _, _, _, pid) in CLASS.items():
            zf.writestr(f"{name}_{pid}_assignsubmission_file_/fixture.ipynb", _nb(sid, 1 if sid == "jsmith" else 0))
    nbgrader = tmp_path / "course"  # nbgrader's own layout, as a folder
    for sid in CLASS:
        path = nbgrader / "submitted" / sid / ASSIGNMENT / NB
        path.parent.mkdir(parents=True)
        path.write_bytes(_nb(sid, 1 if sid == "jsmith" else 0))
    return Roster.load(roster), {"Canvas": canvas, "Moodle": moodle, "nbgrader": nbgrader}


def _import(tmp_path, source, roster, name):
    return import_submissions([source], NB, tmp_path / f"staging-{name}", assignment=ASSIGNMENT, roster=roster)


def test_three_downloads_of_one_class_give_the_same_students(downloads, tmp_path):
    roster, sources = downloads
    seen = {}
    for layout, source in sources.items():
        subs = _import(tmp_path, source, roster, layout)
        students = {s.student: s for s in subs if not s.rejected}
        assert set(students) == set(CLASS), layout
        assert all(not s.status for s in students.values()), layout
        seen[layout] = {sid: s.sha256 for sid, s in students.items()}
        assert students["zoe"].name == "Zoë Ångström" and students["jdoe"].email == "jdoe@uni.edu"
    assert seen["Canvas"] == seen["Moodle"] == seen["nbgrader"]  # the same notebook per student


def test_canvas_lateness_resubmission_and_strangers(downloads, tmp_path):
    roster, sources = downloads
    subs = _import(tmp_path, sources["Canvas"], roster, "c")
    students = {s.student: s for s in subs if not s.rejected}
    rejected = [s for s in subs if s.rejected]
    assert students["jdoe"].late and not students["jsmith"].late
    assert any("late" in n for n in students["jdoe"].notes)
    assert students["jsmith"].origin.endswith("fixture-1.ipynb")  # the newest of two
    reasons = " | ".join(s.reason for s in rejected)
    assert "older submission of jsmith" in reasons and "fixture-1.ipynb" in reasons
    assert "not on the roster" in reasons and "99999" in reasons
    assert len(rejected) == 2 and not any(s.student in CLASS for s in rejected)


def test_moodle_flat_folder_without_roster_uses_participant_ids(tmp_path):
    src = tmp_path / "moodle"
    src.mkdir()
    for name, pid in (("John Smith", "123456"), ("Zoë Ångström", "345678")):
        (src / f"{name}_{pid}_assignsubmission_file_fixture.ipynb").write_bytes(_nb(pid))
    subs = import_submissions([src], NB, tmp_path / "st", assignment=ASSIGNMENT)
    assert {s.student: s.name for s in subs} == {"moodle-123456": "John Smith", "moodle-345678": "Zoë Ångström"}


def test_bad_input_gives_a_reason_per_file(tmp_path):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 this is not a zip")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape/fixture.ipynb", _nb("x"))
        zf.writestr("a/b\\c.ipynb", _nb("y"))
        zf.writestr("ok/fixture.ipynb", _nb("ok"))
    two = tmp_path / "two"
    (two / "amy").mkdir(parents=True)
    (two / "amy" / "fixture.ipynb").write_bytes(_nb("amy", 1))
    (two / "amy.ipynb").write_bytes(_nb("amy", 2))  # same student, different notebook, no order between them
    subs = import_submissions([broken, evil, two], NB, tmp_path / "st", assignment=ASSIGNMENT)
    by_origin = {s.origin: s for s in subs}
    assert "not a readable zip file" in by_origin[str(broken)].reason and by_origin[str(broken)].rejected
    assert "outside its folder" in by_origin[f"{evil}:../escape/fixture.ipynb"].reason
    assert "outside its folder" in by_origin[f"{evil}:a/b\\c.ipynb"].reason
    ok = next(s for s in subs if s.student == "ok")
    assert not ok.status and Path(ok.path).is_file()
    amy = next(s for s in subs if s.student == "amy")
    assert amy.status == "invalid" and "nothing tells which is newer" in amy.reason and not amy.path


@pytest.mark.parametrize("rows,why", [
    ("name\nAl\n", "needs a header row with an 'id' column"),
    ("id,name\nal,Al\nal,Al again\n", "roster.csv:3: id 'al' is listed twice"),
    ("id,lms_id\nal,1\nbo,1\n", "roster.csv:3: LMS id '1' of 'bo' is also 'al'"),
    ("id\nbad id\n", "roster.csv:2: id 'bad id'"),
])
def test_roster_problems_name_the_line(tmp_path, rows, why):
    path = tmp_path / "roster.csv"
    path.write_text(rows)
    with pytest.raises(GradingError, match=re.escape(why)):
        Roster.load(path)


def test_lms_exports_have_the_import_columns(tmp_path):
    rows = [
        {"id": "jsmith", "name": "John Smith", "email": "j@u.edu", "lms_id": "12345", "layout": "Canvas",
         "late": False, "status": "graded", "reason": "", "score": 3.0, "max": 4.0, "tests": {},
         "canvas_id": "12345", "moodle_id": "", "sis_id": "", "counted": True, "graded_at": "2026-12-05T07:00:00+00:00"},
        {"id": "moodle-7", "name": "Zoë Å", "email": "", "lms_id": "7", "layout": "Moodle", "late": True,
         "status": "tampered", "reason": "cell deleted", "score": 0.0, "max": 4.0, "tests": {},
         "canvas_id": "", "moodle_id": "7", "sis_id": "", "counted": False, "graded_at": "2026-12-05T07:00:00+00:00"},
    ]
    with canvas_csv(rows, ASSIGNMENT, tmp_path / "c.csv", "Lab 90 (4711)").open(newline="") as fh:
        canvas = list(csv.reader(fh))
    assert canvas[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Lab 90 (4711)", "Notes (PEFT Lab)"]
    assert canvas[1][0] == "Points Possible" and canvas[1][-2:] == ["4", "(read only)"]
    assert canvas[2] == ["John Smith", "12345", "", "j@u.edu", "", "3", ""]  # SIS User ID: only a roster's
    assert canvas[3][1] == "" and canvas[3][5] == "" and "tampered" in canvas[3][6]  # blank, never 0
    with moodle_csv(rows, tmp_path / "m.csv").open(newline="", encoding="utf-8") as fh:
        moodle = list(csv.DictReader(fh))
    assert len(moodle) == 1 and moodle[0]["Identifier"] == "Participant 7"
    assert moodle[0]["Grade"] == "" and moodle[0]["Maximum Grade"] == "4" and "late" in moodle[0]["Status"]
    assert moodle[0]["Last modified (grade)"] == "2026-12-05T07:00:00+00:00"


def test_nothing_gradable_is_an_error_and_rejects_stay_out_of_the_gradebook(tmp_path):
    # The grading run itself is in test_grading; here only the intake decides, before any kernel.
    from peftlab.grader.batch import Batch

    course = Path(__file__).parent / "fixtures" / "course"
    src = tmp_path / "class"
    src.mkdir()
    (src / NB).write_bytes(_nb("nobody"))  # the assignment's own name: no student
    batch = Batch(course, ASSIGNMENT, tmp_path / "work", log=lambda *a: None)
    with pytest.raises(GradingError, match="nothing to grade") as err:
        batch._intake(import_submissions([src], NB, tmp_path / "st", assignment=ASSIGNMENT))
    assert "assignment's own file name" in str(err.value)
    with open(batch.intake_path, newline="") as fh:
        assert [r["fate"] for r in csv.DictReader(fh)] == ["unknown-student"]
    assert not (tmp_path / "work" / "gradebook.db").exists() or not sqlite3.connect(
        tmp_path / "work" / "gradebook.db").execute("SELECT id FROM student").fetchall()


def test_canvas_download_grades_under_roster_ids_and_exports(tmp_path, downloads):
    """End to end with kernels: a Canvas zip graded, lateness kept, rejects out of the gradebook, exports."""
    import shutil

    import nbformat
    from peftlab.grader import exercises
    from peftlab.grader.batch import Batch
    from peftlab.grader.settings import GRADING_PARAMETERS, Settings

    roster, _ = downloads
    course = tmp_path / "the-course"  # the `downloads` fixture has its own course/ folder
    shutil.copytree(Path(__file__).parent / "fixtures" / "course", course)
    exercises.release(course)
    release = nbformat.read(course / "exercises" / ASSIGNMENT / NB, as_version=4)
    solved = nbformat.from_dict(json.loads(json.dumps(release)))
    for cell in solved.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid == "double":
            cell.source = "def double(x):\n    return factor * x"
        if gid == "halve":
            cell.source = "def halve(x):\n    return x / 2"
    canvas = tmp_path / "submissions.zip"
    with zipfile.ZipFile(canvas, "w") as zf:
        zf.writestr("smithjohn_12345_6789012_fixture.ipynb", nbformat.writes(solved))
        zf.writestr("doejane_LATE_23456_7890123_fixture.ipynb", nbformat.writes(release))
        zf.writestr("fixture.ipynb", nbformat.writes(solved))  # nobody's
        zf.writestr("angstromzoe_34567_7890124_fixture.ipynb", "{not json")  # found at import, invalid when checked
    # Limits far above the few seconds each notebook takes: the machine may be busy.
    settings = Settings(workers=2, cell_timeout=300, wall_timeout=900,
                        parameters={**GRADING_PARAMETERS, "factor": 2})
    batch = Batch(course, ASSIGNMENT, tmp_path / "work", settings, log=lambda *a: None, roster=roster)
    results = {sub.student: out for sub, out in batch.run([canvas])}
    assert {s: (o.status, o.auto_score) for s, o in results.items()} == {
        "jsmith": ("graded", 3), "jdoe": ("graded", 0), "zoe": ("invalid", 0)}
    assert [s.reason for s in batch.rejected] and "assignment's own file name" in batch.rejected[0].reason
    assert batch.missing == []
    db = sqlite3.connect(batch.work / "gradebook.db")
    assert sorted(db.execute("SELECT id, email, lms_user_id FROM student")) == [
        ("jdoe", "jdoe@uni.edu", "23456"), ("jsmith", "jsmith@uni.edu", "12345"), ("zoe", "zoe@uni.edu", "34567")]
    assert dict(db.execute("SELECT student, late FROM peftlab_intake")) == {"jdoe": 1, "jsmith": 0, "zoe": 0}
    with open(batch.exports["Canvas import"], newline="") as fh:
        canvas_rows = {r["ID"]: r for r in csv.DictReader(fh)}
    assert canvas_rows["12345"]["SIS User ID"] == "" and canvas_rows["12345"][ASSIGNMENT] == "3"
    assert canvas_rows["23456"][ASSIGNMENT] == "0"  # graded, and 0 points: a 0, not a blank
    assert canvas_rows["34567"][ASSIGNMENT] == "" and "invalid" in canvas_rows["34567"]["Notes (PEFT Lab)"]
    with open(batch.intake_path, newline="") as fh:
        fates = {r["file"].rsplit(":", 1)[1]: r["fate"] for r in csv.DictReader(fh)}
    assert fates == {"smithjohn_12345_6789012_fixture.ipynb": "graded", "doejane_LATE_23456_7890123_fixture.ipynb":
                     "graded", "fixture.ipynb": "unknown-student",
                     "angstromzoe_34567_7890124_fixture.ipynb": "invalid"}  # not "graded": rewritten after grading
    text = batch.exports["class summary"].read_text()
    assert "| graded | 2 |" in text and "| invalid | 1 |" in text and "1 late" in text and "| test_halve | 1 of 2 | 50% |" in text
    assert batch.exports["score histogram"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
