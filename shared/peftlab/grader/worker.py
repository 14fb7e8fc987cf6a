"""Grade one submission: check it, autograde it with nbgrader in a sandboxed kernel, write feedback.

`autograde(job)` is the one grading path: the class grader runs it in a
worker process per submission, and the CI gates of the exercises
(`python -m peftlab.grader.exercises check`) call it directly, so the gates
test the code that grades students. The worker process is

    python -m peftlab.grader.worker JOB.json

which reads a `Job`, grades it and writes the `Outcome` to `result.json` in the
job's scratch folder. It dies with the process that started it. The class
grader does not start a fresh Python per submission: it forks each worker
from a server that imported all this once (`peftlab.grader.forkserver`).
What a worker is told (`Job`) is made by `peftlab.grader.assignment`.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    IgnorePattern,
    LimitOutput,
    SaveAutoGrades,
)

from ..files import write_atomic
from . import course as course_mod
from .feedback import write_feedback
from .gradebook import read_grades
from .inspect import inspect
from .kernel import kernel_manager_class
from .launcher import die_with_parent
from .outcome import Outcome
from .preprocessors import (
    CheckCanaries,
    CollectProbes,
    GuardedExecute,
    InjectParameters,
    InsertCanaries,
    InsertProbes,
    read_findings,
)
from .probes import judge, load
from .sandbox import Policy
from .settings import Settings

LOG_BYTES = 1 * 2**20  # the tail of nbgrader's log and of a traceback kept in the scratch folder


@dataclass
class Job:
    """Everything a worker needs to grade one submission; written as JSON by the batch."""

    student: str
    assignment: str
    notebook: str  # the assignment's notebook file name
    submission: str  # the staged notebook to grade
    scratch: str  # a folder of the grader's own, emptied for this job
    template: str  # a scratch course with the assignment released into its gradebook
    settings: Settings = field(default_factory=Settings)
    policy: Policy = field(default_factory=Policy)  # the kernel's sandbox
    canary_seed: str = ""
    notes: list[str] = field(default_factory=list)  # from importing, for the feedback
    probes: str = ""  # the assignment's probe file; "" when its tests' own verdicts decide (with canaries)
    probe_seed: int = 0  # the probes' inputs, drawn per submission from the class secret (`Assignment.probe_seed`)
    audit_seeds: list[int] = field(default_factory=list)  # more seeds, judged into `Outcome.audit`, not the grade
    expected: dict[str, dict[str, str]] = field(default_factory=dict)  # str(seed) -> grade_id -> the solution's payload
    collect: bool = False  # the solution's run: collect the payloads into `Outcome.probes` instead of judging

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        data["settings"] = Settings(**data["settings"])
        data["policy"] = Policy(**data["policy"])
        return cls(**data)

    @property
    def release(self) -> Path:
        return Path(self.template) / course_mod.RELEASE / self.assignment / self.notebook

    @property
    def source(self) -> Path:
        return Path(self.template) / course_mod.SOURCE / self.assignment / self.notebook


def summarise_log(text: str) -> str:
    """nbgrader's log in one line: its last error (or exception), and how many errors and warnings it had."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "| ERROR]" in ln or re.match(r"^\w+(Error|Exception)\b", ln)]
    warnings = [ln for ln in lines if "| WARNING]" in ln]
    last = errors[-1] if errors else (lines[-1] if lines else "no log")
    last = re.sub(r"^\[\w+ \| (ERROR|WARNING|INFO)\]\s*", "", last)
    return f"{last[:300]} ({len(errors)} error and {len(warnings)} warning lines in nbgrader's log)"


