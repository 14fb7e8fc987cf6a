"""Checks for exercise test cells: a failing check says which cell to fix and how far off the answer is.

    checks.depends_on("lora_linear")                  # first line of a test cell
    checks.assert_close(student_out, reference_out, "LoRALinear output")

A bare `assert torch.allclose(a, b)` tells a student only "False". These
checks say which solution cell (its nbgrader grade id) to fix, whether the
shapes agree, whether the values are exactly equal, equal within tolerance or
off, by how much at which element, and they recognise the usual shapes of a
mistake: a constant ratio (a missing or extra scale factor such as alpha / r),
a transpose, a sign flip, and something that should start at zero (LoRA's B)
that does not.

Objects that tests need are built in read-only cells before the tests, with
`attempt`: when the student's function raises there, the object becomes a
`Missing` placeholder, and every test that touches it fails with a message
naming the function to fix instead of a `NameError`.
"""

from __future__ import annotations

import contextlib
import io
import math
import traceback
from dataclasses import dataclass
from typing import Any

# The solution cells the running test cell depends on, set by `depends_on` on its first line.
_REGIONS: tuple[str, ...] = ()


def depends_on(*regions: str) -> None:
    """Declare (first line of a test cell) the solution cells, by grade id, whose code the test exercises.

    Failing checks in the cell then start with "Fix `region`". The fair-grading
    gate (tests/test_fair_grading.py) reads this line and proves that a wrong
    answer in any other cell costs this test nothing.
    """
    global _REGIONS
    if not regions or not all(isinstance(r, str) and r for r in regions):
        raise ValueError("depends_on needs one or more solution-cell grade ids, e.g. depends_on('lora_linear')")
    _REGIONS = tuple(regions)
    _hook_ipython()


def _reset(*_) -> None:
    global _REGIONS
    _REGIONS = ()


def _name_the_fix(shell, etype, value, tb, tb_offset=None):
    """IPython handler: any error in a test cell (a NameError, an error raised by the student's code, a
    bare assert) starts with "Fix `region`", the cells the test declared with `depends_on`."""
    text = str(value)
    if _REGIONS and not text.startswith("Fix ") and len(getattr(value, "args", ())) <= 1:
        said = text if etype is AssertionError and text else f"{etype.__name__}: {text}"
        with contextlib.suppress(Exception):  # an exception type that refuses new args keeps its own text
            value.args = (_fix(None) + said,)
    # IPython discards what this handler returns: showing the error is the handler's job (in a kernel this
    # sends the error output, and the execute reply's traceback, to the notebook).
    shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


