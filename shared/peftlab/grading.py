"""Grade a class's submissions: import, sandboxed parallel autograding, feedback, CSV.

    peftlab-grade ASSIGNMENT SUBMISSIONS... [--workers N] [--work grading/work]

SUBMISSIONS are folders or zip files of notebooks named by student
(`alice.ipynb`, or `alice/<notebook>.ipynb`), the way they come out of Colab,
an LMS download or a JupyterHub exchange. Each submission is checked (JSON,
nbformat 4, graded cells present and of the right type), then autograded by
nbgrader in its own worker process, its kernel in a sandbox
(`peftlab.sandbox`), with the grading parameters injected after its
`parameters` cell the way papermill does. Canary cells that must fail are
mixed among the tests: a submission whose canaries pass has forged its test
results and is flagged with zero autograded points.

The nbgrader gradebook (`WORK/gradebook.db`) is the record. Each student's
grades and status are written in one transaction, so a batch killed midway and
run again resumes: finished students are kept (matched by the submission's
SHA-256), the rest are graded, nothing is counted twice. Feedback (HTML, hidden
tests' code removed) lands in `WORK/feedback/ASSIGNMENT/`, grades in
`WORK/ASSIGNMENT-grades.csv`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import nbgrade, sandbox

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MAX_NOTEBOOK_BYTES = 20 * 2**20
STATUSES = {
    "graded": "autograded",
    "invalid": "not a gradable notebook",
    "tampered": "graded cells deleted, renamed or changed in type; zero autograded points, flagged for review",
    "forgery": "test results were forged (a canary test passed); zero autograded points, flagged for review",
    "crashed": "the kernel died before grading finished",
    "timeout": "the submission ran past the wall-clock limit",
    "error": "the grader failed on this submission",
}
FLAGGED = ("tampered", "forgery")
# What grading injects after each notebook's `parameters` cell: small, CPU, deterministic.
GRADING_PARAMETERS = {"model_name": "tiny-qwen2", "device": "cpu", "seed": 0}


@dataclass
class Settings:
    workers: int = max(1, os.cpu_count() or 1)
    cell_timeout: int = 180  # seconds per cell; nbgrader's 30 s default is too short for training
    wall_timeout: int = 900  # seconds per submission, kernel start to feedback
    memory_bytes: int = 8 * 2**30
    max_processes: int = 64
    max_output_bytes: int = 2 * 2**20
    parameters: dict = field(default_factory=lambda: dict(GRADING_PARAMETERS))
    sandbox: str = "auto"  # "auto" (bubblewrap when installed), "bwrap" (required) or "none"
    uid_base: int = 61000  # per-worker user ids when the grader runs as root
    canaries: int = 2


@dataclass
class Submission:
    student: str
    origin: str  # where it came from, for messages
    path: str = ""  # staged copy
    sha256: str = ""
    status: str = ""
    reason: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """What grading one submission produced (written by the worker as JSON)."""

    student: str
    status: str
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    grades: dict[str, dict] = field(default_factory=dict)  # grade_id -> {score, max, manual, needs_manual}
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    feedback: str = ""  # path of the feedback HTML in the worker's scratch directory


# ---------------------------------------------------------------- importing
def _student_from(name: str, notebook: str) -> str:
    parts = Path(name).parts
    stem = Path(name).stem
    if Path(name).name == notebook and len(parts) >= 2:
        return parts[-2]  # alice/custom_dataset.ipynb
    for suffix in (f"_{Path(notebook).stem}", f"-{Path(notebook).stem}"):
        stem = stem.removesuffix(suffix)  # alice_custom_dataset.ipynb
    return stem


def import_submissions(sources: list[str | Path], notebook: str, staging: Path) -> list[Submission]:
    """Stage every notebook found in folders / zip files / single files; invalid ones carry a reason."""
    staging.mkdir(parents=True, exist_ok=True)
    found: list[tuple[str, str, bytes | None, str]] = []  # (name, origin, data, problem)
    for source in map(Path, sources):
        if source.is_dir():
            for p in sorted([*source.glob("*.ipynb"), *source.glob("*/*.ipynb")]):
                if ".ipynb_checkpoints" in p.parts:
                    continue
                size = p.stat().st_size
                data = p.read_bytes() if size <= MAX_NOTEBOOK_BYTES else None
                found.append((str(p.relative_to(source)), str(p), data, "" if data is not None else f"{size:,} bytes"))
        elif source.suffix == ".zip":
            try:
                with zipfile.ZipFile(source) as zf:
                    for info in zf.infolist():
                        if info.is_dir() or not info.filename.endswith(".ipynb") or "__MACOSX" in info.filename:
                            continue
                        origin = f"{source}:{info.filename}"
                        if info.file_size > MAX_NOTEBOOK_BYTES:
                            found.append((info.filename, origin, None, f"{info.file_size:,} bytes"))
                            continue
                        with zf.open(info) as fh:  # read at most the limit: a zip bomb cannot lie past it
                            data = fh.read(MAX_NOTEBOOK_BYTES + 1)
                        problem = f"more than {MAX_NOTEBOOK_BYTES:,} bytes" if len(data) > MAX_NOTEBOOK_BYTES else ""
                        found.append((info.filename, origin, None if problem else data, problem))
            except zipfile.BadZipFile as exc:
                raise nbgrade.GradingError(f"{source}: not a readable zip file ({exc}).") from None
        elif source.suffix == ".ipynb" and source.is_file():
            found.append((source.name, str(source), source.read_bytes(), ""))
        else:
            raise nbgrade.GradingError(f"{source}: not a folder, a .zip or an .ipynb file.")

    out: dict[str, Submission] = {}
    rejected: list[Submission] = []
    for name, origin, data, problem in found:
        student = _student_from(name, notebook)
        sub = Submission(student=student, origin=origin)
        if not STUDENT_ID.match(student):
            sub.student = "invalid-" + hashlib.sha256(origin.encode()).hexdigest()[:8]
            sub.status, sub.reason = "invalid", (
                f"{origin}: cannot tell the student from the name {name!r}; name files <student>.ipynb "
                "(letters, digits, . _ - @)")
            rejected.append(sub)
            continue
        if student in out:
            sub.student = f"{student}-duplicate-" + hashlib.sha256(origin.encode()).hexdigest()[:8]
            sub.status, sub.reason = "invalid", f"{origin}: a second submission for {student} (first: {out[student].origin})"
            rejected.append(sub)
            continue
        if problem:
            sub.status, sub.reason = "invalid", f"{origin}: notebook too large ({problem}; limit {MAX_NOTEBOOK_BYTES:,})"
            sub.sha256 = hashlib.sha256(origin.encode()).hexdigest()
        else:
            sub.sha256 = hashlib.sha256(data).hexdigest()
            sub.path = str(staging / f"{student}.ipynb")
            Path(sub.path).write_bytes(data)
        out[student] = sub
    return [*out.values(), *rejected]


# ---------------------------------------------------------------- checking
def _graded_cells(nb: dict) -> dict[str, dict]:
    cells = {}
    for cell in nb.get("cells", []):
        meta = (cell.get("metadata") or {}).get("nbgrader") or {}
        gid = meta.get("grade_id")
        if gid and (meta.get("grade") or meta.get("solution") or meta.get("locked")) and gid not in cells:
            cells[gid] = cell
    return cells


def inspect(path: str | Path, release: str | Path) -> tuple[str, str, list[str]]:
    """('', '', notes) for a gradable notebook, else (status, reason, notes). Runs no student code."""
    import nbformat

    path = Path(path)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return "invalid", "the file is not UTF-8 text; upload the .ipynb file itself", []
    except json.JSONDecodeError as exc:
        return "invalid", f"not valid notebook JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); " \
                          "download the notebook again from Jupyter or Colab", []
    if not isinstance(nb, dict) or "nbformat" not in nb:
        return "invalid", "not a Jupyter notebook (no nbformat field)", []
    if nb.get("nbformat") != 4:
        return "invalid", f"nbformat {nb.get('nbformat')!r} is not supported; save it as nbformat 4 " \
                          "(Jupyter and Colab do by default)", []
    try:
        nbformat.validate(nbformat.from_dict(nb))
    except nbformat.ValidationError as exc:
        return "invalid", f"not a valid nbformat 4 notebook ({exc.message[:200]})", []
    expected = _graded_cells(json.loads(Path(release).read_text()))
    got = _graded_cells(nb)
    problems, notes = [], []
    missing = [gid for gid in expected if gid not in got]
    if missing:
        problems.append(f"graded cell(s) deleted or renamed: {', '.join(missing)}")
    for gid, cell in expected.items():
        if gid in got and got[gid].get("cell_type") != cell["cell_type"]:
            problems.append(f"cell {gid} changed from {cell['cell_type']} to {got[gid].get('cell_type')}")
        elif gid in got and cell["metadata"]["nbgrader"].get("locked") and \
                "".join(got[gid].get("source", "")) != "".join(cell["source"]):
            notes.append(f"edited locked cell {gid} was restored from the release")
    if problems:
        return "tampered", "; ".join(problems), notes
    return "", "", notes


# ----------------------------------------------------- nbgrader preprocessors
NOTES: list[str] = []  # filled by the preprocessors inside a worker process
CANARY_REPORT: list[dict] = []


def _preprocessors():
    from nbgrader.preprocessors import Execute, NbGraderPreprocessor
    from nbgrader.utils import is_grade, is_solution
    from traitlets import Dict, Integer, Unicode

    class InjectParameters(NbGraderPreprocessor):
        """papermill-style: a cell with the grading parameters right after the `parameters` cell."""

        parameters = Dict().tag(config=True)

        def preprocess(self, nb, resources):
            if self.parameters:
                import nbformat
                from papermill.translators import translate_parameters

                source = translate_parameters("python", "python", dict(self.parameters), "Parameters injected for grading")
                cell = nbformat.v4.new_code_cell(source)
                cell.metadata["tags"] = ["injected-parameters"]
                tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
                nb.cells.insert(tagged[0] + 1 if tagged else 0, cell)
            return nb, resources

    class InsertCanaries(NbGraderPreprocessor):
        """Test-like cells that must fail, placed after randomly chosen test cells."""

        seed = Unicode("").tag(config=True)
        count = Integer(2).tag(config=True)

        def preprocess(self, nb, resources):
            import nbformat

            rng = random.Random(self.seed)
            tests = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and is_grade(c) and not is_solution(c)]
            for i in sorted(rng.sample(tests, min(self.count, len(tests))), reverse=True):
                cell = nbformat.v4.new_code_cell(_canary_source(rng))
                cell.metadata["peftlab"] = {"canary": True}
                nb.cells.insert(i + 1, cell)
            return nb, resources

    class CheckCanaries(NbGraderPreprocessor):
        """Record whether each canary failed, then remove the canaries."""

        def preprocess(self, nb, resources):
            kept = []
            for cell in nb.cells:
                if cell.metadata.get("peftlab", {}).get("canary"):
                    failed = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
                    CANARY_REPORT.append({"failed": failed, "ran": cell.get("execution_count") is not None})
                else:
                    kept.append(cell)
            nb.cells = kept
            return nb, resources

    class GuardedExecute(Execute):
        """nbgrader's Execute with a cap on the output a kernel may send back."""

        max_output_bytes = Integer(2 * 2**20).tag(config=True)

        def output(self, outs, msg, display_id, cell_index):
            self._sent = getattr(self, "_sent", 0) + len(json.dumps(msg.get("content", {}), default=str))
            if self._sent > self.max_output_bytes:
                if not getattr(self, "_capped", False):
                    self._capped = True
                    NOTES.append(f"output past {self.max_output_bytes:,} bytes was dropped (from cell {cell_index})")
                return None
            return super().output(outs, msg, display_id, cell_index)

    return InjectParameters, InsertCanaries, CheckCanaries, GuardedExecute


