"""Formgrader's shipped setup: links resolve, the wrong start place is named, its own grading is off."""

import os
from pathlib import Path

import pytest
from peftlab.grader import formgrader
from traitlets.config.loader import PyFileConfigLoader

COURSE = Path(__file__).resolve().parent.parent


@pytest.fixture
def in_folder(monkeypatch):
    def go(path):
        monkeypatch.chdir(path)
    return go


def test_right_place_is_quiet_and_wrong_places_are_named(in_folder, capsys):
    in_folder(COURSE / "grading")
    assert formgrader.misplaced(COURSE, ["jupyter-lab", f"--ServerApp.root_dir={COURSE}"]) == ""
    assert "404" in formgrader.misplaced(COURSE, ["jupyter-lab"])  # cd grading && jupyter lab
    assert "404" in formgrader.misplaced(COURSE, ["jupyter-lab", "--ServerApp.root_dir", str(COURSE / "grading")])
    assert formgrader.misplaced(COURSE, ["nbgrader", "generate_assignment"]) == ""  # the CLI is not a server
    in_folder(COURSE)
    why = formgrader.warn_if_misplaced(COURSE, ["jupyter-lab"])
    assert "empty course" in why and "make formgrader" in capsys.readouterr().err


def test_shipped_config_switches_off_nbgrader_autograde_and_feedback(in_folder, monkeypatch):
    in_folder(COURSE / "grading")
    monkeypatch.setattr("sys.argv", ["nbgrader"])
    config = PyFileConfigLoader("nbgrader_config.py", path=str(COURSE / "grading")).load_config()
    assert config.Autograde.sanitize_preprocessors == [formgrader.Refuse]
    assert config.GenerateFeedback.preprocessors == [formgrader.RefuseFeedback]
    assert config.CourseDirectory.root == str(COURSE)
    with pytest.raises(RuntimeError, match="without the sandbox.*peftlab-grade"):
        formgrader.Refuse()(None, {})  # as nbconvert calls it
    with pytest.raises(RuntimeError, match="hidden tests"):
        formgrader.RefuseFeedback()(None, {})


def test_make_formgrader_starts_in_grading_with_the_course_as_root():
    import subprocess

    dry = subprocess.run(["make", "--no-print-directory", "-n", "formgrader", "VENV=.venv"], cwd=COURSE, capture_output=True, text=True,
                         env={**os.environ, "MAKEFLAGS": "", "MAKELEVEL": "1"}, timeout=120)
    line = dry.stdout.strip().splitlines()[-1]
    assert line.startswith("cd grading && exec ") and f"--ServerApp.root_dir={COURSE}" in line
