"""The exercise checks say how far off an answer is, not just that it is wrong."""

import pytest
import torch
from peftlab import checks


def test_verdicts():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert checks.compare(a, a.clone()).verdict == "exact"
    assert checks.compare(a, a + 1e-6).verdict == "approximately equal"
    off = a.clone()
    off[1, 0] += 0.5
    result = checks.compare(off, a)
    assert result.verdict == "different" and not result.ok
    assert result.where == (1, 0) and result.max_abs_diff == pytest.approx(0.5)
    assert checks.compare(a, a.T.reshape(1, 4)).verdict == "shape mismatch"


def test_nan_is_never_close_to_a_number():
    assert checks.compare(torch.tensor([float("nan")]), torch.tensor([1.0])).verdict == "different"
    assert checks.compare(torch.tensor([float("nan")]), torch.tensor([float("nan")])).ok


def test_assert_close_message_names_size_and_place():
    with pytest.raises(AssertionError, match=r"output: different; max \|difference\| 0.25 at index \(2,\)"):
        checks.assert_close([0.0, 1.0, 2.25], [0.0, 1.0, 2.0], "output", hint="check the scaling")
    assert checks.assert_close([1.0], [1.0]) is None  # nbgrader reads a cell's last value as partial credit


def test_assert_equal_reports_offsets():
    with pytest.raises(AssertionError, match=r"off by \+10"):
        checks.assert_equal(110, 100, "count")
    with pytest.raises(AssertionError, match=r"missing \['b'\], unexpected \['c'\]"):
        checks.assert_equal({"a", "c"}, {"a", "b"}, "modules")


def test_assert_raises_clearly():
    def bad(path):
        raise ValueError(f"{path}: row 3: field 'output' is empty")

    checks.assert_raises_clearly(bad, "x.csv", mentions=("x.csv", "row 3"))
    with pytest.raises(AssertionError, match="does not mention"):
        checks.assert_raises_clearly(bad, "x.csv", mentions=("row 4",))
    with pytest.raises(AssertionError, match="nothing was raised"):
        checks.assert_raises_clearly(lambda: None)
    with pytest.raises(AssertionError, match="got KeyError"):
        checks.assert_raises_clearly(lambda: {}["k"])


def test_quiet_drops_stderr_but_not_errors(capsys):
    import logging
    import sys
    import warnings

    with checks.quiet():
        print("noise", file=sys.stderr)
        warnings.warn("deprecated", stacklevel=1)
        logging.getLogger("some.library").error("parse failed")
    assert capsys.readouterr().err == ""
    with pytest.raises(ZeroDivisionError), checks.quiet():
        raise ZeroDivisionError
