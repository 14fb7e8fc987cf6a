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
    add("forger", _hostile(course, FORGERY, solve=()), "graded", 0)  # its tests "pass"; its probes do not
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
    assert rows["deleted"]["flagged"] == "yes"
    assert "reported success in the kernel, but the grader's own check failed" in rows["forger"]["notes"]
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
    """Why the probes exist: nbgrader alone trusts the student's kernel; the probes do not."""
    forged = _write(tmp_path, NB, _hostile(course, FORGERY, solve=()))
    params = {**GRADING_PARAMETERS, "factor": 2}
    # The grader's own path with its probes, canaries and sandbox off is nbgrader alone.
    plain = exercises.grade(course, ASSIGNMENT, forged, student="forger",
                            settings=Settings(canaries=0, probes=False, sandbox="none", parameters=params))
    assert plain.status == "graded" and plain.auto_score == plain.auto_max == 3
    probed = exercises.grade(course, ASSIGNMENT, forged, student="forger", settings=Settings(sandbox="none", parameters=params))
    assert probed.status == "graded" and probed.auto_score == 0 and probed.auto_max == 3


@needs_bwrap
def test_killed_batch_resumes_to_the_same_grades(course, submissions, graded, tmp_path):
    folder, expected = submissions
    batch, _ = graded
    work = tmp_path / "work"
    cmd = [sys.executable, "-c", (
        "import json, sys; from pathlib import Path; from peftlab.grader.batch import Batch; "
        "from peftlab.grader.settings import Settings; "
        f"s = Settings(**json.loads({json.dumps(_settings(1).__dict__)!r})); "
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
    (src / "zoë.ipynb").write_text("{}")  # letters of any script
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as zf:
        zf.writestr("alice.ipynb", "{}")
        zf.writestr("dave.ipynb", "x" * (Settings.max_notebook_bytes + 1))
        zf.writestr("__MACOSX/._erin.ipynb", "junk")
    subs = {s.student: s for s in import_submissions([src, tmp_path / "more.zip"], NB, tmp_path / "staging")}
    assert {"alice", "bob", "carol", "dave"} <= set(subs)
    assert not subs["alice"].status and Path(subs["alice"].path).is_file()
    assert not subs["zoë"].status
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
    if os.geteuid() == 0:  # the kernel ran as the slot's own user: nothing of that user may be left running
        deadline = time.monotonic() + 60
        while _processes_of(settings.uid_base) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _processes_of(settings.uid_base), "the stuck kernel outlived its worker"


def _processes_of(uid):
    """Live (not zombie) processes owned by `uid`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and proc.stat().st_uid == uid and " Z " not in (proc / "stat").read_text():
                found.append(proc.name)
        except OSError:
            continue
    return found


def test_fork_server_reports_every_worker_and_stops(tmp_path):
    """Workers that fail at once, started back to back: their exits arrive while later starts are answered,
    and every one must still be reported (a lost exit would leave the batch waiting for ever)."""
    from peftlab.grader.forkserver import ForkServer

    server = ForkServer()
    try:
        pids = {server.start(str(tmp_path / f"missing-{i}.json"), str(tmp_path / f"worker-{i}.log")): i
                for i in range(12)}
        exits, deadline = {}, time.monotonic() + 300
        while set(pids) - set(exits) and time.monotonic() < deadline:
            exits.update(server.wait(timeout=10))
        assert set(exits) == set(pids), f"exits never reported for {sorted(set(pids) - set(exits))}"
        assert set(exits.values()) == {1}
        log = (tmp_path / "worker-0.log").read_text()
        assert "missing-0.json" in log and "Traceback" in log
        assert len(os.listdir(f"/proc/{server.proc.pid}/task")) == 1, "the server must not fork with threads"
    finally:
        server.close()
    assert server.proc.returncode == 0


def test_fork_server_client_keeps_an_exit_that_arrives_with_a_start():
    """The server can answer a start and report another worker's exit in one write; neither may be lost."""
    import io
    from types import SimpleNamespace

    from peftlab.grader.forkserver import ForkServer

    read, write = os.pipe()
    server = object.__new__(ForkServer)
    server.proc = SimpleNamespace(stdin=io.BytesIO(), stdout=os.fdopen(read, "rb", buffering=0), poll=lambda: None)
    server._buffer, server._exits = b"", {}
    os.write(write, b'{"started": 5}\n{"exited": 3, "code": -9}\n')
    try:
        assert server.start("job.json", "worker.log") == 5
        assert server.wait(timeout=0) == {3: -9}
        assert json.loads(server.proc.stdin.getvalue())["job"] == "job.json"
    finally:
        os.close(write)
        server.proc.stdout.close()


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
    course = tmp_path / "course"
    hidden = course / "solutions"
    hidden.mkdir(parents=True)
    (tmp_path / "me").mkdir()
    (tmp_path / "me" / "data.csv").write_text("a,b\n")
    (tmp_path / "me" / "link.csv").symlink_to(hidden / "secret.csv")
    policy = sandbox.Policy(hide=[str(hidden)], expose=[str(course)])
    args = sandbox.bwrap_args(policy, cwd=str(tmp_path / "me"))
    expose, hide = args.index(str(course)), args.index(str(hidden))
    assert args[expose - 1] == "--ro-bind" and args[hide - 1] == "--tmpfs" and expose < hide  # outer, then inner
    assert "/home" not in args and str(tmp_path / "me") not in args  # not exposed: not there at all
    assert "--bind" not in args  # nothing of the host is writable but the kernel's socket folder
    assert "--clearenv" in args and ("--unshare-all" in args or "--unshare-net" in args)
    # the kernel works in a tmpfs with the folder's regular files bound read-only; links are left out
    assert ["--ro-bind", str(tmp_path / "me" / "data.csv"), f"{sandbox.WORKDIR}/data.csv"] == \
        args[args.index(f"{sandbox.WORKDIR}/data.csv") - 2:args.index(f"{sandbox.WORKDIR}/data.csv") + 1]
    assert not any("link.csv" in a for a in args)
    assert args[args.index("/tmp") - 3:args.index("/tmp")] == ["--size", str(policy.writable_bytes), "--tmpfs"]


# ------------------------------------------------------------------ malformed submissions, no kernel needed
def _release_json(course):
    return json.loads((course / "exercises" / ASSIGNMENT / NB).read_text())


def _meta(nb, gid):
    return next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == gid)["metadata"]


def _string_meta(nb):
    _meta(nb, "double")["nbgrader"] = "solution"


def _list_id(nb):
    _meta(nb, "double")["nbgrader"]["grade_id"] = ["double"]


def _duplicate(nb):
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "halve")
    nb["cells"].append(json.loads(json.dumps(cell)))


