"""Issue 28: one file never stops a class, every write and byte is bounded, nothing outlives the batch.

A class of submissions that attack the grader's limits rather than its grades (descriptors inherited from
the worker, the kernel's socket folder, display updates, user namespaces, /etc, JSON nested 3,000 deep) is
graded in one batch next to an honest student; a batch is killed with SIGKILL mid-grading; two batches claim
the same user ids; hostile JSON is thrown at the intake and checking path. The fixture assignment is the one
of tests/test_grading.py (`double`, 2 points; `halve`, 1 point).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from peftlab.grader import exercises, launcher, sandbox
from peftlab.grader.batch import Batch
from peftlab.grader.course import GradingError
from peftlab.grader.inspect import inspect
from peftlab.grader.intake import import_submissions
from peftlab.grader.settings import GRADING_PARAMETERS, Settings
from peftlab.grader.uids import RUN_DIR, claim_uids

FIXTURE = Path(__file__).parent / "fixtures" / "course"
ASSIGNMENT, NB = "90_fixture", "fixture.ipynb"
SOLVED = {"double": "def double(x):\n    return factor * x", "halve": "def halve(x):\n    return x / 2"}

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox tests need Linux")
needs_root_bwrap = pytest.mark.skipif(os.geteuid() != 0 or not sandbox.bwrap_path(),
                                      reason="kernels run as separate user ids only for a root grader with bwrap")


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(FIXTURE, root, dirs_exist_ok=True)
    exercises.release(root)
    return root


def _release_text(course) -> str:
    return (course / "exercises" / ASSIGNMENT / NB).read_text()


def _cell(nb, gid):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == gid)


def _hostile(course, code):
    """`halve` solved, `code` in the `double` cell (it should define `double` to earn its 2 points)."""
    nb = nbformat.reads(_release_text(course), as_version=4)
    _cell(nb, "halve").source = SOLVED["halve"]
    _cell(nb, "double").source = code
    return nb


def _settings(workers=2):
    return Settings(workers=workers, cell_timeout=60, wall_timeout=240, memory_bytes=3 * 2**30, max_processes=32,
                    max_output_bytes=2**20, parameters={**GRADING_PARAMETERS, "factor": 2}, sandbox="bwrap")


def _deep(text: str, depth: int) -> str:
    """The release with metadata nested `depth` levels deep in its first cell (json.dumps could not make it)."""
    nb = json.loads(text)
    nb["cells"][0]["metadata"]["deep"] = "__DEEP__"
    return json.dumps(nb).replace('"__DEEP__"', '{"a": ' * depth + "1" + "}" * depth)


def _processes(uids):
    """Live (not zombie) processes whose real or effective user id is in `uids`."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        ids = next((ln.split()[1:3] for ln in text.splitlines() if ln.startswith("Uid:")), [])
        if "\nState:\tZ" not in text and any(int(i) in uids for i in ids):
            found.append(status.parent.name)
    return found


def _leftovers(uids):
    """Files a kernel of `uids` could have left in a socket folder on the host."""
    folders = [Path(RUN_DIR) / f"kernels-{uid}" for uid in uids]
    return [str(p) for folder in folders if folder.exists() for p in folder.rglob("*")]


# ------------------------------------------------------------------ no kernel needed
def test_the_launcher_passes_no_descriptor_of_the_grader(tmp_path, monkeypatch):
    """The worker's log was inherited by the kernel; the launcher now closes everything but 0, 1 and 2."""
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    log = open(tmp_path / "worker.log", "w")
    os.set_inheritable(log.fileno(), True)
    code = "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"
    cmd = sandbox.wrap([sys.executable, "-c", code], sandbox.Policy(uid=None, bubblewrap=False))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, close_fds=False).stdout
    finally:
        log.close()
    assert json.loads(out) == [0, 1, 2, 3], out  # 3: the directory listing itself


