"""Grade a class's submissions: import, sandboxed parallel autograding, feedback, CSV.

    peftlab-grade ASSIGNMENT SUBMISSIONS... [--workers N] [--work grading/work]
    peftlab-grade ASSIGNMENT SUBMISSIONS... --cluster local:N | --scheduler tcp://HOST:8786    (Dask: `cluster`)
    peftlab-grade ASSIGNMENT SUBMISSIONS... --shard i/N, then peftlab-grade merge ASSIGNMENT   (`shards`)
    python -m peftlab.grader ASSIGNMENT SUBMISSIONS...          (the same)

SUBMISSIONS are folders or zip files of notebooks named by student
(`alice.ipynb`, or `alice/<notebook>.ipynb`), the way they come out of Colab,
an LMS download or a JupyterHub exchange. Each submission is graded by
`peftlab.grader.worker.autograde` in its own worker process, forked from a
server that imported the grader once (checked, then
autograded by nbgrader with its kernel in a sandbox, `peftlab.grader.sandbox`,
grading parameters injected after its `parameters` cell, then the
assignment's probes, whose values the worker judges against the solution's:
`peftlab.grader.probes`; canary cells only for an assignment without probes).
Whatever a submission holds, it ends with a status and a reason; the batch
goes on.

The nbgrader gradebook (`WORK/gradebook.db`) is the record. Each student's
grades and status are written in one transaction, so a batch killed midway and
run again resumes: finished students are kept (matched by the submission's
SHA-256), the rest are graded, nothing is counted twice. Feedback (HTML, hidden
tests' code removed) lands in `WORK/feedback/ASSIGNMENT/`, grades in
`WORK/ASSIGNMENT-grades.csv`.

Its size (about 500 lines) is the head's: intake, set-up, the fork server's
pool, the hand-over to a Dask cluster, recording and the command line. Each
step it calls lives in a module of its own (`__init__`'s table).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..files import write_atomic
from ..overrides import parse_overrides
from . import shards
from . import slot as slot_mod
from .assignment import Assignment
from .course import GradingError, course_root
from .export import (
    canvas_column_warning,
    export_all,
    final_statuses,
    grades_csv,
    moodle_warning,
    read_worksheet,
    write_intake,
)
from .forkserver import ForkServer
from .gradebook import finished, record, record_identity
from .inspect import guard
from .intake import Submission, fate_counts, import_submissions, rows
from .outcome import Outcome
from .repair import repair_file
from .roster import Roster
from .sandbox import use_bubblewrap
from .settings import GRADING_PARAMETERS, GiB, Settings
from .uids import UidClaim, claim_uids, remove_kernel_folders
from .worker import Job, feedback_page


def copy_out(src: Path, dest: Path, limit: int) -> bool:
    """Copy a regular file the grader made, as data: never through a link, at most `limit` bytes."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return False
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        return False
    write_atomic(dest, data)
    return True


def local_workers(spec: str) -> int:
    """'local:N' (--cluster) -> N; '' -> 0."""
    kind, _, n = spec.partition(":")
    if spec and (kind != "local" or not n.isdigit() or int(n) < 1):
        raise GradingError(f"--cluster {spec!r}: expected local:N, N worker processes on this machine (local:2); "
                           "for a cluster elsewhere, --scheduler tcp://HOST:8786")
    return int(n) if spec else 0


