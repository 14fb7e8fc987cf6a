"""Numbers in the README that cite a committed run record (`bench/records/*.json`) must be that record's.

Each fact is a phrase of the README with `{}` where a number stands, the record it cites and, for each
number, the record's field and the format the prose rounds it to. The test renders the phrase from the
record and requires it in the README (whitespace as in running text), so a rerun that changes a record, or
an edit that changes a number, fails here until prose and record agree again.
"""

from __future__ import annotations

import functools
import json
import math
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
    ("Evaluating the base model alone took {} s of that run", "smollm_epyc_avx2", [("demo.record.eval_wall_s", ".0f")]),
    ("held to AVX2: {} s at 9e6ebf5, 110 steps in {} s, load average {} at the start", "smollm_zen4_avx2",
     [("demo.wall_s", ".0f"), ("demo.record.train_wall_s", ".0f"), ("conditions.load_average_at_start.0", ".1f")]),
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


@functools.cache
def _report():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORT_SECTIONS = ("performance", "methods", "inference")


@pytest.mark.parametrize("section", REPORT_SECTIONS)
def test_readme_section_is_rendered_from_its_committed_records(section):
    """The README's rendered sections (Performance, the methods table, Inference) are exactly what
    bench/report.py writes from the records committed in bench/records/readme/."""
    report = _report()
    start, end = report.MARKERS[section]
    text = (ROOT / "README.md").read_text()
    assert start in text and end in text, f"README.md lost its {start} ... {end} markers"
    shown = text[text.index(start) + len(start):text.index(end)].strip()
    want = report.SECTIONS[section](report.KEPT).strip()
    if shown != want:
        diff = [f"README: {a}\nrecord: {b}" for a, b in zip(shown.splitlines(), want.splitlines()) if a != b][:3]
        pytest.fail(f"README.md's {section} section is not what its committed records render "
                    f"(bench/records/readme/); run `python bench/report.py --sections {section}` after a bench "
                    "run, or restore the records. First differences:\n" + "\n".join(diff))


@pytest.mark.parametrize("section", REPORT_SECTIONS)
def test_the_records_a_section_reads_name_their_commit_and_machine(section):
    report = _report()
    found = [path for pattern in report.READS[section] for path in report.KEPT.glob(pattern)
             if path.suffix == ".json"]
    assert found, f"bench/records/readme/ holds no record for the README's {section} section"
    for path in found:
        rec = json.loads(path.read_text())
        text = json.dumps(rec)
        assert rec.get("commit") or rec.get("git_commit"), f"{path}: no commit: the run cannot be traced to its code"
        assert '"cpu_kind"' in text or '"gpu"' in text, f"{path}: the machine it ran on is not recorded"


# ------------------------------------------------------------------ the sessions' and notebooks' prose
# Every quantity stated in the sessions' READMEs and in the markdown of the session and exercise notebooks,
# with its source. A source is a committed record ("record", name, fields: rendered as in FACTS), the course's
# code ("code", function returning the strings for the phrase's {} slots, computed now), or a citation
# ("cited", where it comes from and under which conditions: a paper, a definition, or a run whose record was not
# kept). The first test renders each phrase and requires it in its document; the second requires every quantity
# the prose states (a number with a unit, a percentage, a factor) to stand inside one of these phrases, so that
# a number added to the prose without a source fails here.


def _nb_param(notebook: str, name: str):
    """A value from a notebook's parameters cell (the defaults a student runs)."""
    import ast

    cells = json.loads((ROOT / notebook).read_text())["cells"]
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            for node in ast.parse("".join(cell["source"])).body:
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
                    return ast.literal_eval(node.value)
    raise KeyError(f"{notebook}: no parameter {name!r}")


def _preset(name="shakespeare-cpu"):
    from peftlab.config import preset

    return preset(name)


def _steps(name="shakespeare-cpu", **changes):
    from peftlab import data, train
    from peftlab.config import preset

    return train.total_optimizer_steps(preset(name, **changes), len(data.load_course_data("train")))


def _qwen3b_counts(**config):
    from peftlab.adapters import lora_counts_on_meta
    from peftlab.config import RunConfig

    return lora_counts_on_meta("Qwen/Qwen2.5-3B-Instruct", RunConfig(**config))