def test_seccomp_filter_refuses_user_namespaces_and_nothing_else():
    """The filter bubblewrap installs: unshare(CLONE_NEWUSER) is refused; threads, fork and other unshares
    reach the kernel as before (an unprivileged CLONE_NEWNS fails with its usual EPERM, not ours)."""
    if launcher.seccomp_no_userns() is None:
        pytest.skip("no seccomp program for this architecture")
    code = textwrap.dedent("""
        import ctypes, os, struct, threading
        from peftlab.grader.launcher import seccomp_no_userns
        libc = ctypes.CDLL(None, use_errno=True)
        prog = seccomp_no_userns()
        buf = ctypes.create_string_buffer(prog)
        class Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
        assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
        assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
        result = libc.unshare(0x10000000)
        print("newuser", result, ctypes.get_errno())
        t = threading.Thread(target=lambda: None); t.start(); t.join()
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        print("uts", libc.unshare(0x04000000))  # CLONE_NEWUTS: allowed by the filter (root may)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "newuser -1 1"  # EPERM
    assert out[1] == "fork 7"
    assert out[2] == ("uts 0" if os.geteuid() == 0 else "uts -1")


@needs_root_bwrap
def test_a_second_batch_takes_other_user_ids_or_stops_with_a_reason():
    base = Settings().uid_base + 40
    first = claim_uids(base, 2)
    try:
        said = []
        second = claim_uids(base, 2, log=said.append)
        try:
            assert second.base == base + 2
            assert f"user ids {base}-{base + 1} are in use" in said[0] and str(os.getpid()) in said[0]
            with pytest.raises(GradingError, match="another batch is grading on this machine.*--uid-base"):
                claim_uids(base, 4, tries=1)
        finally:
            second.release()
    finally:
        first.release()
    claim_uids(base, 4, tries=1).release()  # given back: free again


# ------------------------------------------------------------------ hostile JSON at intake and checking
def _wrap(depth, inner):
    return '{"a": ' * depth + inner + "}" * depth


@st.composite
def hostile_file(draw, release: str) -> bytes:
    """A submission's bytes: the release damaged in depth, size or types, or no notebook at all."""
    kind = draw(st.sampled_from(["deep-metadata", "deep-top", "deep-list", "big-string", "retyped", "junk",
                                 "binary", "many-cells"]))
    depth = draw(st.integers(1, 6000))
    nb = json.loads(release)
    if kind == "deep-metadata":
        return _deep(release, depth).encode()
    if kind == "deep-top":
        return _wrap(depth, "1").encode()
    if kind == "deep-list":
        return ("[" * depth + "]" * depth).encode()
    if kind == "big-string":
        nb["cells"][0]["source"] = "x" * draw(st.integers(0, 3 * 2**20))
    elif kind == "retyped":
        value = draw(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                                  lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                      max_size=3),
                                  max_leaves=12))
        where = draw(st.sampled_from(["cells", "metadata", "nbformat", "cell", "nbgrader", "source", "outputs"]))
        cell = nb["cells"][draw(st.integers(0, len(nb["cells"]) - 1))]
        if where in ("cells", "metadata", "nbformat"):
            nb[where] = value
        elif where == "cell":
            nb["cells"][0] = value
        elif where == "nbgrader":
            cell.setdefault("metadata", {})["nbgrader"] = value
        else:
            cell[where] = value
    elif kind == "junk":
        return draw(st.text(max_size=200)).encode()
    elif kind == "binary":
        return draw(st.binary(max_size=200))
    else:
        nb["cells"] = nb["cells"] * draw(st.integers(1, 400))
    return json.dumps(nb).encode()


