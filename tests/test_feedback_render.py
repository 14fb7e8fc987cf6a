"""Feedback as a student sees it: rendered by headless Chromium, checked on the DOM, not by substring.

The graded notebook handed to `write_feedback` is the instructor's *source*
(hidden tests included) with outputs a hostile student could produce: the
feedback must still show headings, tables and math as elements, and no hidden
test anywhere in the page.
"""

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from peftlab.grader import exercises
from peftlab.grader.feedback import write_feedback
from peftlab.grader.outcome import Outcome

FIXTURE = Path(__file__).parent / "fixtures" / "course"
ASSIGNMENT, NB = "90_fixture", "fixture.ipynb"
HIDDEN = 'checks.assert_equal(double(-3), -6, "double(-3)")'  # the hidden test (tests/fixtures/course)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = bool(os.environ.get("CI"))


class Dom(HTMLParser):
    """Elements (tag names, in order) and text nodes of a serialized DOM."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.texts, self.stack, self.cells = [], [], [], {}
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.stack.append(tag)

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop() != tag:
            pass

    def handle_data(self, data):
        if data.strip():
            self.texts.append((tuple(self.stack), data))

    def text_in(self, tag):
        return " ".join(t for stack, t in self.texts if tag in stack)


def dump_dom(page: Path, profile: Path) -> str:
    if not CHROMIUM:
        if IN_CI:
            pytest.fail("chromium is not installed; .ci/run installs it with apt (package chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); CI runs this test")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
           "--dump-dom", page.as_uri()]
    # Far above the few seconds it takes: the machine may be busy.
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "<html" in run.stdout, run.stderr[-2000:]
    return run.stdout


@pytest.fixture(scope="module")
def feedback(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(FIXTURE, root, dirs_exist_ok=True)
    source = root / "solutions" / ASSIGNMENT / NB
    nb = nbformat.read(source, as_version=4)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(
        "## The rule\n\nA LoRA update is $\\Delta W = \\frac{\\alpha}{r} B A$, and\n\n$$W' = W + \\Delta W$$\n\n"
        "| shape | value |\n|---|---|\n| $A$ | $r \\times k$ |"))
    nbformat.write(nb, source)
    exercises.release(root)
    release = root / "exercises" / ASSIGNMENT / NB

    graded = nbformat.read(source, as_version=4)  # hidden tests and all: the feedback must drop them
    test_double = next(c for c in graded.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_double")
    test_double.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="double(-3): got 6",
                                                  traceback=["checks.assert_equal(double(-3), -6)"])]
    graded.cells.append(nbformat.v4.new_markdown_cell(
        "# My notes <script>document.title='pwned'</script>\n\n<img src=x onerror=alert(1)>"
        "Since $2(x + y) = 2x + 2y$."))
    code = nbformat.v4.new_code_cell("show()")
    code.outputs = [nbformat.v4.new_output("display_data", data={
        "text/html": "<h2>From the kernel</h2><script>alert(1)</script><table><tr><td>cell</td></tr></table>",
        "application/javascript": "alert(2)", "text/plain": "x"})]
    graded.cells.append(code)
    graded_path = root / "graded.ipynb"
    nbformat.write(graded, graded_path)

    out = Outcome(student="alice", status="graded",
                  grades={"test_double": {"score": 0, "max": 2, "manual": False},
                          "test_halve": {"score": 1, "max": 1, "manual": False}},
                  errors={"test_double": "AssertionError: double(-3) gave 6 <h1>not a heading</h1> for row __base__, "
                                         "*twice* | [link](javascript:alert(3)) $x$"},
                  notes=["test_double's probe: got **6** from __init__"])
    dest = write_feedback(graded_path, release, source, out, ASSIGNMENT, root / "feedback" / "alice.html")
    return dest, Dom(dump_dom(dest, root / "chromium-profile"))


def test_headings_render_as_elements(feedback):
    _, dom = feedback
    assert "h1" in dom.tags and "h2" in dom.tags
    assert "Feedback: 90_fixture, alice" in dom.text_in("h1")
    assert "The rule" in dom.text_in("h2")
    for stack, text in dom.texts:
        if "td" not in stack:  # the table's reasons are the student's text, shown literally (next test)
            assert "<h1" not in text and "<p>" not in text and "<th" not in text, text


def test_students_text_in_the_summary_is_literal(feedback):
    """A reason or note is the student's text (an error message, a returned value): markdown and HTML in it
    show as written, never as bold, a heading, a link or a split table cell."""
    path, dom = feedback
    why = dom.text_in("td")
    assert "<h1>not a heading</h1> for row __base__, *twice* | [link](javascript:alert(3)) $x$" in why
    assert "not a heading" not in dom.text_in("h1")
    assert "base" not in dom.text_in("strong") + dom.text_in("em") and "twice" not in dom.text_in("em")
    assert "javascript:" not in " ".join(a for a in path.read_text().split('href="')[1:] if a.startswith("javascript"))
    assert "got **6** from __init__" in dom.text_in("li")


def test_points_table_is_a_table(feedback):
    _, dom = feedback
    assert "table" in dom.tags and "th" in dom.tags
    header = dom.text_in("th")
    assert "test" in header and "points" in header
    assert "0 / 2" in dom.text_in("td") and "1 / 1" in dom.text_in("td")


def test_math_is_mathml_without_any_script(feedback):
    path, dom = feedback
    assert dom.tags.count("math") >= 4  # inline, display, in a table cell, and the student's
    assert "mfrac" in dom.tags
    assert "script" not in dom.tags
    assert "cdn" not in path.read_text().lower()
    assert "$" not in dom.text_in("p")


def test_hidden_tests_absent_and_student_html_inert(feedback):
    path, dom = feedback
    assert HIDDEN not in path.read_text()
    assert all(HIDDEN not in text for _, text in dom.texts)
    assert "onerror" not in path.read_text() and "alert(2)" not in path.read_text()
    assert "My notes" in dom.text_in("h1") and "From the kernel" in dom.text_in("h2")