def _adalora_schedule() -> list[str]:
    """AdaLoRA's warm-up and final phases as percentages of the steps (`methods.method_config`, 100 steps)."""
    from peftlab.methods import method_config

    cfg = method_config(_preset(), "adalora", 100, "unused")
    return [str(cfg.adalora_tinit), str(cfg.adalora_tfinal)]


def _train_pairs() -> int:
    from peftlab import data

    return len(data.load_course_data("train"))


def _nf4_bytes() -> float:
    from peftlab.memory import nf4_bytes_per_param

    return nf4_bytes_per_param(double_quant=True)


def _bf16_slowdowns() -> list[str]:
    """The range of bfloat16's slowdown over float32 on CPUs without native bfloat16, over the committed runs."""
    ratios = [json.loads((RECORDS / f"{n}.json").read_text())["matmul"][i]["bf16_over_fp32"]
              for n, i in (("cpu_speed_avx2", 1), ("cpu_speed_epyc_avx2", 0), ("cpu_speed_epyc_avx2", 1))]
    return [f"{10 * math.floor(min(ratios) / 10):.0f}", f"{10 * math.ceil(max(ratios) / 10):.0f}"]


def _avx2_demo_minutes() -> list[str]:
    """The demo's range over every committed run of the unchanged preset on a CPU held to (or with only) AVX2."""
    runs = [json.loads(p.read_text()) for p in sorted(RECORDS.glob("smollm_*.json"))]
    walls = [r["demo"]["wall_s"] / 60 for r in runs
             if "demo" in r and not r["preset_changes"] and r["conditions"]["cpu_capability"] == "AVX2"]
    assert len(walls) >= 2, "fewer than two AVX2 demo records: the range means nothing"
    return [f"{math.floor(min(walls)):.0f}", f"{math.ceil(max(walls)):.0f}"]


def _sweep_claims() -> list[str]:
    """Session 2's reading of the README's sweep: 3 and 4 epochs clear the interval narrowly, 5 well beyond it."""
    sweep = json.loads((RECORDS / "readme" / "smollm.json").read_text())["sweep"]
    rows = {json.dumps(r["change"], sort_keys=True): r for r in sweep}
    picked = [rows[json.dumps(c, sort_keys=True)] for c in ({"num_train_epochs": 3}, {"num_train_epochs": 4}, "preset")]
    margins = [r["gain"] - r["gain_ci"] for r in picked]
    assert 0 < margins[0] < 1.5 and 0 < margins[1] < 1.5 and margins[2] > 3, \
        f"Session 2's reading of the sweep (narrowly, narrowly, well beyond) no longer holds: margins {margins}"
    return [f"{x:.1f}" for r in picked for x in (r["gain"], r["gain_ci"])]


def _case_study_minutes() -> list[str]:
    sml = json.loads((RECORDS / "readme" / "smollm.json").read_text())
    return [f"{sml['demo']['wall_s'] / 60:.0f}", sml["conditions"]["dtype"]]


S2, S2NB = "sessions/02_peft_lora/README.md", "sessions/02_peft_lora/session02_lora.ipynb"
S3, S3NB = "sessions/03_multi_adapter/README.md", "sessions/03_multi_adapter/session03_multi_adapter.ipynb"
S4, S4NB = "sessions/04_methods/README.md", "sessions/04_methods/session04_methods.ipynb"
S5, S5NB = "sessions/05_inference/README.md", "sessions/05_inference/session05_inference.ipynb"
E04, E07, E08 = ("solutions/04_qlora_memory/qlora_memory.ipynb", "solutions/07_methods/methods.ipynb",
                 "solutions/08_custom_metric/custom_metric.ipynb")
S3REC, TASKS3 = "session03_smollm", ("shakespeare", "formal", "pirate")


def _ms(fmt: str):
    return lambda seconds: format(seconds * 1e3, fmt)


def _sci(x: float) -> str:
    return f"{x:.1e}".replace("e-0", "e-")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _composition(method: str):
    return lambda r: next(c["relative_delta_error"] for c in r["composition"] if c["method"] == method)


CI95 = ("cited", "the course's confidence level: sacrebleu's paired bootstrap and the perplexity bootstrap "
                 "report 95% intervals (peftlab.metrics)")