def _extra(nb):
    nb["cells"].append({"cell_type": "code", "id": "bonus-cell", "execution_count": None, "outputs": [], "source": "pass",
                        "metadata": {"nbgrader": {"grade": True, "grade_id": "bonus", "locked": False, "points": 50,
                                                  "schema_version": 3, "solution": True, "task": False}}})


def _test_to_solution(nb):
    _meta(nb, "test_halve")["nbgrader"].update(solution=True, locked=False)


def _points(nb):
    _meta(nb, "test_double")["nbgrader"]["points"] = 20


MALFORMED = [  # (mutation, status, words the reason must hold)
    (_string_meta, "invalid", ["cell 4", "metadata.nbgrader", "not of type 'object'"]),
    (_list_id, "invalid", ["cell 4", "grade_id", "not of type 'string'"]),
    (_duplicate, "invalid", ["duplicate grade ids", "'halve' in cells 6, 10"]),
    (_extra, "tampered", ["extra graded cell 'bonus'", "50 points"]),
    (_test_to_solution, "tampered", ["test_halve", "from a test cell into an answer cell"]),
    (_points, "tampered", ["points of test_double changed from 2 to 20"]),
]


@pytest.mark.parametrize("mutate,status,words", MALFORMED, ids=[m[0].__name__.strip("_") for m in MALFORMED])
def test_inspection_names_what_is_wrong(course, tmp_path, mutate, status, words):
    from peftlab.grader.inspect import inspect

    nb = _release_json(course)
    mutate(nb)
    path = tmp_path / NB
    path.write_text(json.dumps(nb))
    verdict = inspect(path, course / "exercises" / ASSIGNMENT / NB)
    assert verdict.status == status, verdict.reason
    for word in words:
        assert word in verdict.reason


def test_deep_or_huge_json_is_refused_before_parsing(course, tmp_path):
    from peftlab.grader.inspect import inspect

    release = course / "exercises" / ASSIGNMENT / NB
    deep = tmp_path / "deep.ipynb"
    deep.write_text("[" * 200_000 + "]" * 200_000)  # json.loads alone raises RecursionError on this
    verdict = inspect(deep, release)
    assert verdict.status == "invalid" and "nests 200000 levels" in verdict.reason
    big = tmp_path / "big.ipynb"
    big.write_text(json.dumps({"nbformat": 4, "pad": "x" * 2000}))
    verdict = inspect(big, release, Settings(max_notebook_bytes=1000))
    assert verdict.status == "invalid" and "too large" in verdict.reason


def test_nbgrader_log_is_summarised_in_one_line():
    from peftlab.grader.worker import summarise_log

    log = ("[AutogradeApp | INFO] Copying files\n[AutogradeApp | WARNING] Attribute 'points' changed\n"
           "Traceback (most recent call last):\n  File x\nValueError: duplicate grade id test_a\n"
           "[AutogradeApp | ERROR] There was an error processing assignment\n")
    line = summarise_log(log)
    assert "\n" not in line and "There was an error processing assignment" in line
    assert "2 error and 1 warning lines" in line


# ------------------------------------------------------------------ fuzzing: random damage to a release notebook
from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hyp_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                  st.text(max_size=20), st.just("x" * 300_000), st.lists(st.integers(), max_size=3),
                  st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                  # a fresh list each draw: a later edit may mutate it, and st.just would hand that
                  # mutated object to the next example (hypothesis then reports a flaky strategy)
                  st.builds(lambda: [[[[[[[[1]]]]]]]]))


