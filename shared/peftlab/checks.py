"""Checks for exercise test cells: a failing check says how far off the answer is.

    from peftlab.checks import assert_close, assert_equal
    assert_close(student_out, reference_out, "LoRALinear output")

A bare `assert torch.allclose(a, b)` tells a student only "False". These
checks tell them whether the shapes agree, whether the values are exactly
equal, equal within tolerance, or off, and by how much and where.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Comparison:
    """How `actual` relates to `expected`."""

    verdict: str  # "exact", "approximately equal", "different" or "shape mismatch"
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    where: tuple = ()
    actual_value: float | None = None
    expected_value: float | None = None

    @property
    def ok(self) -> bool:
        return self.verdict in ("exact", "approximately equal")

    def describe(self, name: str = "value") -> str:
        if self.verdict == "exact":
            return f"{name}: exact match"
        if self.verdict == "shape mismatch":
            return f"{name}: {self.where[0]} but expected {self.where[1]}"
        at = f" at index {self.where}" if self.where else ""
        return (
            f"{name}: {self.verdict}; max |difference| {self.max_abs_diff:.3g}{at} "
            f"(got {self.actual_value:.6g}, expected {self.expected_value:.6g}; "
            f"max relative difference {self.max_rel_diff:.3g})"
        )


def _tensor(x: Any):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(x, dtype=torch.float64)


def compare(actual: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-6) -> Comparison:
    """Compare numbers, sequences or tensors elementwise (|a - e| <= atol + rtol * |e|)."""
    import torch

    try:
        a = _tensor(actual)
    except (TypeError, ValueError, RuntimeError) as exc:
        return Comparison("shape mismatch", where=(f"a {type(actual).__name__} ({exc})", "numbers"))
    e = _tensor(expected)
    if a.shape != e.shape:
        return Comparison("shape mismatch", where=(f"shape {tuple(a.shape)}", f"shape {tuple(e.shape)}"))
    if a.numel() == 0 or torch.equal(a, e):
        return Comparison("exact")
    nan_mismatch = torch.isnan(a) != torch.isnan(e)
    diff = (a - e).abs().nan_to_num(nan=math.inf)
    diff[nan_mismatch] = math.inf
    diff[torch.isnan(a) & torch.isnan(e)] = 0.0
    flat = int(torch.argmax(diff))
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else ()
    rel = diff / e.abs().clamp_min(1e-12)
    within = bool((diff <= atol + rtol * e.abs().nan_to_num(nan=0.0)).all())
    return Comparison(
        "approximately equal" if within else "different",
        max_abs_diff=float(diff.max()),
        max_rel_diff=float(rel.max()),
        where=index,
        actual_value=float(a.reshape(-1)[flat]),
        expected_value=float(e.reshape(-1)[flat]),
    )


def assert_close(actual: Any, expected: Any, name: str = "value", rtol: float = 1e-5, atol: float = 1e-6,
                 hint: str = "") -> None:
    """Raise AssertionError with the verdict and the size of the error unless close.

    Returns None on purpose: nbgrader reads a test cell's last value as partial credit.
    """
    result = compare(actual, expected, rtol=rtol, atol=atol)
    if not result.ok:
        msg = result.describe(name) + f" [tolerance: atol={atol:g}, rtol={rtol:g}]"
        raise AssertionError(msg + (f"\nHint: {hint}" if hint else ""))


def assert_equal(actual: Any, expected: Any, name: str = "value", hint: str = "") -> None:
    """Exact equality for counts, names and sets, with both values in the message."""
    if actual != expected:
        extra = ""
        if isinstance(actual, (int, float)) and isinstance(expected, (int, float)) and expected:
            extra = f" (off by {actual - expected:+,}, {100 * (actual - expected) / expected:+.2f}%)"
        if isinstance(actual, (set, frozenset)) and isinstance(expected, (set, frozenset)):
            extra = f" (missing {sorted(expected - actual)}, unexpected {sorted(actual - expected)})"
        msg = f"{name}: got {actual!r}, expected {expected!r}{extra}"
        raise AssertionError(msg + (f"\nHint: {hint}" if hint else ""))


def assert_raises_clearly(func, *args, mentions: tuple[str, ...] = (), exc_type=ValueError, **kwargs) -> None:
    """Call func and require `exc_type` whose message names every string in `mentions`."""
    try:
        func(*args, **kwargs)
    except exc_type as exc:
        message = str(exc)
        missing = [m for m in mentions if m.lower() not in message.lower()]
        if missing:
            raise AssertionError(
                f"{exc_type.__name__} raised, but its message {message!r} does not mention {missing}; "
                "a clear error names what is wrong and where."
            ) from None
        return
    except Exception as exc:  # any other exception is the wrong kind of failure
        raise AssertionError(
            f"expected {exc_type.__name__}, got {type(exc).__name__}: {exc}"
        ) from None
    raise AssertionError(f"expected {exc_type.__name__} for bad input, but nothing was raised")


@contextlib.contextmanager
def quiet():
    """Silence library chatter (progress bars, warnings) inside a test cell.

    nbgrader gives zero points to a test cell that writes anything to stderr,
    so a progress bar or a deprecation warning from a library would fail a
    correct answer. Exceptions still propagate: only the noise is dropped.
    """
    import logging
    import warnings

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # library loggers hold their own handle on stderr
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
