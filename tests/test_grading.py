"""End to end: a class of honest, broken and hostile submissions graded in sandboxes, in parallel.

The fixture assignment (tests/fixtures/course) has two functions to write:
`double` (test_double, 2 points, partly hidden) and `halve` (test_halve, 1 point),
plus a written answer graded by hand. Each hostile submission must end with
its expected status while every other student's grade stays exact.
"""

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from peftlab.grader import exercises, sandbox
from peftlab.grader.batch import Batch
from peftlab.grader.intake import import_submissions
from peftlab.grader.settings import GRADING_PARAMETERS, Settings

FIXTURE = Path(__file__).parent / "fixtures" / "course"
ASSIGNMENT = "90_fixture"
NB = "fixture.ipynb"
SOLVED = {"double": "def double(x):\n    return factor * x", "halve": "def halve(x):\n    return x / 2"}

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox tests need Linux")


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(FIXTURE, root, dirs_exist_ok=True)
    exercises.release(root)
    return root


def _release(course):
    return nbformat.read(course / "exercises" / ASSIGNMENT / NB, as_version=4)


def _cell(nb, gid):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == gid)


def _solved(course, only=("double", "halve"), answer="Because multiplication distributes.", tweak=None):
    nb = _release(course)
    for gid in only:
        _cell(nb, gid).source = SOLVED[gid]
    if answer:
        _cell(nb, "explain").source = answer
    if tweak:
        tweak(nb)
    return nb


def _hostile(course, code, solve=("halve",)):
    """Solve `solve`, and put `code` in the `double` solution cell."""
    nb = _solved(course, only=solve)
    _cell(nb, "double").source = code
    return nb


FORGERY = """\
ip = get_ipython()
ip.showtraceback = lambda *a, **k: None            # no error output
send = ip.kernel.session.send
def forged(stream, msg_or_type, content=None, *a, **k):
    if msg_or_type == "execute_reply" and isinstance(content, dict) and content.get("status") == "error":
        content = {"status": "ok", "execution_count": content.get("execution_count"),
                   "user_expressions": {}, "payload": []}
    return send(stream, msg_or_type, content, *a, **k)
ip.kernel.session.send = forged                    # every failing cell now reports success
"""

PROBE = """\
import socket
def probe(what, action):
    try:
        print("LEAK:", what, str(action())[:60])
    except Exception as exc:
        print("BLOCKED:", what, type(exc).__name__)
probe("solutions", lambda: open({solution!r}).read())
probe("gradebook", lambda: open({gradebook!r}, "a").write("x"))
probe("other student", lambda: open({other!r}).read())
probe("network", lambda: socket.create_connection(("1.1.1.1", 53), timeout=3))
def double(x):
    return factor * x
"""


def _write(folder, name, nb_or_text):
    path = folder / name
    if isinstance(nb_or_text, str):
        path.write_text(nb_or_text)
    else:
        nbformat.write(nb_or_text, path)
    return path


@pytest.fixture(scope="module")
def submissions(course, tmp_path_factory):
    """The class: expected (status, autograded points) per student."""
    folder = tmp_path_factory.mktemp("class")
    work = folder.parent / "work-main"
    expected = {}

    def add(student, nb, status, points):
        _write(folder, f"{student}.ipynb", nb)
        expected[student] = (status, points)

    add("full", _solved(course), "graded", 3)
    add("blank", _release(course), "graded", 0)
    add("partial", _solved(course, only=("halve",)), "graded", 1)

    def set_factor(nb):
        next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source = "factor = 3"
    add("params", _solved(course, tweak=set_factor), "graded", 3)  # grading injects factor = 2
    add("loop", _hostile(course, "while True:\n    pass"), "graded", 1)
    add("membomb", _hostile(course, "hog = bytearray(6 * 2**30)"), "graded", 1)
    add("forkbomb", _hostile(course, "import os, time\nfor _ in range(100000):\n    if os.fork() == 0:\n"
                                     "        time.sleep(20)\n        os._exit(0)"), "graded", 1)
    add("exits", _hostile(course, "import os\nos._exit(0)"), "crashed", 0)
    add("sysexit", _hostile(course, "import sys\nsys.exit(3)"), "graded", 1)

    def delete_test(nb):
        nb.cells.remove(_cell(nb, "test_halve"))
    add("deleted", _solved(course, tweak=delete_test), "tampered", 0)

    def edit_test(nb):
        _cell(nb, "test_double").source = "pass  # nothing to see"
    add("edited", _solved(course, only=("halve",), tweak=edit_test), "graded", 1)  # restored test still fails

    def retype(nb):
        cell = _cell(nb, "test_halve")
        nb.cells[nb.cells.index(cell)] = nbformat.v4.new_markdown_cell(cell.source, metadata=cell.metadata)
    add("retyped", _solved(course, tweak=retype), "tampered", 0)
    add("badjson", "{ this is not json", "invalid", 0)
    add("nbformat3", json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []}),
        "invalid", 0)
    add("chatty", _hostile(course, "for i in range(100000):\n    print('x' * 100)\ndef double(x):\n    return factor * x"),
        "graded", 3)
    add("snoop", _hostile(course, PROBE.format(
        solution=str(course / "solutions" / ASSIGNMENT / NB), gradebook=str(work / "gradebook.db"),
        other=str(work / "staging" / ASSIGNMENT / "full.ipynb"))), "graded", 3)
    add("forger", _hostile(course, FORGERY, solve=()), "forgery", 0)
    return folder, expected