def _paths(value, prefix=()):
    """Every path into a JSON value: dict keys and list indices."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def damaged(draw, release: dict):
    """A release notebook with 1-4 random edits: values retyped, keys dropped, cells duplicated or nested."""
    nb = json.loads(json.dumps(release))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(nb) if p]
        path = draw(st.sampled_from(paths))
        parent = nb
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["retype", "drop", "duplicate", "nest"]))
        if action == "retype":
            parent[path[-1]] = draw(_JUNK)
        elif action == "drop":
            del parent[path[-1]]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(path[-1], json.loads(json.dumps(parent[path[-1]])))
        else:
            parent[path[-1]] = [parent[path[-1]]]
    return nb


def test_inspection_never_raises_on_damaged_notebooks(course, tmp_path):
    from peftlab.grader.inspect import inspect

    release = course / "exercises" / ASSIGNMENT / NB

    @hyp_settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(nb=damaged(_release_json(course)))
    def check(nb):
        path = tmp_path / NB
        path.write_text(json.dumps(nb))
        verdict = inspect(path, release)
        assert verdict.status in ("", "invalid", "tampered")
        assert verdict.status == "" or verdict.reason

    check()


@needs_bwrap
def test_a_fuzzed_class_finishes_with_a_status_for_everyone(course, tmp_path):
    """Damaged notebooks graded together with two honest students: every student gets a status, the
    honest ones keep full marks. Small on purpose (each undamaged-enough notebook starts a kernel)."""
    seen = []

    @hyp_settings(max_examples=2, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])
    @given(mutants=st.lists(damaged(_release_json(course)), min_size=4, max_size=4))
    def grade_class(mutants):
        folder = tmp_path / f"class{len(seen)}"
        folder.mkdir()
        _write(folder, "honest1.ipynb", _solved(course))
        _write(folder, "honest2.ipynb", _solved(course))
        for i, nb in enumerate(mutants):
            (folder / f"mutant{i}.ipynb").write_text(json.dumps(nb))
        batch = Batch(course, ASSIGNMENT, tmp_path / f"work{len(seen)}", _settings(workers=2), log=lambda *a: None)
        results = batch.run([folder])
        rows = _csv(batch.csv_path)
        assert set(rows) == {"honest1", "honest2", *(f"mutant{i}" for i in range(4))}
        assert all(row["status"] for row in rows.values())
        assert all(row["status"] == "graded" or row["reason"] for row in rows.values())
        assert rows["honest1"]["autograded"] == rows["honest2"]["autograded"] == "3", rows
        seen.append(sorted(o.status for _, o in results))

    grade_class()
    assert len(seen) == 2


# ------------------------------------------------------------------ attacks on the grader through its files
PLANT = """\
import os
def plant(target):
    for folder in (os.getcwd(), {autograded!r}, "/tmp"):
        try:
            link = os.path.join(folder, {nb!r})
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(target, link)
            print("PLANTED", folder)
        except OSError as exc:
            print("REFUSED", folder, type(exc).__name__)
plant({target!r})
def double(x):
    return factor * x
"""

RECORDER = """\
seen = []
get_ipython().events.register("pre_run_cell", lambda info: seen.append(info.raw_cell))
def double(x):
    print("\\n".join(seen))
    return factor * x
"""

RECORDED_HALVE = """\
def halve(x):
    raise ValueError("\\n".join(seen))
"""

FILLER = """\
import os
def fill(folder):
    written = 0
    try:
        with open(os.path.join(folder, "fill.bin"), "wb") as fh:
            for _ in range(4096):
                fh.write(b"x" * 2**20)
                fh.flush()
                written += 2**20
    except OSError:
        pass
    print("WROTE", folder, written)
fill(os.getcwd())
fill("/tmp")
for path in ({root!r}, {other!r}, "/home"):
    print("SEES" if os.path.exists(path) and os.listdir(path) else "EMPTY", path)
print("ROOT HOLDS", sorted(os.listdir("/root")) if os.path.isdir("/root") else [])
def double(x):
    return factor * x
