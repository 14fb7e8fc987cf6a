"""The class grader on Dask distributed, and in shards: the same CSV as one machine, faults survived.

The reference is the fixture class graded on one machine (`test_grading.graded`, two fork-server workers;
`test_grading.test_killed_batch_resumes_to_the_same_grades` shows one worker gives the same bytes). Every
test here grades the fixture class, or a part of it, another way and compares the CSV rows of its students.
"""
# ruff: noqa: F811 - the fixture class of test_grading is imported, and its fixtures are then test arguments

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster, WorkerPlugin
from peftlab.grader import cluster as cluster_mod
from peftlab.grader import shards
from peftlab.grader.batch import Batch
from peftlab.grader.course import GradingError
from peftlab.grader.uids import processes_of
from test_grading import (  # noqa: F401 - fixtures
    ASSIGNMENT,
    _csv,
    _settings,
    _solved,
    _write,
    course,
    graded,
    needs_bwrap,
    submissions,
)

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="the sandbox tests need Linux"), needs_bwrap]

# A part of the class for the fault tests: honest, blank, partial, crashing, tampered and unreadable notebooks.
PART = ("full", "blank", "partial", "params", "exits", "deleted", "sysexit", "badjson", "edited", "forger")


def _part(submissions, tmp_path, students=PART) -> Path:
    folder, _ = submissions
    part = tmp_path / "part"
    part.mkdir()
    for student in students:
        shutil.copy(folder / f"{student}.ipynb", part / f"{student}.ipynb")
    return part


def _reference(graded, students=PART) -> dict:
    rows = _csv(graded[0].csv_path)
    return {s: rows[s] for s in students}


def _recorded(work: Path) -> int:
    try:
        with sqlite3.connect(work / "gradebook.db") as db:
            return db.execute("SELECT count(*) FROM peftlab_status").fetchone()[0]
    except sqlite3.Error:
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_kernel_left(uids) -> list[int]:
    """The user ids among `uids` that still run a process, after a grace period for exits to land."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [u for u in uids if processes_of(u, none=0)]
        if not left:
            return []
        time.sleep(0.5)
    return left


def test_a_local_cluster_grades_the_class_as_one_machine(course, submissions, graded, tmp_path):
    folder, _ = submissions
    reference, _ = graded
    batch = Batch(course, ASSIGNMENT, tmp_path / "work", _settings(2), log=lambda *a: None, cluster="local:2")
    results = batch.run([folder])
    assert batch.csv_path.read_bytes() == reference.csv_path.read_bytes()
    pages = sorted(p.relative_to(reference.work) for p in (reference.work / "feedback").rglob("*.html"))
    assert pages and pages == sorted(p.relative_to(batch.work) for p in (batch.work / "feedback").rglob("*.html"))
    for page in pages:
        assert (batch.work / page).read_bytes() == (reference.work / page).read_bytes(), page
    if os.geteuid() == 0:  # two worker processes, each its own slot: its own user id
        graded_here = [sub.student for sub, out in results if sub.student in batch.placements]
        assert len({batch.placements[s][1] for s in graded_here}) == 2, batch.placements


@pytest.fixture
def two_hosts(tmp_path):
    """A scheduler and two `dask worker` processes on loopback, each with its own host folder: two machines."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dask_cli = str(Path(sys.executable).with_name("dask"))
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    address = f"tcp://127.0.0.1:{port}"
    for host in ("host-a", "host-b"):
        procs.append(subprocess.Popen(
            [dask_cli, "worker", address, "--nthreads", "1", "--memory-limit", "0", "--name", host],
            env={**env, "PEFTLAB_GRADER_HOST_DIR": str(tmp_path / host)}, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    with Client(address, timeout="60s") as client:
        client.wait_for_workers(2, timeout=120)
    yield address
    for proc in procs:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_two_hosts_and_a_killed_worker_change_nothing(course, submissions, graded, tmp_path, two_hosts):
    part = _part(submissions, tmp_path)
    work = tmp_path / "work"
    batch = Batch(course, ASSIGNMENT, work, _settings(2), log=lambda *a: None, scheduler=two_hosts)
    done = {}
    runner = threading.Thread(target=lambda: done.setdefault("results", batch.run([part])))
    runner.start()
    deadline = time.monotonic() + 600
    while _recorded(work) < 3 and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert runner.is_alive(), "the class should still be grading when a worker is killed"
    with Client(two_hosts, timeout="60s") as client:
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)  # its nanny starts another; Dask re-runs its task
    runner.join(timeout=900)
    assert not runner.is_alive()
    assert {s: r for s, r in _csv(batch.csv_path).items()} == _reference(graded)
    assert len(done["results"]) == len(PART)
    hosts = {batch.placements[s] for s in batch.placements}
    if os.geteuid() == 0:
        assert len({uid for _, uid in hosts}) >= 2, hosts  # each host's slot its own user id
        assert not _no_kernel_left(sorted({uid for _, uid in hosts}))


class KillsItsWorker(WorkerPlugin):
    """A submission whose grading takes its worker down, every time (an out-of-memory kill of the worker, a
    machine that reboots): the worker process dies a second after the task starts."""

    name = "test-kills-its-worker"

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and "-killer-" in str(key):
            threading.Timer(1.0, os._exit, args=(1,)).start()


@pytest.fixture
def local_cluster():
    with dask.config.set({"distributed.scheduler.allowed-failures": cluster_mod.LOCAL_FAILURES}):
        with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=0, dashboard_address=":0") as lc:
            with Client(lc) as client:
                yield lc.scheduler_address, client