def test_hostile_json_never_stops_intake_repair_or_checking(course, tmp_path):
    """What the batch does before any kernel starts: import, repair stripped metadata, inspect. Every file
    ends as gradable or with a status and a reason; no exception escapes (RecursionError included)."""
    release_text = _release_text(course)
    settings = Settings(max_notebook_bytes=2 * 2**20, sandbox="none")
    batch = Batch(course, ASSIGNMENT, tmp_path / "work", settings, log=lambda *a: None)
    batch.ready.template = tmp_path / "template"  # the release alone: no gradebook, no kernel
    release = batch.ready.release
    release.parent.mkdir(parents=True)
    release.write_text(release_text)
    seen = []

    @hyp_settings(max_examples=120, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])
    @given(files=st.lists(hostile_file(release_text), min_size=1, max_size=3))
    def check(files):
        folder = tmp_path / f"class{len(seen)}"
        folder.mkdir()
        for i, data in enumerate(files):
            (folder / f"student{i}.ipynb").write_bytes(data)
        found = import_submissions([folder], NB, tmp_path / "staging" / str(len(seen)), settings,
                                   assignment=ASSIGNMENT)
        subs = batch._intake(found)
        batch._repair(subs)
        statuses = []
        for sub in subs:
            if not sub.status:
                verdict = inspect(sub.path, release, settings)
                sub.status, sub.reason = verdict.status or "gradable", verdict.reason or "-"
            statuses.append(sub.status)
            assert sub.status in ("gradable", "invalid", "tampered", "metadata-missing") and sub.reason, sub
        assert len(subs) == len(files)
        seen.append(statuses)

    check()
    assert any("invalid" in s for s in seen)


def test_json_nested_three_thousand_deep_is_one_files_problem(course, tmp_path):
    """The reported crash: RecursionError in repair, the batch exiting 1 naming no file."""
    folder = tmp_path / "class"
    folder.mkdir()
    (folder / "deep.ipynb").write_text(_deep(_release_text(course), 3000))
    (folder / "honest.ipynb").write_text(_release_text(course))
    batch = Batch(course, ASSIGNMENT, tmp_path / "work", Settings(sandbox="none"), log=lambda *a: None)
    batch.ready.template = tmp_path / "template"
    batch.ready.release.parent.mkdir(parents=True)
    batch.ready.release.write_text(_release_text(course))
    subs = batch._intake(import_submissions([folder], NB, tmp_path / "staging", batch.settings, assignment=ASSIGNMENT))
    batch._repair(subs)
    verdicts = {s.student: inspect(s.path, batch.ready.release) for s in subs}
    assert verdicts["deep"].status == "invalid" and re.search(r"nests 300\d levels", verdicts["deep"].reason)
    assert verdicts["honest"].status == ""


# ------------------------------------------------------------------ a class that attacks the limits
FDS = """\
import os, sys
leaks = []
for fd in sorted(int(f) for f in os.listdir("/proc/self/fd")):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
        flags = int(open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8)
    except (OSError, IndexError, ValueError):
        continue
    try:  # a file of the sandbox's own is the same file under its path; one of the grader's is not there
        ours = os.path.samestat(os.stat(target), os.fstat(fd))
    except OSError:
        ours = False
    if target.startswith("/") and flags & 3 and not ours:
        leaks.append(target)
        try:
            os.write(fd, b"x" * 2**20)
        except OSError:
            pass
for stream in (sys.stdout, sys.stderr):  # ipykernel keeps the descriptors it was started with
    fd = getattr(stream, "_original_stdstream_copy", None)
    if fd is not None:
        for _ in range(8):
            os.write(fd, b"y" * 2**20)
print("LEAKS", leaks)
def double(x):
    return factor * x
"""

SOCKETS = """\
import os
from ipykernel import get_connection_file
folder = os.path.dirname(get_connection_file())
written = 0
try:
    for i in range(4):
        with open(os.path.join(folder, f"fill{i}.bin"), "wb") as fh:
            for _ in range(16):
                fh.write(b"x" * 2**20)
                fh.flush()
                written += 2**20
except OSError as exc:
    print("STOPPED", type(exc).__name__)
print("SOCKET FOLDER WROTE", written)
def double(x):
    return factor * x
"""

CRASH = SOCKETS.replace("def double(x):\n    return factor * x\n", "os._exit(1)\n")