SESSION_FACTS = [
    # Session 2
    (S2, "Colab T4 (15 GB, no bf16: float32)", ("cited", "NVIDIA T4: 16 GB GDDR6, shown as 15 GB by Colab's nvidia-smi; "
                                                 "compute capability 7.5 has no bfloat16")),
    (S2, "the reference recipe is {} epochs of {} short examples ({} optimizer steps)",
     ("code", lambda: [f"{_preset('shakespeare-reference').num_train_epochs:g}", str(_train_pairs()),
                       f"{_steps('shakespeare-reference')}"])),
    (S2, "model download (about {} GB for 3B)",
     ("code", lambda: [f"{_qwen3b_total() * 2 / 1e9:.0f}"])),  # bf16 weights
    (S2, "{} GiB by `tests/test_colab.py`", ("code", lambda: [f"{__import__('peftlab.colab').colab.T4_BUDGET_GIB:.0f}"])),
    (S2, "2 idle cores: about {} s including kernel start (`bench/notebooks.py`", ("record", "readme/notebooks",
     [(lambda r: next(n["seconds"] for n in r["notebooks"] if "session02" in n["notebook"]), ".0f")])),
    (S2, "which runs it too, took 435 s on a machine whose load average was 11-13",
     ("cited", "tests/test_session02.py on a shared 2-core machine at load average 11-13 (no record kept)")),
    (S2NB, "**\"{}% fewer trainable parameters\"** is r=16 on q and v of Qwen2.5-3B",
     ("code", lambda: [_fewer_pct(r=16, target_modules=["q_proj", "v_proj"])])),
    (S2NB, "**\"10,000 times fewer\"** is the LoRA paper's figure for GPT-3 175B (Hu et al. 2021, abstract)",
     ("cited", "Hu et al. 2021, arXiv:2106.09685, abstract")),
    (S2NB, "**\"A loss of 2.245 is a perplexity of 9.43\"**", ("cited", "a figure quoted in LoRA tutorials, corrected "
                                                                      "in the next phrase")),
    (S2NB, "exp(2.245) rounds to {}", ("code", lambda: [f"{math.exp(2.245):.2f}"])),
    (S2NB, "with a 95% bootstrap interval over the 82 held-out sentences", CI95),
    (S2NB, "gives each score a 95% bootstrap interval (sacrebleu)", CI95),
    (S2NB, "with the 95% interval of that *difference*", CI95),
    (S2NB, "keeps the reference recipe's alpha, batch and {} epochs ({} optimizer steps an epoch on the {} training pairs)",
     ("code", lambda: [f"{_preset().num_train_epochs:g}", f"{_steps(num_train_epochs=1)}", str(_train_pairs())])),
    (S2NB, "torch would emulate bfloat16 {}-{} times slower", ("code", _bf16_slowdowns)),
    (S2NB, "at 3 and 4 epochs the gain over copying cleared its confidence interval only narrowly (+{} +- {} and +{} +- {} "
           "chrF in the README's sweep), and 5 epochs beat copying well beyond it (+{} +- {})", ("code", _sweep_claims)),
    (S2NB, "take about {} minutes on 2 cores in the README's Performance run ({})", ("code", _case_study_minutes)),
    (S2NB, "in float32 on AVX2 CPUs, {} to {} minutes in the runs the README lists", ("code", _avx2_demo_minutes)),
    (S2NB, "(batch {} x accumulation {} = {} examples)",
     ("code", lambda: [str(_preset().per_device_train_batch_size), str(_preset().gradient_accumulation_steps),
                       str(_preset().per_device_train_batch_size * _preset().gradient_accumulation_steps)])),
    (S2NB, "(about {} bytes per frozen weight against bfloat16)", ("code", lambda: [f"{2 - _nf4_bytes():.1f}"])),
    (S2NB, "QLoRA 4.77 GiB against LoRA's 3.08 GiB, both without checkpointing",
     ("cited", "bench/memory.py --device cuda at commit eb59cdb on an NVIDIA H200, torch 2.11.0, batch 8 x 512, "
               "102M-parameter model (README, Memory of one training step on a GPU; the record was not kept)")),
    # Session 3
    (S3, "20 held-out messages written for this session) and a pirate voice ({} + {} pairs written for the course)",
     ("code", lambda: [str(len((ROOT / "shared/peftlab/data/pirate_train.jsonl").read_text().splitlines())),
                       str(len((ROOT / "shared/peftlab/data/pirate_test.jsonl").read_text().splitlines()))])),
    (S3, "at commit {}, on the 172 Shakespeare training pairs (1 epoch, {} steps)", ("record", S3REC,
     [(lambda r: r["git_commit"][:7], ""), ("training.shakespeare.steps", "d")])),
    (S3, "no dropout, batch {} x {}, `auto`", ("record", S3REC, [("config.per_device_train_batch_size", "d"),
                                                                ("config.gradient_accumulation_steps", "d")])),
    (S3, "2 torch threads, load average {} at the start", ("record", S3REC, [("load_average_start.0", ".1f")])),
    (S3, "| notebook wall time (record `wall_s`) | {} min |", ("record", S3REC, [(lambda r: r["wall_s"] / 60, ".1f")])),
    (S3, "| training: shakespeare {} steps, formal {}, pirate {} | {} s, {} s, {} s |", ("record", S3REC,
     [(f"training.{t}.steps", "d") for t in TASKS3] + [(f"training.{t}.wall_s", ".0f") for t in TASKS3])),
    (S3, "| archaic share, shakespeare rows: base -> own adapter (12 rows) | {}% -> {}% |", ("record", S3REC,
     [("style_scores.shakespeare.base", _pct), ("style_scores.shakespeare.adapter", _pct)])),
    (S3, "| formal share, formal rows | {}% -> {}% |", ("record", S3REC,
     [("style_scores.formal.base", _pct), ("style_scores.formal.adapter", _pct)])),
    (S3, "| pirate share, pirate rows | {}% -> {}% |", ("record", S3REC,
     [("style_scores.pirate.base", _pct), ("style_scores.pirate.adapter", _pct)])),
    (S3, "| `set_adapter` switch, median | {} ms |", ("record", S3REC, [("switching.set_adapter", _ms(".1f"))])),
    (S3, "| {} ms / {} ms |", ("record", S3REC, [("switching.delete + load from disk", _ms(".0f")),
                                               ("switching.unmerge + merge (merged deployment)", _ms(".0f"))])),
    (S3, "| {} of {} (first-token logit gap {} of the largest logit) |", ("record", S3REC,
     [(lambda r: sum(r["mixed_batch"]["rows_equal"]), "d"), (lambda r: len(r["mixed_batch"]["rows_equal"]), "d"),
      ("mixed_batch.next_token_gap", _sci)])),
    (S3, "| the same in float32 | {} of {} (gap {}) |", ("record", S3REC,
     [(lambda r: sum(r["mixed_batch_float32"]["rows_equal"]), "d"),
      (lambda r: len(r["mixed_batch_float32"]["rows_equal"]), "d"), ("mixed_batch_float32.next_token_gap", "g")])),
    (S3, "| {} MiB / {} MiB ({}x) |", ("record", S3REC, [("memory.base_plus_adapters_bytes", _mib),
                                                      ("memory.merged_models_bytes", _mib), ("memory.ratio", ".2f")])),
    (S3, "| relative delta error at 0.5 / 0.5: cat, svd, ties, linear, dare_linear | {}, {}, {}, {}, {} |",
     ("record", S3REC, [(_composition(m), f) for m, f in (("cat", _sci), ("svd", ".3f"), ("ties", ".3f"),
                                                          ("linear", ".3f"), ("dare_linear", ".2f"))])),
    (S3, "the pirate share rises {}%, {}%, {}%, {}%, {}% and the archaic share falls {}%, {}%, {}%, {}%, {}%",
     ("record", S3REC, [(f"interpolation.{i}.pirate: pirate share", _pct) for i in range(5)]
      + [(f"interpolation.{i}.shakespeare: archaic share", _pct) for i in range(5)])),
    (S3, "the first adapter (24 steps) had not finished after 14.5 minutes (9 CPU-minutes); with one thread all three "
         "trained in under 5 minutes (287 s)", ("cited", "a first attempt of the same run at load average 12 to 16 "
                                                         "(no record kept)")),
    (S3NB, "(a 3 x 3 table)", ("cited", "three tasks, three adapters")),
    # Session 4
    (S4, "tinit {}%, tfinal {}% of the steps", ("code", _adalora_schedule)),
    (S4, "(virtual tokens, 2 x layers x kv width)", ("cited", "a key and a value per layer (Li and Liang 2021, 4.2)")),
    (S4, "`Linear(kv, kv)`, `tanh`, `Linear(kv, 2 x layers", ("cited", "peft's PrefixEncoder")),
    (S4, "fine-tuning needs about {} bytes per parameter (float32 weights, gradients and two AdamW moments)",
     ("code", lambda: [f"{4 + 4 + 2 * 4}"])),
    (S4, "(8 steps, 12 generated rows)", ("code", lambda: [] if (_nb_param(S4NB, "steps"), _nb_param(S4NB, "n_generate"))
                                          == (8, 12) else [None])),
    (S4, "the README's, at {} steps, as the measurement",
     ("code", lambda: [str(_bench("methods").SIZES["full"]["steps"])])),
    (S4NB, "with the 95% interval of that", CI95),
    (S4NB, "for 30,000 steps and match full fine-tuning only from about 10 billion parameters up",
     ("cited", "Lester et al. 2021, arXiv:2104.08691, section 3 and Figure 1")),
    (S4NB, "(`lora_alpha` = 16 x sqrt(8),", ("cited", "rsLoRA scales by alpha/sqrt(r) where LoRA scales by alpha/r; "
                                                       "r=8, alpha 16")),
    (S4NB, "run `bench/methods.py` ({} steps) for a steadier picture", ("code", lambda: [str(_bench("methods").SIZES["full"]["steps"])])),
    (S4NB, "(64 steps, each method in its own process)", ("code", lambda: [] if _bench("methods").SIZES["full"]["steps"]
                                                                         == 64 else [None])),
    (S4NB, "Give prompt tuning 10x the steps", ("cited", "an exercise to try, not a measurement")),
    # Session 5
    (S5, "a KV cache of 2 x layers x KV heads x head dim x 2 bytes per token", ("cited", "a key and a value per layer "
                                                                                  "and KV head, 2 bytes each in bf16")),
    (S5NB, "well short of 4x", ("cited", "16-bit weights over 4-bit ones")),
    # Exercises
    (E04, "and the LM head stay in bf16 (2 bytes)", ("cited", "bfloat16 is 2 bytes")),
    (E04, "(bf16 to NF4 at ~{} bytes/weight", ("code", lambda: [f"{_nf4_bytes():.2f}"])),
    (E07, "Prompt tuning trains the fewest: {} parameters for {} tokens on Qwen2.5-3B, about {}% of the",
     ("code", lambda: [f"{20 * _qwen3b_hidden():,}", "20", f"{100 * 20 * _qwen3b_hidden() / _qwen3b_total():.3f}"])),
    (E07, "{} billion; LoRA r=16 on all linear layers trains {} million, some {} times more, still under 1%",
     ("code", lambda: [f"{_qwen3b_total() / 1e9:.2f}", f"{_qwen3b_counts(r=16, target_modules='all-linear').trainable / 1e6:.1f}",
                       f"{round(_qwen3b_counts(r=16, target_modules='all-linear').trainable / (20 * _qwen3b_hidden()), -1):.0f}"])),
    (E08, "(r=8 on every linear layer, {} epochs, {} steps)",
     ("code", lambda: [f"{_preset().num_train_epochs:g}", str(_steps())])),
    (E08, "(r=8 on q, v, o; 1 epoch, {} steps)", ("code", lambda: [str(_steps(num_train_epochs=1))])),
]


