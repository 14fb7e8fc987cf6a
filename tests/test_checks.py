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
    with pytest.raises(AssertionError, match=r"output: different at index \(2,\): got 2.25, expected 2 "
                                             r"\(\|difference\| 0.25"):
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


def test_relative_difference_is_taken_at_the_element_shown():
    # the largest absolute error is at index 1; a tiny expected value elsewhere has a huge relative error
    result = checks.compare([1e-6 + 1e-4, 12.0], [1e-6, 10.0], rtol=1e-3)
    assert result.where == (1,) and result.rel_diff_there == pytest.approx(0.2)
    assert "relative difference there 0.2" in result.describe("x")


@pytest.mark.parametrize(("make_actual", "words"), [
    (lambda e: 0.390625 * e, "got about 0.3906 x expected everywhere: a scale factor is missing"),
    (lambda e: 4.0 * e, "got about 4 x expected everywhere"),
    (lambda e: -e, "sign is flipped"),
    (lambda e: e.T.contiguous(), "transpose of the expected matrix"),
    (lambda e: e + 0.5, r"off by the same \+0.5 everywhere"),
])
def test_common_mistakes_are_recognised(make_actual, words):
    torch.manual_seed(0)
    expected = torch.randn(6, 6)
    with pytest.raises(AssertionError, match=words):
        checks.assert_close(make_actual(expected), expected, "delta_weight")


def test_transpose_of_a_rectangular_matrix_is_named():
    expected = torch.arange(12.0).reshape(3, 4)
    message = checks.compare(expected.T, expected).describe("B @ A")
    assert "shape (4, 3) but expected shape (3, 4)" in message and "transpose" in message


def test_nonzero_where_zero_is_expected():
    expected = torch.zeros(4, 2)
    with pytest.raises(AssertionError, match="must start at zero"):
        checks.assert_close(torch.randn(4, 2), expected, "B @ A at init")
    with pytest.raises(AssertionError, match=r"Fix `lora_linear`: lora_B: expected exactly zero everywhere, "
                                             r"but 1 of 8 values are not"):
        checks.assert_zero(torch.tensor([[0.0, 0.0, 0.0, 0.5], [0.0] * 4]), "lora_B", region="lora_linear")
    checks.assert_zero(expected, "zeros")


def test_baseline_separates_the_update_from_the_base_output():
    torch.manual_seed(0)
    base, update = torch.randn(3, 5), torch.randn(3, 5)
    with pytest.raises(AssertionError, match="measured from the baseline, the update: got about 0.25 x expected"):
        checks.assert_close(base + update / 4, base + update, "output", baseline=base)


def test_failures_name_the_declared_cell_or_the_given_region(monkeypatch):
    monkeypatch.setattr(checks, "_REGIONS", ())  # restored after the test
    checks.depends_on("scaling_counts", "run_one")
    with pytest.raises(AssertionError, match=r"^Fix `scaling_counts` or `run_one`: count: got 3"):
        checks.assert_equal(3, 4, "count")
    with pytest.raises(AssertionError, match=r"^Fix `sweep`: rows"):
        checks.check(False, "rows", region="sweep")
    with pytest.raises(ValueError, match="grade ids"):
        checks.depends_on()


def test_attempt_turns_a_failed_build_into_a_clear_failure(capsys):
    def sweep():
        raise NotImplementedError()

    results = checks.attempt(sweep, region="sweep", name="results")
    assert "could not be built" in capsys.readouterr().out
    for use in (len, lambda r: r.eval_loss, lambda r: r["r"], lambda r: r < 1, iter):
        with pytest.raises(AssertionError, match=r"Fix `sweep`: `results` was not built because NotImplementedError"):
            use(results)
    assert "missing" in repr(results)
    assert checks.attempt(lambda x: x + 1, 1, region="sweep") == 2


def test_a_failing_test_cell_shows_its_error_in_the_notebook(tmp_path):
    """What a student sees in Jupyter: the failing test cell's error, naming the cell to fix.

    IPython discards what a custom exception handler returns, so the handler must show the error itself;
    without that the cell failed with no message at all."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from peftlab import checks\nchecks.depends_on('lora_linear')\nassert 1 == 2, 'B must start at zero'"),
        nbformat.v4.new_code_cell("raise KeyError('plain')"),
    ])
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    first, second = ([o for o in cell.outputs if o.output_type == "error"] for cell in nb.cells)
    assert len(first) == 1 and first[0].ename == "AssertionError"
    assert first[0].evalue == "Fix `lora_linear`: B must start at zero"
    assert len(second) == 1 and second[0].evalue == "'plain'"  # the next cell's errors are its own


def test_standing_in_judges_one_function_and_restores_the_students():
    """A caller of a wrong helper is judged with the reference helper; the student's helper comes back after,
    also when the block raises, and a name the notebook never defined is removed again."""
    ns = {}
    exec("def shapes(n):\n    return n * 3  # the slip\n\ndef total(n):\n    return shapes(n) + 1\n", ns)
    assert ns["total"](2) == 7
    with checks.standing_in(ns, shapes=lambda n: n * 2, never_defined=len):
        assert ns["total"](2) == 5  # the student's total, the reference shapes
    assert ns["total"](2) == 7 and "never_defined" not in ns
    with pytest.raises(ZeroDivisionError), checks.standing_in(ns, shapes=lambda n: 1 / 0):
        ns["total"](2)
    assert ns["shapes"](2) == 6
    with pytest.raises(ValueError, match="name=function"):
        with checks.standing_in(ns, shapes=3):
            pass


def test_stand_in_for_this_cell_ends_with_the_cell(tmp_path):
    """A hidden test block stands the reference in for the rest of its cell only: the next cell sees the
    student's function again, also after the cell failed. Outside a notebook it refuses with a clear error."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from peftlab import checks\ndef shapes(n):\n    return n * 3"),
        nbformat.v4.new_code_cell("checks.stand_in_for_this_cell(globals(), shapes=lambda n: n * 2)\nprint(shapes(2))"),
        nbformat.v4.new_code_cell("print(shapes(2))\nchecks.stand_in_for_this_cell(globals(), shapes=len)\n1 / 0"),
        nbformat.v4.new_code_cell("print(shapes(2))"),
    ])
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = ["".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream") for cell in nb.cells]
    assert printed[1:] == ["4\n", "6\n", "6\n"], printed
    assert [o.ename for o in nb.cells[2].outputs if o.output_type == "error"] == ["ZeroDivisionError"]
    with pytest.raises(RuntimeError, match="inside a notebook cell only"):
        checks.stand_in_for_this_cell({}, shapes=len)