DISPLAYS = """\
from IPython.display import display, update_display
for _ in range(8):
    display({"text/plain": "small"}, raw=True, display_id="board")
for i in range(8):  # 1.5 MB, rewriting 8 outputs each time
    update_display({"text/plain": str(i) * (3 * 2**19)}, raw=True, display_id="board")
for _ in range(2):  # 40 MB, 8 times each
    update_display({"text/plain": "z" * (40 * 2**20)}, raw=True, display_id="board")
def double(x):
    return factor * x
"""

FLOOD = """\
print("f" * (100 * 2**20))  # one message over the largest the grader takes (64 MiB)
def double(x):
    return factor * x
"""

USERNS = """\
import ctypes, subprocess
libc = ctypes.CDLL(None, use_errno=True)
print("UNSHARE CALL", "ALLOWED" if libc.unshare(0x10000000) == 0 else "REFUSED")
done = subprocess.run(["unshare", "-Ur", "true"], capture_output=True)
print("UNSHARE COMMAND", "ALLOWED" if done.returncode == 0 else "REFUSED")
def double(x):
    return factor * x
"""

ETC = """\
import os
print("ETC HOLDS", sorted(os.listdir("/etc")))
def double(x):
    return factor * x
"""


@pytest.fixture(scope="module")
def bounded(course, tmp_path_factory):
    if not sandbox.bwrap_path():
        pytest.skip("bubblewrap is not installed")
    folder = tmp_path_factory.mktemp("bounds")
    honest = _hostile(course, SOLVED["double"])
    nbformat.write(honest, folder / "honest.ipynb")
    for student, code in (("fds", FDS), ("sockets", SOCKETS), ("crash", CRASH), ("displays", DISPLAYS),
                          ("userns", USERNS), ("etc", ETC), ("flood", FLOOD)):
        nbformat.write(_hostile(course, code), folder / f"{student}.ipynb")
    (folder / "deep.ipynb").write_text(_deep(_release_text(course), 3000))
    settings = _settings(workers=2)
    said = []
    held = claim_uids(settings.uid_base, 2) if os.geteuid() == 0 else None  # a batch already running
    try:
        base = settings.uid_base
        batch = Batch(course, ASSIGNMENT, folder.parent / "work-bounds", settings, log=said.append)
        results = {sub.student: out for sub, out in batch.run([folder])}
    finally:
        if held:
            held.release()
    return batch, results, said, base


def _feedback(batch, student):
    return (batch.work / "feedback" / ASSIGNMENT / student / "fixture.html").read_text()


@needs_root_bwrap
def test_the_batch_takes_free_user_ids_when_another_holds_them(bounded):
    batch, results, said, base = bounded
    assert batch.settings.uid_base == base + 2
    assert any(f"user ids {base}-{base + 1} are in use" in line for line in said), said
    assert results["honest"].status == "graded" and results["honest"].auto_score == 3


def test_a_nested_notebook_is_invalid_and_the_class_is_graded(bounded):
    _, results, _, _ = bounded
    assert results["deep"].status == "invalid" and re.search(r"nests 300\d levels", results["deep"].reason)
    assert results["honest"].status == "graded" and results["honest"].auto_score == 3


def test_the_kernel_holds_no_descriptor_of_the_grader(bounded):
    batch, results, _, _ = bounded
    assert results["fds"].status == "graded" and results["fds"].auto_score == 3
    html = _feedback(batch, "fds")
    assert "LEAKS []" in html, re.findall(r"LEAKS .*", html)


def test_the_socket_folder_is_a_small_tmpfs_and_nothing_is_left(bounded):
    batch, results, _, _ = bounded
    assert results["sockets"].status == "graded" and results["sockets"].auto_score == 3
    wrote = int(re.search(r"SOCKET FOLDER WROTE (\d+)", _feedback(batch, "sockets")).group(1))
    if os.geteuid() == 0:
        assert wrote <= launcher.SOCKET_BYTES
    assert results["crash"].status == "crashed"
    uids = range(batch.settings.uid_base, batch.settings.uid_base + batch.settings.workers)
    assert not _leftovers(uids)
    assert not list(Path("/tmp").glob("peftlab-kernel-*/fill*.bin"))


