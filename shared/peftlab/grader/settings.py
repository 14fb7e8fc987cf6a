"""Every grading knob in one place: time, memory, processes, output, sizes, parameters.

The class grader (`peftlab-grade`), the CI gates (`python -m peftlab.grader.exercises check`),
nbgrader's own commands (`grading/nbgrader_config.py`) and the sandbox all read
their limits from `Settings`, so a limit is changed here and nowhere else. The
one limit written elsewhere, Validate's for students, is checked against
`validate_timeout` by a test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from ..tiny import TINY_NAME

GiB = 2**30
MiB = 2**20

# What grading injects after each notebook's `parameters` cell: small, CPU, deterministic.
GRADING_PARAMETERS = {"model_name": TINY_NAME, "device": "cpu", "seed": 0}


def _uid_base_from_env() -> int:
    text = os.environ.get("PEFTLAB_GRADER_UID_BASE", "61000")
    if not text.isdigit() or not 1000 <= int(text) < 2**31 - 1024:
        raise ValueError(f"PEFTLAB_GRADER_UID_BASE={text!r}: expected a user id from 1000 on, unused on this "
                         "machine (worker N runs as that id + N).")
    return int(text)


@dataclass
class Settings:
    """How a submission is graded. Defaults are the course's; the CLI and tests override fields."""

    workers: int = max(1, os.cpu_count() or 1)
    # Seconds per cell. nbgrader's default of 30 s is too short for a training cell on a laptop; whole
    # notebooks take 8-20 s on the tiny model (README, Performance), so 300 s leaves room on a busy machine.
    cell_timeout: int = 300
    wall_timeout: int = 900  # seconds per submission, kernel start to feedback
    # Seconds per cell of nbgrader's Validate button, which students press where Jupyter reads a literal
    # `c.Execute.timeout` (nbgrader_config.py at the course root and in exercises/; tests/test_exercises.py
    # holds both to this): 3x the 60 s per-cell budget the exercises aim for on 2 cores (bench/exercise_cells.py).
    validate_timeout: int = 180
    memory_bytes: int = 8 * GiB  # address space per kernel process (RLIMIT_AS)
    max_processes: int = 64  # processes of the sandbox's user id
    max_output_bytes: int = 2 * MiB  # output a kernel may send back; the rest is dropped
    max_file_bytes: int = 256 * MiB  # one file written by the kernel (RLIMIT_FSIZE)
    writable_bytes: int = 1 * GiB  # the kernel's whole writable space: its working folder and /tmp together
    max_notebook_bytes: int = 20 * MiB  # a submitted notebook file
    max_json_depth: int = 64  # nesting of a submitted notebook's JSON; real notebooks stay under 12
    parameters: dict = field(default_factory=lambda: dict(GRADING_PARAMETERS))
    sandbox: str = "auto"  # "auto" (bubblewrap when installed), "bwrap" (required) or "none"
    # Per-worker user ids when the grader runs as root: worker N runs as uid_base + N. A batch locks its ids
    # (uids.claim_uids); a second batch on the machine moves up to free ones and says so.
    uid_base: int = field(default_factory=lambda: _uid_base_from_env())
    canaries: int = 2  # test-like cells that must fail, mixed among the tests (only without probes)
    # Points from the assignment's probes (grading/probes/ASSIGNMENT.py), judged in the grader, when it has
    # them. False: the in-kernel test cells decide, as in plain nbgrader (benchmarks, demonstrations).
    probes: bool = True

    def __post_init__(self):
        if self.sandbox not in ("auto", "bwrap", "none"):
            raise ValueError(f"Settings.sandbox={self.sandbox!r}: choose 'auto', 'bwrap' or 'none'.")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or value < 0):
                raise ValueError(f"Settings.{f.name}={value!r}: expected a whole number >= 0.")

    @classmethod
    def from_dict(cls, data: dict) -> Settings:
        return cls(**data)