def _hook_ipython() -> None:
    """In a Jupyter kernel: name the fix in every error of a test cell, and forget the regions when the
    next cell starts so that no other cell's errors are touched."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "_peftlab_checks_hook", False):
        return
    shell.events.register("pre_run_cell", _reset)
    shell.set_custom_exc((Exception,), _name_the_fix)
    shell._peftlab_checks_hook = True


def _fix(region: str | None) -> str:
    regions = (region,) if region else _REGIONS
    if not regions:
        return ""
    return "Fix " + " or ".join(f"`{r}`" for r in regions) + ": "


def fail(message: str, region: str | None = None, hint: str = "") -> None:
    """Raise AssertionError naming the cell to fix (`region`, else the cell's declared dependencies)."""
    raise AssertionError(_fix(region) + message + (f"\nHint: {hint}" if hint else ""))


def check(condition: Any, message: str, region: str | None = None, hint: str = "") -> None:
    """`assert condition, message`, but the message names the cell to fix."""
    if not condition:
        fail(message, region, hint)


@dataclass(frozen=True)
class Comparison:
    """How `actual` relates to `expected`."""

    verdict: str  # "exact", "approximately equal", "different" or "shape mismatch"
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0  # over all elements
    where: tuple = ()  # index of the largest absolute difference
    actual_value: float | None = None  # actual[where]
    expected_value: float | None = None  # expected[where]
    rel_diff_there: float = 0.0  # relative difference at `where`, the element shown
    pattern: str = ""  # a recognised shape of mistake, in words

    @property
    def ok(self) -> bool:
        return self.verdict in ("exact", "approximately equal")

    def describe(self, name: str = "value") -> str:
        if self.verdict == "exact":
            return f"{name}: exact match"
        tail = f"; {self.pattern}" if self.pattern else ""
        if self.verdict == "shape mismatch":
            return f"{name}: {self.where[0]} but expected {self.where[1]}{tail}"
        at = f" at index {self.where}" if self.where else ""
        return (
            f"{name}: {self.verdict}{at}: got {self.actual_value:.6g}, expected {self.expected_value:.6g} "
            f"(|difference| {self.max_abs_diff:.3g}, the largest; relative difference there "
            f"{self.rel_diff_there:.3g}){tail}"
        )


def _tensor(x: Any):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(x, dtype=torch.float64)


def diagnose(actual: Any, expected: Any, rtol: float = 1e-4, atol: float = 1e-6) -> str:
    """Name the shape of a mistake when `actual` is a simple function of `expected`, else "".

    Recognises: expected zero but got values, a transpose, a sign flip, a constant
    ratio (a missing or extra scale factor) and a constant offset.
    """
    import torch

    try:
        a, e = _tensor(actual), _tensor(expected)
    except (TypeError, ValueError, RuntimeError):
        return ""
    if not (torch.isfinite(a).all() and torch.isfinite(e).all()) or e.numel() == 0:
        return ""
    if a.dim() == 2 and e.dim() == 2 and a.shape == e.shape[::-1] and a.shape != e.shape:
        if torch.allclose(a.T, e, rtol=rtol, atol=atol):
            return "it is the transpose of the expected matrix (check the order of the dimensions)"
        return "its shape is the transpose of the expected one (check the order of the dimensions)"
    if a.shape != e.shape:
        return ""
    scale = float(e.abs().max())
    tol = atol + rtol * scale
    if scale <= atol and float(a.abs().max()) > tol:
        return ("expected zero everywhere but got non-zero values: something that must start at zero "
                "(such as LoRA's B, so that the adapter starts as a no-op) does not")
    if a.dim() == 2 and a.shape[0] == a.shape[1] > 1 and torch.allclose(a.T, e, rtol=rtol, atol=tol):
        return "it is the transpose of the expected matrix (check the order of the dimensions)"
    big = e.abs() > 1e-3 * scale
    if scale > atol and big.any():
        ratio = float((a[big] / e[big]).median())
        if torch.allclose(a, ratio * e, rtol=rtol * 10, atol=tol * 10):
            if abs(ratio + 1) < 1e-3:
                return "the sign is flipped everywhere (got -1 x expected)"
            if abs(ratio) < 1e-12:
                return "got zero everywhere"
            return (f"got about {ratio:.4g} x expected everywhere: a scale factor is missing or extra "
                    f"(expected = {1 / ratio:.4g} x got)")
    offset = a - e
    if a.numel() > 1 and float((offset - offset.mean()).abs().max()) <= tol and float(offset.abs().mean()) > tol:
        return f"off by the same {float(offset.mean()):+.4g} everywhere: a constant term is missing or extra"
    return ""


def compare(actual: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-6, baseline: Any = None) -> Comparison:
    """Compare numbers, sequences or tensors elementwise (|a - e| <= atol + rtol * |e|).

    With `baseline` (for example the base layer's output), a mismatch is also
    diagnosed on the updates `actual - baseline` and `expected - baseline`.
    """
    import torch

    try:
        a = _tensor(actual)
    except (TypeError, ValueError, RuntimeError) as exc:
        return Comparison("shape mismatch", where=(f"a {type(actual).__name__} ({exc})", "numbers"))
    e = _tensor(expected)
    if a.shape != e.shape:
        return Comparison("shape mismatch", where=(f"shape {tuple(a.shape)}", f"shape {tuple(e.shape)}"),
                          pattern=diagnose(a, e))
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
    pattern = ""
    if not within:
        pattern = diagnose(a, e, atol=max(atol, 1e-9))
        if baseline is not None and not pattern:
            b = _tensor(baseline)
            found = diagnose(a - b, e - b, atol=max(atol, 1e-9))
            pattern = f"measured from the baseline, the update: {found}" if found else ""
    return Comparison(
        "approximately equal" if within else "different",
        max_abs_diff=float(diff.max()),
        max_rel_diff=float(rel.max()),
        where=index,
        actual_value=float(a.reshape(-1)[flat]),
        expected_value=float(e.reshape(-1)[flat]),
        rel_diff_there=float(rel.reshape(-1)[flat]),
        pattern=pattern,
    )


def assert_close(actual: Any, expected: Any, name: str = "value", rtol: float = 1e-5, atol: float = 1e-6,
                 hint: str = "", region: str | None = None, baseline: Any = None) -> None:
    """Raise AssertionError with the cell to fix, the verdict and the size of the error unless close.

    Returns None on purpose: nbgrader reads a test cell's last value as partial credit.
    """
    result = compare(actual, expected, rtol=rtol, atol=atol, baseline=baseline)
    if not result.ok:
        fail(result.describe(name) + f" [tolerance: atol={atol:g}, rtol={rtol:g}]", region, hint)


def assert_equal(actual: Any, expected: Any, name: str = "value", hint: str = "", region: str | None = None) -> None:
    """Exact equality for counts, names and sets, with both values in the message."""
    if actual != expected:
        extra = ""
        if isinstance(actual, (int, float)) and isinstance(expected, (int, float)) and expected:
            extra = f" (off by {actual - expected:+,}, {100 * (actual - expected) / expected:+.2f}%)"
            if actual and expected and actual / expected not in (1,):
                extra += f"; got {actual / expected:.4g} x expected"
        if isinstance(actual, (set, frozenset)) and isinstance(expected, (set, frozenset)):
            extra = f" (missing {sorted(expected - actual)}, unexpected {sorted(actual - expected)})"
        fail(f"{name}: got {actual!r}, expected {expected!r}{extra}", region, hint)


def assert_zero(actual: Any, name: str, region: str | None = None, hint: str = "") -> None:
    """Require a tensor (or numbers) to be exactly zero, e.g. LoRA's B at initialisation."""
    import torch

    a = _tensor(actual)
    if a.numel() and bool((a != 0).any()):
        flat = int(torch.argmax(a.abs().nan_to_num(nan=math.inf)))
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else ()
        fail(f"{name}: expected exactly zero everywhere, but {int((a != 0).sum())} of {a.numel()} values are not "
             f"(largest |value| {float(a.abs().max()):.3g} at index {index})", region, hint)


def assert_raises_clearly(func, *args, mentions: tuple[str, ...] = (), exc_type=ValueError,
                          region: str | None = None, **kwargs) -> None:
    """Call func and require `exc_type` whose message names every string in `mentions`."""
    try:
        func(*args, **kwargs)
    except exc_type as exc:
        message = str(exc)
        missing = [m for m in mentions if m.lower() not in message.lower()]
        if missing:
            fail(f"{exc_type.__name__} raised, but its message {message!r} does not mention {missing}; "
                 "a clear error names what is wrong and where.", region)
        return
    except Exception as exc:  # any other exception is the wrong kind of failure
        fail(f"expected {exc_type.__name__}, got {type(exc).__name__}: {exc}", region)
    fail(f"expected {exc_type.__name__} for bad input, but nothing was raised", region)


class Missing:
    """Stands for an object a read-only cell could not build because the student's code raised.

    Any use of it in a test raises AssertionError naming the function to fix, so
    the test fails with a reason instead of a NameError.
    """

    def __init__(self, name: str, region: str, error: BaseException):
        object.__setattr__(self, "_why", f"Fix `{region}`: `{name}` was not built because "
                                         f"{type(error).__name__}: {error} was raised in the cell that builds it")

    def _raise(self, *args, **kwargs):
        raise AssertionError(object.__getattribute__(self, "_why"))

    def __getattr__(self, attr):
        if attr.startswith("_"):  # IPython and pickle probe for optional hooks; only the test's own use should fail
            raise AttributeError(attr)
        self._raise()

    __call__ = __getitem__ = __iter__ = __len__ = __bool__ = __float__ = __int__ = _raise
    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = __add__ = __sub__ = __mul__ = __truediv__ = _raise
    __hash__ = None

    def __repr__(self) -> str:
        return f"<missing: {object.__getattribute__(self, '_why')}>"


def attempt(func, *args, region: str, name: str = "result", **kwargs):
    """`func(*args, **kwargs)`, or a `Missing` placeholder (and the traceback, printed) if it raises."""
    try:
        return func(*args, **kwargs)
    except Exception as exc:
        traceback.print_exc()
        print(f"-> `{name}` could not be built; the tests that need it will ask you to fix `{region}`.")
        return Missing(name, region, exc)


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


_ABSENT = object()


@contextlib.contextmanager
def standing_in(namespace: dict, **given):
    """Inside the block, the `given` functions stand in for the notebook's functions of the same names.

    `namespace` is the notebook's `globals()`. A test of one function runs it with the course's reference
    of the functions it builds on (`standing_in(globals(), linear_shapes=real_linear_shapes)`), so a slip
    in `linear_shapes` costs `linear_shapes`' own test and not every test that calls it ("one slip, one
    test"). The notebook's own functions are put back afterwards, whatever happens in the block.
    """
    if not given or not all(callable(f) for f in given.values()):
        raise ValueError("standing_in needs name=function pairs, e.g. standing_in(globals(), linear_shapes=real_shapes)")
    saved = {name: namespace.get(name, _ABSENT) for name in given}
    namespace.update(given)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is _ABSENT:
                namespace.pop(name, None)
            else:
                namespace[name] = value


def stand_in_for_this_cell(namespace: dict, **given) -> None:
    """`standing_in` until the running notebook cell ends: the notebook's own functions come back then,
    whatever happens in the cell.

    For a hidden test block at the top of a test cell. nbgrader removes that block from the student's copy,
    so it cannot open a `with` block around the visible tests after it. Graded, the tests below it run with
    the course's reference. In the student's copy, they run on the student's own functions.
    """
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("stand_in_for_this_cell works inside a notebook cell only; elsewhere write "
                           "`with checks.standing_in(globals(), name=function): ...`")
    block = standing_in(namespace, **given)
    block.__enter__()

    def restore(*_):
        shell.events.unregister("post_run_cell", restore)
        block.__exit__(None, None, None)

    shell.events.register("post_run_cell", restore)