def test_display_updates_are_capped_and_the_worker_stays_small(bounded):
    batch, results, _, _ = bounded
    out = results["displays"]
    assert out.status == "graded" and out.auto_score == 3, out.reason
    assert any("output past" in note for note in out.notes), out.notes
    graded = batch.work / "autograded" / "displays" / ASSIGNMENT / NB
    assert graded.stat().st_size < 3 * 2**20  # the 1 MiB budget, plus the notebook itself
    assert (batch.work / "feedback" / ASSIGNMENT / "displays" / "fixture.html").stat().st_size < 4 * 2**20
    # 8 x 8 x 1.5 MB and 2 x 8 x 40 MB were sent: none of it may stay in the worker (it once reached 2.2 GiB)
    assert out.peak_rss_mib < results["honest"].peak_rss_mib + 400, (out.peak_rss_mib, results["honest"].peak_rss_mib)


def test_a_message_over_the_limit_never_reaches_the_worker(bounded):
    """100 MB in one message: dropped by ZeroMQ, with the kernel's later outputs (its probes: no points)."""
    batch, results, _, _ = bounded
    out = results["flood"]
    assert out.status == "graded" and out.auto_score == 0
    assert (batch.work / "autograded" / "flood" / ASSIGNMENT / NB).stat().st_size < 2**20
    assert out.peak_rss_mib < results["honest"].peak_rss_mib + 150, (out.peak_rss_mib, results["honest"].peak_rss_mib)


def test_user_namespaces_are_refused_and_etc_is_narrowed(bounded):
    batch, results, _, _ = bounded
    html = _feedback(batch, "userns")
    assert "UNSHARE CALL REFUSED" in html and "UNSHARE COMMAND REFUSED" in html
    holds = re.search(r"ETC HOLDS \[(.*?)\]", _feedback(batch, "etc").replace("&#x27;", "'")).group(1)
    assert set(re.findall(r"'([^']*)'", holds)) <= {*sandbox.ETC, "passwd", "group"}, holds
    assert results["etc"].auto_score == 3


@needs_root_bwrap
def test_nothing_of_the_class_runs_after_the_batch(bounded):
    batch, _, _, _ = bounded
    uids = set(range(batch.settings.uid_base, batch.settings.uid_base + batch.settings.workers))
    deadline = time.monotonic() + 30
    while _processes(uids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes(uids)


# ------------------------------------------------------------------ kill -9 of the batch
KILLED = """\
import sys
from pathlib import Path
from peftlab.grader.batch import Batch
from peftlab.grader.settings import GRADING_PARAMETERS, Settings
settings = Settings(workers=2, cell_timeout=600, wall_timeout=900, memory_bytes=3 * 2**30, max_processes=32,
                    parameters={**GRADING_PARAMETERS, "factor": 2}, sandbox="bwrap")
Batch(Path(sys.argv[1]), "90_fixture", Path(sys.argv[2]), settings, log=print).run([Path(sys.argv[3])])
"""


@needs_root_bwrap
def test_kill_9_of_the_batch_leaves_no_process_of_its_user_ids(course, tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    stuck = "import os, time\nif os.fork() == 0:\n    time.sleep(3600)\nwhile True:\n    pass"
    for student in ("stuck1", "stuck2"):
        nbformat.write(_hostile(course, stuck), folder / f"{student}.ipynb")
    base = Settings().uid_base
    uids = {base, base + 1}
    script = tmp_path / "batch.py"
    script.write_text(KILLED)
    proc = subprocess.Popen([sys.executable, str(script), str(course), str(tmp_path / "work"), str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(_processes(uids)) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)  # both kernels and their children running
        assert len(_processes(uids)) >= 4, "the kernels never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 60
        while _processes(uids) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _processes(uids), "a kernel outlived the batch"
        claim = claim_uids(base, 2, tries=1)  # the ids are free for the next batch, which removes
        claim.release()                       # the connection files the killed one could not
        assert not _leftovers(uids)
    finally:
        if proc.poll() is None:
            proc.kill()
