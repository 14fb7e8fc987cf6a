"""Grading a class across machines on Dask distributed: `peftlab-grade ... --cluster local:N | --scheduler ADDR`.

The batch (`batch.Batch`) stays the head and the only writer: it imports the
submissions, prepares the assignment (the solution's probe values for every
seed of the class included), and records every result in the gradebook, whose
exports make the CSVs, as on one machine. What changes is where a submission is
graded:

- **one task per submission**, keyed by (assignment, student, the submission's
  SHA-256). The task carries the notebook's bytes and the worker's order (`Job`),
  and returns the outcome with the graded notebook and the feedback page as bytes.
  At most `in_flight` tasks are submitted at once, so a class of 50,000 never sits
  in the scheduler's memory; each result is released as soon as it is recorded.
- **each Dask worker** gets the `GradingPlugin`: it compares the worker's course
  package and key library versions with the head's (`fingerprint`) and refuses a
  worker that differs, saying which (it never receives a submission: tasks ask for
  a resource only matching workers have). A matching worker claims one host-local
  slot per thread, each a user id locked on the host (`uids.claim_uids`) and its
  own warm fork server (`forkserver`), started from the worker's main thread:
  nothing is forked from the Dask worker process itself, and the fork server,
  its workers and their kernels die with the Dask worker (PR_SET_PDEATHSIG).
- **the assignment is shipped once**: the scratch course and the probe file, as
  one archive scattered to the workers, unpacked once per host and digest.

Faults. Dask runs a task again when its worker dies; a submission whose grading
killed a worker `allowed-failures` + 1 times (the local cluster sets 1: twice)
is recorded as `error` with the reason, and the class goes on. Dask may also
run a finished task again (its result was held by a worker that died): the head
records each (student, SHA-256) once, and the gradebook's record is an upsert
anyway. A head killed midway resumes from the gradebook when run again, as on
one machine.

Code and environments are not shipped: every machine installs the same course
(`pip install -e .` of the same commit) and starts `dask worker SCHEDULER
--nthreads N --memory-limit 0` (the kernel keeps its own limits; Dask's memory
limit would only watch the worker process). grading/README.md has the commands,
a Slurm array and a Kubernetes Job for sharded runs without Dask.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

import dask
from distributed import Client, KilledWorker, LocalCluster, WorkerPlugin, as_completed, get_worker
from tqdm.auto import tqdm

from . import slot as slot_mod
from .course import GradingError
from .forkserver import ForkServer
from .outcome import Outcome
from .sandbox import policy_for, use_bubblewrap
from .settings import Settings
from .uids import claim_uids, remove_kernel_folders
from .worker import Job

PLUGIN = "peftlab-grading"
# Library versions that change a grade, or whether a notebook runs at all, when they differ between machines.
KEY_PACKAGES = ("nbgrader", "nbclient", "nbconvert", "jupyter_client", "ipykernel", "torch", "transformers",
                "peft", "distributed")
LOCAL_FAILURES = 1  # a local cluster's allowed-failures: a submission that kills its worker twice is an error
STARTED = "peftlab-grading-started"  # the event a task logs when it starts running on a worker
RETRIES = 3  # sends of a submission whose worker died while it only waited there (a neighbour's fault)
BLAME = 2  # a submission running on its worker when the worker died this many times killed it: an `error`


# ------------------------------------------------------------------ what must match between head and workers
def _package_digest() -> str:
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def fingerprint() -> dict[str, str]:
    """This machine's course package (a digest of its files) and the versions that must equal the head's."""
    out = {"course package": _package_digest(), "python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def differences(mine: dict[str, str], head: dict[str, str]) -> str:
    """'' when `mine` equals `head`, else what differs, head's value first."""
    return "; ".join(f"{k} {head.get(k)} on the head, {mine.get(k)} here" for k in sorted(set(head) | set(mine))
                     if head.get(k) != mine.get(k))


def resource_name(head: dict[str, str]) -> str:
    """The Dask resource a worker advertises once it matches `head`: tasks ask for one unit of it."""
    return "peftlab-" + hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------ the assignment, shipped once
