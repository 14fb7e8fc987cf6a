"""Fair grading: a wrong answer in one solution cell costs only the tests that depend on that cell.

Every test cell of every exercise starts with `checks.depends_on("<grade id>", ...)`, naming the
solution cells whose code it exercises. The mutation gate checks that declaration by grading, for
every solution cell of every assignment:

* the fully solved notebook with that one cell left as released (`raise NotImplementedError()`):
  exactly the tests that declare the cell must lose points, and every other test keeps them;
* realistic wrong answers of the right type (a missing alpha / r, B not zero at initialisation,
  training loss reported as held-out loss, ...), so that code keeps running with a wrong value:
  only declared tests lose points, at least one does, and its feedback names the cell to fix.

Every graded notebook is independent, so they are graded once each, in parallel, and every test
reads the shared results. Static checks keep test cells free of state that other cells use.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import symtable
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from peftlab.grader import exercises
from peftlab.grader.course import assignments

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = assignments(ROOT)
DECLARATION = re.compile(r"^checks\.depends_on\((.*)\)\s*$")
MARKER = re.compile(r"\n?[ \t]*### (BEGIN|END) SOLUTION")


@dataclass(frozen=True)
class Wrong:
    """A realistic wrong answer: in solution cell `region` of `assignment`, `old` replaced by `new`."""

    assignment: str
    region: str
    what: str
    old: str
    new: str

    @property
    def id(self) -> str:
        return f"{self.assignment[:2]}-{self.region}-{self.what.replace(' ', '_')}"


WRONG_ANSWERS = [
    # 01: the LoRA layer, its injection, the rank-k factors
    Wrong("01_lora_from_scratch", "lora_linear", "forward without alpha over r",
          "return out + self.scaling * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)",
          "return out + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)"),
    Wrong("01_lora_from_scratch", "lora_linear", "scaling alpha over sqrt r",
          "self.scaling = alpha / r", "self.scaling = alpha / math.sqrt(r)"),
    Wrong("01_lora_from_scratch", "lora_linear", "forward scaled by alpha over sqrt r",
          "return out + self.scaling * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)",
          "return out + self.alpha / math.sqrt(self.r) * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)"),
    Wrong("01_lora_from_scratch", "lora_linear", "B initialised randomly",
          "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
          "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))\n"
          "        nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))"),
    Wrong("01_lora_from_scratch", "lora_linear", "delta_weight transposed",
          "return self.scaling * (self.lora_B @ self.lora_A)", "return self.scaling * (self.lora_A.T @ self.lora_B.T)"),
    Wrong("01_lora_from_scratch", "add_lora", "wraps only the first target",
          'name.rsplit(".", 1)[-1] in set(target_names)]', 'name.rsplit(".", 1)[-1] == target_names[0]]'),
    Wrong("01_lora_from_scratch", "rank_k", "drops the singular values",
          "return U[:, :k] * root, root[:, None] * Vh[:k]", "return U[:, :k], Vh[:k]"),
    # 02: scaling and counts, one run, the sweep
    Wrong("02_rank_alpha_sweep", "run_one", "training loss as held-out loss",
          "loss = metrics.heldout_loss(result.model, result.eval_dataset, result.tokenizer)",
          "loss = result.history.train[-1][1]"),
    Wrong("02_rank_alpha_sweep", "scaling_counts", "rsLoRA ignored",
          "return alpha / math.sqrt(r) if rslora else alpha / r", "return alpha / r"),
    Wrong("02_rank_alpha_sweep", "scaling_counts", "counts only A",
          "total += r * (module.in_features + module.out_features)", "total += r * module.in_features"),
    Wrong("02_rank_alpha_sweep", "sweep", "first learning rate only",
          "for lr in learning_rates:", "for lr in learning_rates[:1]:"),
    # 03: target sets, budget ranks, per-module patterns, the dict mistake
    Wrong("03_target_modules", "target_sets", "all linear without k_proj",
          '"all linear": ["q_proj", "k_proj", "v_proj",', '"all linear": ["q_proj", "v_proj",'),
    Wrong("03_target_modules", "rank_for_budget", "rank rounded up",
          "return budget // per_rank", "return budget // per_rank + 1"),
    Wrong("03_target_modules", "per_module", "no alpha_pattern",
          'alpha_pattern={"q_proj": 32},', ""),
    Wrong("03_target_modules", "dict_targets", "reports the intended ranks",
          "LoraConfig(r=4, target_modules=ranks)", "LoraConfig(r=4, target_modules=list(ranks), rank_pattern=ranks)"),
    # 04: 4-bit loading, memory prediction, measurement, merge
    Wrong("04_qlora_memory", "load_4bit", "no double quantization",
          "bnb_4bit_use_double_quant=True", "bnb_4bit_use_double_quant=False"),
    Wrong("04_qlora_memory", "predict", "absmax constants forgotten", "return 0.5 + 4 / 64", "return 0.5"),
    Wrong("04_qlora_memory", "predict", "embeddings counted in NF4",
          "return (linear * nf4_bytes_per_param(True) + other * 2) / GiB",
          "return (linear + other) * nf4_bytes_per_param(True) / GiB"),
    Wrong("04_qlora_memory", "measured", "packed numel as weights",
          "quantized = sum(m.in_features * m.out_features for m in model.modules()",
          "quantized = sum(m.weight.numel() for m in model.modules()"),
    Wrong("04_qlora_memory", "merge", "merged into the original W",
          "return adapters.merge_qlora(config, adapter_dir, dtype=getattr(torch, compute_dtype))",
          "return adapters.merge(adapters.load_adapter(models.load_model(with_overrides(\n"
          '        config, method="lora", quantization="none", dtype=compute_dtype)), adapter_dir))'),
    # 05: loading and validation, chat template and masking
    Wrong("05_custom_dataset", "load_validate", "rows counted from 0",
          "for n, row in enumerate(dataset, start=1):", "for n, row in enumerate(dataset):"),
    Wrong("05_custom_dataset", "load_validate", "blank fields accepted",
          "if not clean[name].strip():", "if not clean[name]:"),
    Wrong("05_custom_dataset", "chat_mask", "prompt not masked",
          "labels = [-100] * len(prompt) + full[len(prompt):]", "labels = list(full)"),
    Wrong("05_custom_dataset", "chat_mask", "input not stripped",
          'user += "\\n\\n" + row["input"].strip()', 'user += "\\n\\n" + row["input"]'),
    # 06: two adapters on one base: loading, routing a batch, combining
    Wrong("06_adapters", "load_two", "folders swapped",
          "for name, path in ADAPTER_DIRS.items():", "for name, path in zip(ADAPTER_DIRS, reversed(ADAPTER_DIRS.values())):"),
    Wrong("06_adapters", "load_two", "first adapter unnamed",
          "model = adapters.load_adapter(model, path, adapter_name=name)",
          'model = adapters.load_adapter(model, path, **({"adapter_name": name} if name == "pirate" else {}))'),
    Wrong("06_adapters", "route", "one adapter for the whole batch",
          'return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], adapter_names=list(names)).logits',
          'model.set_adapter(names[0])\n    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits'),
    Wrong("06_adapters", "combine", "linear combination",
          'combination_type="cat"', 'combination_type="linear"'),
    Wrong("06_adapters", "combine", "combined adapter not activated",
          'return adapters.combine(model, ["shakespeare", "pirate"], list(weights), "mix", combination_type="cat")',
          'model.add_weighted_adapter(["shakespeare", "pirate"], list(weights), "mix", combination_type="cat")\n'
          '    return model'),
    # 07: closed-form counts of each method, full fine-tuning, a run of two methods
    Wrong("07_methods", "lora_family", "k and v as wide as q",
          "kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)", "kv = h"),
    Wrong("07_methods", "lora_family", "DoRA magnitude forgotten",
          "return lora_params(cfg, targets, r) + cfg.num_hidden_layers * sum(shapes[t][0] for t in targets)",
          "return lora_params(cfg, targets, r)"),
    Wrong("07_methods", "other_methods", "IA3 scales down_proj outputs",
          'shapes["down_proj"][1])', 'shapes["down_proj"][0])'),
    Wrong("07_methods", "other_methods", "prefix as wide as the hidden size",
          'kv = linear_shapes(cfg)["k_proj"][0]', "kv = cfg.hidden_size"),
    Wrong("07_methods", "full_count", "biases forgotten",
          'biases = shapes["q_proj"][0] + shapes["k_proj"][0] + shapes["v_proj"][0]', "biases = 0"),
    Wrong("07_methods", "full_count", "tied lm_head counted",
          "head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * h", "head = cfg.vocab_size * h"),
    Wrong("07_methods", "run_method", "frozen parameters counted as trainable",
          '"trainable": counts.trainable,', '"trainable": counts.total,'),
    Wrong("07_methods", "run_method", "training loss as held-out loss",
          '"eval_loss": metrics.heldout_loss(result.model, result.eval_dataset, result.tokenizer)}',
          '"eval_loss": result.history.train[-1][1]}'),
    # 08: the style-marker metric, its rate, ranking adapters
    Wrong("08_custom_metric", "markers", "case-sensitive matching",
          'text.lower().replace("\\u2019", "\'")', 'text.replace("\\u2019", "\'")'),
    Wrong("08_custom_metric", "markers", "substring matching",
          "return [w for w in words if w in MARKERS or",
          "return [m for m in sorted(MARKERS) if m in text.lower()] + [w for w in words if"),
    Wrong("08_custom_metric", "markers", "punctuation kept on words",
          'words = re.findall(r"[a-z]*\'?[a-z]+(?:\'[a-z]+)?", text.lower().replace("\\u2019", "\'"))',
          'words = text.lower().replace("\\u2019", "\'").split()'),
    Wrong("08_custom_metric", "markers", "word boundaries split apostrophes",
          'words = re.findall(r"[a-z]*\'?[a-z]+(?:\'[a-z]+)?", text.lower().replace("\\u2019", "\'"))',
          'words = re.findall(r"\\b\\w+\\b", text.lower())'),
    Wrong("08_custom_metric", "rate", "counts markers, not outputs",
          "return sum(1 for text in texts if markers(text)) / len(texts)",
          "return sum(len(markers(text)) for text in texts) / len(texts)"),
    Wrong("08_custom_metric", "rate", "empty list scores zero",
          "if len(texts) == 0:\n        raise ValueError(\"marker_rate: texts is empty; a rate needs at least one output\")",
          "if len(texts) == 0:\n        return 0.0"),
    Wrong("08_custom_metric", "ranking", "ranks counted from 0",
          '"rank": 1 + sum(s > scores[name] for s in scores.values())', '"rank": sum(s > scores[name] for s in scores.values())'),
    Wrong("08_custom_metric", "ranking", "ties numbered in order",
          '"rank": 1 + sum(s > scores[name] for s in scores.values())', '"rank": 1 + ranked.index(name)'),
]


# ------------------------------------------------------------------ reading the notebooks
def _source(assignment: str) -> Path:
    (source,) = sorted((ROOT / "solutions" / assignment).glob("*.ipynb"))
    return source


def _cells(assignment: str):
    return nbformat.read(_source(assignment), as_version=4).cells


def regions(assignment: str) -> list[str]:
    """Grade ids of the solution code cells (written answers are graded by hand)."""
    return [c.metadata["nbgrader"]["grade_id"] for c in _cells(assignment)
            if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]


def declared(assignment: str) -> dict[str, set[str]]:
    """{test grade id: the solution cells its first line declares}; a missing declaration is an empty set."""
    out = {}
    for c in _cells(assignment):
        meta = c.metadata.get("nbgrader", {})
        if c.cell_type == "code" and meta.get("grade"):
            match = DECLARATION.match(c.source.splitlines()[0] if c.source else "")
            out[meta["grade_id"]] = set(ast.literal_eval(f"({match.group(1)},)")) if match else set()
    return out


def dependents(assignment: str, region: str) -> set[str]:
    return {test for test, deps in declared(assignment).items() if region in deps}


def mutant(wrong: Wrong):
    """The solved notebook with `wrong` applied to its region (markers removed, as a student submits)."""
    nb = exercises.fill_solutions(ROOT, wrong.assignment)
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == wrong.region:
            assert c.source.count(wrong.old) == 1, f"{wrong.id}: {wrong.old!r} is not once in cell {wrong.region}"
            c.source = c.source.replace(wrong.old, wrong.new)
            return nb
    raise AssertionError(f"{wrong.id}: no cell {wrong.region}")


def stub(assignment: str, region: str):
    """The solved notebook with one region left as released (NotImplementedError)."""
    return exercises.fill_solutions(ROOT, assignment, only=set(regions(assignment)) - {region})


# ------------------------------------------------------------------ static checks (fast)
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_test_cell_declares_the_cells_it_depends_on(assignment):
    known = set(regions(assignment))
    for test, deps in declared(assignment).items():
        assert deps, f"{assignment}/{test}: the first line must be checks.depends_on(<solution cell ids>)"
        assert deps <= known, f"{assignment}/{test}: declares unknown cells {sorted(deps - known)}; known {sorted(known)}"
    for region in known:
        assert dependents(assignment, region), f"{assignment}: no test declares a dependency on {region}"
        assert any(w.region == region for w in WRONG_ANSWERS if w.assignment == assignment), (
            f"{assignment}: add a realistic wrong answer for {region} to WRONG_ANSWERS")
    assert sum(w.assignment == assignment for w in WRONG_ANSWERS) >= 3


def _module_names(source: str) -> tuple[set[str], set[str]]:
    """(names a cell binds at top level, global names it reads anywhere, functions included)."""
    table = symtable.symtable(source, "cell", "exec")
    bound = {sym.get_name() for sym in table.get_symbols() if sym.is_assigned() or sym.is_imported()}
    read, todo = set(), [table]
    while todo:
        t = todo.pop()
        top = t.get_type() == "module"
        read |= {sym.get_name() for sym in t.get_symbols() if sym.is_referenced() and (top or sym.is_global())}
        todo += t.get_children()
    return bound, read


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_no_cell_uses_what_a_test_cell_built(assignment):
    """A test cell only checks: no later cell reads a name it binds, so a failed test never breaks another."""
    code = []
    for c in _cells(assignment):
        if c.cell_type == "code":
            body = "\n".join(ln for ln in c.source.splitlines() if not ln.lstrip().startswith(("!", "%")))
            code.append((c.metadata.get("nbgrader", {}), *_module_names(body)))
    for i, (meta, built, _) in enumerate(code):
        if not meta.get("grade"):
            continue
        for other_meta, bound_there, read in code[i + 1:]:
            # Rebinding does not count as safe: if the later cell fails before its assignment, the test's
            # object is what the cells after it see (a hidden test's `mine` once stood in for the student's).
            leaked = (built & read) - bound_there
            assert not leaked, (f"{assignment}/{meta['grade_id']} binds {sorted(leaked)}, which "
                                f"{other_meta.get('grade_id', 'a later given cell')} reads: build it in a "
                                "read-only cell before the tests, or keep it local to a function")


# A comparison whose first argument is not visibly computed from the student's code, kept on purpose:
# (assignment, test, the start of the call) -> why the student's work is still the value shown as "got".
GOT_FROM_ELSEWHERE = {
    ("05_custom_dataset", "test_trained_on_file", "checks.assert_equal(result.train_stats.examples"):
        "`result` is the course pipeline trained on the file the student's rows were written to",
}
ASSERTS = {"assert_equal", "assert_close"}


def _loads(node) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _stores(node) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def comparisons(assignment: str) -> list[tuple[str, str, bool, bool]]:
    """(test, call, got is the student's, expected is the student's) for every assert_equal/assert_close of a
    test cell. A value is the student's when it reads a name a solution cell binds, or a name bound from one
    (followed through the notebook in order: assignments, loop variables, functions of given cells)."""
    student: set[str] = set()
    found = []

    def visit(stmts, test):
        nonlocal student
        for st in stmts:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = {a.arg for a in ast.walk(st.args) if isinstance(a, ast.arg)}
                (student.add if (_loads(st) - params) & student else student.discard)(st.name)
                continue
            if isinstance(st, (ast.Assign, ast.AnnAssign)):
                bound = set().union(*(_stores(t) for t in (st.targets if isinstance(st, ast.Assign) else [st.target])))
                student = (student | bound) if st.value is not None and _loads(st.value) & student else student - bound
            heads = [st]  # where this statement's own calls are; a compound statement's body is visited below
            if isinstance(st, (ast.For, ast.AsyncFor)):
                bound = _stores(st.target)
                student = (student | bound) if _loads(st.iter) & student else student - bound
            if isinstance(st, (ast.For, ast.AsyncFor, ast.While, ast.If, ast.With, ast.AsyncWith, ast.Try)):
                heads = [h for h in (getattr(st, "iter", None), getattr(st, "test", None)) if h is not None]
                heads += [item.context_expr for item in getattr(st, "items", [])]
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(st, block, []), test)
                for handler in getattr(st, "handlers", []):
                    visit(handler.body, test)
            for head in heads if test else []:
                for call in ast.walk(head):
                    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                            and call.func.attr in ASSERTS and len(call.args) >= 2):
                        found.append((test, ast.unparse(call), bool(_loads(call.args[0]) & student),
                                      bool(_loads(call.args[1]) & student)))

    for c in _cells(assignment):
        if c.cell_type != "code":
            continue
        meta = c.metadata.get("nbgrader", {})
        tree = ast.parse("\n".join(ln for ln in c.source.splitlines() if not ln.lstrip().startswith(("!", "%"))))
        if meta.get("solution"):
            for st in tree.body:
                student |= {st.name} if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else _stores(st)
        else:
            visit(tree.body, meta.get("grade_id") if meta.get("grade") else None)
    return found


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_got_is_the_students_value_and_expected_the_reference(assignment):
    """Feedback reads "got X, expected Y" from checks.assert_equal/assert_close(got, expected): the student's
    value must come first. Both may be the student's (a consistency check, e.g. perplexity against exp(loss));
    the expected value alone being the student's means the two were swapped."""
    found = comparisons(assignment)
    assert found, f"{assignment}: no assert_equal/assert_close found in its test cells: the walk above is broken"
    for test, call, got_mine, expected_mine in found:
        if any((a, t) == (assignment, test) and call.startswith(start) for a, t, start in GOT_FROM_ELSEWHERE):
            continue
        assert got_mine, (f"{assignment}/{test}: {call[:160]}\nthe first argument (shown as 'got') does not come "
                          "from the student's code" + (" but the second ('expected') does: swap them"
                                                       if expected_mine else ""))


