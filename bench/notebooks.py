"""The course's own run times: every session and solution notebook, headless, on this machine.

    python bench/notebooks.py [--out runs/bench/notebooks.json]

Each notebook runs with papermill in a scratch copy of its folder (so run
outputs never land in the repository), with the CI parameters: the offline
tiny model on the CPU. Times include starting the kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
# The session defaults to SmolLM2-135M on a CPU (timed by bench/smollm.py); here it runs on the tiny model.
PARAMETERS = {
    "sessions/02_peft_lora/session02_lora.ipynb": dict(preset="shakespeare-tiny",
                                                      overrides={"num_train_epochs": 2}, n_samples=2),
    "sessions/03_multi_adapter/session03_multi_adapter.ipynb": dict(
        preset="shakespeare-tiny", epochs={"shakespeare": 1, "formal": 2, "pirate": 1}, n_eval=4, n_samples=2,
        n_interp=2, interp_steps=3, max_new_tokens=6),
    "sessions/04_methods/session04_methods.ipynb": dict(preset="shakespeare-tiny", steps=2, n_generate=2,
                                                        max_new_tokens=4),
}


def notebooks(root: Path) -> list[Path]:
    return sorted([*root.glob("sessions/*/*.ipynb"), *root.glob("solutions/*/*.ipynb")])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(ROOT))
    parser.add_argument("--only", default="", help="run only notebooks whose path contains this text")
    parser.add_argument("--out", default="runs/bench/notebooks.json")
    args = parser.parse_args(argv)

    import papermill
    from peftlab import record

    root = Path(args.root).resolve()
    rows = []
    commit, load_start = record.git_commit(), list(os.getloadavg())  # before the notebooks run
    for nb in notebooks(root):
        rel = nb.relative_to(root).as_posix()
        if args.only not in rel:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / nb.parent.name
            shutil.copytree(nb.parent, work)
            start = time.perf_counter()
            papermill.execute_notebook(str(work / nb.name), str(work / "executed.ipynb"),
                                       parameters=PARAMETERS.get(rel, {}), kernel_name="python3", cwd=str(work),
                                       progress_bar=False, execution_timeout=900)
            seconds = time.perf_counter() - start
        rows.append({"notebook": rel, "seconds": round(seconds, 1)})
        print(f"{rel:<60} {seconds:6.1f} s", flush=True)
    total = sum(r["seconds"] for r in rows)
    print(f"{'total':<60} {total:6.1f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"commit": commit, "load_average_at_start": load_start,
                               "load_average_at_end": list(os.getloadavg()),
                               "hardware": record.hardware(), "cpu_count": os.cpu_count(),
                               "versions": record.versions(), "notebooks": rows, "total_s": round(total, 1)},
                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
