"""Torch threads follow the free cores on a CPU (peftlab.threads): the rule, the /proc/stat arithmetic, pins."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peftlab import threads

CASES = [  # (others busy, usable cores, ceiling) -> threads
    ((None, 2, 2), 2),  # no /proc/stat reading: keep the ceiling
    ((0.0, 2, 2), 2),
    ((0.3, 2, 2), 2),  # a browser tab's flicker is not a core
    ((1.0, 2, 2), 1),
    ((1.9, 2, 2), 1),  # never fewer than one
    ((3.0, 2, 2), 1),
    ((1.0, 8, 4), 4),  # never more than torch's default or the user's count
    ((3.0, 8, 8), 5),
]


@pytest.mark.parametrize("args,expected", CASES)
def test_choose(args, expected):
    assert threads.choose(*args) == expected


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    threads._ceiling = threads._ours = None


def fake_stat(tmp_path, monkeypatch, lines: str):
    path = tmp_path / "stat"
    path.write_text(lines)
    monkeypatch.setattr(threads, "STAT", path)
    return path


def test_others_subtracts_this_process(tmp_path, monkeypatch):
    """Others = busy time of this process's CPUs minus its own CPU time, per second of wall time."""
    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    monkeypatch.setattr(threads, "affinity", lambda: {0, 1})
    clock = iter([10.0, 12.0])  # two samples, 2 s apart
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    own = iter([os.times_result((1.0, 0.0, 0, 0, 0)), os.times_result((2.5, 0.5, 0, 0, 0))])
    monkeypatch.setattr(os, "times", lambda: next(own))
    stat = fake_stat(tmp_path, monkeypatch, "cpu  9000 0 0 9000 0 0 0 0 0 0\ncpu0 500 0 0 2500 0 0 0 0 0 0\n"
                     "cpu1 500 0 0 2500 0 0 0 0 0 0\ncpu2 8000 0 0 4000 0 0 0 0 0 0\n")
    share = threads.CpuShare()
    # 2 s later CPUs 0 and 1 were busy for 400 ticks = 4.0 core-seconds, of which 2.0 were ours;
    # CPU 2, outside this process's affinity (another tenant of the host), does not count.
    stat.write_text("cpu  9600 0 0 9000 0 0 0 0 0 0\ncpu0 700 0 0 2500 0 0 0 0 0 0\n"
                    "cpu1 700 0 0 2500 0 0 0 0 0 0\ncpu2 8200 0 0 4000 0 0 0 0 0 0\n")
    assert share.others() == pytest.approx(1.0)


def test_without_per_cpu_lines_the_machine_line_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    monkeypatch.setattr(threads, "affinity", lambda: None)
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    own = iter([os.times_result((0.0, 0.0, 0, 0, 0)), os.times_result((0.0, 0.0, 0, 0, 0))])
    monkeypatch.setattr(os, "times", lambda: next(own))
    stat = fake_stat(tmp_path, monkeypatch, "cpu  100 0 0 100 0 0 0 0 0 0\n")
    share = threads.CpuShare()
    stat.write_text("cpu  250 0 0 150 0 0 0 0 0 0\n")
    assert share.others() == pytest.approx(1.5)


def test_fit_drops_a_thread_while_another_process_holds_a_core(monkeypatch, keep_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("PEFTLAB_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    torch.set_num_threads(2)
    threads._ceiling = threads._ours = None

    class Busy:
        def __init__(self, others):
            self.value = others

        def age(self):
            return 10.0

        def others(self):
            return self.value

    said = []
    assert threads.fit(Busy(1.0), log=said.append) == 1
    assert torch.get_num_threads() == 1
    assert len(said) == 1 and "2 -> 1" in said[0] and "OMP_NUM_THREADS" in said[0]
    # The other process ends: back to the two threads the run started with, never more.
    assert threads.fit(Busy(0.0), log=said.append) == 2
    assert threads.fit(Busy(0.0), log=said.append) == 2
    assert len(said) == 2


def test_fit_keeps_a_count_the_user_set(monkeypatch, keep_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("PEFTLAB_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    torch.set_num_threads(2)
    threads._ceiling = threads._ours = None

    class Idle:
        def age(self):
            return 10.0

        def others(self):
            return 0.0

    assert threads.fit(Idle(), log=None) == 2
    torch.set_num_threads(1)  # the user, in a notebook cell
    assert threads.fit(Idle(), log=None) == 1
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("variable", threads.PIN_VARIABLES)
def test_a_pinned_count_is_left_alone(monkeypatch, variable, keep_threads):
    monkeypatch.setenv(variable, "2")
    torch.set_num_threads(2)

    class Busy:
        def age(self):
            return 10.0

        def others(self):
            return 2.0

    assert threads.fit(Busy(), log=None) is None
    assert torch.get_num_threads() == 2


@pytest.mark.skipif(not os.path.exists("/proc/stat") or threads.usable_cores() < 2, reason="Linux, 2+ cores")
def test_a_real_busy_process_takes_a_thread_away():
    """A process spinning one core: fit() in a fresh interpreter leaves that core to it. No timing is asserted:
    a machine that is busier still only makes `others` larger."""
    script = textwrap.dedent("""
        import os, torch
        from peftlab import threads
        os.environ.pop("OMP_NUM_THREADS", None); os.environ.pop("PEFTLAB_THREADS", None)
        cores = threads.usable_cores()
        torch.set_num_threads(cores)
        print(cores, threads.fit(log=None, min_seconds=1.0))
    """)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        env = {k: v for k, v in os.environ.items() if k not in threads.PIN_VARIABLES}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    finally:
        spinner.kill()
        spinner.wait()
    cores, chosen = map(int, out.stdout.split())
    assert 1 <= chosen <= cores - 1


def test_the_summary_says_when_the_count_moved():
    from peftlab.casestudy import _threads

    assert _threads({"torch_threads": 2, "thread_changes": [[0, 2]]}) == "2 torch threads"
    moved = _threads({"torch_threads": 2, "thread_changes": [[0, 2], [40, 1], [80, 2]]})
    assert moved.startswith("2 torch threads at the end") and "1 from step 40" in moved


def test_training_on_the_cpu_records_its_threads(tmp_path, monkeypatch):
    from peftlab import config as C
    from peftlab import train

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("PEFTLAB_THREADS", raising=False)
    result = train.train(C.preset("shakespeare-tiny", max_steps=2, output_dir=str(tmp_path), save_strategy="no"),
                         progress=False)
    assert result.thread_changes and result.thread_changes[0][0] == 0
    assert all(1 <= n <= threads.usable_cores() for _, n in result.thread_changes)
    monkeypatch.setenv("PEFTLAB_THREADS", "1")
    assert train.train(C.preset("shakespeare-tiny", max_steps=1, output_dir=str(tmp_path / "pinned"),
                                save_strategy="no"), progress=False).thread_changes == []