def test_the_got_expected_walk_catches_a_swap():
    """The static check above on a made-up notebook: it must flag the swapped call and pass the right one."""
    import unittest.mock

    nb = nbformat.v4.new_notebook()
    sol = {"nbgrader": {"solution": True, "grade": False, "grade_id": "count"}}
    test = {"nbgrader": {"solution": False, "grade": True, "grade_id": "test_count", "points": 1}}
    nb.cells = [nbformat.v4.new_code_cell("def count(cfg):\n    return 2 * cfg", metadata=sol),
                nbformat.v4.new_code_cell("mine = count(3)\nfor k in range(2):\n    checks.assert_equal(count(k), 2 * k)\n"
                                          "checks.assert_equal(6, mine, 'swapped')", metadata=test)]
    with unittest.mock.patch(f"{__name__}._cells", return_value=nb.cells):
        got = {call.split("(", 1)[1]: (mine, exp) for _, call, mine, exp in comparisons("made-up")}
    assert got == {"count(k), 2 * k)": (True, False), "6, mine, 'swapped')": (False, True)}


# ------------------------------------------------------------------ the mutation gate (grades notebooks)
# Every notebook is graded under this many of the class's seeds (`exercises.grade(seeds=...)`: one run of the
# notebook, its probes asked once per seed), and must earn the same points under each.
SEEDS = int(os.environ.get("PEFTLAB_GATE_SEEDS", "5"))