"""


@pytest.fixture(scope="module")
def attacked(course, tmp_path_factory):
    """A class of attacks on the grader's own files, with two honest students."""
    folder = tmp_path_factory.mktemp("attacks")
    work = folder.parent / "work-attacks"
    outside = folder.parent / "outside-secret.txt"
    outside.write_text("secret")
    outside.chmod(0o600)
    autograded = work / "scratch" / ASSIGNMENT / "{student}" / "course" / "autograded" / "{student}" / ASSIGNMENT
    solution = course / "solutions" / ASSIGNMENT / NB
    _write(folder, "honest1.ipynb", _solved(course))
    _write(folder, "honest2.ipynb", _solved(course))
    for student, target in (("plantdb", work / "gradebook.db"), ("plantout", outside)):
        code = PLANT.format(autograded=str(autograded).format(student=student), nb=NB, target=str(target))
        _write(folder, f"{student}.ipynb", _hostile(course, code))
    recorder = _hostile(course, RECORDER, solve=())
    _cell(recorder, "halve").source = RECORDED_HALVE
    _write(folder, "recorder.ipynb", recorder)
    _write(folder, "filler.ipynb", _hostile(course, FILLER.format(root=str(Path(__file__).resolve().parents[1] / "solutions"),
                                                                   other=str(course / "solutions"))))
    (folder / "linker").mkdir()
    (folder / "linker" / NB).symlink_to(solution)  # unzip of a student's archive gives such folders
    (folder / "mallory.ipynb").symlink_to(solution)
    os.link(solution, folder / "hardy.ipynb")  # a second name for the course's solution
    for mutate, _, _ in MALFORMED:
        nb = _release_json(course)
        mutate(nb)
        (folder / f"bad{mutate.__name__}.ipynb").write_text(json.dumps(nb))
    settings = _settings(workers=2)
    settings.writable_bytes = 64 * 2**20
    batch = Batch(course, ASSIGNMENT, work, settings, log=lambda *a: None)
    batch.run([folder])
    return batch, outside


@needs_bwrap
def test_no_submission_writes_or_reads_through_the_grader(attacked):
    batch, outside = attacked
    rows = _csv(batch.csv_path)
    assert outside.read_text() == "secret" and (outside.stat().st_mode & 0o777) == 0o600
    with sqlite3.connect(batch.work / "gradebook.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM peftlab_status").fetchone()[0] == len(rows)
    for student in ("plantdb", "plantout"):
        assert rows[student]["status"] == "graded" and rows[student]["autograded"] == "3"
        html = (batch.work / "feedback" / ASSIGNMENT / student / "fixture.html").read_text()
        assert "REFUSED" in html or "PLANTED" in html  # the attempt ran
        graded = batch.work / "autograded" / student / ASSIGNMENT / NB
        assert not graded.is_symlink() and json.loads(graded.read_text())["nbformat"] == 4
    for student in ("linker", "mallory"):
        assert rows[student]["status"] == "invalid" and "symbolic link" in rows[student]["reason"]
    assert rows["hardy"]["status"] == "invalid" and "hard link" in rows["hardy"]["reason"]
    assert "return x / 2" not in (batch.work / "feedback" / ASSIGNMENT / "linker" / "fixture.html").read_text()
    assert rows["honest1"]["autograded"] == rows["honest2"]["autograded"] == "3"


@needs_bwrap
def test_writable_space_is_limited_and_other_checkouts_are_invisible(attacked):
    batch, _ = attacked
    html = (batch.work / "feedback" / ASSIGNMENT / "filler" / "fixture.html").read_text()
    import re

    written = [int(n) for n in re.findall(r"WROTE \S+ (\d+)", html)]
    assert len(written) == 2 and sum(written) <= 64 * 2**20, written  # working folder and /tmp share one limit
    seen = re.findall(r"(SEES|EMPTY) (/[^\s<]+)", html)  # printed lines, not the code that prints them
    assert len(seen) == 3 and all(word == "EMPTY" for word, _ in seen), seen
    # /root shows at most the folders above the Python installation and the model cache, never their neighbours
    holds = re.search(r"ROOT HOLDS \[(.*?)\]", html.replace("&#x27;", "'")).group(1)
    assert set(re.findall(r"'([^']*)'", holds)) <= {".pyenv", ".cache"}, holds


@needs_bwrap
def test_a_cell_recorder_leaks_no_hidden_test(attacked):
    batch, _ = attacked
    rows = _csv(batch.csv_path)
    assert rows["recorder"]["status"] == "graded" and rows["recorder"]["autograded"] == "2"
    html = (batch.work / "feedback" / ASSIGNMENT / "recorder" / "fixture.html").read_text()
    assert "double(-3)" not in html and "HIDDEN" not in html
    assert "line removed" in html  # the recorder did print the cells; the grader removed the hidden lines
    assert "double(-3)" not in rows["recorder"]["reason"] + rows["recorder"]["notes"]


@needs_bwrap
def test_malformed_submissions_get_named_statuses_in_a_batch(attacked):
    batch, _ = attacked
    rows = _csv(batch.csv_path)
    for mutate, status, words in MALFORMED:
        row = rows[f"bad{mutate.__name__}"]
        assert row["status"] == status and all(w in row["reason"] for w in words), row


def test_owner_only_model_cache_is_a_clear_error(tmp_path, monkeypatch):
    """Kernels run as another user: a cache they cannot read is the instructor's to fix, said before grading."""
    from peftlab.grader.course import GradingError

    if os.geteuid() != 0 or not sandbox.bwrap_path():
        pytest.skip("kernels run as the grader's own user unless the grader is root with bubblewrap")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o700)
    monkeypatch.setenv("PEFTLAB_CACHE", str(cache))
    with pytest.raises(GradingError, match="chmod 755"):
        sandbox.policy_for(Settings(sandbox="bwrap"), hide=[])
    cache.chmod(0o755)
    assert sandbox.policy_for(Settings(sandbox="bwrap"), hide=[]).uid is not None