def _nbgrader_config(job: Job, course: Path, findings: Path):
    s = job.settings
    config = course_mod.nbgrader_config(course, cell_timeout=s.cell_timeout)
    config.Execute.kernel_manager_class = kernel_manager_class()
    # The kernel's state is of no use once the last probe has answered: stop it at once instead of asking it
    # to shut down and waiting for it (about 3 s a submission, the profile of bench/grading.py showed).
    config.Execute.shutdown_kernel = "immediate"
    config.SandboxKernelManager.policy = json.dumps(asdict(job.policy))
    config.Autograde.autograde_preprocessors = [
        InjectParameters, InsertCanaries, InsertProbes, GuardedExecute, CheckCanaries, CollectProbes, IgnorePattern,
        ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata,
    ]
    config.InjectParameters.parameters = s.parameters
    config.InsertCanaries.seed = job.canary_seed
    # Probes decide the points outside the kernel: canaries would only cost time (grading/README.md).
    config.InsertCanaries.count = 0 if job.probes else s.canaries
    config.InsertProbes.probes = job.probes
    config.InsertProbes.seeds = [int(job.probe_seed), *(int(a) for a in job.audit_seeds)]
    config.GuardedExecute.max_output_bytes = s.max_output_bytes
    config.GuardedExecute.findings = config.CheckCanaries.findings = config.CollectProbes.findings = str(findings)
    return config