def _grade(job):
    """Worker: autograde one notebook, return (job key, {test: (score, max)}, {test: error}, {seed: points}).

    `nb` may be a function of the course root that builds the notebook here (an attack that needs what the
    gate's own grading computed first). Attacks marked `own_seed` are graded under their submission's own
    seed, as in a class, not the gate's."""
    key, assignment, nb = job
    seeds = 0 if key.startswith("own-seed-") else 1 if key.startswith("leaked-seed-") else SEEDS
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / _source(assignment).name
        nbformat.write(nb(ROOT) if callable(nb) else nb, path)
        grade = exercises.grade(ROOT, assignment, path, student=re.sub(r"[^a-z0-9]", "", key.lower())[:40] or "s",
                                seeds=seeds)
    return key, grade.cells, grade.errors, grade.audit


def _jobs():
    jobs = [(w.id, w.assignment, mutant(w)) for w in WRONG_ANSWERS]
    jobs += [(f"stub-{a}-{r}", a, stub(a, r)) for a in ASSIGNMENTS for r in regions(a)]
    for key, nb in _own_data_notebooks().items():
        jobs.append((key, "05_custom_dataset", nb))
    jobs += [(key, assignment, nb) for key, (assignment, nb, _) in ATTACKS.items()]
    return jobs


