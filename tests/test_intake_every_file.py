"""Every file of every download ends in exactly one row of the intake report, and no student is invented.

Each layout below is built the way its system writes it, with the extras real
downloads carry (receipts, index pages, the release copy, uploads that are not
notebooks, resubmissions, identical copies):

| layout | written as |
|---|---|
| Canvas | zip of `<login>[_LATE]_<user id>_<submission id>_<file>[-N].<ext>` |
| Moodle, folders | zip of `<Full Name>_<participant id>_assignsubmission_file_/<file>` |
| Moodle, flat | folder of `<Full Name>_<participant id>_assignsubmission_file_<file>` |
| nbgrader | `course/submitted/<student>/<assignment folder>/<notebook>` + `timestamp.txt`, beside `autograded/`, `source/` |
| Blackboard | zip of `<Assignment>_<login>_attempt_<YYYY-MM-DD-HH-MM-SS>[_<file>].<ext>` + receipts |
| D2L / Brightspace | zip of `<submission>-<file id> - <First Last> - <Mon D, YYYY HMM AM> - <file>` + `index.html` |
| Gradescope | `assignment_N_export/submission_<id>/<file>` + `submission_metadata.yml` |
| JupyterHub exchange | `exchange/<course>/inbound/<student>+<assignment>+<time>+<random>/`, `outbound/<assignment>/`, `feedback/` |
"""

import csv
import json
import os
import re
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from peftlab.grader.course import GradingError
from peftlab.grader.export import write_intake
from peftlab.grader.intake import FATES, fate_counts, import_submissions, rows
from peftlab.grader.layouts import attempt_key, identify
from peftlab.grader.roster import Roster

NB, ASSIGNMENT = "fixture.ipynb", "90_fixture"
# roster id: (name, e-mail, login, Canvas user id, Moodle participant id, SIS id)
CLASS = {
    "jsmith": ("John Smith", "jsmith@uni.edu", "smithjohn", "12345", "123456", "S001"),
    "jdoe": ("Jane Doe", "jdoe@uni.edu", "doejane", "23456", "234567", "S002"),
    "zoe": ("Zoë Ångström", "zoe@uni.edu", "angstromzoe", "34567", "345678", "S003"),
    "erin": ("Erin Li", "erin@uni.edu", "lierin", "45678", "456789", "S004"),
}


def nb(text: str) -> bytes:
    cell = {"cell_type": "markdown", "metadata": {}, "source": text}
    return json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode()


@pytest.fixture
def roster(tmp_path) -> Roster:
    path = tmp_path / "roster.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "name", "email", "canvas_id", "moodle_id", "sis_id"])
        for sid, (name, email, _, cid, mid, sis) in CLASS.items():
            w.writerow([sid, name, email, cid, mid, sis])
    return Roster.load(path)


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def canvas(tmp: Path) -> Path:
    return _zip(tmp / "submissions.zip", {
        "smithjohn_12345_6789012_fixture.ipynb": nb("jsmith 0"),
        "smithjohn_12345_6789013_fixture-1.ipynb": nb("jsmith 1"),  # resubmission: graded
        "doejane_LATE_23456_7890123_Copy_of_fixture.ipynb": nb("jdoe"),
        "doejane_LATE_23456_7890124_report.html": b"<html>my report</html>",  # beside the notebook
        "angstromzoe_34567_7890125_fixture.ipynb": nb("zoe"),
        "lierin_45678_7890126_fixture.zip": b"PK\x05\x06" + b"\0" * 18,  # a zip instead of a notebook
    })


def moodle_folders(tmp: Path) -> Path:
    files = {f"{CLASS[s][0]}_{CLASS[s][4]}_assignsubmission_file_/fixture.ipynb": nb(s) for s in ("jsmith", "jdoe", "zoe")}
    files["Erin Li_456789_assignsubmission_file_/solution.py"] = b"print('hi')\n"  # a .py upload only
    files["Jane Doe_234567_assignsubmission_file_/notes.py"] = b"# notes\n"
    files["Jane Doe_234567_assignsubmission_onlinetext_/onlinetext.html"] = b"<p>done</p>"
    return _zip(tmp / "Lab 90-90_fixture-123.zip", files)