def _cell_errors(notebook: Path) -> dict[str, str]:
    """{grade_id: "Name: message"} for every graded cell whose outputs hold an error."""
    out = {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        for o in cell.get("outputs", []):
            if gid and o.get("output_type") == "error":
                out[gid] = f"{o.get('ename', 'Error')}: {o.get('evalue', '')}".strip()
    return out


def decide_by_probes(job: Job, out: Outcome, found: list[dict]) -> None:
    """Each autograded test's points: its probe's payload, judged here, must agree with the solution's, and
    its test cell must have passed in the kernel.

    Both, because each alone can be bent: the kernel's verdict by the student's code (grading/README.md,
    Threat model), and a probe whose answer is a constant (a table's settings, "the loss stayed finite") by a
    notebook that sends the constant without doing the work. The seeds of `job.audit_seeds` are judged
    the same way into `out.audit`, which the fair-grading gate compares. With `job.collect` (the solution's
    run) the payloads are collected into `out.probes` instead: that is how the expected values are made."""
    sent = {(int(f.get("seed", 0)), f["grade_id"]): (f["text"], f["why"]) for f in found if f["kind"] == "probe"}
    if job.collect:
        for (seed, gid), (text, why) in sent.items():
            out.probes.setdefault(str(seed), {})[gid] = {"text": text, "why": why}
        return
    probes = load(job.probes)
    kernel_errors = dict(out.errors)
    for seed in [job.probe_seed, *job.audit_seeds]:
        expected = job.expected.get(str(seed), {})
        scores = {}
        for gid, grade in out.grades.items():
            if grade["manual"]:
                continue
            text, why = sent.get((int(seed), gid), (None, "the probe did not run (the kernel stopped before it)"))
            if gid in probes and gid in expected:
                reason = judge(probes[gid], text, why, expected[gid])
            else:
                reason = "this test has no expected values for its probe, so no points can be decided for it"
            scores[gid] = 0.0 if reason or gid in kernel_errors else float(grade["max"])
            if seed != job.probe_seed:
                continue
            grade["score"] = scores[gid]
            if reason and gid not in kernel_errors:
                out.errors[gid] = f"the grader's own check failed: {reason}"
                out.notes.append(f"{gid} reported success in the kernel, but the grader's own check failed ({reason[:200]})")
            elif reason:
                out.errors[gid] += f" (the grader's own check: {reason[:200]})"
        if seed != job.probe_seed:
            out.audit[str(seed)] = scores


def _grade(job: Job, out: Outcome) -> Path | None:
    """Run nbgrader's autograde; fill `out`; return the graded notebook (None if nbgrader failed)."""
    scratch = Path(job.scratch)
    course = scratch / "course"
    copying = time.perf_counter()
    shutil.rmtree(course, ignore_errors=True)
    shutil.copytree(job.template, course, symlinks=True)
    dest = course / "submitted" / job.student / job.assignment
    dest.mkdir(parents=True)
    shutil.copyfile(job.submission, dest / job.notebook, follow_symlinks=False)
    findings = scratch / "findings.jsonl"
    findings.unlink(missing_ok=True)

    api = course_mod.nbgrader_api(_nbgrader_config(job, course, findings))
    started = time.perf_counter()
    out.timings["copy"] = round(started - copying, 3)  # the scratch course and nbgrader's API for it
    result = api.autograde(job.assignment, job.student, force=True, create=True)
    out.timings["nbgrader"] = round(time.perf_counter() - started, 3)
    found = read_findings(str(findings))
    out.notes += [f["text"] for f in found if f["kind"] == "note"]
    text = (result.get("error") or "") + (result.get("log") or "")
    if not result.get("success"):
        (scratch / "nbgrader.log").write_text(text[-LOG_BYTES:])  # every write of the grader's is bounded
        out.log = summarise_log(text)
        if "DeadKernelError" in text or "kernel died" in text.lower():
            out.status, out.reason = "crashed", "the kernel died (os._exit, a crash, or running out of memory)"
        else:
            out.status, out.reason = "error", f"nbgrader could not grade it: {out.log}"
        return None

    reading = time.perf_counter()
    out.grades = read_grades(course, job.assignment, job.student)
    graded = course / "autograded" / job.student / job.assignment / job.notebook
    out.errors = _cell_errors(graded)
    timeouts = [gid for gid, err in out.errors.items() if err.startswith("CellTimeoutError")]
    if timeouts:
        out.notes.append(f"cell(s) {', '.join(timeouts)} ran past the {job.settings.cell_timeout} s cell limit")
    out.timings.update(next((
        {k: v for k, v in f.items() if k != "kind"} for f in found if f["kind"] == "timing"), {}))
    if job.probes:
        decide_by_probes(job, out, found)
    out.timings["read"] = round(time.perf_counter() - reading, 3)  # grades, cell errors, the probes' verdicts
    canaries = [f for f in found if f["kind"] == "canary"]
    passed = [c for c in canaries if c["ran"] and not c["failed"]]
    if passed:
        out.status = "forgery"
        out.reason = (f"{len(passed)} of {len(canaries)} grading-time canary tests, which must fail, "
                      "reported success: the kernel's error reports were suppressed or rewritten")
    return graded


def autograde(job: Job) -> Outcome:
    """Check and grade one submission, then write its feedback; never raises for a bad submission."""
    start = time.perf_counter()
    out = Outcome(student=job.student, status="graded", notes=list(job.notes))
    graded = None
    step = "checking"
    try:
        verdict = inspect(job.submission, job.release, job.settings)
        out.timings["check"] = round(time.perf_counter() - start, 3)
        out.notes += verdict.notes
        if verdict.status:
            out.status, out.reason = verdict.status, verdict.reason
        else:
            step = "grading"
            graded = _grade(job, out)
    except Exception as exc:  # a submission must never stop the batch: the failure becomes its status
        (Path(job.scratch) / "traceback.txt").write_text(traceback.format_exc()[-LOG_BYTES:])
        out.status = "error"
        out.reason = (f"the grader failed while {step} it ({type(exc).__name__}: {str(exc)[:200]}); "
                      f"the traceback is in {Path(job.scratch) / 'traceback.txt'}")
    started = time.perf_counter()
    feedback_page(job, out, graded, Path(job.scratch) / "feedback.html")
    out.timings["feedback"] = round(time.perf_counter() - started, 3)
    out.seconds = time.perf_counter() - start
    out.peak_rss_mib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    return out


def feedback_page(job: Job, out: Outcome, graded: Path | None, dest: Path) -> bool:
    """The one place feedback is written: `out` (and the notebook as graded, if any) as HTML at `dest`.

    The worker writes it for what it graded; the batch, for a submission no worker finished (rejected on
    import, stopped at the wall limit). Whether it was written; a failure is noted, never raised."""
    try:
        write_feedback(graded, job.release, job.source, out, job.assignment, dest)
    except Exception as exc:  # the grade stands without its page
        out.notes.append(f"feedback could not be written ({type(exc).__name__}: {str(exc)[:200]})")
        return False
    out.feedback = str(dest)
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m peftlab.grader.worker JOB.json   (written by peftlab-grade)", file=sys.stderr)
        return 2
    die_with_parent()  # with the batch process (or the fork server that forked this worker)
    job = Job.from_json(Path(argv[0]).read_text())
    out = autograde(job)
    write_atomic(Path(job.scratch) / "result.json", json.dumps(asdict(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