# ------------------------------------------------------------------ attacks, each worth exactly its real answers
# Code that answers a probe with a value of its choosing: it finds the probe cell by the probe's function name
# (it sees each cell's source as it runs) and rewrites the payload the cell sends.
ANSWER_PROBES = """\
import json
ip = get_ipython()
GUESSES = {guesses}
state = {{"guess": None}}
def which(info):
    src = info.raw_cell or ""
    state["guess"] = next((name for name in GUESSES if f"def {{name}}(seed)" in src), None)
ip.events.register("pre_run_cell", which)
publish = ip.display_pub.publish
def answer(data, *a, **k):
    if state["guess"]:
        guess = GUESSES[state["guess"]]
        guess = guess() if callable(guess) else guess
        data = {{mime: (json.dumps({{"value": guess}}) if "probe" in mime else v) for mime, v in data.items()}}
    return publish(data, *a, **k)
ip.display_pub.publish = answer
"""

# A kernel whose failing cells report success (tests/test_grading.py shows plain nbgrader believing it).
SUPPRESS = """\
ip = get_ipython()
ip.showtraceback = lambda *a, **k: None
send = ip.kernel.session.send
def forged(stream, msg_or_type, content=None, *a, **k):
    if msg_or_type == "execute_reply" and isinstance(content, dict) and content.get("status") == "error":
        content = {"status": "ok", "execution_count": content.get("execution_count"), "user_expressions": {}, "payload": []}
    return send(stream, msg_or_type, content, *a, **k)
ip.kernel.session.send = forged
"""


