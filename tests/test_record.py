"""Run records name their commit even when git is slow or missing (peftlab.record)."""

import subprocess
from pathlib import Path

import pytest
from peftlab import record


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    (path / "a.txt").write_text("one\n")
    _git(path, "add", "a.txt")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "one")
    return path


def test_head_is_read_from_the_files_git_keeps(repo):
    sha = _git(repo, "rev-parse", "HEAD")
    assert record.head_commit(record._git_dir(repo)) == sha
    _git(repo, "pack-refs", "--all")  # the branch now lives only in packed-refs
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert record.head_commit(record._git_dir(repo)) == sha
    _git(repo, "checkout", "-q", "--detach")
    assert record.head_commit(record._git_dir(repo)) == sha


def test_a_worktree_reads_its_own_head(repo, tmp_path):
    _git(repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"))
    (tmp_path / "wt" / "b.txt").write_text("two\n")
    _git(tmp_path / "wt", "add", "b.txt")
    _git(tmp_path / "wt", "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "two")
    git_dir = record._git_dir(tmp_path / "wt")
    assert git_dir is not None and git_dir != repo / ".git"
    assert record.head_commit(git_dir) == _git(tmp_path / "wt", "rev-parse", "HEAD")
    assert record.head_commit(git_dir) != _git(repo, "rev-parse", "HEAD")


def test_a_slow_git_keeps_the_commit(monkeypatch):
    if record._git_dir(Path(record.__file__).resolve().parent) is None:
        pytest.skip("the package is not in a git checkout here")
    def slow(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))

    monkeypatch.setattr(record.subprocess, "run", slow)
    commit = record.git_commit()
    assert commit is not None and commit.endswith("-unknown-state") and len(commit.split("-")[0]) == 40


# ------------------------------------------------------------ a notebook's run record
NOTEBOOK_RUN_KEYS = {"created", "config", "versions", "git_commit", "hardware", "kind", "preset", "wall_s",
                     "load_average_start", "load_average_end", "torch_threads"}


@pytest.fixture
def run_config(tmp_path):
    from peftlab.config import RunConfig

    return RunConfig(model_name="tiny-qwen2", output_dir=str(tmp_path / "run"))


def test_a_notebook_run_records_its_wall_time_and_the_notebooks_results(run_config, capsys):
    import json
    import time

    run = record.open_run(run_config, kind="session09", preset="shakespeare-tiny")
    time.sleep(0.05)
    summary = run.close(scores={"a": 1.0}, rows=[1, 2])
    assert set(summary) == NOTEBOOK_RUN_KEYS | {"scores", "rows"}
    assert summary["kind"] == "session09" and summary["preset"] == "shakespeare-tiny"
    assert summary["wall_s"] >= 0.05 and summary["config"]["output_dir"] == run_config.output_dir
    assert summary["load_average_start"] is None or len(summary["load_average_start"]) == 3
    path = Path(run_config.output_dir) / "record.json"
    assert run.path == path and json.loads(path.read_text()) == json.loads(json.dumps(summary, default=str))
    printed = capsys.readouterr().out
    assert f"run record: {path}" in printed and "notebook wall time 0.0 min" in printed


def test_a_notebook_run_writes_atomically(run_config, monkeypatch):
    """A write that fails before its rename leaves the record that was there whole."""
    from peftlab import files

    path = Path(run_config.output_dir) / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"kind": "earlier"}')

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        record.open_run(run_config, kind="session09").close(scores={})
    monkeypatch.undo()
    assert record.read_record(path) == {"kind": "earlier"}


def test_a_notebook_run_is_closed_once_and_keeps_its_own_fields(run_config, tmp_path):
    run = record.open_run(run_config, kind="session09")
    with pytest.raises(record.RecordError, match="wall_s"):
        run.close(wall_s=1.0)  # refused before anything is written: the run can still be closed
    first = run.close(path=tmp_path / "elsewhere.json", scores={})
    assert run.path == tmp_path / "elsewhere.json" and first["preset"] is None
    with pytest.raises(record.RecordError, match="already written"):
        run.close(scores={})
    assert record.read_record(tmp_path / "elsewhere.json")["scores"] == {}