# ------------------------------------------------------------------ forgers who know the grader's source
# Each knows peftlab.grader: the canaries' shape, the probe cells' shape and MIME type, the checks module.
# Points come from probes judged in the grader, so each earns at most what its real answers deserve.
CANARY_AWARE_SUPPRESSOR = """\
import re
ip = get_ipython()
ip.showtraceback = lambda *a, **k: None
CANARY = re.compile(r"checks\\.assert_equal\\(\\d+, \\d+, ")
current = {"canary": False}
ip.events.register("pre_run_cell", lambda info: current.update(canary=bool(CANARY.search(info.raw_cell or ""))))
send = ip.kernel.session.send
def forged(stream, msg_or_type, content=None, *a, **k):
    if (msg_or_type == "execute_reply" and isinstance(content, dict) and content.get("status") == "error"
            and not current["canary"]):
        content = {"status": "ok", "execution_count": content.get("execution_count"), "user_expressions": {}, "payload": []}
    return send(stream, msg_or_type, content, *a, **k)
ip.kernel.session.send = forged
"""

CANARY_AWARE_CHECKS = """\
from peftlab import checks
from peftlab.grader.preprocessors import _CANARY_WORDS
for name in ("assert_equal", "assert_close", "assert_zero", "check", "assert_raises_clearly"):
    real = getattr(checks, name)
    def fake(*args, _real=real, **kw):
        if any(isinstance(a, str) and a in _CANARY_WORDS for a in args):
            return _real(*args, **kw)  # a canary: let it fail as it must
    setattr(checks, name, fake)
def double(x):
    return factor * x + 1  # wrong
"""

INPUT_TRANSFORMER = """\
def wrap(lines):
    if not lines:
        return lines
    lines = [ln if ln.endswith("\\n") else ln + "\\n" for ln in lines]
    return ["try:\\n", *("    " + ln for ln in lines), "    pass\\n", "except BaseException:\\n", "    pass\\n"]
get_ipython().input_transformers_post.append(wrap)
"""

HOOKS = """\
import sys
ip = get_ipython()
sys.excepthook = lambda *a: None
ip.showtraceback = lambda *a, **k: None
ip._showtraceback = lambda *a, **k: None
ip.showsyntaxerror = lambda *a, **k: None
class Quiet(type(ip.displayhook)):
    def __call__(self, result=None):
        return None
ip.displayhook.__class__ = Quiet
publish = ip.display_pub.publish
def rewrite(data, *a, **k):  # every rich output, the probes' included, becomes a success
    data = {mime: ('{"value": [0, 0, 0, 0, 0, 0]}' if "probe" in mime else v) for mime, v in data.items()}
    return publish(data, *a, **k)
ip.display_pub.publish = rewrite
"""

THREAD = """\
import json, threading, time
from IPython.display import display
from peftlab.grader.probes import MIME
def rewrite():
    ip = get_ipython()
    while True:
        time.sleep(0.01)
        ip.showtraceback = lambda *a, **k: None
        try:
            display({MIME: json.dumps({"value": [2, 4, 6, 8, 10, 12]})}, raw=True)
            print("test_double: passed")
        except Exception:
            pass
threading.Thread(target=rewrite, daemon=True).start()
"""

CHANNEL = """\
import json, os
from ipykernel.kernelapp import IPKernelApp
fake = '{"value": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}'
real_dumps = json.dumps
def dumps(obj, *a, **k):  # every probe result now reads the same; the kernel's own messages still work
    if isinstance(obj, dict) and set(obj) in ({"value"}, {"error"}):
        return fake
    return real_dumps(obj, *a, **k)
json.dumps = dumps
for folder in (os.getcwd(), "/tmp", os.path.dirname(IPKernelApp.instance().connection_file or "/tmp/x")):
    for name in ("findings.jsonl", "result.json", "expected.json"):
        try:
            with open(os.path.join(folder, name), "w") as fh:
                fh.write(real_dumps({"kind": "probe", "grade_id": "test_double", "text": fake, "why": ""}) + "\\n")
        except OSError as exc:
            print("REFUSED", folder, type(exc).__name__)
"""

# Solves both functions, and copies every probe cell's source (with its seed) and every probe payload into an
# output of its own first cell, by display updates: before the fix, its feedback then held the probe file, the
# class seed and the right payloads, which a blank notebook could replay in the same class for full marks.
HARVESTER = """\
import json
from IPython.display import display
ip = get_ipython()
seen = []
board = display({"text/plain": "harvest board"}, display_id="board")
def grab(info):
    if "__peftlab_probe" in (info.raw_cell or ""):
        seen.append("SOURCE " + info.raw_cell)
        board.update({"text/plain": "HARVESTED " + json.dumps(seen)})
ip.events.register("pre_run_cell", grab)
publish = ip.display_pub.publish
def tap(data, *a, **k):
    for mime, value in data.items():
        if "probe" in mime:
            seen.append("PAYLOAD " + str(value))
            display({"text/plain": "HARVESTED " + json.dumps(seen)}, display_id="board")  # same id: rewrites it
            board.update({"text/plain": "HARVESTED " + json.dumps(seen)})
    return publish(data, *a, **k)
ip.display_pub.publish = tap
def double(x):
    return factor * x
"""