def moodle_flat(tmp: Path) -> Path:
    return _tree(tmp / "moodle", {
        "John Smith_123456_assignsubmission_file_fixture.ipynb": nb("jsmith"),
        "Zoë Ångström_345678_assignsubmission_file_fixture.ipynb": nb("zoe"),
        "Erin Li_456789_assignsubmission_file_fixture.py": b"x = 1\n",
    })


def nbgrader(tmp: Path) -> Path:
    files = {}
    for s in CLASS:
        files[f"submitted/{s}/lab5/fixture.ipynb"] = nb(s)  # the assignment folder has another name
        files[f"submitted/{s}/lab5/timestamp.txt"] = b"2026-01-05 10:00:00.000000 UTC"
    files["autograded/jsmith/lab5/fixture.ipynb"] = nb("graded copy")
    files["source/lab5/fixture.ipynb"] = nb("instructor")
    return _tree(tmp / "course", files)


def blackboard(tmp: Path) -> Path:
    return _zip(tmp / "gradebook_90.zip", {
        "Lab90_jsmith_attempt_2026-01-02-09-00-00_fixture.ipynb": nb("jsmith old"),
        "Lab90_jsmith_attempt_2026-01-02-09-00-00.txt": b"Name: John Smith (smithjohn)",
        "Lab90_jsmith_attempt_2026-01-10-08-00-00_fixture.ipynb": nb("jsmith new"),  # newer: day 10 > day 2
        "Lab90_jsmith_attempt_2026-01-10-08-00-00.txt": b"Name: John Smith (smithjohn)",
        "Lab90_jdoe_attempt_2026-01-03-09-00-00_fixture.ipynb": nb("jdoe"),
        "Lab90_jdoe_attempt_2026-01-03-09-00-00.txt": b"Name: Jane Doe (doejane)",
    })


def d2l(tmp: Path) -> Path:
    return _zip(tmp / "Lab 90 Download Jan 6, 2026 900 AM.zip", {
        "99981-4001 - John Smith - Jan 5, 2026 1000 AM - fixture.ipynb": nb("jsmith old"),
        "100007-4002 - John Smith - Jan 5, 2026 1000 AM - fixture.ipynb": nb("jsmith new"),  # 100007 > 99981
        "99990-4003 - Jane Doe - Jan 4, 2026 1130 PM - fixture.ipynb": nb("jdoe"),
        "99991-4004 - Zoë Ångström - Jan 5, 2026 915 AM - fixture.ipynb": nb("zoe"),
        "index.html": b"<html>D2L index</html>",
    })


GRADESCOPE_META = """\
submission_201000001:
  :submitters:
  - :name: John Smith
    :sid: S001
    :email: jsmith@uni.edu
  :created_at: 2026-01-05 10:00:00.000000000 -08:00
  :score: 0.0
submission_201000002:
  :submitters:
  - :name: Jane Doe
    :sid: S002
    :email: jdoe@uni.edu
  :created_at: 2026-01-05 11:00:00.000000000 -08:00
  :score: 0.0
"""


def gradescope(tmp: Path, meta: bool = True) -> Path:
    files = {"assignment_90_export/submission_201000001/fixture.ipynb": nb("jsmith"),
             "assignment_90_export/submission_201000002/fixture.ipynb": nb("jdoe")}
    if meta:
        files["assignment_90_export/submission_metadata.yml"] = GRADESCOPE_META.encode()
    return _zip(tmp / ("gradescope.zip" if meta else "gradescope-no-meta.zip"), files)