def _fewer_pct(**config) -> str:
    """How many fewer parameters LoRA trains than full fine-tuning of Qwen2.5-3B, in percent (2 decimals)."""
    return f"{100 * (1 - _qwen3b_counts(**config).trainable / _qwen3b_total()):.2f}"


def _qwen3b_hidden() -> int:
    from peftlab.models import model_config

    return model_config("Qwen/Qwen2.5-3B-Instruct").hidden_size


def _qwen3b_total() -> int:
    from peftlab.models import meta_model

    return meta_model("Qwen/Qwen2.5-3B-Instruct").num_parameters()


@functools.cache
def _bench(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose(doc: str) -> str:
    """A document's prose with whitespace collapsed: a README whole, a notebook's markdown cells."""
    path = ROOT / doc
    if path.suffix == ".ipynb":
        text = "\n\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                           if c["cell_type"] == "markdown")
    else:
        text = path.read_text()
    return re.sub(r"\s+", " ", text)


def render_fact(phrase: str, source) -> str:
    kind = source[0]
    if kind == "record":
        return render(phrase, json.loads((RECORDS / f"{source[1]}.json").read_text()), source[2])
    if kind == "code":
        values = source[1]()
        assert None not in values, f"{phrase!r}: the code it cites no longer says this"
        assert phrase.count("{}") == len(values), f"{phrase!r}: one value per {{}}"
        return phrase.format(*values)
    assert kind == "cited" and len(source[1]) > 10, f"{phrase!r}: a citation names its source and conditions"
    return phrase


@pytest.mark.parametrize("doc,phrase,source", SESSION_FACTS, ids=[f"{d.split('/')[1]}:{p[:40]}" for d, p, _ in SESSION_FACTS])
def test_session_prose_states_what_its_source_says(doc, phrase, source):
    want = render_fact(phrase, source)
    if want not in prose(doc):
        pattern = re.escape(phrase).replace(r"\{\}", r"([-+\d.,]+)")
        found = re.search(pattern, prose(doc))
        pytest.fail(f"{doc} should say {want!r} ({source[0]}) but "
                    + (f"says {found.group(0)!r}" if found else "the phrase is gone: update SESSION_FACTS"))


UNIT = r"(?:%|x\b|s\b|ms\b|min\b|minutes\b|seconds\b|GiB|MiB|GB\b|MB\b|KiB|times\b|tokens/s|billion|million|" \
       r"parameters\b|bytes\b|pairs\b|steps\b|epochs\b)"
QUANTITY = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:-\d+(?:\.\d+)?)?\s?" + UNIT + r"|[-+]\d+\.\d+\s?\+-\s?\d+\.\d+")
PROSE_DOCS = sorted({*(str(p.relative_to(ROOT)) for p in ROOT.glob("sessions/*/*.ipynb")),
                     *(str(p.relative_to(ROOT)) for p in ROOT.glob("solutions/*/*.ipynb")),
                     *(str(p.relative_to(ROOT)) for p in ROOT.glob("sessions/*/README.md")), "sessions/README.md"})