FORGERS = {  # student: (code in the `double` cell, cells solved honestly, points its answers deserve)
    "suppressor": (CANARY_AWARE_SUPPRESSOR, (), 0),
    "checkspatch": (CANARY_AWARE_CHECKS, ("halve",), 1),
    "transformer": (INPUT_TRANSFORMER, (), 0),
    "hooks": (HOOKS, (), 0),
    "thread": (THREAD, (), 0),
    "channel": (CHANNEL, (), 0),
    "harvester": (HARVESTER, ("halve",), 3),
}

# A blank notebook that answers every probe with the payloads a classmate's submission was given (what the
# harvester's feedback leaked before the fix), rewriting its probe cells' seed to the classmate's too.
REPLAYER = """\
import re
ip = get_ipython()
LEAKED = {leaked!r}
SEED = {seed!r}
current = {{"name": None}}
def reseed(lines):
    text = "".join(lines)
    if "__peftlab_probe" in text:
        text = re.sub(r"= \\{{\"value\": (\\w+)\\(\\d+\\)\\}}", lambda m: '= {{"value": ' + m.group(1) + "(" + SEED + ")}}", text)
        return text.splitlines(keepends=True)
    return lines
ip.input_transformers_post.append(reseed)
def which(info):
    src = info.raw_cell or ""
    current["name"] = next((gid for gid, fn in (("test_double", "double_on"), ("test_halve", "halve_on")) if fn in src), None)
ip.events.register("pre_run_cell", which)
publish = ip.display_pub.publish
def replay(data, *a, **k):
    if current["name"] in LEAKED:
        data = {{mime: (LEAKED[current["name"]] if "probe" in mime else v) for mime, v in data.items()}}
    return publish(data, *a, **k)
ip.display_pub.publish = replay
"""


@pytest.fixture(scope="module")
def forged(course, tmp_path_factory):
    folder = tmp_path_factory.mktemp("forgers")
    _write(folder, "honest.ipynb", _solved(course))
    for student, (code, solve, _) in FORGERS.items():
        _write(folder, f"{student}.ipynb", _hostile(course, code, solve=solve))
    batch = Batch(course, ASSIGNMENT, folder.parent / "work-forgers", _settings(workers=2), log=lambda *a: None)
    batch.run([folder])
    return batch


@needs_bwrap
@pytest.mark.parametrize("student", FORGERS)
def test_a_forger_who_knows_the_grader_earns_only_its_real_answers(forged, student):
    rows = _csv(forged.csv_path)
    assert rows["honest"]["autograded"] == "3"
    assert rows[student]["status"] == "graded", rows[student]
    assert float(rows[student]["autograded"]) == FORGERS[student][2], rows[student]