def test_a_submission_that_kills_its_worker_is_an_error_and_the_class_goes_on(
        course, submissions, graded, tmp_path, local_cluster, monkeypatch):
    address, client = local_cluster
    client.register_plugin(KillsItsWorker())
    part = _part(submissions, tmp_path, ("full", "blank"))
    _write(part, "killer.ipynb", _solved(course))
    batch = Batch(course, ASSIGNMENT, tmp_path / "work", _settings(2), log=lambda *a: None, scheduler=address)
    intake = Batch._intake

    def twice(self, found):  # every submission handed to the engine twice, as a re-delivered task would be
        subs = intake(self, found)
        return subs + subs

    monkeypatch.setattr(Batch, "_intake", twice)
    results = batch.run([part])
    assert sorted(sub.student for sub, _ in results) == ["blank", "full", "killer"], "each student recorded once"
    rows = _csv(batch.csv_path)
    assert rows["killer"]["status"] == "error" and "killed the Dask worker running it, 2 times" in rows["killer"]["reason"]
    assert {s: rows[s] for s in ("full", "blank")} == _reference(graded, ("full", "blank"))


def test_a_worker_that_differs_from_the_head_is_refused(local_cluster):
    address, client = local_cluster
    head = {**cluster_mod.fingerprint(), "course package": "0123456789abcdef"}
    with cluster_mod.DaskGrading(scheduler=address, log=lambda *a: None) as engine:
        with pytest.raises(GradingError, match="every Dask worker was refused"):
            engine.check_workers(head)
    said = []
    with cluster_mod.DaskGrading(scheduler=address, log=said.append) as engine:
        assert engine.check_workers(cluster_mod.fingerprint()) == 2
        assert not said[1:]
    # The plugin on such a worker: refused, saying what differs, and never given the grading resource.
    client.register_plugin(cluster_mod.GradingPlugin(head, "{}"), name="refusal-check")
    refusals = client.run(lambda dask_worker: dask_worker.plugins["refusal-check"].refused)
    assert all("course package 0123456789abcdef on the head" in why for why in refusals.values()), refusals
    resources = client.run(lambda dask_worker: dict(dask_worker.state.total_resources))
    assert all(cluster_mod.resource_name(head) not in r for r in resources.values())


def test_a_killed_head_resumes_to_the_same_csv(course, submissions, graded, tmp_path):
    part = _part(submissions, tmp_path)
    work = tmp_path / "work"
    code = ("import json; from pathlib import Path; from peftlab.grader.batch import Batch; "
            "from peftlab.grader.settings import Settings; "
            f"s = Settings(**json.loads({json.dumps(_settings(2).__dict__)!r})); "
            f"Batch(Path({str(course)!r}), {ASSIGNMENT!r}, Path({str(work)!r}), s, cluster='local:2').run([{str(part)!r}])")
    head = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while _recorded(work) < 3 and head.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(head.pid, signal.SIGKILL)  # the head and its local cluster
    head.wait()
    done = _recorded(work)
    assert 3 <= done < len(PART), "the head should be killed midway"
    again = Batch(course, ASSIGNMENT, work, _settings(2), log=lambda *a: None, cluster="local:2")
    results = again.run([part])
    assert len(results) == len(PART) - done, "students recorded before the kill are not graded again"
    assert _csv(again.csv_path) == _reference(graded)