def _with_code(nb, code: str):
    """`nb` with `code` in a new cell after the parameters (and the cell that imports the course)."""
    nb = nbformat.from_dict(nb)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])) + 1
    nb.cells.insert(at, nbformat.v4.new_code_cell(code))
    return nb


def _blank(assignment: str):
    return nbformat.read(ROOT / "exercises" / assignment / _source(assignment).name, as_version=4)


def _guessing_blank(assignment: str, guesses: str):
    return _with_code(_blank(assignment), ANSWER_PROBES.format(guesses=guesses))


# The values a solved notebook's constant probes send (settings, "the loss stayed finite", the parameters), and
# for what a probe draws from its seed, the best guess: the notebook's own values.
GUESSES_05 = '{"trained_on_file": {"examples": True, "finite_loss": True}}'
GUESSES_02 = ('{"repeated_run": lambda: {"drawn run reproducible": True, "sweep row reproducible": True, '
              '"runs beating the untrained model >= 75%": True, '
              '"learning rates of alpha=16": sorted(float(x) for x in learning_rates), '
              '"learning rates of alpha=16, drawn sweep": sorted(float(x) for x in learning_rates)}}')


def _catch_all():
    """Exercise 05 solved, but every error names every row and every field: the rows it names are not the
    wrong one, so it is not the clear error test_load_bad asks for."""
    nb = exercises.fill_solutions(ROOT, "05_custom_dataset")
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == "load_validate":
            c.source += ('\n\n_precise = load_and_validate\n\n\n'
                         'def load_and_validate(path) -> list[dict]:\n'
                         '    try:\n        return _precise(path)\n'
                         '    except ValueError:\n'
                         '        rows = ", ".join(f"row {n}" for n in range(1, 100))\n'
                         '        raise ValueError(f"{Path(path).name}: {rows}: field instruction, input or output is wrong") from None\n')
            return nb
    raise AssertionError("no load_validate cell")