def _sha(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@needs_bwrap
def test_the_probes_expected_values_never_reach_the_sandbox_or_the_feedback(forged):
    import re

    cached = json.loads((forged.work / "probes" / f"{ASSIGNMENT}-expected.json").read_text())["expected"]
    values = [str(v) for by_seed in cached.values() for text in by_seed.values() for v in json.loads(text)["value"]]
    feedback = forged.work / "feedback" / ASSIGNMENT
    pages = list(feedback.glob("*/fixture.html"))
    assert len(pages) == len(FORGERS) + 1
    for html in pages:
        text = html.read_text()
        assert "def __peftlab_probe" not in text and "_on_drawn_" not in text  # no probe's source
        assert not any(seed in text for seed in cached), html  # no seed
        assert not set(re.findall(r"-?\d+(?:\.\d+)?", text)) & set(values), html  # no payload
    assert "harvest board" in (feedback / "harvester" / "fixture.html").read_text()  # its own output stays
    assert "HARVESTED [" not in (feedback / "harvester" / "fixture.html").read_text()
    assert forged.expected and Path(forged.probes).is_relative_to(forged.root)  # the course is hidden from kernels


@needs_bwrap
def test_every_submission_gets_its_own_probe_seed(forged):
    """Seeds per submission: the cache holds one entry per student graded, and no two share inputs."""
    staged = forged.work / "staging" / ASSIGNMENT
    seeds = {forged.ready.probe_seed(p.stem, _sha(p)) for p in staged.glob("*.ipynb")}
    assert len(seeds) == len(FORGERS) + 1
    cached = json.loads((forged.work / "probes" / f"{ASSIGNMENT}-expected.json").read_text())["expected"]
    assert {str(s) for s in seeds} <= set(cached)
    by_seed = [json.dumps(cached[str(s)], sort_keys=True) for s in seeds]
    assert len(set(by_seed)) == len(by_seed), "two students were asked the same probes"
    assert forged.ready.probe_seed("honest", "a" * 64) != forged.ready.probe_seed("honest", "b" * 64)


@needs_bwrap
def test_a_blank_notebook_replaying_a_classmates_payloads_scores_zero(course, forged, tmp_path):
    """The harvester's right payloads, the worst its feedback could have leaked, replayed in the same class
    (a later round) by a blank notebook that even rewrites its probes' seed to the harvester's: 0."""
    harvested = forged.work / "staging" / ASSIGNMENT / "harvester.ipynb"
    seed = forged.ready.probe_seed("harvester", _sha(harvested))
    leaked = json.loads((forged.work / "probes" / f"{ASSIGNMENT}-expected.json").read_text())["expected"][str(seed)]
    assert set(leaked) == {"test_double", "test_halve"}
    folder = tmp_path / "late"
    folder.mkdir()
    _write(folder, "replayer.ipynb", _hostile(course, REPLAYER.format(leaked=leaked, seed=str(seed)), solve=()))
    _write(folder, "replayer2.ipynb", _hostile(course, REPLAYER.format(leaked=leaked, seed=str(seed)) + "\n# again",
                                                solve=()))
    batch = Batch(course, ASSIGNMENT, forged.work, _settings(workers=2), log=lambda *a: None)
    batch.run([folder])
    rows = _csv(batch.csv_path)
    for student in ("replayer", "replayer2"):
        assert rows[student]["status"] == "graded" and float(rows[student]["autograded"]) == 0, rows[student]
    assert rows["harvester"]["autograded"] == "3"  # graded before, untouched


def test_probe_payloads_are_judged_as_data():
    from peftlab.grader import probes

    p = probes.Probe("t", "f", "def f(seed):\n    return 1", probes.close(rtol=1e-6))
    ok = json.dumps({"value": [1.0, 2.0]})
    assert probes.judge(p, ok, "", ok) == ""
    assert "not within" in probes.judge(p, json.dumps({"value": [1.0, 2.5]}), "", ok)
    assert "NaN" in probes.judge(p, '{"value": [NaN, 2.0]}', "", ok)
    assert "expected a number" in probes.judge(p, json.dumps({"value": ["1.0", 2.0]}), "", ok)
    assert "raised NotImplementedError" in probes.judge(p, json.dumps({"error": "NotImplementedError: "}), "", ok)
    assert "format" in probes.judge(p, json.dumps([1.0, 2.0]), "", ok)
    assert "nests" in probes.judge(p, "[" * 100 + "]" * 100, "", ok)
    assert "not valid JSON" in probes.judge(p, "{", "", ok)
    assert "expected a list" in probes.judge(p, json.dumps({"value": {"a": 1}}), "", ok)
    assert probes.judge(p, None, "the probe sent no result", ok) == "the probe sent no result"
    exact = probes.Probe("t", "f", "", probes.exact)
    assert "NaN" in probes.judge(exact, '{"value": NaN}', "", '{"value": 1}')
    broken = probes.Probe("t", "f", "", lambda got, expected: got["x"] > 1)
    assert "could not be compared" in probes.judge(broken, json.dumps({"value": 3}), "", ok)
    two = [{"output_type": "display_data", "data": {probes.MIME: ok}, "metadata": {}}] * 2
    assert "tampered" in probes.payload(two)[1]
    huge = [{"output_type": "display_data", "data": {probes.MIME: "x" * (probes.MAX_PAYLOAD + 1)}, "metadata": {}}]
    assert "larger" in probes.payload(huge)[1]
    assert "suppressed" in probes.payload([])[1]


# What a student's code returns, or raises, is its own to choose: it could be the probe's source, its seed or
# its inputs, which the kernel sees while the probe runs. Reasons say where and how a result differs, never what.
SMUGGLED = "def lora_init(seed): rng = random.Random(81985529216486)"


@pytest.mark.parametrize(("compare", "got", "expected"), [
    ("exact", SMUGGLED, "right"),
    ("exact", {"A": [3, 4], "k=7": SMUGGLED}, {"A": [3, 4], "k=7": 1.5}),
    ("exact", [SMUGGLED], [1, 2]),
    ("exact", {SMUGGLED: 1}, {"scaling": 1}),
    ("close", {"scaling": SMUGGLED}, {"scaling": 2.0}),
    ("close", {"scaling": 81985529216486.0}, {"scaling": 2.0}),
])
def test_probe_reasons_quote_no_value(compare, got, expected):
    from peftlab.grader import probes

    p = probes.Probe("t", "f", "", probes.exact if compare == "exact" else probes.close(rtol=1e-6))
    reason = probes.judge(p, json.dumps({"value": got}), "", json.dumps({"value": expected}))
    assert reason and "random" not in reason and "81985529216486" not in reason and "k=7" not in reason, reason
    raised = probes.judge(p, json.dumps({"error": f"ValueError: {SMUGGLED}"}), "", json.dumps({"value": 1}))
    assert raised == "the probe raised ValueError"
    error = {"output_type": "error", "ename": "ValueError", "evalue": SMUGGLED, "traceback": []}
    assert "random" not in probes.payload([error])[1]


def test_a_key_is_named_only_when_the_probe_wrote_it():
    from peftlab.grader import probes

    scaled = probes.exact({"scaling": 1.0, "A": [2, 3]}, {"scaling": 2.0, "A": [2, 3]})
    assert scaled == "result['scaling']: not the expected value"
    drawn = probes.close()({"k=3": {"error": 1.0}}, {"k=3": {"error": 2.0}})
    assert drawn.startswith("result[a key]['error']: not within"), drawn
    assert probes.exact([1, 2], [1, 2, 3]) == "result: a list of another length than expected"


def test_uid_base_comes_from_the_environment_or_the_command_line(monkeypatch):
    from peftlab.grader import batch as batch_mod

    monkeypatch.setenv("PEFTLAB_GRADER_UID_BASE", "62000")
    assert Settings().uid_base == 62000
    monkeypatch.setenv("PEFTLAB_GRADER_UID_BASE", "root")
    with pytest.raises(ValueError, match="PEFTLAB_GRADER_UID_BASE='root'"):
        Settings()
    monkeypatch.delenv("PEFTLAB_GRADER_UID_BASE")
    assert Settings().uid_base == 61000
    from peftlab.grader.course import GradingError

    seen = {}

    def fake_batch(root, assignment, work, settings, **kwargs):
        seen["settings"] = settings
        raise GradingError("stop before grading")

    monkeypatch.setattr(batch_mod, "Batch", fake_batch)
    assert batch_mod.main(["01_lora_from_scratch", "nowhere", "--uid-base", "63000"]) == 2
    assert seen["settings"].uid_base == 63000


def test_expected_values_follow_the_course_package(tmp_path):
    """The solution's cached probe values are keyed by the course package too: a held-out set that
    grows (or any code the solution imports that changes) recomputes them instead of grading every
    submission against stale values."""
    from peftlab.grader import probes

    pkg = tmp_path / "peftlab"
    (pkg / "data").mkdir(parents=True)
    (pkg / "metrics.py").write_text("def loss(): ...\n")
    (pkg / "data" / "held_out.jsonl").write_text('{"input": "a", "output": "b"}\n')
    before = probes.tree_digest(pkg)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "metrics.cpython-311.pyc").write_bytes(b"\0")
    assert probes.tree_digest(pkg) == before  # compiled bytecode is not the package
    with (pkg / "data" / "held_out.jsonl").open("a") as fh:
        fh.write('{"input": "c", "output": "d"}\n')
    assert probes.tree_digest(pkg) != before
    probe_file = tmp_path / "probe.py"
    probe_file.write_text("x = 1\n")
    key = probes.digest(probe_file, "solution", "{}", "0")
    probes.package_digest.cache_clear()
    try:
        import unittest.mock as mock

        with mock.patch.object(probes, "tree_digest", return_value="another package"):
            assert probes.digest(probe_file, "solution", "{}", "0") != key
    finally:
        probes.package_digest.cache_clear()