_CANARY_WORDS = ["trainable parameters", "merged weight", "held-out loss", "rank of the update", "scaling",
                 "masked labels", "module count", "output shape", "quantized bytes", "row count"]


def _canary_source(rng: random.Random) -> str:
    """Looks like one of the course's test cells; always fails unless the kernel lies."""
    what = rng.choice(_CANARY_WORDS)
    a = rng.randint(2, 9_999)
    b = a + rng.randint(1, 97)
    return f"# Checks the {what} once more.\nchecks.assert_equal({a}, {b}, \"{what}\")"


# ------------------------------------------------------------------ worker
def _policy(job: dict) -> sandbox.Policy:
    return sandbox.Policy(
        hide=job["hide"], expose=job["expose"], memory_bytes=job["memory_bytes"],
        cpu_seconds=job["wall_timeout"], max_processes=job["max_processes"], uid=job.get("uid"),
    )


def run_worker(job: dict) -> Outcome:
    """Autograde one staged submission in a scratch course (runs in its own process)."""
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import (
        AssignLatePenalties,
        CheckCellMetadata,
        IgnorePattern,
        LimitOutput,
        SaveAutoGrades,
    )

    start = time.perf_counter()
    student, assignment, notebook = job["student"], job["assignment"], job["notebook"]
    scratch = Path(job["scratch"])
    course = scratch / "course"
    shutil.rmtree(course, ignore_errors=True)
    shutil.copytree(job["template"], course)
    dest = course / "submitted" / student / assignment
    dest.mkdir(parents=True)
    shutil.copy(job["path"], dest / notebook)

    inject, canaries, check, guarded = _preprocessors()
    config = nbgrade.settings(course, cell_timeout=job["cell_timeout"])
    if job["sandbox"]:
        sandbox.ACTIVE_POLICY = _policy(job)
        config.Execute.kernel_manager_class = sandbox._kernel_manager_class()
    config.Autograde.autograde_preprocessors = [
        inject, canaries, guarded, check, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
        AssignLatePenalties, CheckCellMetadata,
    ]
    config.InjectParameters.parameters = job["parameters"]
    config.InsertCanaries.seed = job["canary_seed"]
    config.InsertCanaries.count = job["canaries"]
    config.GuardedExecute.max_output_bytes = job["max_output_bytes"]

    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    nbgrade._tools_on_path()
    api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
    result = api.autograde(assignment, student, force=True, create=True)
    out = Outcome(student=student, status="graded", notes=list(job.get("notes", [])))
    if not result.get("success"):
        text = (result.get("error") or "") + (result.get("log") or "")
        if "DeadKernelError" in text or "Kernel died" in text or "kernel died" in text.lower():
            out.status, out.reason = "crashed", "the kernel died (os._exit, a crash, or running out of memory)"
        else:
            (scratch / "nbgrader.log").write_text(text)
            errors = re.findall(r"^\s*(\w+(?:Error|Exception)\b.*)$", text, re.M) or ["see nbgrader.log"]
            out.status, out.reason = "error", f"nbgrader could not grade it: {errors[-1].strip()[:300]}"
        out.seconds = time.perf_counter() - start
        return out

    for grade in nbgrade.read_grades(course, assignment, student):
        for gid, (score, max_score) in grade.cells.items():
            out.grades[gid] = {"score": score, "max": max_score, "manual": False}
        for gid, (score, max_score) in grade.manual.items():  # score 0: left unanswered; None: to grade by hand
            out.grades[gid] = {"score": score, "max": max_score, "manual": True}
    graded_nb = course / "autograded" / student / assignment / notebook
    out.errors = nbgrade.cell_errors(graded_nb)
    out.notes += NOTES
    timeouts = [gid for gid, err in out.errors.items() if err.startswith("CellTimeoutError")]
    if timeouts:
        out.notes.append(f"cell(s) {', '.join(timeouts)} ran past the {job['cell_timeout']} s cell limit")
    passed_canaries = [c for c in CANARY_REPORT if c["ran"] and not c["failed"]]
    if passed_canaries:
        out.status = "forgery"
        out.reason = (f"{len(passed_canaries)} of {len(CANARY_REPORT)} grading-time canary tests, which must fail, "
                      "reported success: the kernel's error reports were suppressed or rewritten")
    feedback = scratch / "feedback.html"
    write_feedback(graded_nb, Path(job["release"]), Path(job["source"]), out, assignment, feedback)
    out.feedback = str(feedback)
    out.seconds = time.perf_counter() - start
    return out


