"""`make formgrader` on a course that has never been graded: the first page loads, the gradebook is stamped.

nbgrader makes the gradebook on formgrader's first page and runs `alembic` from PATH to stamp it; the
Makefile starts the venv's `jupyter` by path, with the venv not on PATH. These tests start it that way.
"""

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from peftlab.grader import formgrader

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "course"
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"  # what a shell without the venv activated has


@pytest.fixture
def fresh_course(tmp_path):
    course = tmp_path / "course"
    shutil.copytree(FIXTURE, course)
    shutil.copy(REPO / "grading" / "nbgrader_config.py", course / "grading" / "nbgrader_config.py")
    return course


def _tables(db: Path) -> dict[str, list]:
    with sqlite3.connect(db) as con:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        version = con.execute("SELECT version_num FROM alembic_version").fetchall() if "alembic_version" in names else []
    return {"tables": names, "alembic": version}


def test_prepare_makes_the_gradebook_without_the_venv_on_path(fresh_course):
    run = subprocess.run([sys.executable, "-m", "peftlab.grader.formgrader", str(fresh_course)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PATH": BARE_PATH})
    assert run.returncode == 0, run.stderr[-2000:]
    db = fresh_course / "grading" / "work" / "gradebook.db"
    assert "created" in run.stdout and _tables(db)["alembic"], run.stdout


def test_prepare_stamps_a_gradebook_a_failed_start_left_unstamped(fresh_course):
    from nbgrader.api import Base
    from sqlalchemy import create_engine

    work = fresh_course / "grading" / "work"
    work.mkdir()
    Base.metadata.create_all(create_engine(f"sqlite:///{work / 'gradebook.db'}"))  # tables, no alembic_version
    assert not _tables(work / "gradebook.db")["alembic"]
    assert "stamped" in formgrader.prepare_gradebook(work)
    assert _tables(work / "gradebook.db")["alembic"]
    assert "ready" in formgrader.prepare_gradebook(work)  # and only once


def test_make_formgrader_prepares_the_gradebook_first():
    dry = subprocess.run(["make", "--no-print-directory", "-n", "formgrader", "VENV=.venv"], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "MAKEFLAGS": "", "MAKELEVEL": "1"},
                         timeout=120)
    lines = dry.stdout.strip().splitlines()
    assert "-m peftlab.grader.formgrader" in lines[-2] and lines[-1].startswith("cd grading && exec ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="chromium is not installed")
def test_formgrader_first_page_in_a_browser_on_a_fresh_course(fresh_course, tmp_path):
    """The server started as the Makefile starts it (jupyter by path, venv not on PATH, no gradebook yet)."""
    port, token = _free_port(), "peftlab-test"
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": BARE_PATH, "HOME": str(home), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "PEFTLAB_QUIET_FORMGRADER": "1", "LANG": "C.UTF-8"}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([str(BIN / "jupyter"), "server", f"--ServerApp.root_dir={fresh_course}",
                               f"--port={port}", "--no-browser", f"--IdentityProvider.token={token}",
                               "--ServerApp.port_retries=0", *(["--allow-root"] if os.geteuid() == 0 else [])],
                              cwd=fresh_course / "grading", env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # far above the seconds it takes: the machine may be busy
        while time.monotonic() < deadline:
            try:
                if _get(f"{base}/api/status?token={token}")[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail("the server did not start: " + (tmp_path / "server.log").read_text()[-3000:])
        status, body = _get(f"{base}/formgrader/api/assignments?token={token}")
        assert status == 200 and "90_fixture" in body, body[-2000:]
        assert _tables(fresh_course / "grading" / "work" / "gradebook.db")["alembic"]
        if CHROMIUM:
            cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--no-first-run", "--disable-sync",
                   f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=20000", "--dump-dom",
                   f"{base}/formgrader?token={token}"]
            page = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            assert page.returncode == 0 and "<html" in page.stdout, page.stderr[-2000:]
            assert "Manage Assignments" in page.stdout and "90_fixture" in page.stdout, page.stdout[-3000:]
            assert "500" not in page.stdout.split("<body", 1)[-1][:200]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