def pack(template: Path, probes: str) -> bytes:
    """The scratch course and the probe file as one gzip'd tar, the same bytes for the same files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        def add(path: Path, name: str):
            info = tar.gettarinfo(str(path), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
        for path in sorted(p for p in template.rglob("*") if p.is_file() and not p.is_symlink()):
            add(path, "template/" + str(path.relative_to(template)))
        if probes:
            add(Path(probes), "probes.py")
    return buffer.getvalue()


def digest(bundle: bytes) -> str:
    return hashlib.sha256(bundle).hexdigest()[:16]


def unpack(bundle: bytes, into: Path, name: str) -> Path:
    """`bundle` (whose `digest` is `name`, computed once by the head) unpacked under `into`/`name` once per host
    (a lock; later calls find it done); that folder."""
    folder = into / name
    if (folder / ".done").is_file():
        return folder
    into.mkdir(parents=True, exist_ok=True)
    with open(into / f".{folder.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".done").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
                tar.extractall(folder, filter="data")
            (folder / ".done").write_text("")
    return folder


# ------------------------------------------------------------------ the worker's side
@dataclass
class Slot:
    """One submission at a time: a user id of its own (as root, sandboxed) and its own fork server."""

    uid_base: int
    server: ForkServer
    claim: object = None  # uids.UidClaim


class GradingPlugin(WorkerPlugin):
    """Installed on every worker of the cluster by the head (and on workers that join later)."""

    name = PLUGIN

    def __init__(self, head: dict[str, str], settings_json: str, host_dir: str = ""):
        self.head, self.settings_json, self.host_dir = head, settings_json, host_dir
        self.refused, self.slots, self.free = "", [], None

    def _settings(self) -> Settings:
        return Settings(**json.loads(self.settings_json))

    async def setup(self, worker):
        self.refused = differences(fingerprint(), self.head)
        if self.refused:
            worker_log(f"peftlab-grade: worker {worker.address} refused: {self.refused}")
            return
        settings = self._settings()
        self.root = Path(self.host_dir or os.environ.get("PEFTLAB_GRADER_HOST_DIR")
                         or Path(tempfile.gettempdir()) / "peftlab-grader-host")
        self.free = []
        for _ in range(worker.state.nthreads):
            claim = None
            if os.geteuid() == 0 and use_bubblewrap(settings):
                claim = claim_uids(settings.uid_base, 1, tries=4096, log=lambda _: None)  # moving up is normal
            self.slots.append(Slot(claim.base if claim else settings.uid_base, ForkServer(), claim))
        self.free = list(self.slots)
        self.lock = threading.Lock()
        await worker.set_resources(**{resource_name(self.head): len(self.slots)})

    def teardown(self, worker):
        for slot in self.slots:
            slot.server.close()
            if slot.claim is not None:
                slot.claim.release()
        self.slots, self.free = [], []

    def take(self) -> Slot:
        with self.lock:
            if not self.free:
                raise GradingError("no free grading slot on this worker (more tasks than its resource allows)")
            return self.free.pop()

    def give(self, slot: Slot) -> None:
        with self.lock:
            if not slot.server.alive():
                slot.server = ForkServer()
            self.free.append(slot)


def worker_log(message: str) -> None:
    logging.getLogger("distributed.worker").warning(message)


def _read(path: Path | None, limit: int) -> bytes | None:
    """A file the grader made, as data (never through a link), if it is at most `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (OSError, TypeError):
        return None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    return data if len(data) <= limit else None


def grade_task(bundle: bytes, name: str, job_json: str, notebook: bytes) -> dict:
    """A Dask task: grade one submission on this worker; its outcome and files as plain data."""
    worker = get_worker()
    worker.log_event(STARTED, {"key": str(worker.get_current_task())})  # it ran here (`DaskGrading._ran`)
    plugin = worker.plugins[PLUGIN]
    if plugin.refused:  # never sent here (the resource), but a refused worker must not grade if it were
        raise GradingError(f"worker refused: {plugin.refused}")
    started = time.perf_counter()
    job = Job.from_json(job_json)
    folder = unpack(bundle, plugin.root / "assignments", name)
    slot = plugin.take()
    try:
        scratch = plugin.root / "scratch" / job.assignment / f"{job.student}-{slot.uid_base}"
        staged = plugin.root / "staging" / f"{job.assignment}-{job.student}-{slot.uid_base}.ipynb"
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(notebook)
        hide = [p for p in dict.fromkeys([*job.policy.hide, str(plugin.root)]) if os.path.exists(p)]
        settings = replace(job.settings, uid_base=slot.uid_base)
        job = replace(job, submission=str(staged), scratch=str(scratch), template=str(folder / "template"),
                      probes=str(folder / "probes.py") if job.probes else "", settings=settings,
                      policy=policy_for(settings, hide=[h for h in hide if h not in ("/home", "/root")]))
        out = slot_mod.run(slot.server, job)
        limit = 4 * settings.max_notebook_bytes
        graded = scratch / "course" / "autograded" / job.student / job.assignment / job.notebook
        files = {"graded": _read(graded, limit), "feedback": _read(Path(out.feedback) if out.feedback else None, limit),
                 "partial": _read(scratch / "partial.ipynb", limit)}
        if out.status == "graded":
            shutil.rmtree(scratch, ignore_errors=True)
        staged.unlink(missing_ok=True)
        return {"outcome": asdict(out), **files, "host": socket.gethostname(), "uid": slot.uid_base,
                "task_s": round(time.perf_counter() - started, 3)}
    finally:
        if slot.claim is not None:
            remove_kernel_folders(slot.uid_base)
        plugin.give(slot)


# ------------------------------------------------------------------ the head's side
class DaskGrading:
    """The head's connection to a cluster: `local` > 0 starts a LocalCluster of that many processes here, else
    `scheduler` is a scheduler's address."""

    def __init__(self, local: int = 0, scheduler: str = "", in_flight: int = 0, log=print,
                 host_dir: str = "", wait_s: float = 120.0):
        if bool(local) == bool(scheduler):
            raise GradingError("give one of --cluster local:N or --scheduler ADDRESS")
        self.local, self.scheduler, self.in_flight, self.log = local, scheduler, in_flight, log
        self.host_dir, self.wait_s = host_dir, wait_s
        self.cluster = self.client = None
        self.head, self.slots = {}, 0
        self.placements: dict[str, tuple[str, int]] = {}  # student -> (host, slot's user id) that graded it

    def __enter__(self) -> DaskGrading:
        if self.local:
            with dask.config.set({"distributed.scheduler.allowed-failures": LOCAL_FAILURES}):
                self.cluster = LocalCluster(n_workers=self.local, threads_per_worker=1, processes=True, memory_limit=0,
                                            dashboard_address=":0")
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(self.scheduler, timeout=f"{int(self.wait_s)}s")
            except OSError as exc:
                raise GradingError(f"--scheduler {self.scheduler}: no Dask scheduler answered ({exc})") from None
        link = self.client.dashboard_link
        if link:
            self.log(f"Dask dashboard: {link}")
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def check_workers(self, head: dict[str, str]) -> int:
        """Threads of the workers that match `head`; the refused ones are said, with what differs."""
        deadline = time.monotonic() + self.wait_s
        while not self.client.scheduler_info()["workers"]:
            if time.monotonic() > deadline:
                raise GradingError(f"no Dask worker joined {self.client.scheduler.address} in {self.wait_s:.0f} s")
            time.sleep(0.5)
        found = self.client.run(fingerprint)
        threads = {a: w["nthreads"] for a, w in self.client.scheduler_info()["workers"].items()}
        good = 0
        for address, fp in sorted(found.items()):
            why = differences(fp, head)
            if why:
                self.log(f"worker {address} refused: {why}. Install the head's course and versions there.")
            else:
                good += threads.get(address, 1)
        if not good:
            raise GradingError(f"every Dask worker was refused: their course or versions differ from this "
                               f"machine's ({len(found)} worker(s); see above)")
        return good

    def open(self, settings: Settings) -> DaskGrading:
        """Connect (or start the local cluster), check the workers and give them their slots: the once-a-class
        start, which the batch runs beside the assignment's set-up (`Batch.prepare`)."""
        self.__enter__()
        self.head = fingerprint()
        self.slots = self.check_workers(self.head)
        # Returns once every worker's slots (user id, warm fork server) are up.
        self.client.register_plugin(GradingPlugin(self.head, json.dumps(asdict(settings)), self.host_dir),
                                    name=PLUGIN)
        return self

    def grade(self, jobs, total: int, template: Path, probes: str, record) -> list:
        """Grade `total` `jobs` (an iterable of (sub, Job), made as they are sent) on the cluster `open`ed;
        `record(sub, outcome, head_scratch)` records each result on the head as it arrives. [(sub, outcome)]."""
        head, slots = self.head, self.slots
        packed = pack(template, probes)
        bundle, name = self.client.scatter(packed, broadcast=True, hash=True), digest(packed)
        limit = self.in_flight or max(4, 2 * slots)
        pending, results, recorded = iter(jobs), [], set()
        queue, running, sends = as_completed(), {}, {}
        bar = tqdm(total=total, desc=f"grading on {slots} Dask slot(s)", unit="nb", disable=not total)

        def submit():
            while len(running) < limit:
                sub, job = next(pending, (None, None))
                if sub is None:
                    return
                key = f"grade-{job.assignment}-{sub.student}-{sub.sha256[:16]}"
                if key in running or (sub.student, sub.sha256) in recorded:
                    continue  # the same submission twice: graded and recorded once
                send(sub, job, key)

        def send(sub, job, key, base=None):
            future = self.client.submit(grade_task, bundle, name, job.to_json(), Path(sub.path).read_bytes(),
                                        key=key, resources={resource_name(head): 1}, pure=False)
            running[future.key] = (sub, job, base or key)
            queue.add(future)

        submit()
        for future in queue:
            sub, job, base = running.pop(future.key)
            identity = (sub.student, sub.sha256)
            try:
                result = future.result()
            except KilledWorker:
                ran, sent = self._ran(future.key), sends.get(identity, 1)
                future.release()
                if ran < BLAME and sent < RETRIES:
                    # Its workers died while it waited behind another task, which Dask counts against it too:
                    # not its fault, so it is sent again, under a key of its own.
                    sends[identity] = sent + 1
                    send(sub, job, f"{base}-send{sent + 1}", base)
                    continue
                result = {"outcome": asdict(Outcome(student=sub.student, status="error", reason=(
                    f"its grading killed the Dask worker running it, {ran} times; not graded" if ran >= BLAME else
                    f"the Dask workers it was sent to died {sent} times before it could be graded; not graded, "
                    "run the command again to grade it")))}
            except Exception as exc:  # noqa: BLE001 - the task's own failure: that student's error, the class goes on
                result = {"outcome": asdict(Outcome(student=sub.student, status="error",
                                                    reason=f"the Dask task failed ({type(exc).__name__}: {exc})"))}
            future.release()
            if identity not in recorded:  # a task run twice (its worker died after it finished) counts once
                recorded.add(identity)
                if "host" in result:
                    self.placements[sub.student] = (result["host"], result["uid"])
                out = record(sub, self._landed(job, result), Path(job.scratch))
                results.append((sub, out))
                bar.update(1)
                bar.set_postfix_str(f"{sub.student}: {out.status}")
            submit()
        bar.close()
        return results

    def _ran(self, key: str) -> int:
        """How many times the task `key` started running on a worker (its `STARTED` events)."""
        return sum(1 for _, event in self.client.get_events(STARTED) if event.get("key") == key)

    @staticmethod
    def _landed(job: Job, result: dict) -> Outcome:
        """The worker's files written into the head's scratch folder, where `Batch._finish` takes them from."""
        out = Outcome(**result["outcome"])
        scratch = Path(job.scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        places = {"graded": scratch / "course" / "autograded" / job.student / job.assignment / job.notebook,
                  "feedback": scratch / "feedback.html", "partial": scratch / "partial.ipynb"}
        for what, dest in places.items():
            if result.get(what) is not None:
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(result[what])
        out.feedback = str(places["feedback"]) if result.get("feedback") is not None else ""
        return out
