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
           "max_steps=4", "max_train_samples=64", "eval_each_epoch=false", f"output_dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "record.json").read_text())
    assert record["steps"] == 4 and record["world_size"] == 2
    # Two ranks each see their own shard, and tokens are counted across both processes:
    # 4 steps x batch 4 x accumulation 2 x 2 ranks = the first 64 training pairs once, so the
    # count is every non-padding token of the training set (one rank alone would see half).
    assert record["data"]["train"]["examples"] == 64
    assert record["tokens_seen"] == record["data"]["train"]["tokens"]
    assert record["after"]["perplexity"] > 0
    # Only rank 0 writes the outputs and prints the summary; rank 1 says it left them.
    assert proc.stdout.count("=== Summary ===") == 1
    assert proc.stdout.count("rank 1 of 2: outputs are written by rank 0") == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("checkpoint-")) == [
        "adapter", "config.yaml", "loss.png", "record.json"]