# ---------------------------------------------------------------- feedback
def _summary_markdown(out: Outcome, assignment: str) -> str:
    auto = {g: v for g, v in out.grades.items() if not v["manual"]}
    score = sum(v["score"] or 0 for v in auto.values()) if out.status not in FLAGGED else 0
    lines = [f"# Feedback: {assignment}, {out.student}", "",
             f"**Status: {out.status}** ({STATUSES[out.status]})" + (f": {out.reason}" if out.reason else ""), ""]
    if auto:
        lines += [f"Autograded points: **{score:g} of {sum(v['max'] for v in auto.values()):g}**"
                  + (" (written answers are graded by hand)" if len(auto) < len(out.grades) else ""), "",
                  "| test | points | why |", "|---|---|---|"]
        for gid, v in auto.items():
            why = out.errors.get(gid, "passed" if v["score"] == v["max"] else "")
            why = why.replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {gid} | {v['score'] or 0:g} / {v['max']:g} | {why} |")
    if out.notes:
        lines += ["", "Notes:", *[f"- {n}" for n in out.notes]]
    return "\n".join(lines)


def write_feedback(graded_nb: Path | None, release: Path, source: Path, out: Outcome, assignment: str,
                   dest: Path) -> Path:
    """HTML feedback: the student's notebook as graded, hidden tests' code and tracebacks removed."""
    import nbformat
    from nbconvert import HTMLExporter

    summary = nbformat.v4.new_markdown_cell(_summary_markdown(out, assignment))
    if graded_nb is None or not graded_nb.is_file():
        nb = nbformat.v4.new_notebook(cells=[summary])
    else:
        nb = nbformat.read(graded_nb, as_version=4)
        visible = {gid: c for gid, c in _graded_cells(json.loads(release.read_text())).items()}
        hidden = {gid for gid, c in _graded_cells(json.loads(source.read_text())).items()
                  if "BEGIN HIDDEN TESTS" in "".join(c["source"])}
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if cell.cell_type == "code":
                cell.execution_count = None
            if gid in hidden:
                # Visible code only; of the outputs, the error's one-line message (no traceback, which
                # quotes the hidden code, and no printed output, which could carry it too).
                cell.source = "".join(visible[gid]["source"]).rstrip() + "\n# (hidden tests ran here; their code is not shown)"
                cell.outputs = [nbformat.from_dict({**o, "traceback": [f"{o.get('ename', 'Error')}: {o.get('evalue', '')}"]})
                                for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        nb.cells.insert(0, summary)
    exporter = HTMLExporter(template_name="lab")
    if hasattr(exporter, "sanitize_html"):
        exporter.sanitize_html = True  # a submission's HTML output must not run scripts in a reader's browser
    html, _ = exporter.from_notebook_node(nb)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(html, encoding="utf-8")
    return dest


# ------------------------------------------------------------- gradebook
STATUS_TABLE = """CREATE TABLE IF NOT EXISTS peftlab_status (
    assignment TEXT NOT NULL, student TEXT NOT NULL, sha256 TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL, notes TEXT NOT NULL, PRIMARY KEY (assignment, student))"""


def _gradebook(work: Path):
    from nbgrader.api import Gradebook

    nbgrade._tools_on_path()
    return Gradebook(f"sqlite:///{(work / 'gradebook.db').resolve()}")


def finished(work: Path, assignment: str) -> dict[str, str]:
    """{student: sha256} of submissions whose grades are in the gradebook."""
    from sqlalchemy import text

    with _gradebook(work) as gb:
        gb.db.execute(text(STATUS_TABLE))
        gb.db.commit()
        rows = gb.db.execute(text("SELECT student, sha256 FROM peftlab_status WHERE assignment = :a"),
                             {"a": assignment}).fetchall()
    return {s: h for s, h in rows}


def record(work: Path, assignment: str, sub: Submission, out: Outcome) -> None:
    """Write one student's grades and status in a single transaction."""
    from nbgrader.api import MissingEntry
    from sqlalchemy import text

    with _gradebook(work) as gb:
        gb.db.execute(text(STATUS_TABLE))
        gb.update_or_create_student(sub.student)
        try:
            gb.remove_submission(assignment, sub.student)
        except MissingEntry:
            pass
        submission = gb.add_submission(assignment, sub.student)
        zero = out.status != "graded"
        for nb in submission.notebooks:
            for grade in nb.grades:
                g = out.grades.get(grade.name)
                if grade.cell.cell_type == "markdown":  # written answers: by hand, unless unanswered
                    answered = g is not None and g["score"] is None and not zero
                    grade.auto_score = None if answered else 0.0
                    grade.needs_manual_grade = answered or out.status in FLAGGED
                else:
                    grade.auto_score = 0.0 if zero or g is None else float(g["score"] or 0.0)
                    grade.needs_manual_grade = out.status in FLAGGED
        gb.db.execute(
            text("INSERT OR REPLACE INTO peftlab_status VALUES (:a, :s, :h, :st, :r, :n)"),
            {"a": assignment, "s": sub.student, "h": sub.sha256, "st": out.status, "r": out.reason,
             "n": json.dumps(out.notes)},
        )
        gb.db.commit()


def export_csv(work: Path, assignment: str, path: Path) -> Path:
    """One row per student: status, points, reason. Sorted, no timestamps: reruns give the same file."""
    from sqlalchemy import text

    with _gradebook(work) as gb:
        gb.db.execute(text(STATUS_TABLE))
        status = {s: (st, r, n) for s, st, r, n in gb.db.execute(
            text("SELECT student, status, reason, notes FROM peftlab_status WHERE assignment = :a"),
            {"a": assignment}).fetchall()}
        ids = [c.name for nb in gb.find_assignment(assignment).notebooks for c in nb.grade_cells]
        rows = []
        for student in sorted(status):
            sub = gb.find_submission(assignment, student)
            cells = {g.name: g for nb in sub.notebooks for g in nb.grades}
            auto = [g for g in cells.values() if g.cell.cell_type == "code"]
            st, reason, notes = status[student]
            rows.append({
                "student": student, "status": st,
                "autograded": f"{sum(g.auto_score or 0 for g in auto):g}",
                "autograded_max": f"{sum(g.max_score for g in auto):g}",
                "pending_by_hand": f"{sum(g.max_score for g in cells.values() if g.needs_manual_grade):g}",
                "flagged": "yes" if st in FLAGGED else "",
                **{gid: ("" if cells[gid].auto_score is None else f"{cells[gid].auto_score:g}") for gid in ids},
                "reason": reason, "notes": "; ".join(json.loads(notes)),
            })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["student", "status", "autograded", "autograded_max",
                                                "pending_by_hand", "flagged", *ids, "reason", "notes"])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


