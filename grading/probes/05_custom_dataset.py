"""Probes of exercise 05: they decide its points (peftlab.grader.probes; grading/README.md).

Each runs in the student's kernel after the notebook, on files and rows drawn from `seed` (the submission's,
from the class secret), and returns plain values; the grader compares them with what the solution returns. Each checks
what its test cell checks, so a wrong answer loses the same tests (tests/test_fair_grading.py).
"""

from peftlab.grader.probes import exact, probe


def _text(rng, words):
    vocabulary = ["meeting", "report", "tomorrow", "please", "send", "the", "draft", "thanks", "late", "call",
                  "budget", "review", "Friday", "team", "notes", "soon", "update", "client", "invoice", "agenda"]
    return " ".join(rng.choice(vocabulary) for _ in range(words))


@probe("test_load_good", compare=exact)
def load_good(seed):
    import csv
    import json
    import random
    import tempfile
    from pathlib import Path

    rng = random.Random(seed)
    rows = [{"instruction": _text(rng, 4).capitalize() + ".", "input": _text(rng, 3) if i % 2 else "",
             "output": _text(rng, 5).capitalize() + "."} for i in range(rng.randint(3, 9))]
    tmp = Path(tempfile.mkdtemp())
    with open(tmp / "drawn.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    (tmp / "drawn.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "no_input.jsonl").write_text(json.dumps({"instruction": rows[0]["instruction"], "output": rows[0]["output"]}) + "\n")
    return {name: load_and_validate(tmp / name) for name in ("drawn.csv", "drawn.jsonl", "no_input.jsonl")}  # noqa: F821


@probe("test_load_bad", compare=exact)
def load_bad(seed):
    import json
    import random
    import re
    import tempfile
    from pathlib import Path

    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp())
    n = rng.randint(2, 6)
    bad = rng.randint(1, n)
    cases = {}

    def case(stem, ext, text, *mentions):
        name = f"{stem}_{rng.randint(100, 999)}{ext}"
        (tmp / name).write_text(text)
        cases[name] = (name, *mentions)

    case("blank_output", ".jsonl", "".join(json.dumps({"instruction": f"i{i}", "input": "", "output": " " * rng.randint(1, 3)
                                                       if i == bad else f"o{i}"}) + "\n" for i in range(1, n + 1)),
         f"row {bad}", "output")
    case("notes", ".txt", "instruction,output\n")
    case("no_output_column", ".csv", "instruction,input\n" + "".join(f"say {i},\n" for i in range(n)), "output")
    case("broken", ".jsonl", '{"instruction": "a", "output": "x"}\n{"instruction": "b", "output": \n')
    case("numbers", ".csv", "instruction,input,output\n" + "".join(f"{i},,x{i}\n" for i in range(n)), "row 1", "instruction")
    case("blank_instruction", ".csv", "instruction,input,output\n" + "".join(
        f"{'' if i == bad else f'do {i}'},,done {i}\n" for i in range(1, n + 1)), f"row {bad}", "instruction")
    out = {}
    for name, mentions in cases.items():
        try:
            load_and_validate(tmp / name)  # noqa: F821
            out[name] = "no error"
        except ValueError as exc:
            message = str(exc).lower()
            out[name] = {m: m.lower() in message for m in mentions}
            if any(m.startswith("row ") for m in mentions):
                # Behaviour, not words: the rows the message names must be the wrong one alone, so a catch-all
                # message that names every row (and every field) is not a clear error.
                out[name]["rows named"] = sorted({int(k) for k in re.findall(r"\brows?\s+(\d+)", message)})
        except Exception as exc:
            out[name] = type(exc).__name__
    return out


@probe("test_chat_mask", compare=exact)
def chat_mask(seed):
    import random

    rng = random.Random(seed)
    out = []
    for i in range(3):
        row = {"instruction": " " * rng.randint(0, 2) + _text(rng, 4) + " " * rng.randint(0, 2),
               "input": "" if i == 2 else " " * rng.randint(0, 2) + _text(rng, 3) + rng.choice([" ", "\n", "  \n"]),
               "output": _text(rng, 4) + rng.choice(["", " ", "\n"])}
        length = 256 if i == 0 else rng.randint(4, 40)
        out.append({"messages": to_chat(row), "tokens": tokenize_masked(row, length)})  # noqa: F821
    return out


@probe("test_trained_on_file", compare=exact)
def trained_on_file(seed):
    """What the test checks (every row trained on, a finite loss) is true or false, the same for every seed:
    a notebook could send it without training. So the loader the count relies on also reads a drawn file of
    good rows, which only a working `load_and_validate` returns (the test's one declared dependency)."""
    import csv
    import math
    import random
    import tempfile
    from pathlib import Path

    rng = random.Random(seed + 3)
    rows = [{"instruction": _text(rng, 3).capitalize() + "?", "input": _text(rng, 2) if i % 3 else "",
             "output": _text(rng, 4).capitalize() + "."} for i in range(rng.randint(2, 7))]
    drawn = Path(tempfile.mkdtemp()) / f"rows_{rng.randint(100, 999)}.csv"
    with open(drawn, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    return {"examples": result.train_stats.examples == len(load_and_validate(train_file)),  # noqa: F821
            "finite_loss": all(math.isfinite(loss) for _, loss in result.history.train),  # noqa: F821
            "drawn rows": load_and_validate(drawn)}  # noqa: F821
