"""What grading one submission produced: a status, a reason, points per graded cell."""

from __future__ import annotations

from dataclasses import dataclass, field

STATUSES = {
    "graded": "autograded",
    "invalid": "not a gradable notebook",
    "metadata-missing": "an editor stripped the nbgrader metadata and the cells could not be matched to the "
                        "assignment's unambiguously; zero points until a resubmission or a fix (see the reason)",
    "tampered": "graded cells deleted, added, renamed or changed in type, role or points; zero autograded "
                "points, flagged for review",
    "forgery": "test results were forged (a canary test passed); zero autograded points, flagged for review",
    "crashed": "the kernel died before grading finished",
    "timeout": "the submission ran past the wall-clock limit",
    "error": "the grader failed on this submission",
}
FLAGGED = ("tampered", "forgery")
CLIP = 600  # characters of a reason shown in a table: an assertion's message, with the values it compared


def clip(text: str, limit: int = CLIP) -> str:
    """`text` cut to about `limit` characters, keeping its start and its end (where an assertion's message
    and an error's last line are), the middle replaced by a mark saying how much was left out."""
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 5, limit - limit * 2 // 5
    return f"{text[:head]} [... {len(text) - head - tail:,} characters left out ...] {text[-tail:]}"


@dataclass
class Outcome:
    """One graded submission (the worker writes it as JSON, the batch records it)."""

    student: str
    status: str
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    grades: dict[str, dict] = field(default_factory=dict)  # grade_id -> {score, max, manual}
    errors: dict[str, str] = field(default_factory=dict)  # grade_id -> "ExceptionName: message"
    seconds: float = 0.0
    feedback: str = ""  # path of the feedback HTML in the worker's scratch folder
    log: str = ""  # nbgrader's log, summarised in one line
    probes: dict[str, dict] = field(default_factory=dict)  # str(seed) -> grade_id -> {text, why}: only when collecting
    audit: dict[str, dict[str, float]] = field(default_factory=dict)  # str(seed) -> grade_id -> points (Job.audit_seeds)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per grading step (bench/grading.py)
    peak_rss_mib: float = 0.0  # the worker's peak resident memory: kernels' output cannot swell it

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Outcome.status={self.status!r}: expected one of {', '.join(STATUSES)}")

    @property
    def cells(self) -> dict[str, tuple[float | None, float]]:
        """{grade_id: (score, max)} of autograded (code) cells."""
        return {g: (v["score"], v["max"]) for g, v in self.grades.items() if not v["manual"]}

    @property
    def manual(self) -> dict[str, tuple[float | None, float]]:
        """{grade_id: (0 if unanswered else None, max)} of written answers, graded by hand."""
        return {g: (v["score"], v["max"]) for g, v in self.grades.items() if v["manual"]}

    @property
    def auto_score(self) -> float:
        if self.status != "graded":
            return 0.0
        return sum(s or 0.0 for s, _ in self.cells.values())

    @property
    def auto_max(self) -> float:
        return sum(m for _, m in self.cells.values())

    def summary(self) -> str:
        manual = sum(m for _, m in self.manual.values())
        lines = [f"{self.student}: {self.status}, {self.auto_score:g} of {self.auto_max:g} autograded points"
                 + (f" (+{manual:g} graded by hand)" if manual else "") + (f"; {self.reason}" if self.reason else "")]
        for gid, (s, m) in self.cells.items():
            lines.append(f"  {gid:<28} {s if s is not None else '-':>4} / {m:g}")
            if gid in self.errors:
                lines.append(f"      {clip(self.errors[gid])}")
        return "\n".join(lines)