@pytest.mark.parametrize("doc", PROSE_DOCS)
def test_every_quantity_in_the_prose_has_a_source(doc):
    text = prose(doc)
    spans = []
    for d, phrase, source in SESSION_FACTS:
        if d == doc:
            want = render_fact(phrase, source)
            spans += [(m.start(), m.end()) for m in re.finditer(re.escape(want), text)]
    loose = [m for m in QUANTITY.finditer(re.sub(r"`[^`]*`", lambda c: " " * len(c.group(0)), text))
             if not any(a <= m.start() and m.end() <= b for a, b in spans)]
    assert not loose, (f"{doc} states quantities no SESSION_FACTS entry (tests/test_prose.py) gives a source for: "
                       + "; ".join(repr(text[max(0, m.start() - 40):m.end() + 20]) for m in loose[:6]))


def test_an_unsourced_quantity_fails():
    """The coverage check finds a number the facts table does not list."""
    stray = "Training took 42 s on a laptop."
    assert [m.group(0) for m in QUANTITY.finditer(stray)] == ["42 s"]


# The README outside its rendered sections (which test_readme_section_is_rendered_from_its_committed_records
# checks whole): the quantities FACTS does not render from a record. ("region", end phrase, citation) cites
# everything from the phrase to the end phrase: a block measured once whose record was not kept.
def _config_text(path: str, needle: str) -> list[str]:
    assert needle in (ROOT / path).read_text(), f"{path} no longer says {needle!r}"
    return []