def exchange(tmp: Path) -> Path:
    return _tree(tmp / "exchange", {
        "peftlab/inbound/jsmith+90_fixture+2026-01-05 10:00:00.000000 UTC+a1/fixture.ipynb": nb("jsmith old"),
        "peftlab/inbound/jsmith+90_fixture+2026-01-05 10:00:00.000000 UTC+a1/timestamp.txt": b"2026-01-05",
        "peftlab/inbound/jsmith+90_fixture+2026-01-06 09:00:00.000000 UTC+b2/fixture.ipynb": nb("jsmith new"),
        "peftlab/inbound/jdoe+90_fixture+2026-01-05 12:00:00.000000 UTC+c3/fixture.ipynb": nb("jdoe"),
        "peftlab/inbound/jdoe+80_other+2026-01-01 12:00:00.000000 UTC+d4/other.ipynb": nb("jdoe other"),
        "peftlab/outbound/90_fixture/fixture.ipynb": nb("release"),
        "peftlab/feedback/0123abcd.html": b"<html>feedback</html>",
    })


def every_file(source: Path) -> set[str]:
    """What an instructor sees in the download: every file, as the intake report names it."""
    if source.suffix == ".zip":
        with zipfile.ZipFile(source) as zf:
            return {f"{source}:{i.filename}" for i in zf.infolist() if not i.is_dir()}
    return {str(p) for p in source.rglob("*") if p.is_file()}


