"""The same training under torchrun with two gloo processes on CPU."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_torchrun_two_processes(tiny_dir, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "peftlab.cli", "train", "--config", "shakespeare-tiny", "--no-progress",
           "max_steps=4", "eval_each_epoch=false", f"output_dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "record.json").read_text())
    assert record["steps"] == 4
    # two ranks each see their own shard: tokens counted across both processes
    assert record["after"]["perplexity"] > 0
    assert proc.stdout.count("=== Summary ===") == 1  # printed by rank 0 only