def inspect_default(module: str, cls: str, arg: str):
    import importlib
    import inspect

    return inspect.signature(getattr(importlib.import_module(module), cls)).parameters[arg].default


def _loss_steps() -> list[str]:
    out = []
    for name in ("cpu_speed_loss_avx2", "cpu_speed_loss_native"):
        rows = json.loads((RECORDS / f"{name}.json").read_text())["rows"]
        out += [f"{rows[0]['s_per_step']:.2f}", f"{rows[1]['s_per_step']:.2f}"]
    return out


def _untrained_s(r: dict) -> float:
    """A case-study record's seconds outside training (in the run's own process)."""
    return r["demo"]["record"]["wall_s"] - r["demo"]["record"]["train_wall_s"]


def _epyc_factor() -> list[str]:
    wall = json.loads((RECORDS / "smollm_epyc_avx2.json").read_text())["demo"]["wall_s"]
    assert round(wall / 360) == 3, f"the EPYC's demo took {wall:.0f} s: not three times the 6 minutes"
    return []


README_FACTS = [
    ("(`peftlab build-tiny`: 8.4 s on 2 idle cores of an AMX Xeon, 9.0 s held to AVX2, printed by the command itself)",
     ("cited", "the command's own printed time at 679ee6b, idle AMX Xeon (no record kept)")),
    ("58 s on 2 idle cores (203 passed, 6 skipped;", ("cited", "make test-fast on the idle AMX Xeon (no record kept)")),
    ("and 126 s on the 2-core AVX2-only AMD EPYC", ("cited", "make test-fast at 3cbb3eb on the idle EPYC")),
    ("35.5 min on the AMX Xeon in one process (552 passed, 32 skipped, at commit 4f46c40)",
     ("cited", "make test in one process at 4f46c40")),
    ("idle, at 4f2a82f: 26.2 min (1003 passed, 33 skipped)", ("cited", "make test's closing line at 4f2a82f")),
    ("On the AVX2-only EPYC one process had not finished after 90 minutes (at 2eeba6b, partly beside other work: the "
     "mutation gate took about 22 minutes, the whole case study on SmolLM2 more than 20), too long for CI's 90 minutes",
     ("cited", "make test in one process at 2eeba6b on the EPYC; CI's limit is 90 minutes")),
    ("LoRA dropout 0.05 -> 0, {} epochs as in the reference", ("code", lambda: [f"{_preset().num_train_epochs:g}"])),
    ("BLEU and chrF with 95% intervals", CI95),
    ("(on a real AVX2-only AMD EPYC, below, {} to {} times)", ("record", "cpu_speed_epyc_avx2",
     [("matmul.0.bf16_over_fp32", ".0f"), ("matmul.1.bf16_over_fp32", ".0f")])),
    ("(target {} s)", ("code", lambda: [str(__import__("peftlab.casestudy").casestudy.DEMO_TARGET_S)])),
    ("and every {} s while it trains", ("code", lambda: [f"{inspect_default('peftlab.threads', 'AdaptThreads', 'every_s'):.0f}"])),
    ("held to AVX2 in float32, {} s a step against {} s with transformers' loss; with the AMX Xeon's own kernels in "
     "bfloat16, {} s against {} s", ("code", _loss_steps)),
    ("the same result to the digit in every run (+{} +- {} chrF over copying, {}% archaic)", ("record", "smollm_avx2",
     [("demo.record.quality.2.chrF gain", ".1f"), ("demo.record.quality.2.chrF gain 95% CI", ".1f"),
      ("demo.record.quality.2.archaic share", _pct)])),
    ("started 3 s after other work on the machine was paused", ("cited", "the run's start, by hand")),
    ("the same float32 step took 1.97 s at 11:21 and 2.29-2.48 s at 12:20, and the earlier runs saw 2.71 s and 3.84 s",
     ("cited", "bench/records/cpu_speed_prefix_avx2.json, cpu_speed_onednn_avx2.json, cpu_speed_avx2.json and "
               "cpu_speed_loss_avx2.json, read with their creation times")),
    ("the demo meets its 6 minutes", ("code", lambda: [] if __import__("peftlab.casestudy").casestudy.DEMO_TARGET_S == 360
                                       else [None])),
    ("against 6.0 min at 55c3716e58, before the changes above", ("cited", "bench/smollm.py at 55c3716e58, the README's "
                                                                          "Performance section of that commit")),
    ("misses its 6 minutes by a factor of three", ("code", _epyc_factor)),
    ("{}% archaic, estimator {}%)", ("record", "smollm_epyc_avx2", [("demo.record.quality.2.archaic share", _pct),
     (lambda r: 100 * __import__("peftlab.casestudy").casestudy.estimator_error(r["demo"]["record"]), "+.1f")])),
    ("against {} ms on the Xeon held to AVX2", ("record", "cpu_speed_avx2", [("matmul.1.float32_ms", ".1f")])),
    ("(the SmolLM2 case study then takes about {} minutes)", ("record", "smollm_epyc_avx2",
     [(lambda r: r["demo"]["wall_s"] / 60, ".0f")])),
    ("saving) {} s: {} s of the {} before a step is trained", ("record", "smollm_epyc_avx2",
     [(lambda r: _untrained_s(r) - r["demo"]["record"]["eval_wall_s"], ".0f"), (_untrained_s, ".0f"),
      (lambda r: __import__("peftlab.casestudy").casestudy.DEMO_TARGET_S, "d")])),
    ("(its {} steps took {} s there)", ("record", "smollm_epyc_avx2",
     [("demo.record.steps", "d"), ("demo.record.train_wall_s", ".0f")])),
    ("and where that passes 6 minutes", ("cited", "casestudy.DEMO_TARGET_S")),
    ("predicted under {} GiB", ("code", lambda: [f"{__import__('peftlab.colab').colab.T4_BUDGET_GIB:.0f}"])),
    ("On a T4 (15 GB, no bfloat16)", ("cited", "NVIDIA T4: 16 GB GDDR6, 15 GB in Colab's nvidia-smi")),
    ("which gives each cell 180 s, three times the 60 s per-cell budget",
     ("code", lambda: _config_text("nbgrader_config.py", "c.Execute.timeout = 180"))),
    ("on 2026-11-29 at commit 3b1404e", ("region", "so every cell is within the 60 s budget",
                                          "bench/exercise_cells.py at 3b1404e (solutions/README.md has the table)")),
    ("(load average 12 to 15) took up to 177 s for a cell: the 180 s limits", ("cited", "solutions/README.md's table")),
    ("`python bench/memory.py --device cuda --seq-len 512 --batch 8 --steps 3 --no-allocator-check --out "
     "runs/bench/memory-cuda` at commit `eb59cdb1ed`", ("region", "(estimated activations 4.52 against 2.83 GiB)",
                                                       "the GPU run at eb59cdb on an H200, cited with its command; "
                                                       "its record was not kept")),
    ("The first profile (grading fixture, shared machine)", ("region", "(kernel stop 3.65 s to 0.1 s)",
                                                             "the grader's profiles while it was built; records not kept")),
    ("{} parameters; LoRA r=16 on q_proj and v_proj trains {} ({}% of", ("code", lambda: [
        f"{_qwen3b_total():,}", f"{_qwen3b_counts(r=16, target_modules=['q_proj', 'v_proj']).trainable:,}",
        f"{_qwen3b_counts(r=16, target_modules=['q_proj', 'v_proj']).percent:.4f}"])),
    ("Session 2 on SmolLM2-135M for 2 steps", ("code", lambda: _config_text(".ci/colab", "SmolLM2-135M for 2 steps"))),
]