# layout -> (builder, students graded, {file name ending: fate} for the files worth naming)
LAYOUTS = {
    "Canvas": (canvas, {"jsmith", "jdoe", "zoe"}, {"6789012_fixture.ipynb": "superseded", "fixture-1.ipynb": "graded",
                                                   "report.html": "not-a-notebook", "fixture.zip": "not-a-notebook"}),
    "Moodle folders": (moodle_folders, {"jsmith", "jdoe", "zoe"}, {"solution.py": "not-a-notebook",
                                                                   "notes.py": "not-a-notebook"}),
    "Moodle flat": (moodle_flat, {"jsmith", "zoe"}, {"fixture.py": "not-a-notebook"}),
    "nbgrader": (nbgrader, set(CLASS), {"timestamp.txt": "not-a-notebook"}),
    "Blackboard": (blackboard, {"jsmith", "jdoe"}, {"2026-01-02-09-00-00_fixture.ipynb": "superseded",
                                                    "2026-01-10-08-00-00_fixture.ipynb": "graded"}),
    "D2L": (d2l, {"jsmith", "jdoe", "zoe"}, {"99981-4001 - John Smith - Jan 5, 2026 1000 AM - fixture.ipynb":
                                             "superseded", "index.html": "ignored"}),
    "Gradescope": (gradescope, {"jsmith", "jdoe"}, {"submission_metadata.yml": "ignored"}),
    "JupyterHub exchange": (exchange, {"jsmith", "jdoe"}, {"a1/fixture.ipynb": "superseded",
                                                           "b2/fixture.ipynb": "graded", "other.ipynb": "ignored",
                                                           "outbound/90_fixture/fixture.ipynb": "ignored",
                                                           "0123abcd.html": "ignored"}),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_file_of_every_layout_has_one_row(layout, roster, tmp_path):
    build, graded, fates = LAYOUTS[layout]
    source = build(tmp_path)
    subs = import_submissions([source], NB, tmp_path / "staging", assignment=ASSIGNMENT, roster=roster)
    table = rows(subs)
    files = [r["file"] for r in table]
    assert sorted(files) == sorted(every_file(source)), "a file is missing from the report, or counted twice"
    assert all(r["fate"] in FATES for r in table) and all(r["reason"] or r["fate"] == "graded" for r in table)
    students = {s.student for s in subs if not s.rejected}
    assert students <= set(CLASS), f"invented students: {students - set(CLASS)}"
    assert {r["student"] for r in table if r["fate"] == "graded"} == graded
    for ending, fate in fates.items():
        got = {r["fate"] for r in table if r["file"].endswith(ending)}
        assert got == {fate}, (ending, got, table)
    # The report as written, and the console's count, say the same.
    path = write_intake(tmp_path / "intake.csv", subs)
    with path.open(newline="", encoding="utf-8") as fh:
        assert [r["file"] for r in csv.DictReader(fh)] == files
    assert fate_counts(table).startswith(f"{len(files)} file(s) found: ")


def test_uploads_that_are_not_notebooks_keep_their_student(roster, tmp_path):
    """Canvas's .zip upload and Moodle's .py upload: the student is there, invalid with the reason, not lost."""
    for source in (canvas(tmp_path), moodle_folders(tmp_path)):
        subs = import_submissions([source], NB, tmp_path / "st", assignment=ASSIGNMENT, roster=roster)
        erin = next(s for s in subs if s.student == "erin")
        assert erin.status == "invalid" and "no notebook submitted" in erin.reason and not erin.path
        assert rows([erin])[0]["fate"] == "not-a-notebook"


def test_a_zip_of_other_files_beside_a_class_is_reported(roster, tmp_path):
    other = _zip(tmp_path / "slides.zip", {"week1.pdf": b"%PDF", "data/train.csv": b"a,b\n"})
    empty = _zip(tmp_path / "empty.zip", {})
    subs = import_submissions([canvas(tmp_path), other, empty], NB, tmp_path / "st", assignment=ASSIGNMENT,
                              roster=roster)
    by_file = {r["file"]: r for r in rows(subs)}
    assert by_file[f"{other}:week1.pdf"]["fate"] == "not-a-notebook"
    assert "names no student" in by_file[f"{other}:data/train.csv"]["reason"]
    assert by_file[str(empty)]["fate"] == "ignored" and "empty archive" in by_file[str(empty)]["reason"]


def test_nothing_gradable_names_every_file_it_skipped(tmp_path):
    from peftlab.grader.batch import Batch

    empty = _zip(tmp_path / "empty.zip", {})
    other = _zip(tmp_path / "slides.zip", {"week1.pdf": b"%PDF"})
    batch = Batch(Path(__file__).parent / "fixtures" / "course", ASSIGNMENT, tmp_path / "work", log=lambda *a: None)
    with pytest.raises(GradingError) as err:
        batch._intake(import_submissions([empty, other], NB, tmp_path / "st", assignment=ASSIGNMENT))
    text = str(err.value)
    assert "empty archive" in text and "week1.pdf" in text and "2 file(s) found" in text


def test_nbgrader_submitted_is_read_by_its_shape(tmp_path):
    """submitted/<student>/lab5/: five students, not one called 'lab5' with four 'identical, ignored'."""
    subs = import_submissions([nbgrader(tmp_path)], NB, tmp_path / "st", assignment=ASSIGNMENT)
    students = {s.student: s for s in subs if not s.rejected}
    assert set(students) == set(CLASS)
    assert all("assignment folder 'lab5', not '90_fixture'" in s.layout for s in students.values())
    fates = {r["file"].split("course/")[1]: r["fate"] for r in rows(subs)}
    assert fates["autograded/jsmith/lab5/fixture.ipynb"] == fates["source/lab5/fixture.ipynb"] == "ignored"


def test_nbgrader_submitted_prefers_the_assignments_own_folder(tmp_path):
    src = _tree(tmp_path / "course", {"submitted/amy/90_fixture/fixture.ipynb": nb("amy 90"),
                                      "submitted/amy/80_other/other.ipynb": nb("amy 80")})
    subs = import_submissions([src], NB, tmp_path / "st", assignment=ASSIGNMENT)
    amy = next(s for s in subs if s.student == "amy")
    assert not amy.status and amy.origin.endswith("90_fixture/fixture.ipynb")
    other = next(r for r in rows(subs) if r["file"].endswith("other.ipynb"))
    assert other["fate"] == "ignored" and "another assignment" in other["reason"]


def test_exchange_release_is_never_a_student(tmp_path):
    subs = import_submissions([exchange(tmp_path)], NB, tmp_path / "st", assignment=ASSIGNMENT)
    assert {s.student for s in subs if not s.rejected} == {"jsmith", "jdoe"}
    jsmith = next(s for s in subs if s.student == "jsmith")
    assert "b2" in jsmith.origin and jsmith.layout == "JupyterHub exchange"


@pytest.mark.parametrize("build,layout,option", [
    (d2l, "D2L", "--roster"),
    (lambda tmp: gradescope(tmp, meta=False), "Gradescope", "submission_metadata.yml"),
])
def test_layouts_that_name_no_id_are_refused_with_the_option(build, layout, option, tmp_path):
    subs = import_submissions([build(tmp_path)], NB, tmp_path / "st", assignment=ASSIGNMENT)
    assert not [s for s in subs if not s.rejected], "students were made up"
    notebooks = [r for r in rows(subs) if r["file"].endswith(".ipynb")]
    assert notebooks and all(r["fate"] == "unknown-student" for r in notebooks)
    assert all(layout in r["reason"] and option in r["reason"] for r in notebooks)


def test_gradescope_without_roster_uses_the_sid(tmp_path):
    subs = import_submissions([gradescope(tmp_path)], NB, tmp_path / "st", assignment=ASSIGNMENT)
    got = {s.student: (s.name, s.email) for s in subs if not s.rejected}
    assert got == {"S001": ("John Smith", "jsmith@uni.edu"), "S002": ("Jane Doe", "jdoe@uni.edu")}


@pytest.mark.parametrize("older,newer", [
    ("99981", "100007"),  # D2L submission numbers: as text, '9' > '1'
    ("2026-01-02-09-00-00", "2026-01-10-08-00-00"),
    ("000002", "000010"),
    ("2026-01-05-10-00-00-000000", "2026-01-05-10-00-00-000001"),
])
def test_attempts_compare_as_numbers(older, newer):
    assert attempt_key(older) < attempt_key(newer)


def test_d2l_names_with_spaces_map_through_the_roster(roster, tmp_path):
    subs = import_submissions([d2l(tmp_path)], NB, tmp_path / "st", assignment=ASSIGNMENT, roster=roster)
    students = {s.student: s for s in subs if not s.rejected}
    assert set(students) == {"jsmith", "jdoe", "zoe"}
    assert "100007-4002" in students["jsmith"].origin
    assert Path(students["jsmith"].path).read_bytes() == nb("jsmith new")


# ----------------------------------------------------------------------------------------------- lateness
def test_identical_copies_keep_the_lateness_of_the_copy_whose_time_counts(tmp_path):
    """A late Canvas file and the same notebook in nbgrader's folder: late (the folder says nothing of time)."""
    canvas_zip = _zip(tmp_path / "c.zip", {"doejane_LATE_23456_7890123_fixture.ipynb": nb("jdoe")})
    folder = _tree(tmp_path / "course", {"submitted/canvas-23456/90_fixture/fixture.ipynb": nb("jdoe")})
    for order in ([canvas_zip, folder], [folder, canvas_zip]):
        subs = import_submissions(order, NB, tmp_path / "st", assignment=ASSIGNMENT)
        (jdoe,) = [s for s in subs if not s.rejected]
        assert jdoe.late and jdoe.origin.startswith(str(canvas_zip))
        assert [r["fate"] for r in rows(subs) if r["file"] != jdoe.origin] == ["duplicate"]


def test_an_on_time_copy_of_the_same_notebook_counts_over_a_late_one(tmp_path):
    on_time = _zip(tmp_path / "a.zip", {"doejane_23456_7890123_fixture.ipynb": nb("jdoe")})
    late = _zip(tmp_path / "b.zip", {"doejane_LATE_23456_7890999_fixture.ipynb": nb("jdoe")})
    subs = import_submissions([late, on_time], NB, tmp_path / "st", assignment=ASSIGNMENT)
    (jdoe,) = [s for s in subs if not s.rejected]
    assert not jdoe.late and jdoe.origin.startswith(str(on_time))


def test_late_is_the_graded_versions_lateness(tmp_path):
    src = _zip(tmp_path / "c.zip", {"doejane_LATE_23456_1_fixture.ipynb": nb("v0 late"),
                                    "doejane_23456_2_fixture-1.ipynb": nb("v1 on time")})
    (jdoe,) = [s for s in import_submissions([src], NB, tmp_path / "st") if not s.rejected]
    assert not jdoe.late and jdoe.origin.endswith("fixture-1.ipynb")
    src = _zip(tmp_path / "d.zip", {"doejane_23456_1_fixture.ipynb": nb("v0 on time"),
                                    "doejane_LATE_23456_2_fixture-1.ipynb": nb("v1 late")})
    (jdoe,) = [s for s in import_submissions([src], NB, tmp_path / "st2") if not s.rejected]
    assert jdoe.late


# ----------------------------------------------------------------------------------------------- zip names
def _zip_with_raw_names(path: Path, names: dict[bytes, bytes]) -> Path:
    """A zip whose names are stored as the given bytes without the UTF-8 flag (as old Windows tools write)."""
    placeholders = {}
    with zipfile.ZipFile(path, "w") as zf:
        for i, (raw, data) in enumerate(names.items()):
            stand_in = ("Q" * (len(raw) - len(str(i))) + str(i)).encode()
            assert len(stand_in) == len(raw)
            placeholders[stand_in] = raw
            zf.writestr(stand_in.decode(), data)
    blob = path.read_bytes()
    for stand_in, raw in placeholders.items():
        assert blob.count(stand_in) == 2  # local header and central directory
        blob = blob.replace(stand_in, raw)
    path.write_bytes(blob)
    return path


def test_latin1_zip_names_never_name_a_student(tmp_path):
    src = _zip_with_raw_names(tmp_path / "class.zip", {
        b"Jos\xe9.ipynb": nb("jose"),  # Latin-1, no flag: read as cp437 'JosΘ'
        b"Andr\xc3\xa9.ipynb": nb("andre"),  # UTF-8 without the flag: read as UTF-8
        b"Jos\xe9 Smith_777_assignsubmission_file_fixture.ipynb": nb("moodle"),  # the LMS id names the student
    })
    subs = import_submissions([src], NB, tmp_path / "st", assignment=ASSIGNMENT)
    students = {s.student: s for s in subs if not s.rejected}
    assert set(students) == {"André", "moodle-777"}
    assert students["moodle-777"].name == ""  # the garbled display name is not kept
    (bad,) = [r for r in rows(subs) if r["fate"] == "unknown-student"]
    assert "b'Jos\\xe9.ipynb'" in bad["reason"] and "UTF-8" in bad["reason"]


# ----------------------------------------------------------------------------------------------- memory
def test_zip_entries_are_streamed_not_held(tmp_path):
    """Four 19 MiB notebooks in a small zip: the import never holds one whole entry in memory."""
    big = 19 * 2**20
    src = tmp_path / "big.zip"
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for s in ("amy", "bo", "cy", "di"):
            zf.writestr(f"{s}.ipynb", b" " * big)
    assert src.stat().st_size < 2**20
    tracemalloc.start()
    try:
        subs = import_submissions([src], NB, tmp_path / "st", assignment=ASSIGNMENT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len([s for s in subs if s.path and os.path.getsize(s.path) == big]) == 4
    assert peak < 8 * 2**20, f"held {peak / 2**20:.0f} MiB at once"


def test_a_file_over_the_limit_while_streaming_is_invalid_and_not_staged(tmp_path):
    from peftlab.grader.settings import Settings

    src = _zip(tmp_path / "c.zip", {"amy.ipynb": b"x" * 5000})
    subs = import_submissions([src], NB, tmp_path / "st", Settings(max_notebook_bytes=4096))
    (amy,) = subs
    assert amy.status == "invalid" and "too large" in amy.reason and not list((tmp_path / "st").iterdir())


def test_identify_keeps_stray_files_nameless():
    assert "names no student" in identify("README.txt", NB).problem
    assert "names no student" in identify("alice/data.csv", NB).problem
    assert identify("lierin_45678_1_fixture.zip", NB).student == "canvas-45678"
    assert re.search("release", identify("exchange/c/outbound/90_fixture/fixture.ipynb", NB).ignored)


def test_a_file_found_gradable_but_then_invalid_never_says_graded(tmp_path):
    src = _tree(tmp_path / "class", {"amy.ipynb": nb("amy"), "bo.ipynb": nb("bo")})
    subs = import_submissions([src], NB, tmp_path / "st", assignment=ASSIGNMENT)
    assert {r["fate"] for r in rows(subs)} == {"graded"}  # at import, both look gradable
    after = rows(subs, {"amy": ("invalid", "not valid notebook JSON"), "bo": ("graded", "")})
    assert {r["student"]: (r["fate"], r["reason"]) for r in after} == {
        "amy": ("invalid", "not valid notebook JSON"), "bo": ("graded", "")}


def test_a_folder_name_in_no_encoding_is_reported_not_fatal(tmp_path):
    src = tmp_path / "class"
    src.mkdir()
    fd = os.open(os.fsencode(src) + b"/Jos\xe9.ipynb", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, nb("jose"))
    os.close(fd)
    (src / "amy.ipynb").write_bytes(nb("amy"))
    subs = import_submissions([src], NB, tmp_path / "st", assignment=ASSIGNMENT)
    assert {s.student for s in subs if not s.rejected} == {"amy"}
    path = write_intake(tmp_path / "intake.csv", subs)
    text = path.read_text(encoding="utf-8")
    assert "Jos\\xe9.ipynb" in text and "unknown-student" in text


def test_hostile_gradescope_metadata_is_one_files_problem(tmp_path):
    deep = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    src = _zip(tmp_path / "gs.zip", {"export/submission_1/fixture.ipynb": nb("x"),
                                    "export/submission_metadata.yml": deep.encode(),
                                    "amy.ipynb": nb("amy")})
    subs = import_submissions([src], NB, tmp_path / "st", assignment=ASSIGNMENT)
    by_file = {r["file"].rsplit(":", 1)[1]: r for r in rows(subs)}
    assert by_file["amy.ipynb"]["fate"] == "graded"
    assert "unreadable" in by_file["export/submission_metadata.yml"]["reason"]
    assert by_file["export/submission_1/fixture.ipynb"]["fate"] == "unknown-student"


def test_console_report_counts_every_fate(roster, tmp_path):
    from peftlab.grader.batch import report

    subs = import_submissions([canvas(tmp_path)], NB, tmp_path / "st", assignment=ASSIGNMENT, roster=roster)
    text = report([], [s for s in subs if s.rejected], ["zoe"], subs, {"jdoe": ("invalid", "bad JSON")})
    last = text.splitlines()[-1]
    assert last == "6 file(s) found: 2 graded, 1 invalid, 1 superseded, 2 not-a-notebook", last
    assert "[superseded]" in text and "[not-a-notebook]" in text


def test_cells_without_ids_are_given_ids_as_nbformat_does(tmp_path):
    """nbformat 4.5 requires cell ids; notebooks from older tools leave them out, which nbformat repairs."""
    from peftlab.grader.inspect import add_cell_ids, load

    cells = [{"cell_type": "markdown", "metadata": {}, "source": "a"},
             {"cell_type": "code", "metadata": {}, "source": "1", "outputs": [], "execution_count": None},
             {"cell_type": "markdown", "metadata": {}, "source": "c", "id": "cell-0"}]  # an id already taken
    path = tmp_path / "amy.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    nb, problem = load(path)
    assert problem == "" and nb is not None
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == 3 and ids[2] == "cell-0"
    older = {"cells": [dict(cells[0])], "nbformat": 4, "nbformat_minor": 4}
    assert add_cell_ids(older) == 0 and "id" not in older["cells"][0]  # 4.4 has no ids: left alone


def test_a_differently_named_assignment_folder_is_warned_about(tmp_path):
    from peftlab.grader.batch import Batch

    said = []
    batch = Batch(Path(__file__).parent / "fixtures" / "course", ASSIGNMENT, tmp_path / "work", log=said.append)
    subs = batch._intake(import_submissions([nbgrader(tmp_path)], NB, tmp_path / "st", assignment=ASSIGNMENT))
    assert len(subs) == len(CLASS)
    assert said == [f"warning: {len(CLASS)} submission(s) sit in nbgrader's submitted/<student>/lab5/, not "
                    f"{ASSIGNMENT}/: graded as {ASSIGNMENT}; check that it is the same assignment"]