def test_shards_killed_rerun_and_merged_twice_give_the_same_csv(course, submissions, graded, tmp_path):
    part = _part(submissions, tmp_path)
    work = tmp_path / "work"
    slices = {i: [s for s in PART if shards.slice_of(s, 3) == i] for i in (1, 2, 3)}
    assert all(slices.values()), slices
    folders = {i: shards.shard_work(course, ASSIGNMENT, work, i, 3) for i in (1, 2, 3)}
    with pytest.raises(GradingError, match=r"shard\(s\) 1/3, 2/3, 3/3 have not graded yet"):
        shards.merge(course, ASSIGNMENT, work, log=lambda *a: None)
    killed = max(slices, key=lambda i: len(slices[i]))
    code = ("import json; from pathlib import Path; from peftlab.grader.batch import Batch; "
            "from peftlab.grader.settings import Settings; "
            f"s = Settings(**json.loads({json.dumps(_settings(1).__dict__)!r})); "
            f"Batch(Path({str(course)!r}), {ASSIGNMENT!r}, Path({str(folders[killed])!r}), s, shard=({killed}, 3))"
            f".run([{str(part)!r}])")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while _recorded(folders[killed]) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # killed once it recorded a student, then run again below
    proc.wait()
    with pytest.raises(GradingError, match=f"shard\\(s\\) .*{killed}/3.* stopped midway"):  # a partial gradebook
        shards.merge(course, ASSIGNMENT, work, log=lambda *a: None)
    for i, folder in folders.items():
        Batch(course, ASSIGNMENT, folder, _settings(1), log=lambda *a: None, shard=(i, 3)).run([part])
        assert set(_csv(folder / f"{ASSIGNMENT}-grades.csv")) == set(slices[i])
    first = shards.merge(course, ASSIGNMENT, work, log=lambda *a: None).read_bytes()
    second = shards.merge(course, ASSIGNMENT, work, log=lambda *a: None).read_bytes()
    assert first == second
    assert _csv(work / f"{ASSIGNMENT}-grades.csv") == _reference(graded)
    for student in PART:  # each student's feedback page came along
        assert list((work / "feedback" / ASSIGNMENT / student).glob("*.html")), student


def test_a_shard_with_no_student_finishes_and_merges(course, submissions, graded, tmp_path):
    part = _part(submissions, tmp_path, ("full",))
    work = tmp_path / "work"
    for i in (1, 2, 3):
        folder = shards.shard_work(course, ASSIGNMENT, work, i, 3)
        results = Batch(course, ASSIGNMENT, folder, _settings(1), log=lambda *a: None, shard=(i, 3)).run([part])
        assert [sub.student for sub, _ in results] == (["full"] if shards.slice_of("full", 3) == i else [])
    shards.merge(course, ASSIGNMENT, work, log=lambda *a: None)
    assert _csv(work / f"{ASSIGNMENT}-grades.csv") == _reference(graded, ("full",))


@pytest.mark.parametrize("spec", ["local", "local:0", "local:x", "tcp://head:8786", "2"])
def test_a_wrong_cluster_is_refused_before_any_set_up(course, tmp_path, spec):
    with pytest.raises(GradingError, match="expected local:N"):
        Batch(course, ASSIGNMENT, tmp_path / "work", _settings(1), cluster=spec)
    assert not (tmp_path / "work").exists()


def test_merge_without_shards_says_what_to_do(course, tmp_path, capsys, monkeypatch):
    from peftlab.grader.batch import main

    monkeypatch.chdir(course)
    assert main(["merge", ASSIGNMENT, "--work", str(tmp_path / "work")]) == 2
    assert "grade with --shard i/N first" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["0/3", "4/3", "3", "a/b", ""])
def test_a_wrong_shard_is_refused_clearly(spec):
    with pytest.raises(GradingError, match="expected i/N"):
        shards.parse(spec)


def test_slices_are_stable_and_cover_the_class():
    students = [f"s{i}" for i in range(300)]
    counts = [sum(shards.slice_of(s, 3) == i for s in students) for i in (1, 2, 3)]
    assert sum(counts) == 300 and min(counts) > 60
    assert [shards.slice_of(s, 3) for s in students] == [shards.slice_of(s, 3) for s in students]
