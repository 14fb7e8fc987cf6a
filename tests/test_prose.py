"""Numbers in the README that cite a committed run record (`bench/records/*.json`) must be that record's.

Each fact is a phrase of the README with `{}` where a number stands, the record it cites and, for each
number, the record's field and the format the prose rounds it to. The test renders the phrase from the
record and requires it in the README (whitespace as in running text), so a rerun that changes a record, or
an edit that changes a number, fails here until prose and record agree again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "bench" / "records"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


# (phrase, record, [(field path, format), ...]); a format is a format spec or a function of the value.
FACTS = [
    # Which dtype a CPU gets: one 576x576 @ 576x1536 product on one thread.
    ("with the CPU's own kernels, {} ms in float32 and {} ms in bfloat16", "cpu_speed_avx2",
     [("matmul.0.float32_ms", ".1f"), ("matmul.0.bfloat16_ms", ".1f")]),
    ("held to AVX2 (`devices.AVX2_ONLY_ENV`), {} ms in float32 and {} ms in bfloat16, {} times slower", "cpu_speed_avx2",
     [("matmul.1.float32_ms", ".1f"), ("matmul.1.bfloat16_ms", ".0f"), ("matmul.1.bf16_over_fp32", ".0f")]),
    ("the first `make demo` held to AVX2 took {} s", "smollm_avx2", [("demo.wall_s", ".0f")]),
    ("beat copying the input by +{} +- {} chrF with {}% archaic outputs", "smollm_avx2",
     [("demo.record.quality.2.chrF gain", ".1f"), ("demo.record.quality.2.chrF gain 95% CI", ".1f"),
      ("demo.record.quality.2.archaic share", _pct)]),
    ("one training step of the preset took {} s in bfloat16 and {} s in float32", "cpu_speed_native",
     [("rows.1.s_per_step", ".2f"), ("rows.0.s_per_step", ".2f")]),
    # A busy machine.
    ("one float32 step of the preset (held to AVX2) took {} s with 2 threads and {} s with 1", "cpu_speed_avx2",
     [("rows.2.s_per_step", ".2f"), ("rows.0.s_per_step", ".2f")]),
    ("2 threads fell to {} s a step", "cpu_speed_avx2", [("rows.3.s_per_step", ".1f")]),
    ("while 1 thread held {} s", "cpu_speed_avx2", [("rows.1.s_per_step", ".1f")]),
    ("pinned at 2 threads, {} s a step idle and {} s beside a busy process; fitted, {} s idle (2 threads) and {} s "
     "busy (1 thread)", "cpu_speed_threads_avx2",
     [("rows.0.s_per_step", ".2f"), ("rows.1.s_per_step", ".1f"), ("rows.2.s_per_step", ".2f"),
      ("rows.3.s_per_step", ".2f")]),
    # Logits only where the loss needs them; one prefix for the batch.
    ("it took {} s against {} s with every row run whole", "cpu_speed_prefix_avx2",
     [("rows.0.s_per_step", ".2f"), ("rows.1.s_per_step", ".2f")]),
    ("{} s for `make demo`, 110 steps in {} s, load average {} at the start", "smollm_avx2_shared_prefix_first",
     [("demo.wall_s", ".0f"), ("demo.record.train_wall_s", ".0f"), ("conditions.load_average_at_start.0", ".1f")]),
    ("{} and {} s a step with oneDNN, {} and {} s without", "cpu_speed_onednn_avx2",
     [("rows.0.s_per_step", ".2f"), ("rows.2.s_per_step", ".2f"), ("rows.1.s_per_step", ".2f"),
      ("rows.3.s_per_step", ".2f")]),
    ("{} s at db317cb, 110 steps in {} s", "smollm_avx2_shared_prefix",
     [("demo.wall_s", ".0f"), ("demo.record.train_wall_s", ".0f")]),
    ("(load average {} at the start)", "smollm_avx2_shared_prefix", [("conditions.load_average_at_start.0", ".1f")]),
    ("the demo took {} s at db317cb", "smollm_native_shared_prefix", [("demo.wall_s", ".0f")]),
    # The case study on a real AVX2-only CPU.
    ("idle (load average {} at the start, nothing else running)", "smollm_epyc_avx2",
     [("conditions.load_average_at_start.0", ".1f")]),
    ("took {} s for `make demo`: 110 steps in {} s ({} s a step), with the same result to the digit (+{} +- {} chrF "
     "over copying, {}% archaic", "smollm_epyc_avx2",
     [("demo.wall_s", ".0f"), ("demo.record.train_wall_s", ".0f"),
      (lambda r: r["demo"]["record"]["train_wall_s"] / r["demo"]["record"]["steps"], ".1f"),
      ("demo.record.quality.2.chrF gain", ".1f"), ("demo.record.quality.2.chrF gain 95% CI", ".1f"),
      ("demo.record.quality.2.archaic share", _pct)]),
    ("float32 product on one thread took {}-{} ms there", "cpu_speed_epyc_avx2",
     [("matmul.1.float32_ms", ".1f"), ("matmul.0.float32_ms", ".1f")]),
    ("bfloat16 took {}-{} ms, {}-{} times float32", "cpu_speed_epyc_avx2",
     [("matmul.1.bfloat16_ms", ".0f"), ("matmul.0.bfloat16_ms", ".0f"), ("matmul.0.bf16_over_fp32", ".0f"),
      ("matmul.1.bf16_over_fp32", ".0f")]),
]


# The same for grading/README.md.
GRADING_FACTS = [
    ("16 submissions of exercise 05 took {} s with the fork server's 2 workers and {} s on `--cluster local:2`",
     "grading_dask_shared", [("runs.parallel.seconds", ".1f"), ("runs.dask.seconds", ".1f")]),
    ("({}x the time; the target is at most 1.2x)", "grading_dask_shared", [("dask_vs_fork_server_time", ".2f")]),
    ("load average {} before and {} after", "grading_dask_shared",
     [("load_average.before.0", ".1f"), ("load_average.after.0", ".1f")]),
    ("one submission took {} s of one worker", "grading_dask_shared",
     [(lambda r: r["runs"]["sequential"]["seconds"] / r["n"], ".1f")]),
]
GRADING_FACTS += [
    ("100 submissions took {} s and 1,000 took {} s, {} s each with two slots", "grading_class_dask",
     [("rows.0.seconds", ".1f"), ("rows.1.seconds", ".1f"), ("rows.1.seconds_per_submission", ".2f")]),
    ("The head's peak memory was {} MiB for 100 and {} MiB for 1,000, and the scheduler's {} MiB and {} MiB",
     "grading_class_dask", [("rows.0.head_peak_mib", ".1f"), ("rows.1.head_peak_mib", ".1f"),
                            ("rows.0.scheduler_peak_mib", ".1f"), ("rows.1.scheduler_peak_mib", ".1f")]),
    ("It was {} s of the 1,000-submission run", "grading_class_dask", [("rows.1.expect_seconds", ".1f")]),
    ("spent {} s on its whole once-per-class set-up", "grading_dask_shared", [("runs.parallel.setup_seconds", ".1f")]),
]
DOCS = {"README.md": FACTS, "grading/README.md": GRADING_FACTS}


def field(record: dict, path):
    """`path` is a dotted path through mappings and lists ("demo.record.quality.2.chrF gain"), or a function."""
    if callable(path):
        return path(record)
    value = record
    for key in path.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def render(phrase: str, record: dict, fields) -> str:
    numbers = [fmt(field(record, path)) if callable(fmt) else format(field(record, path), fmt) for path, fmt in fields]
    assert phrase.count("{}") == len(numbers), f"{phrase!r}: one field per {{}}"
    return phrase.format(*numbers)


def _text(path: Path) -> str:
    return re.sub(r"\s+", " ", path.read_text())


@pytest.mark.parametrize("doc,phrase,record,fields", [(d, *f) for d, facts in DOCS.items() for f in facts],
                         ids=[f"{d}:{r}:{p[:40]}" for d, facts in DOCS.items() for p, r, _ in facts])
def test_readme_numbers_are_their_records(doc, phrase, record, fields):
    rec = json.loads((RECORDS / f"{record}.json").read_text())
    want = render(phrase, rec, fields)
    readme = _text(ROOT / doc)
    if want not in readme:
        pattern = re.escape(phrase).replace(r"\{\}", r"([-+\d.,]+)")
        found = re.search(pattern, readme)
        pytest.fail(f"{doc} should say {want!r} (bench/records/{record}.json) but "
                    + (f"says {found.group(0)!r}" if found else "the phrase is gone: update FACTS in tests/test_prose.py"))
    assert f"bench/records/{record}.json" in readme, f"{doc} states {want!r} without citing its record"


@pytest.mark.parametrize("doc", DOCS)
def test_every_record_the_readme_cites_is_committed_and_names_its_machine(doc):
    cited = sorted(set(re.findall(r"bench/records/([\w.-]+)\.json", (ROOT / doc).read_text())))
    assert cited, f"{doc} cites no record: this test reads the wrong file"
    for name in cited:
        path = RECORDS / f"{name}.json"
        assert path.is_file(), f"{doc} cites bench/records/{name}.json, which is not in the repository"
        rec = json.loads(path.read_text())
        assert rec.get("commit"), f"{path.name}: no commit: the run cannot be traced to its code"
        text = json.dumps(rec)
        assert '"cpu_kind"' in text or '"capability"' in text, f"{path.name}: the CPU it ran on is not recorded"


def test_a_stale_number_fails():
    """The check above on a made-up record: a README number that differs from its record is not found."""
    rec = {"demo": {"wall_s": 1072.6}}
    assert render("took {} s for", rec, [("demo.wall_s", ".0f")]) == "took 1073 s for"
    assert render("took {} s for", {"demo": {"wall_s": 1080.2}}, [("demo.wall_s", ".0f")]) not in _text(ROOT / "README.md")