# -------------------------------------------------------------- the batch
@dataclass
class Batch:
    root: Path
    assignment: str
    work: Path
    settings: Settings = field(default_factory=Settings)
    log: object = print

    def __post_init__(self):
        self.root, self.work = Path(self.root).resolve(), Path(self.work).resolve()
        names = nbgrade.assignments(self.root)
        if self.assignment not in names:
            raise nbgrade.GradingError(f"no assignment {self.assignment!r} in {self.root / 'solutions'}; "
                                       f"choose one of {', '.join(names)}.")
        (source,) = sorted((self.root / nbgrade.SOURCE / self.assignment).glob("*.ipynb"))
        self.notebook = source.name
        self.source = source
        self.release = self.root / nbgrade.RELEASE / self.assignment / self.notebook

    def _sandboxed(self) -> bool:
        mode = self.settings.sandbox
        if mode == "none":
            return False
        if sandbox.bwrap_path():
            return True
        if mode == "bwrap":
            raise nbgrade.GradingError("bubblewrap (bwrap) is required but not installed; apt-get install bubblewrap.")
        sandbox.warn_unsandboxed()
        return False

    def prepare(self) -> None:
        """The main course (gradebook with this assignment) and a template for worker scratch courses."""
        self.work.mkdir(parents=True, exist_ok=True)
        secret = self.work / "canary-secret"
        if not secret.exists():
            secret.write_text(secrets.token_hex(16))
        course = self.work / "course"
        shutil.rmtree(course / nbgrade.SOURCE / self.assignment, ignore_errors=True)
        shutil.copytree(self.root / nbgrade.SOURCE / self.assignment, course / nbgrade.SOURCE / self.assignment)
        self._register_assignment(course)
        template = self.work / "template" / self.assignment
        shutil.rmtree(template, ignore_errors=True)
        nbgrade.scratch_course(self.root, [self.assignment], into=template)
        self.template = template

    def _register_assignment(self, course: Path) -> None:
        from nbgrader.apps import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory

        nbgrade._tools_on_path()
        config = nbgrade.settings(course)
        config.CourseDirectory.db_url = f"sqlite:///{self.work / 'gradebook.db'}"
        result = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config).generate_assignment(
            self.assignment, force=True)
        if not result.get("success"):
            raise nbgrade.GradingError(f"could not register {self.assignment} in the gradebook: {result.get('error')}")

    def _job(self, sub: Submission, slot: int, sandboxed: bool) -> dict:
        secret = (self.work / "canary-secret").read_text()
        # The whole course (solutions, .git history, grading/) is hidden; only the package comes back.
        hide = [str(self.root), str(self.work), "/home", "/root", *self.hidden_inputs]
        expose = sorted({sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parent.parent)}
                        | {os.environ.get("PEFTLAB_CACHE", "") or str(_tiny_cache())} - {""})
        return {
            "student": sub.student, "assignment": self.assignment, "notebook": self.notebook, "path": sub.path,
            "scratch": str(self.work / "scratch" / self.assignment / sub.student), "template": str(self.template),
            "release": str(self.release), "source": str(self.source), "cell_timeout": self.settings.cell_timeout,
            "wall_timeout": self.settings.wall_timeout, "memory_bytes": self.settings.memory_bytes,
            "max_processes": self.settings.max_processes, "max_output_bytes": self.settings.max_output_bytes,
            "parameters": self.settings.parameters, "canaries": self.settings.canaries,
            "canary_seed": hashlib.sha256(f"{secret}:{self.assignment}:{sub.student}:{sub.sha256}".encode()).hexdigest(),
            "sandbox": sandboxed, "hide": hide, "expose": expose,
            "uid": self.settings.uid_base + slot if os.geteuid() == 0 else None, "notes": sub.notes,
        }

    def run(self, sources: list[str | Path], regrade: bool = False) -> list[tuple[Submission, Outcome]]:
        sandboxed = self._sandboxed()
        self.hidden_inputs = [str(Path(s).resolve().parent if Path(s).is_file() else Path(s).resolve())
                              for s in sources]
        if not getattr(self, "template", None):
            self.prepare()
        if "tiny" in str(self.settings.parameters.get("model_name", "")):
            from .tiny import ensure_tiny_model

            ensure_tiny_model()  # the sandbox cannot write the cache, so build the model first
        subs = import_submissions(sources, self.notebook, self.work / "staging" / self.assignment)
        done = {} if regrade else finished(self.work, self.assignment)
        todo, results = [], []
        for sub in subs:
            if done.get(sub.student) == sub.sha256:
                continue
            if not sub.status:
                sub.status, sub.reason, sub.notes = inspect(sub.path, self.release)
            if sub.status:
                out = Outcome(student=sub.student, status=sub.status, reason=sub.reason, notes=sub.notes)
                self._finish(sub, out, None)
                results.append((sub, out))
            else:
                todo.append(sub)
        skipped = len(subs) - len(todo) - len(results)
        self.log(f"{self.assignment}: {len(subs)} submissions, {skipped} already graded, {len(results)} rejected "
                 f"before running, {len(todo)} to grade with {self.settings.workers} worker(s)"
                 f"{'' if sandboxed else ' WITHOUT a sandbox'}")
        results += self._pool(todo, sandboxed)
        export_csv(self.work, self.assignment, self.csv_path)
        return results

    @property
    def csv_path(self) -> Path:
        return self.work / f"{self.assignment}-grades.csv"

    def _finish(self, sub: Submission, out: Outcome, scratch: Path | None) -> None:
        # Where nbgrader's formgrader (grading/nbgrader_config.py) looks for them, for grading by hand.
        for step, src in (("submitted", sub.path),
                          ("autograded", scratch and scratch / "course" / "autograded" / sub.student / self.assignment
                           / self.notebook)):
            dest = self.work / step / sub.student / self.assignment / self.notebook
            shutil.rmtree(dest.parent, ignore_errors=True)
            if src and Path(src).is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest)
        fb = self.work / "feedback" / self.assignment / sub.student / (Path(self.notebook).stem + ".html")
        if out.feedback and Path(out.feedback).is_file():
            fb.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(out.feedback, fb)
        else:
            write_feedback(None, self.release, self.source, out, self.assignment, fb)
        record(self.work, self.assignment, sub, out)
        if scratch is not None and out.status == "graded":
            shutil.rmtree(scratch, ignore_errors=True)

    def _pool(self, todo: list[Submission], sandboxed: bool) -> list[tuple[Submission, Outcome]]:
        from tqdm.auto import tqdm

        pending, running, results = list(todo), {}, []
        free = list(range(self.settings.workers))
        bar = tqdm(total=len(todo), desc=f"grading {self.assignment}", unit="nb", disable=not todo)
        while pending or running:
            while pending and free:
                sub, slot = pending.pop(0), free.pop(0)
                job = self._job(sub, slot, sandboxed)
                scratch = Path(job["scratch"])
                shutil.rmtree(scratch, ignore_errors=True)
                scratch.mkdir(parents=True)
                (scratch / "job.json").write_text(json.dumps(job))
                log = (scratch / "worker.log").open("w")
                proc = subprocess.Popen([sys.executable, "-m", "peftlab.grading", "--worker", str(scratch / "job.json")],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                running[proc] = (sub, slot, scratch, time.monotonic(), log)
            time.sleep(0.2)
            for proc, (sub, slot, scratch, started, log) in list(running.items()):
                over = time.monotonic() - started > self.settings.wall_timeout
                if proc.poll() is None and not over:
                    continue
                if over and proc.poll() is None:
                    os.killpg(proc.pid, 9)
                    proc.wait()
                log.close()
                out = self._collect(sub, scratch, proc.returncode, over)
                self._finish(sub, out, scratch)
                results.append((sub, out))
                free.append(slot)
                del running[proc]
                bar.update(1)
                bar.set_postfix_str(f"{sub.student}: {out.status}")
        bar.close()
        return results

    def _collect(self, sub: Submission, scratch: Path, code: int, over: bool) -> Outcome:
        result = scratch / "result.json"
        if over:
            return Outcome(student=sub.student, status="timeout",
                           reason=f"still running after the {self.settings.wall_timeout} s wall limit; stopped")
        if code == 0 and result.is_file():
            return Outcome(**json.loads(result.read_text()))
        tail = (scratch / "worker.log").read_text(errors="replace").strip().splitlines()[-3:]
        return Outcome(student=sub.student, status="error",
                       reason=f"grader worker exited with code {code}: {' | '.join(tail)[:400]}")


def _tiny_cache() -> Path:
    from .tiny import cache_root

    return cache_root()


def report(results: list[tuple[Submission, Outcome]]) -> str:
    lines = [f"{'student':<24} {'status':<9} {'points':>7}  reason"]
    for sub, out in sorted(results, key=lambda r: r[0].student):
        pts = sum(v["score"] or 0 for v in out.grades.values() if not v["manual"]) if out.status == "graded" else 0
        lines.append(f"{sub.student:<24} {out.status:<9} {pts:>7g}  {out.reason[:90]}")
    return "\n".join(lines)


# -------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        if sys.platform.startswith("linux"):
            import ctypes
            import signal

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the batch process
        job = json.loads(Path(argv[1]).read_text())
        out = run_worker(job)
        (Path(job["scratch"]) / "result.json").write_text(json.dumps(asdict(out)))
        return 0
    parser = argparse.ArgumentParser(prog="peftlab-grade", description=__doc__.split("\n\n")[0])
    parser.add_argument("assignment", help="assignment folder name under solutions/, e.g. 05_custom_dataset")
    parser.add_argument("submissions", nargs="+", help="folders, zip files or notebooks of submissions")
    parser.add_argument("--work", default=None, help="grading folder (default: grading/work of the course)")
    parser.add_argument("--workers", type=int, default=Settings.workers, help="parallel submissions (default: cores)")
    parser.add_argument("--cell-timeout", type=int, default=Settings.cell_timeout, help="seconds per cell")
    parser.add_argument("--wall-timeout", type=int, default=Settings.wall_timeout, help="seconds per submission")
    parser.add_argument("--memory-gib", type=float, default=8.0, help="address-space limit of a kernel")
    parser.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default="auto")
    parser.add_argument("--regrade", action="store_true", help="grade again even if already in the gradebook")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="grading parameter injected after the parameters cell (repeatable)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .config import parse_overrides

    try:
        root = nbgrade.course_root()
        params = {**GRADING_PARAMETERS, **parse_overrides(args.param)}
        settings = Settings(workers=max(1, args.workers), cell_timeout=args.cell_timeout,
                            wall_timeout=args.wall_timeout, memory_bytes=int(args.memory_gib * 2**30),
                            parameters=params, sandbox=args.sandbox)
        batch = Batch(root, args.assignment, Path(args.work or root / "grading" / "work"), settings)
        results = batch.run(args.submissions, regrade=args.regrade)
    except nbgrade.GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(results))
    print(f"grades: {batch.csv_path}\nfeedback: {batch.work / 'feedback' / args.assignment}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