@dataclass
class Batch:
    root: Path
    assignment: str
    work: Path
    settings: Settings = field(default_factory=Settings)
    log: object = print
    roster: Roster | None = None
    id_regex: re.Pattern | None = None
    canvas_column: str = ""  # the Canvas assignment column of the export, e.g. 'Lab 2 (4711)'
    moodle_worksheet: str = ""  # the grading worksheet downloaded from Moodle: its participant ids
    cluster: str = ""  # "local:N": grade on a Dask cluster of N processes started here (`cluster`)
    scheduler: str = ""  # a Dask scheduler's address, tcp://host:8786: grade on its workers (`cluster`)
    shard: tuple[int, int] | None = None  # (i, N): grade only slice i of N (`shards`); `work` is the shard's

    def __post_init__(self):
        if self.cluster:
            local_workers(self.cluster)  # a wrong spec is said now, not after the class's set-up
        self.ready = Assignment(self.root, self.assignment, self.work, self.settings, log=self.log)
        self.root, self.work = self.ready.root, self.ready.work
        self.source, self.notebook = self.ready.source, self.ready.notebook
        self.rejected: list[Submission] = []  # files no student could be given (reported, never recorded)
        self.missing: list[str] = []  # roster students without a submission
        self.found: list[Submission] = []  # every file found, students' and rejected (the intake report)
        self.exports: dict[str, Path] = {}
        self.placements: dict[str, tuple[str, int]] = {}  # on a cluster: student -> (host, user id) that graded it
        self.solution_seconds = 0.0  # the last run's solution run through the probes for its class's seeds
        self._server: ForkServer | None = None
        self._engine = None  # on a cluster: (cluster.DaskGrading, the future of its start)
        self._engine_pool: ThreadPoolExecutor | None = None
        self._uids: UidClaim | None = None

    @property
    def template(self) -> Path | None:
        return self.ready.template

    @property
    def probes(self) -> str:
        return self.ready.probes

    @property
    def expected(self) -> dict[str, str]:
        return self.ready.expected

    def _workers(self) -> ForkServer:
        """The server that forks this batch's workers (`peftlab.grader.forkserver`), started on first use."""
        if self._server is None or not self._server.alive():
            self._server = ForkServer()
        return self._server

    def _stop_workers(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def close(self) -> None:
        """Stop the worker server (or the cluster's connection) and give back the user ids (`run` does it when
        it ends)."""
        self._stop_workers()
        if self._engine is not None:
            engine, opened = self._engine
            self._engine = None
            opened.exception()  # an open still under way ends first
            engine.__exit__(None, None, None)
            self._engine_pool.shutdown()
        if self._uids is not None:
            self._uids.release()
            self._uids = None

    def _claim_uids(self) -> None:
        """Lock this batch's kernel user ids, so a second batch on the machine takes others (`claim_uids`)."""
        if self._uids is None and os.geteuid() == 0 and use_bubblewrap(self.settings):
            self._uids = claim_uids(self.settings.uid_base, self.settings.workers, log=self.log)
            self.settings.uid_base = self._uids.base  # shared with self.ready: every policy uses the ids held

    def prepare(self) -> None:
        """The assignment ready to grade (`peftlab.grader.assignment`): scratch course, gradebook, model, probes."""
        self._claim_uids()  # the solution's run uses them too
        if self.cluster or self.scheduler:
            self._start_cluster()  # in a thread: the workers' start overlaps the set-up
        else:
            self._workers()  # its imports overlap the set-up
        self.ready.prepare()

    def _start_cluster(self) -> None:
        from .cluster import DaskGrading  # distributed: a heavy import, only for grading on a cluster

        if self._engine is None:
            engine = DaskGrading(local_workers(self.cluster), self.scheduler, log=self.log)
            self._engine_pool = ThreadPoolExecutor(1, thread_name_prefix="peftlab-cluster-start")
            self._engine = (engine, self._engine_pool.submit(engine.open, self.settings))

    def _job(self, sub: Submission, slot: int, sources: list[str]) -> Job:
        return self.ready.job(sub.student, sub.path, self.work / "scratch" / self.assignment / sub.student,
                              sha256=sub.sha256, notes=sub.notes, hide=sources, slot=slot)

    def run(self, sources: list[str | Path], regrade: bool = False) -> list[tuple[Submission, Outcome]]:
        try:
            self._claim_uids()
            return self._run(sources, regrade)
        finally:
            self.close()

    def _run(self, sources: list[str | Path], regrade: bool) -> list[tuple[Submission, Outcome]]:
        sandboxed = use_bubblewrap(self.settings)
        inputs = [str(Path(s).resolve().parent if Path(s).is_file() else Path(s).resolve()) for s in sources]
        # Intake first: a wrong path or a download with nothing gradable is said before the minutes of set-up.
        found = import_submissions(sources, self.notebook, self.work / "staging" / self.assignment, self.settings,
                                   assignment=self.assignment, roster=self.roster, id_regex=self.id_regex)
        if self.shard:
            shards.started(self.work)
            found = [f for f in found if shards.mine(f, *self.shard)]
            if not any(not f.rejected for f in found):
                self.log(f"{self.assignment}: shard {self.shard[0]}/{self.shard[1]} has no student of this class")
                self.found = found
                write_intake(self.intake_path, found)
                shards.finished(self.work, 0)
                return []
        subs = self._intake(found)
        if self.template is None:
            self.prepare()
        self._repair(subs)
        done = {} if regrade else finished(self.work, self.assignment)
        todo, results = [], []
        for sub in subs:
            if done.get(sub.student) == sub.sha256:
                continue
            if sub.status:  # rejected on import: nothing to run
                out = Outcome(student=sub.student, status=sub.status, reason=sub.reason, notes=sub.notes)
                results.append((sub, self._record(sub, out, None)))
            else:
                todo.append(sub)
        skipped = len(subs) - len(todo) - len(results)
        self.log(f"{self.assignment}: {len(subs)} submissions, {skipped} already graded, {len(results)} rejected "
                 f"on import, {len(todo)} to grade with {self.settings.workers} worker(s)"
                 f"{'' if sandboxed else ' WITHOUT a sandbox'}")
        try:
            started = time.perf_counter()
            self.ready.expect(self.ready.probe_seed(s.student, s.sha256) for s in todo)  # one solution run, all seeds
            self.solution_seconds = time.perf_counter() - started
            results += (self._on_cluster if self.cluster or self.scheduler else self._pool)(todo, inputs)
        finally:
            self._stop_workers()  # the user ids are given back when `run` ends
        grades_csv(self.work, self.assignment, self.csv_path)
        # The intake report again, with each student's final status: a file found gradable at import but then
        # invalid (or tampered, or stopped) never says "graded".
        write_intake(self.intake_path, self.found, statuses=final_statuses(self.work, self.assignment))
        self.exports = export_all(self.work, self.assignment, self.canvas_column, self.roster,
                                   self.moodle_worksheet)
        if self.shard:
            shards.finished(self.work, len(subs))
        return results

    @property
    def csv_path(self) -> Path:
        return self.work / f"{self.assignment}-grades.csv"

    @property
    def intake_path(self) -> Path:
        return self.work / f"{self.assignment}-intake.csv"

    def _repair(self, subs: list[Submission]) -> None:
        """Notebooks whose nbgrader metadata an editor stripped: re-attached where unambiguous (`repair`)."""
        release = self.ready.release
        for sub in subs:
            if sub.status or not sub.path:
                continue
            # Under the guard: whatever a file does to the parser (RecursionError, MemoryError) is its status.
            repaired, why = guard(f"reading {Path(sub.origin).name}", repair_file, Path(sub.path), release,
                                  self.settings)
            status, reason, note = repaired or ("invalid", why, "")
            if status:
                sub.status, sub.reason = status, reason
            if note:
                sub.notes.append(note)

    def _intake(self, found: list[Submission]) -> list[Submission]:
        """The students among what was found; every file and its fate in ASSIGNMENT-intake.csv."""
        self.found = found
        self.rejected = [s for s in found if s.rejected]
        subs = [s for s in found if not s.rejected]
        self.missing = sorted(set(self.roster.students) - {s.student for s in subs}) if self.roster else []
        write_intake(self.intake_path, found)
        folders = Counter(m[1] for s in subs if (m := re.search(r"assignment folder '([^']*)'", s.layout)))
        for folder, n in sorted(folders.items()):
            self.log(f"warning: {n} submission(s) sit in nbgrader's submitted/<student>/{folder}/, not "
                     f"{self.assignment}/: graded as {self.assignment}; check that it is the same assignment")
        if not subs:
            table = rows(found)
            why = "\n  ".join(f"[{r['fate']}] {r['reason'] or r['file']}" for r in table) or "no file at all"
            raise GradingError(f"nothing to grade for {self.assignment} in the submissions given; "
                               f"{fate_counts(table)}:\n  {why}\n(every file and its fate: {self.intake_path})")
        return subs

    def _finish(self, sub: Submission, out: Outcome, scratch: Path | None) -> None:
        # Where nbgrader's formgrader (grading/nbgrader_config.py) looks for them, for grading by hand.
        limit = 4 * self.settings.max_notebook_bytes
        graded = scratch and scratch / "course" / "autograded" / sub.student / self.assignment / self.notebook
        for step, src in (("submitted", sub.path), ("autograded", graded)):
            dest = self.work / step / sub.student / self.assignment / self.notebook
            shutil.rmtree(dest.parent, ignore_errors=True)
            kept = bool(src) and copy_out(Path(src), dest, limit)
            if step == "autograded" and out.status == "graded" and not kept:
                # A grade nobody can check against its notebook is not recorded as one (issue 28).
                size = Path(src).lstat().st_size if src and os.path.lexists(src) else None
                out.status, out.reason = "error", (
                    f"the graded notebook could not be kept ({'missing' if size is None else f'{size:,} bytes'}; "
                    f"limit {limit:,}); no points recorded, its scratch folder is kept for review")
        fb = self.work / "feedback" / self.assignment / sub.student / (Path(self.notebook).stem + ".html")
        fb.unlink(missing_ok=True)
        if not (out.feedback and copy_out(Path(out.feedback), fb, limit)):  # no worker wrote it: the page now
            if out.feedback:
                out.notes.append(f"the feedback page was over {limit:,} bytes; this one leaves the notebook out")
            partial = scratch / "partial.ipynb" if scratch is not None and out.status == "timeout" else None
            feedback_page(self._job(sub, 0, []), out, partial if partial and partial.is_file() else None, fb)
        record_identity(self.work, self.assignment, sub)  # first: a batch killed between the two regrades the student
        record(self.work, self.assignment, sub, out)
        if scratch is not None and out.status == "graded":
            shutil.rmtree(scratch, ignore_errors=True)

    def _record(self, sub: Submission, out: Outcome, scratch: Path | None) -> Outcome:
        """`_finish` that never stops the class: a failure is the student's `error`, recorded if it can be."""
        started = time.perf_counter()
        try:
            self._finish(sub, out, scratch)
            out.timings["record"] = round(time.perf_counter() - started, 3)  # the head's share (bench/grading.py)
            return out
        except Exception as exc:  # noqa: BLE001 - RecursionError and MemoryError included
            out = Outcome(student=sub.student, status="error",
                          reason=f"recording the result failed ({type(exc).__name__}: {str(exc)[:200]})")
        try:
            self._finish(sub, out, None)
        except Exception as exc:  # noqa: BLE001 - not recorded: the next run grades this student again
            self.log(f"{sub.student}: could not be recorded ({type(exc).__name__}: {str(exc)[:200]}); "
                     "run the command again to grade it")
        return out

    def _on_cluster(self, todo: list[Submission], inputs: list[str]) -> list[tuple[Submission, Outcome]]:
        """The same grading on a Dask cluster's workers; this process still records every result."""
        self._start_cluster()  # started by `prepare`; again when the assignment was ready before
        engine = self._engine[0]
        self._engine[1].result()  # its start's error, if any, is the batch's
        self.placements = engine.placements
        jobs = ((sub, self._job(sub, 0, inputs)) for sub in todo)
        return engine.grade(jobs, len(todo), self.template, self.probes, self._record)

    def _pool(self, todo: list[Submission], inputs: list[str]) -> list[tuple[Submission, Outcome]]:
        pending, running, results = list(todo), {}, []
        exits: dict[int, int] = {}  # pid -> exit code, of workers not yet collected
        free = list(range(self.settings.workers))
        bar = tqdm(total=len(todo), desc=f"grading {self.assignment}", unit="nb", disable=not todo)
        while pending or running:
            while pending and free:
                sub, slot = pending.pop(0), free.pop(0)
                job = self._job(sub, slot, inputs)
                pid = slot_mod.start(self._workers(), job)
                running[pid] = (sub, slot, Path(job.scratch), time.monotonic())
            # Wake when a worker ends, or when the next one reaches its wall limit.
            deadline = min(started for _, _, _, started in running.values()) + self.settings.wall_timeout
            exits.update(self._server.wait(timeout=max(0.0, min(5.0, deadline - time.monotonic()))))
            for pid, (sub, slot, scratch, started) in list(running.items()):
                over = pid not in exits and time.monotonic() - started > self.settings.wall_timeout
                if pid not in exits and not over:
                    continue
                if over:
                    self._server.kill(pid)  # the worker, its kernel and whatever the kernel started
                    while pid not in exits:
                        exits.update(self._server.wait(timeout=5.0))
                out = self._record(sub, slot_mod.collect(sub.student, scratch, exits.pop(pid), over,
                                                         self.settings.wall_timeout), scratch)
                if self._uids is not None:  # the slot's kernel is gone: so is anything it left
                    remove_kernel_folders(self._uids.base + slot)
                results.append((sub, out))
                free.append(slot)
                del running[pid]
                bar.update(1)
                bar.set_postfix_str(f"{sub.student}: {out.status}")
        bar.close()
        return results


def report(results: list[tuple[Submission, Outcome]], rejected: list[Submission] = (),
           missing: list[str] = (), found: list[Submission] = (), statuses: dict | None = None) -> str:
    """The console report: every reason in full, then the files no student was given, then who is missing,
    then how many files met each fate (`intake.FATES`)."""
    lines = [f"{'student':<24} {'status':<9} {'points':>7}  reason"]
    for sub, out in sorted(results, key=lambda r: r[0].student):
        late = " (late)" if sub.late else ""
        lines.append(f"{sub.student:<24} {out.status:<9} {out.auto_score:>7g}  {out.reason}{late}")
    if rejected:
        lines += ["", f"{len(rejected)} other file(s), none graded:",
                  *[f"  [{s.fate or 'unknown-student'}] {s.reason}" for s in rejected]]
    if missing:
        lines += ["", f"{len(missing)} student(s) on the roster without a submission: {', '.join(missing)}"]
    if found:
        lines += ["", fate_counts(rows(list(found), statuses))]
    return "\n".join(lines)


# -------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peftlab-grade", description=__doc__.split("\n\n")[0])
    parser.add_argument("assignment", help="assignment folder name under solutions/, e.g. 05_custom_dataset")
    parser.add_argument("submissions", nargs="+", help="folders, zip files or notebooks of submissions")
    parser.add_argument("--work", default=None, help="grading folder (default: grading/work of the course)")
    parser.add_argument("--workers", type=int, default=Settings.workers, help="parallel submissions (default: cores)")
    parser.add_argument("--cell-timeout", type=int, default=Settings.cell_timeout, help="seconds per cell")
    parser.add_argument("--wall-timeout", type=int, default=Settings.wall_timeout, help="seconds per submission")
    parser.add_argument("--memory-gib", type=float, default=Settings.memory_bytes / GiB,
                        help="address-space limit of a kernel process")
    parser.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default=Settings.sandbox)
    parser.add_argument("--uid-base", type=int, default=None,
                        help="when run as root, worker N's kernel runs as this user id + N (default 61000, or "
                             "PEFTLAB_GRADER_UID_BASE); ids another batch holds are skipped, with a message")
    parser.add_argument("--regrade", action="store_true", help="grade again even if already in the gradebook")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="grading parameter injected after the parameters cell (repeatable)")
    parser.add_argument("--roster", default=None,
                        help="class list CSV (id, name, email, lms_id): maps LMS ids, reports who is missing")
    parser.add_argument("--id-regex", default=None, metavar="REGEX",
                        help="read the student from each file's path with this regex's (?P<student>...) group "
                             "(optional (?P<late>...), (?P<attempt>...)), for layouts not recognised")
    parser.add_argument("--canvas-column", default="", metavar="'NAME (ID)'",
                        help="the Canvas assignment the grades go to, as Canvas names it: 'Lab 2 (4711)' (default: "
                             "the assignment folder's name, which Canvas imports as a new assignment)")
    parser.add_argument("--moodle", default="", metavar="WORKSHEET.csv",
                        help="the grading worksheet downloaded from the Moodle assignment (Download grading "
                             "worksheet): its participant ids, matched by e-mail then name, go into the Moodle "
                             "export whatever the download was (else: a Moodle download's, or the roster's moodle_id)")
    engine = parser.add_mutually_exclusive_group()
    engine.add_argument("--cluster", default="", metavar="local:N",
                        help="grade on a Dask cluster of N worker processes started on this machine")
    engine.add_argument("--scheduler", default="", metavar="tcp://HOST:8786",
                        help="grade on the workers of this Dask scheduler (every machine installs the same "
                             "course; grading/README.md)")
    parser.add_argument("--shard", default="", metavar="i/N",
                        help="grade only slice i of N of the class, into WORK/shards/i-of-N (a Slurm array or "
                             "Kubernetes indexed Job runs the N); then `peftlab-grade merge ASSIGNMENT`")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        root = course_root()
        params = {**GRADING_PARAMETERS, **parse_overrides(args.param)}
        settings = Settings(workers=max(1, args.workers), cell_timeout=args.cell_timeout,
                            wall_timeout=args.wall_timeout, memory_bytes=int(args.memory_gib * GiB),
                            parameters=params, sandbox=args.sandbox,
                            **({} if args.uid_base is None else {"uid_base": args.uid_base}))
        try:
            id_regex = re.compile(args.id_regex) if args.id_regex else None
        except re.error as exc:
            raise GradingError(f"--id-regex {args.id_regex!r}: not a regular expression ({exc}).") from None
        if id_regex is not None and "student" not in id_regex.groupindex:
            raise GradingError(f"--id-regex {args.id_regex!r}: name the student's part (?P<student>...).")
        roster = Roster.load(args.roster) if args.roster else None
        if args.moodle:
            read_worksheet(args.moodle)  # a wrong file stops here, before any grading
        work = Path(args.work or root / "grading" / "work")
        shard = shards.parse(args.shard) if args.shard else None
        if shard:
            work = shards.shard_work(root, args.assignment, work, *shard)
        batch = Batch(root, args.assignment, work, settings,
                      roster=roster, id_regex=id_regex, canvas_column=args.canvas_column,
                      moodle_worksheet=args.moodle, cluster=args.cluster, scheduler=args.scheduler, shard=shard)
        results = batch.run(args.submissions, regrade=args.regrade)
    except GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(results, batch.rejected, batch.missing, batch.found, final_statuses(batch.work, args.assignment)))
    for warning in (canvas_column_warning(args.assignment, args.canvas_column),
                    moodle_warning(batch.exports["Moodle worksheet"])):
        if warning:
            print(warning)
    print(f"grades: {batch.csv_path}\nevery file found: {batch.intake_path}\n"
          + "".join(f"{what}: {path}\n" for what, path in batch.exports.items())
          + f"feedback: {batch.work / 'feedback' / args.assignment}")
    return 0


def merge_main(argv: list[str]) -> int:
    """`peftlab-grade merge ASSIGNMENT [--work W]`: the shards of W (`--shard i/N`) into W's gradebook and CSV."""
    parser = argparse.ArgumentParser(prog="peftlab-grade merge", description=merge_main.__doc__)
    parser.add_argument("assignment")
    parser.add_argument("--work", default=None, help="grading folder the shards were graded under")
    parser.add_argument("--roster", default=None, help="class list CSV, as for grading")
    parser.add_argument("--canvas-column", default="", metavar="'NAME (ID)'", help="as for grading")
    parser.add_argument("--moodle", default="", metavar="WORKSHEET.csv", help="as for grading")
    args = parser.parse_args(argv)
    try:
        root = course_root()
        work = Path(args.work or root / "grading" / "work")
        roster = Roster.load(args.roster) if args.roster else None
        shards.merge(root, args.assignment, work, canvas_column=args.canvas_column, roster=roster,
                     moodle_worksheet=args.moodle)
    except GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