def _settings(workers):
    params = {**GRADING_PARAMETERS, "factor": 2}
    return Settings(workers=workers, cell_timeout=15, wall_timeout=120, memory_bytes=3 * 2**30,
                            max_processes=32, max_output_bytes=2**20, parameters=params, sandbox="bwrap")


def _csv(path):
    with open(path, newline="") as fh:
        return {row["student"]: row for row in csv.DictReader(fh)}


# On a laptop without bubblewrap these skip; in CI (.ci/run installs it) they must run.
needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_path() and not os.environ.get("CI"),
                                 reason="bubblewrap is not installed")


@pytest.fixture(scope="module")
def graded(course, submissions, tmp_path_factory):
    folder, _ = submissions
    work = folder.parent / "work-main"
    batch = Batch(course, ASSIGNMENT, work, _settings(workers=2), log=lambda *a: None)
    results = batch.run([folder])
    return batch, results


@needs_bwrap
def test_every_student_gets_the_expected_status_and_points(graded, submissions):
    batch, results = graded
    _, expected = submissions
    rows = _csv(batch.csv_path)
    got = {s: (rows[s]["status"], float(rows[s]["autograded"])) for s in expected}
    assert got == {s: (st, float(p)) for s, (st, p) in expected.items()}
    for student, row in rows.items():
        assert row["autograded_max"] == "3"
        assert row["status"] == "graded" or row["reason"], f"{student}: a non-graded status needs a reason"
    assert rows["forger"]["flagged"] == "yes" and rows["deleted"]["flagged"] == "yes"
    assert "canary" in rows["forger"]["reason"]
    assert "test_halve" in rows["deleted"]["reason"] and "markdown" in rows["retyped"]["reason"]
    assert "nbformat 3" in rows["nbformat3"]["reason"] and "JSON" in rows["badjson"]["reason"]
    assert "cell limit" in rows["loop"]["notes"] and "dropped" in rows["chatty"]["notes"]
    assert "restored" in rows["edited"]["notes"]
    assert rows["full"]["pending_by_hand"] == "1" and rows["blank"]["pending_by_hand"] == "0"
    for step in ("submitted", "autograded"):  # where the formgrader looks, for grading answers by hand
        assert (batch.work / step / "full" / ASSIGNMENT / NB).is_file()


@needs_bwrap
def test_sandbox_blocks_secrets_gradebook_and_network(graded):
    batch, _ = graded
    html = (batch.work / "feedback" / ASSIGNMENT / "snoop" / "fixture.html").read_text()
    for what in ("solutions", "gradebook", "other student", "network"):
        assert f"BLOCKED: {what}" in html and f"LEAK: {what}" not in html
    with sqlite3.connect(batch.work / "gradebook.db") as db:  # still a valid gradebook
        assert db.execute("SELECT count(*) FROM peftlab_status").fetchone()[0] == 17


@needs_bwrap
def test_feedback_explains_and_hides_hidden_tests(graded):
    batch, _ = graded
    feedback = batch.work / "feedback" / ASSIGNMENT
    partial = (feedback / "partial" / "fixture.html").read_text()
    assert "NotImplementedError" in partial and "1 of 3" in partial
    assert "double(-3)" not in partial and "HIDDEN" not in partial  # the hidden test's code
    assert "hidden tests ran here" in partial
    assert "kernel died" in (feedback / "exits" / "fixture.html").read_text()
    assert "not valid notebook JSON" in (feedback / "badjson" / "fixture.html").read_text()


def test_plain_nbgrader_awards_the_forgery_full_marks(course, tmp_path):
    """Why the canaries exist: nbgrader alone trusts the student's kernel."""
    forged = _write(tmp_path, NB, _hostile(course, FORGERY, solve=()))
    # The grader's own path with its canaries and sandbox off is nbgrader alone.
    plain = exercises.grade(course, ASSIGNMENT, forged, student="forger",
                            settings=Settings(canaries=0, sandbox="none", parameters={**GRADING_PARAMETERS, "factor": 2}))
    assert plain.status == "graded" and plain.auto_score == plain.auto_max == 3


