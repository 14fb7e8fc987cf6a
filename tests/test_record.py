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