def _replayer(assignment: str, root):
    """A blank `assignment` whose kernel lies about every test and answers every probe with the values that a
    classmate's seed (the gate's first) asked for: what a leaking feedback would have given away. Graded under
    its own seed, as in a class, it must score 0.

    It is also the best a guesser can do: a probe whose value does not depend on the seed (a setting, a truth,
    a table the release prints) is answered here with exactly the value it expects, so any such probe shows up
    as points. (`functools.partial(_replayer, assignment)` is the notebook: it needs the gate's cache.)"""
    from peftlab.grader import probes
    from peftlab.grader.assignment import Assignment

    ready = Assignment(root, assignment, root / "grading" / "work")
    seed = ready.gate_seeds(1)[0]
    cache = json.loads((root / "grading" / "work" / "probes" / f"{assignment}-expected.json").read_text())
    leaked = {gid: json.loads(text)["value"] for gid, text in cache["expected"][str(seed)].items()}
    names = {gid: p.name for gid, p in probes.load(probes.probe_file(root, assignment)).items()}
    return _with_code(_blank(assignment),
                      SUPPRESS + ANSWER_PROBES.format(guesses=repr({names[g]: v for g, v in leaked.items()})))


ATTACKS = {  # key: (assignment, notebook, autograded points its real answers deserve)
    "attack-05-guessing-blank": ("05_custom_dataset", _guessing_blank("05_custom_dataset", GUESSES_05), 0),
    "attack-02-guessing-blank": ("02_rank_alpha_sweep", _guessing_blank("02_rank_alpha_sweep", GUESSES_02), 0),
    "attack-05-catch-all-error": ("05_custom_dataset", _catch_all(), 7),
    "own-seed-attack-05-replayer": ("05_custom_dataset", functools.partial(_replayer, "05_custom_dataset"), 0),
    # The control: the same replayer graded under the seed whose payloads it holds earns everything, so the
    # zero above is the per-submission seed's doing, not a replay that failed to run.
    "leaked-seed-attack-05-replayer": ("05_custom_dataset", functools.partial(_replayer, "05_custom_dataset"), 10),
    # Every other exercise: one lying replayer each, which stands for a guessing blank as well (a constant, a
    # truth or a value read off the release is replayed exactly). Before their probes drew inputs, 03's earned 8
    # of 10 points, 02's 6 of 11 (the sweep table and the repeated run), 04's 7 of 10 (10 when its seed drew the
    # classmate's three of four models) and 07's 5 of 11 (full fine-tuning's count, and the rerun of one of two
    # methods); 06's load_two and 08's given ranking were the same at every seed too.
    **{f"own-seed-attack-{a[:2]}-replayer": (a, functools.partial(_replayer, a), 0)
       for a in ("01_lora_from_scratch", "02_rank_alpha_sweep", "03_target_modules", "04_qlora_memory",
                 "06_adapters", "07_methods", "08_custom_metric")},
}