def _spans(text: str, phrase: str, source) -> list[tuple[int, int]]:
    if source[0] == "region":
        out = []
        for m in re.finditer(re.escape(phrase), text):
            end = text.find(source[1], m.end())
            assert end >= 0, f"README.md: {source[1]!r} does not follow {phrase!r}"
            out.append((m.start(), end + len(source[1])))
        return out
    return [(m.start(), m.end()) for m in re.finditer(re.escape(render_fact(phrase, source)), text)]


def test_every_quantity_in_the_readme_has_a_source():
    """The README's own prose (its rendered sections are checked whole above): every quantity is rendered from a
    record (FACTS), computed by the course's code or cited (README_FACTS)."""
    text = prose("README.md")
    for section in REPORT_SECTIONS:
        start, end = _report().MARKERS[section]
        a, b = text.index(start), text.index(end)
        text = text[:a] + " " * (b - a) + text[b:]
    spans = []
    for phrase, record, fields in FACTS:
        want = render(phrase, json.loads((RECORDS / f"{record}.json").read_text()), fields)
        spans += [(m.start(), m.end()) for m in re.finditer(re.escape(want), text)]
    for phrase, source in README_FACTS:
        found = _spans(text, phrase, source)
        assert found, f"README.md no longer says {render_fact(phrase, source) if source[0] != 'region' else phrase!r}"
        spans += found
    masked = re.sub(r"`[^`]*`", lambda c: " " * len(c.group(0)), text)
    loose = [m for m in QUANTITY.finditer(masked) if not any(a <= m.start() and m.end() <= b for a, b in spans)]
    assert not loose, ("README.md states quantities that neither FACTS nor README_FACTS (tests/test_prose.py) gives a "
                       "source for: " + "; ".join(repr(text[max(0, m.start() - 40):m.end() + 20]) for m in loose[:6]))