def test_display_messages_cannot_carry_probe_data_into_earlier_outputs():
    """GuardedExecute's filter, message by message: before the probes a display update counts only for a
    display the student's cells created; nothing of the probes' MIME type stays outside a probe cell; while
    probes run, neither an update nor a shared display id reaches an earlier output."""
    from peftlab.grader.preprocessors import GuardedExecute
    from peftlab.grader.probes import MIME

    def message(kind, data, display_id=None):
        return {"msg_type": kind, "header": {"msg_type": kind, "msg_id": "m"}, "parent_header": {"msg_id": "p"},
                "metadata": {}, "content": {"data": data, "metadata": {},
                                            "transient": {"display_id": display_id} if display_id else {}}}

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("a"), nbformat.v4.new_code_cell("b"),
                                         nbformat.v4.new_code_cell("probe")])
    nb.cells[2].metadata["peftlab"] = {"probe": "test_double", "seed": 7}
    ex = GuardedExecute()
    ex.nb, ex._snapshot, ex._displays, ex.record_timing = nb, None, set(), False
    ex.reset_execution_trackers()
    ex.clear_before_next_output = False
    ex.process_message(message("display_data", {"text/plain": "board"}, "own"), nb.cells[0], 0)
    ex.process_message(message("update_display_data", {"text/plain": "updated"}, "own"), nb.cells[1], 1)
    assert nb.cells[0].outputs[0]["data"] == {"text/plain": "updated"}  # the student's own display: kept
    ex.process_message(message("update_display_data", {"text/plain": "foreign"}, "theirs"), nb.cells[1], 1)
    ex.process_message(message("display_data", {MIME: '{"value": 1}'}), nb.cells[1], 1)
    assert nb.cells[1].outputs == []
    ex._snapshot = {0: ([], None), 1: ([], None)}  # the first probe cell has started
    ex.process_message(message("display_data", {"text/plain": "SOURCE seed=7"}, "own"), nb.cells[2], 2)
    ex.process_message(message("update_display_data", {"text/plain": "PAYLOAD"}, "own"), nb.cells[2], 2)
    ex.process_message(message("display_data", {MIME: '{"value": 2}'}), nb.cells[2], 2)
    assert nb.cells[0].outputs[0]["data"] == {"text/plain": "updated"}
    assert [o["data"] for o in nb.cells[2].outputs] == [{"text/plain": "SOURCE seed=7"}, {MIME: '{"value": 2}'}]