@needs_bwrap
def test_killed_batch_resumes_to_the_same_grades(course, submissions, graded, tmp_path):
    folder, expected = submissions
    batch, _ = graded
    work = tmp_path / "work"
    cmd = [sys.executable, "-c", (
        "import sys; from pathlib import Path; from peftlab import grading; "
        f"s = Settings(**{json.dumps(_settings(1).__dict__)}); "
        f"Batch(Path({str(course)!r}), {ASSIGNMENT!r}, Path({str(work)!r}), s).run([{str(folder)!r}])")]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if (work / "gradebook.db").exists():
            with sqlite3.connect(work / "gradebook.db") as db:
                try:
                    done = db.execute("SELECT count(*) FROM peftlab_status").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
        if done >= 6:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 6 <= done < len(expected), "the batch should be killed midway"
    resumed = Batch(course, ASSIGNMENT, work, _settings(2), log=lambda *a: None)
    results = resumed.run([folder])
    assert len(results) == len(expected) - done, "finished students are not graded twice"
    # One worker, killed and resumed, against two workers uninterrupted: same CSV, byte for byte.
    assert resumed.csv_path.read_text() == batch.csv_path.read_text()


def test_import_rejects_bad_names_duplicates_and_oversized(tmp_path):
    import zipfile

    src = tmp_path / "in"
    src.mkdir()
    (src / "alice.ipynb").write_text("{}")
    (src / "bob").mkdir()
    (src / "bob" / NB).write_text("{}")
    (src / "carol_fixture.ipynb").write_text("{}")
    (src / "bad name!.ipynb").write_text("{}")
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as zf:
        zf.writestr("alice.ipynb", "{}")
        zf.writestr("dave.ipynb", "x" * (Settings.max_notebook_bytes + 1))
        zf.writestr("__MACOSX/._erin.ipynb", "junk")
    subs = {s.student: s for s in import_submissions([src, tmp_path / "more.zip"], NB, tmp_path / "staging")}
    assert {"alice", "bob", "carol", "dave"} <= set(subs)
    assert not subs["alice"].status and Path(subs["alice"].path).is_file()
    assert subs["dave"].status == "invalid" and "too large" in subs["dave"].reason
    bad = [s for s in subs.values() if s.status == "invalid" and s.student not in ("dave",)]
    reasons = " ".join(s.reason for s in bad)
    assert "second submission for alice" in reasons and "cannot tell the student" in reasons
    assert not any("erin" in s for s in subs)


@needs_bwrap
def test_wall_limit_stops_a_submission(course, tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    _write(folder, "stuck.ipynb", _hostile(course, "while True:\n    pass"))
    settings = _settings(1)
    settings.cell_timeout, settings.wall_timeout = 120, 10
    batch = Batch(course, ASSIGNMENT, tmp_path / "work", settings, log=lambda *a: None)
    ((sub, out),) = batch.run([folder])
    assert out.status == "timeout" and "10 s wall limit" in out.reason
    assert _csv(batch.csv_path)["stuck"]["autograded"] == "0"


def test_limits_apply_without_bubblewrap(monkeypatch):
    """The macOS fallback: no namespaces, but the resource limits still hold."""
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    policy = sandbox.Policy(memory_bytes=3 * 2**30, max_file_bytes=2**20, uid=None)
    code = "import resource, os; print(resource.getrlimit(resource.RLIMIT_AS)[0], resource.getrlimit(resource.RLIMIT_FSIZE)[0], os.environ.get('OMP_NUM_THREADS'), 'SECRET' in os.environ)"
    monkeypatch.setenv("SECRET", "token")
    cmd = sandbox.wrap([sys.executable, "-c", code], policy)
    assert "bwrap" not in " ".join(cmd)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(3 * 2**30), str(2**20), "1", "False"]


def test_bwrap_arguments_hide_and_expose_in_order(tmp_path):
    hidden = tmp_path / "course"
    (hidden / "shared").mkdir(parents=True)
    policy = sandbox.Policy(hide=[str(hidden)], expose=[str(hidden / "shared")], writable=[str(tmp_path / "me")])
    args = sandbox.bwrap_args(policy, cwd=str(tmp_path / "me"))
    assert args.index(str(hidden)) < args.index("--ro-bind", args.index(str(hidden)))  # hide, then re-expose
    assert ["--bind", str(tmp_path / "me"), str(tmp_path / "me")] == args[args.index("--bind"):args.index("--bind") + 3]
    assert "--clearenv" in args and ("--unshare-all" in args or "--unshare-net" in args)
