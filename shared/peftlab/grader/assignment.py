"""An assignment ready to grade: the set-up that the class grader and the single-notebook check share.

    ready = Assignment(root, "05_custom_dataset", work, settings).prepare()
    job = ready.job("alice", "staging/alice.ipynb", "scratch/alice", sha256=..., hide=[...], slot=0)

One `Assignment` is one assignment of one course, graded from one grading
folder (`work`). It owns, and is the only place that decides:

- the **scratch course** (`template`): the assignment's source released by
  nbgrader, which every worker copies; in the class's gradebook too for a batch;
- the **model's readiness**: the tiny model (`tiny.TINY_NAME`) is built before
  any kernel starts, since the sandbox cannot write the model cache;
- the **probe file** (`grading/probes/ASSIGNMENT.py`) and its coverage of the
  assignment's test cells;
- the **seeds**: one rule, an HMAC of the class secret (`work/canary-secret`):
  the probes' inputs and the canaries' places, both per submission (student
  and SHA-256), so no two submissions share probe inputs;
- the **expected values**: the solution run through the probes for every seed
  a class needs, in one run of the notebook (`expect`), cached per seed in
  `work/probes/ASSIGNMENT-expected.json` under a key of everything else they
  depend on (probe file, solution, parameters, course package);
- the **Job factory**: a worker's whole order, sandbox policy included.

`peftlab.grader.batch` grades a class with it; `peftlab.grader.exercises.grade`
(the instructor's check of one notebook, and the CI gates) uses the course's
own grading folder, `grading/work`, so both draw the same seed from the same
secret and share one cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import shutil
from dataclasses import replace
from pathlib import Path

import nbformat

from ..files import write_atomic
from ..tiny import TINY_NAME, ensure_tiny_model
from . import course as course_mod
from . import probes as probes_mod
from .course import GradingError, fill_solutions
from .sandbox import Policy, policy_for
from .settings import Settings
from .worker import Job, autograde


def autograded_tests(release: Path) -> list[str]:
    """Grade ids of the release's autograded cells (code cells that carry points)."""
    cells = json.loads(Path(release).read_text())["cells"]
    return [c["metadata"]["nbgrader"]["grade_id"] for c in cells
            if c["cell_type"] == "code" and c.get("metadata", {}).get("nbgrader", {}).get("grade")]


