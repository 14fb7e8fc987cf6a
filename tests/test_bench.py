"""The benchmark scripts run at smoke size so they cannot rot (no timing asserted)."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "throughput.py"


def test_throughput_benchmark_smoke(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "t.json"
    assert module.main(["--steps", "2", "--batch-size", "4", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert len(record["results"]) == 2 and record["ratio"] > 0
    assert all(r["tokens"] > 0 for r in record["results"].values())
    assert "speed-up" in capsys.readouterr().out