def _own_data_notebooks():
    """Exercise 05 as a student following its instructions submits it: own rows inline, or an own file named."""
    solved = exercises.fill_solutions(ROOT, "05_custom_dataset")
    rows = nbformat.from_dict(solved)
    for c in rows.cells:
        if c.source.startswith("# Your data set"):
            c.source = "MY_ROWS = [\n" + "".join(
                f'    {{"instruction": "Rewrite formally.", "input": "msg {i} pls", "output": "Message {i}, please."}},\n'
                for i in range(6)) + "]"
    own_file = nbformat.from_dict(solved)
    for c in own_file.cells:
        if "parameters" in c.metadata.get("tags", []):
            c.source = c.source.replace('data_file = "formal_emails.csv"', 'data_file = "my_emails.jsonl"')
    return {"own-rows-inline": rows, "own-file-not-submitted": own_file}


@pytest.fixture(scope="module")
def graded(tiny_dir):
    """Every mutant graded once, in parallel.

    PEFTLAB_GATE_WORKERS sets the workers (default: half the cores, at least 2); PEFTLAB_GATE_ONLY=02,05
    grades only the assignments whose names contain one of these (the others' tests skip), for working on one.
    """
    workers = int(os.environ.get("PEFTLAB_GATE_WORKERS", max(2, (os.cpu_count() or 2) // 2)))
    only = [o for o in os.environ.get("PEFTLAB_GATE_ONLY", "").split(",") if o]
    start = time.perf_counter()
    jobs = [job for job in _jobs() if not only or any(o in job[1] or o in job[0] for o in only)]
    later = [job for job in jobs if callable(job[2])]  # built from what the others' grading computed
    with ProcessPoolExecutor(max_workers=workers) as pool:
        out = _Results({key: (cells, errors, audit) for key, cells, errors, audit
                        in pool.map(_grade, [job for job in jobs if job not in later])})
        out.update({key: (cells, errors, audit) for key, cells, errors, audit in pool.map(_grade, later)})
    print(f"\nmutation gate: {len(out)} notebooks graded with {workers} workers in {time.perf_counter() - start:.0f} s")
    return out


class _Results(dict):
    def __missing__(self, key):
        pytest.skip(f"{key} was not graded in this run (PEFTLAB_GATE_ONLY)")


def _lost(cells) -> set[str]:
    return {test for test, (score, max_score) in cells.items() if (score or 0.0) < max_score}


@pytest.mark.parametrize(("assignment", "region"), [(a, r) for a in ASSIGNMENTS for r in regions(a)])
def test_an_unsolved_cell_costs_exactly_its_declared_tests(graded, assignment, region):
    cells, errors, _ = graded[f"stub-{assignment}-{region}"]
    assert _lost(cells) == dependents(assignment, region), (
        f"{region} left unsolved: lost {sorted(_lost(cells))}, declared {sorted(dependents(assignment, region))}; "
        f"errors: {errors}")


@pytest.mark.parametrize("wrong", WRONG_ANSWERS, ids=lambda w: w.id)
def test_a_wrong_answer_costs_only_its_tests_and_names_its_cell(graded, wrong):
    cells, errors, _ = graded[wrong.id]
    lost = _lost(cells)
    assert lost, f"{wrong.id}: no test noticed the wrong answer"
    assert lost <= dependents(wrong.assignment, wrong.region), (
        f"{wrong.id}: lost {sorted(lost)}, but only {sorted(dependents(wrong.assignment, wrong.region))} "
        f"declare {wrong.region}; errors: {errors}")
    for test in lost:
        assert f"`{wrong.region}`" in errors.get(test, ""), f"{wrong.id}: {test}'s feedback does not name it: {errors}"
    assert any(f"Fix `{wrong.region}`:" in errors[t] for t in lost), (
        f"{wrong.id}: no feedback points at {wrong.region} alone: {errors}")


def test_exercise07_one_slip_in_linear_shapes_costs_one_test(graded):
    """Issue 29: ignoring grouped-query attention in linear_shapes costs test_lora_counts (3 of 11 points)
    alone. The tests and probes of the other counts use the real layer shapes in its place
    (checks.standing_in), so IA3, prompt, prefix and full counts keep their points."""
    cells, errors, _ = graded[next(w.id for w in WRONG_ANSWERS if w.what == "k and v as wide as q")]
    assert _lost(cells) == {"test_lora_counts"}, errors
    assert "linear_shapes" in errors["test_lora_counts"], errors


def test_exercise06_one_slip_in_load_two_costs_one_test(graded):
    """Issue 29: a first adapter loaded without its name costs test_load_two (3 of 9 points) alone. route and
    combine are graded on the course's loader (multitask.load_all, in their hidden tests and probes), so they
    keep their points, and the feedback names load_two."""
    cells, errors, _ = graded[next(w.id for w in WRONG_ANSWERS if w.what == "first adapter unnamed")]
    assert _lost(cells) == {"test_load_two"}, errors
    assert "load_two" in errors["test_load_two"], errors


def test_exercise08_one_slip_in_markers_costs_one_test(graded):
    """Issue 29: word boundaries that split "'tis" and "ne'er" cost test_markers (3 of 11 points) alone. The
    rate and the given ranking are graded with the course's markers standing in (checks.stand_in_for_this_cell
    in their hidden tests, standing_in in their probes); the feedback names markers, not a scale factor."""
    cells, errors, _ = graded[next(w.id for w in WRONG_ANSWERS if w.what == "word boundaries split apostrophes")]
    assert _lost(cells) == {"test_markers"}, errors
    assert "markers" in errors["test_markers"] and "scale factor" not in errors["test_markers"], errors


def test_exercise02_names_training_loss(graded):
    _, errors, _ = graded[next(w.id for w in WRONG_ANSWERS if w.what == "training loss as held-out loss")]
    assert "the last training loss" in errors["test_heldout_metric"], errors


def test_exercise01_recognises_the_missing_scale_factor_and_nonzero_b(graded):
    by_what = {w.what: graded[w.id][1] for w in WRONG_ANSWERS if w.assignment == "01_lora_from_scratch"}
    assert "a scale factor is missing" in by_what["forward without alpha over r"]["test_lora_matches_peft"]
    assert "lora_B at initialisation: expected exactly zero" in by_what["B initialised randomly"]["test_lora_init"]
    assert "transpose" in by_what["delta_weight transposed"]["test_lora_matches_peft"]


@pytest.mark.parametrize("key", ["own-rows-inline", "own-file-not-submitted"])
def test_exercise05_grades_a_student_who_followed_the_instructions(graded, key):
    cells, errors, _ = graded[key]
    assert not _lost(cells), f"{key}: {errors}"


def _points(cells) -> dict[str, float]:
    return {test: float(score or 0.0) for test, (score, _) in cells.items()}


@pytest.mark.parametrize("key", [job[0] for job in _jobs() if not job[0].startswith(("own-seed-", "leaked-seed-"))])
def test_every_notebook_earns_the_same_points_at_every_seed(graded, key):
    """Issue 29: a grade must not depend on the class secret. Every wrong answer, stub and attack, graded
    under SEEDS of the class's seeds, earns the same points per test under each."""
    cells, errors, audit = graded[key]
    assert len(audit) == SEEDS - 1, f"{key}: graded under {len(audit) + 1} seeds, not {SEEDS}"
    first = _points(cells)
    for seed, points in audit.items():
        assert points == first, f"{key}: seed {seed} gives {points}, the first seed {first}; errors: {errors}"


@pytest.mark.parametrize("key", list(ATTACKS))
def test_an_attack_earns_exactly_what_its_real_answers_deserve(graded, key):
    cells, errors, _ = graded[key]
    assignment, _, deserved = ATTACKS[key]
    assert cells and sum(_points(cells).values()) == deserved, f"{key}: {cells}; errors: {errors}"


def test_a_catch_all_error_loses_test_load_bad_alone(graded):
    cells, errors, _ = graded["attack-05-catch-all-error"]
    assert _lost(cells) == {"test_load_bad"}, errors
    assert "rows named" in errors["test_load_bad"], errors


def test_alpha_over_sqrt_r_loses_the_same_tests_at_every_seed(graded):
    for what in ("scaling alpha over sqrt r", "forward scaled by alpha over sqrt r"):
        cells, errors, audit = graded[next(w.id for w in WRONG_ANSWERS if w.what == what)]
        assert {"test_lora_matches_peft", "test_merge_unmerge"} <= _lost(cells), (what, errors)
        assert all(points == _points(cells) for points in audit.values()), (what, audit)


def test_a_guessed_probe_answer_is_refused_by_the_probe_itself(graded):
    """Exercise 02's repeated-run probe answers with truths and the notebook's own learning rates, which a blank
    notebook can send; it once agreed, and only the failing test cell kept the points, which a lying kernel
    passes (the replayer). It now also asks which learning rates the student's sweep gives the alpha=16 scheme
    when ranks and rates are drawn from the seed: the best guess, the notebook's own rates, is refused."""
    cells, errors, _ = graded["attack-02-guessing-blank"]
    assert cells["test_sweep_consistent"][0] == 0, errors
    # The guess holds every key, so the probe refuses a value: the drawn sweep's rates (the rest are right).
    assert "the grader's own check" in errors["test_sweep_consistent"], errors
    assert "expected keys" not in errors["test_sweep_consistent"], errors