class Assignment:
    """`name` of the course at `root`, graded from the folder `work` under `settings`."""

    def __init__(self, root: str | Path, name: str, work: str | Path, settings: Settings | None = None,
                 log=print):
        self.root, self.work = Path(root).resolve(), Path(work).resolve()
        self.name, self.settings, self.log = name, settings or Settings(), log
        self.source = course_mod.source_notebook(self.root, name)  # the instructor's notebook
        self.notebook = self.source.name
        self.template: Path | None = None
        self.probes, self.expected = "", {}  # the probe file, and {str(seed): {grade_id: the solution's payload}}
        self._solution_scratch = self.work / "scratch-solution" / name

    # ------------------------------------------------------------ set-up, once per class
    def prepare(self, into: str | Path | None = None, template: str | Path | None = None) -> Assignment:
        """Scratch course, model, probes and expected values. `into`: a private folder for the scratch course
        (the single-notebook check); by default the grading folder's, with the assignment in its gradebook.
        `template`: with `into`, a scratch course of this assignment that `course.scratch_course` already
        generated from the same sources, used as it is (graders only copy it)."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.secret()
        if into is None:
            template, solution = self.work / "template" / self.name, self.work / "scratch-solution" / self.name
            shutil.rmtree(template, ignore_errors=True)
            course_mod.scratch_course(self.root, [self.name], into=template)
            course_mod.generate(template, self.name, db_folder=self.work)  # the class's gradebook
        elif template is not None:
            template, solution = Path(template), Path(into) / "solution"
        else:
            template, solution = Path(into) / "template", Path(into) / "solution"
            course_mod.scratch_course(self.root, [self.name], into=template)
        self.template = template
        self.ready_model()
        self._probes(solution)
        return self

    @property
    def release(self) -> Path:
        """The released notebook, as nbgrader generated it in the scratch course."""
        return self.template / course_mod.RELEASE / self.name / self.notebook

    def ready_model(self) -> None:
        """The tiny model is built here: the sandbox cannot write the cache. Other models are the kernels' own."""
        if self.settings.parameters.get("model_name") == TINY_NAME:
            ensure_tiny_model()

    def secret(self) -> str:
        """The class secret, made once per grading folder (the first of several processes to make it wins)."""
        path = self.work / "canary-secret"
        if not path.exists():
            fresh = write_atomic(path.with_name(f".{path.name}.{os.getpid()}.new"), secrets.token_hex(16))
            try:
                os.link(fresh, path)
            except FileExistsError:
                pass
            finally:
                fresh.unlink()
        return path.read_text()

    def seed(self, *parts: str) -> str:
        """The one seed rule: a hash of the class secret, the assignment and `parts`."""
        return hashlib.sha256(":".join([self.secret(), *parts]).encode()).hexdigest()

    def canary_seed(self, student: str, sha256: str) -> str:
        """Where one submission's canaries go (only for an assignment without probes)."""
        return self.seed(self.name, student, sha256)

    def probe_seed(self, student: str, sha256: str) -> int:
        """The probes' seed of one submission: an HMAC of the class secret over the assignment, the student
        and the submission's SHA-256. Two students never share inputs, nor do two versions of one notebook,
        so values seen in one feedback, a classmate's or one's own, answer no other submission's probes."""
        return self._keyed_seed("probes", self.name, student, sha256)

    def gate_seeds(self, n: int) -> list[int]:
        """`n` seeds of this class for checks that grade one notebook under several (the fair-grading gate)."""
        return [self._keyed_seed("gate", self.name, str(i)) for i in range(n)]

    def _keyed_seed(self, *parts: str) -> int:
        msg = "\0".join(parts).encode()
        return int(hmac.new(self.secret().encode(), msg, hashlib.sha256).hexdigest()[:12], 16)

    def _probes(self, solution: Path) -> None:
        path = probes_mod.probe_file(self.root, self.name)
        if not self.settings.probes or not path.is_file():
            return
        probes_mod.check_coverage(probes_mod.load(path), autograded_tests(self.release), path)
        self.probes, self._solution_scratch = str(path), solution
        self.expected = self._cache().get("expected", {})

    @property
    def _cache_path(self) -> Path:
        return self.work / "probes" / f"{self.name}-expected.json"

    def _key(self) -> str:
        """What every seed's expected values depend on besides the seed (`probes.digest`)."""
        return probes_mod.digest(self.probes, self.source.read_text(),
                                 json.dumps(self.settings.parameters, sort_keys=True))

    def _cache(self) -> dict:
        """{"key": ..., "expected": {str(seed): {grade_id: payload}}}, emptied when the key changed."""
        try:
            cached = json.loads(self._cache_path.read_text())
        except (OSError, ValueError):
            cached = {}
        key = self._key()
        if cached.get("key") != key or not isinstance(cached.get("expected"), dict):
            cached = {"key": key, "expected": {}}
        return cached

    def expect(self, seeds) -> None:
        """The solution's payloads for every seed in `seeds` not yet cached, from one run of the solution that
        asks its probes once per seed (the notebook runs once for a whole class). Processes that share the
        grading folder take turns (a lock), so a seed is computed once."""
        if not self.probes:
            return
        wanted = sorted({int(s) for s in seeds})
        self._cache_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._cache_path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cached = self._cache()
            missing = [s for s in wanted if str(s) not in cached["expected"]]
            for start in range(0, len(missing), self.SEEDS_PER_RUN):
                chunk = missing[start:start + self.SEEDS_PER_RUN]
                self.log(f"{self.name}: running the solution through its probes for {len(chunk)} seed(s)")
                cached["expected"].update(self._solution_values(self.probes, chunk, self._solution_scratch))
                write_atomic(self._cache_path, json.dumps(cached))
        self.expected = cached["expected"]

    SEEDS_PER_RUN = 64  # probe cells of one solution run: a class of 200 is 4 runs of the solution notebook

    def _solution_values(self, probes: str, seeds: list[int], scratch: Path) -> dict[str, dict[str, str]]:
        """{str(seed): {grade_id: payload}} of the instructor's solution, through the same probes: what
        students must return.

        The solution runs in the same sandbox as a student's notebook, but the kernel runs only instructor
        code; its payloads must all be valid, or grading stops before any student is graded."""
        # Instructor code, trusted to finish: the course's cell limit at least (a tight limit for a class's
        # students must not fail the solution on a busy machine), and one more try before grading stops.
        settings = replace(self.settings, cell_timeout=max(self.settings.cell_timeout, Settings.cell_timeout))
        policy = policy_for(self.settings, hide=self._hidden())
        for _ in range(2):
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            solved = scratch / self.notebook
            nbformat.write(fill_solutions(self.template, self.name), solved)
            out = autograde(Job(student="solution", assignment=self.name, notebook=self.notebook,
                                submission=str(solved), scratch=str(scratch), template=str(self.template),
                                settings=settings, policy=policy, probes=probes, probe_seed=seeds[0],
                                audit_seeds=seeds[1:], collect=True))
            if out.status == "graded":
                break
        if out.status != "graded":
            raise GradingError(f"the solution of {self.name} could not be run for its probes "
                               f"({out.status}: {out.reason}); see {scratch}")
        expected, problems = {}, []
        for seed in seeds:
            sent = out.probes.get(str(seed), {})
            for gid in probes_mod.load(probes):
                entry = sent.get(gid) or {"text": None, "why": "the probe did not run"}
                why = probes_mod.parse(entry["text"])[1] if entry["text"] is not None else entry["why"]
                if why:
                    problems.append(f"{gid} (seed {seed}): {why}")
                else:
                    expected.setdefault(str(seed), {})[gid] = entry["text"]
        if problems:
            raise GradingError(f"{probes}: the solution's probes must return plain values: " + "; ".join(problems[:5]))
        shutil.rmtree(scratch, ignore_errors=True)
        return expected

    # ------------------------------------------------------------ one job per submission
    def _hidden(self, *more: str) -> list[str]:
        # The course (solutions, .git history, grading/), the grading folder and the scratch course stay out.
        return [str(self.root), str(self.work), *([] if self.template.is_relative_to(self.work)
                                                  else [str(self.template.parent)]), *more]

    def policy(self, hide: list[str] = (), slot: int = 0) -> Policy:
        """The sandbox of worker `slot`'s kernel, with the folders in `hide` (the submissions') hidden too."""
        return policy_for(self.settings, hide=self._hidden(*hide), slot=slot)

    def job(self, student: str, submission: str | Path, scratch: str | Path, *, sha256: str = "",
            notes: list[str] = (), hide: list[str] = (), slot: int = 0, seeds: list[int] | None = None) -> Job:
        """Everything a worker needs to grade `submission` as `student`'s, in the folder `scratch`.

        The probes' seed is the submission's own (`probe_seed`), unless `seeds` (the gate's) replaces it: the
        first decides the points, the others are judged into `Outcome.audit`. Call `expect` for the seeds
        first (the batch does, for the whole class at once): a seed without the solution's values scores 0."""
        seeds = list(seeds) if seeds else [self.probe_seed(student, sha256)]
        return Job(student=student, assignment=self.name, notebook=self.notebook, submission=str(submission),
                   scratch=str(scratch), template=str(self.template), settings=self.settings,
                   policy=self.policy(hide, slot), canary_seed=self.canary_seed(student, sha256), notes=list(notes),
                   probes=self.probes, probe_seed=seeds[0], audit_seeds=seeds[1:],
                   expected={str(s): self.expected.get(str(s), {}) for s in seeds})
