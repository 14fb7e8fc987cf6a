"""Points decided in the grader: probes ask the student's kernel for values, the grader judges them.

An in-kernel test cell's verdict is reported by the kernel that ran the
student's code, so that code can change it. A probe cannot be forged that way:

    grading/probes/<assignment>.py        (the instructor's, never released)

    from peftlab.grader.probes import close, exact, probe

    @probe("test_double", compare=exact)
    def double_on_secret_inputs(seed):     # runs in the student's kernel, after the notebook
        import random
        rng = random.Random(seed)          # seed: the submission's own, drawn from the class secret
        return [double(rng.randint(-10**6, 10**6)) for _ in range(8)]

1. The grader appends one cell per probe to the notebook (`InsertProbes`); the
   probe's function runs in the student's kernel on inputs drawn from `seed`
   and returns plain values (numbers, strings, lists, dicts; tensors become
   lists). They leave the kernel as JSON text in a display message of their
   own MIME type, which jupyter_client decodes as JSON: never pickle, never a
   file the kernel could link elsewhere.
2. `CollectProbes` takes each probe cell's payload out of the notebook (the
   cells never reach the gradebook or the feedback) and hands it to the worker.
   Nothing a probe sent or saw reaches the saved notebook: `GuardedExecute`
   puts back the outputs as they stood before the first probe ran.
3. The expected values come from the instructor's solution, run through the
   same probes for every seed of the class in one run (`Assignment.expect`,
   cached per seed in the work folder), in a kernel that runs no student code.
4. The worker compares each payload with the expected one, in its own
   process (`judge`): a comparator is a function `(got, expected) -> reason`
   that returns "" when they agree, and says where they differ without quoting
   either. A probe that crashed, returned nothing, returned several payloads,
   too much data, or data the comparator chokes on scores 0 for its test, with
   the reason; it never stops the grader.

The points of each autograded test need its probe to agree and its in-kernel
test cell to pass; the test cells stay in the feedback, so students see what failed. Student
code can still make its probes return anything, but only the right values for
inputs it has not seen earn points, which means solving the task.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import re
import runpy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .course import GradingError
from .inspect import json_depth

MIME = "application/x-peftlab-probe"
MAX_PAYLOAD = 256 * 2**10  # bytes of JSON one probe may send back
MAX_DEPTH = 16  # nesting of a payload; the course's probes return at most 3 levels
PROBE_DIR = Path("grading") / "probes"

Comparator = Callable[[object, object], str]


# ------------------------------------------------------------------ comparators (run in the grader)
def exact(got, expected) -> str:
    """Equal as JSON values (a float is compared exactly: use `close` for computed numbers).

    Reasons say where the result differs and how (a missing key, a list of another length, a wrong value),
    never a value: neither the expected one (a resubmission could paste it in) nor the returned one (code
    that returns the probe's inputs, or its source, would carry them into the feedback)."""
    return _differ(got, expected, "result", lambda g, e: g == e, "not the expected value")


def close(rtol: float = 1e-5, atol: float = 1e-8) -> Comparator:
    """Same structure, numbers within `atol + rtol * |expected|` (NaN and infinities never agree)."""

    def near(got, expected) -> bool:
        if isinstance(expected, bool) or not isinstance(expected, (int, float)):
            return got == expected
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
            return False
        return abs(got - expected) <= atol + rtol * abs(expected)

    def compare(got, expected) -> str:
        return _differ(got, expected, "result", near, f"not within rtol={rtol:g}, atol={atol:g} of the expected value")

    compare.__name__ = f"close(rtol={rtol:g}, atol={atol:g})"
    return compare


def _differ(got, expected, where: str, same, wrong: str) -> str:
    """Where `got` first departs from `expected`, in words that quote neither (see `exact`)."""
    if _has_nan(got):
        return f"{where}: holds NaN"
    if isinstance(expected, list):
        if not isinstance(got, list):
            return f"{where}: expected a list, got {_kind(got)}"
        if len(got) != len(expected):
            return f"{where}: a list of another length than expected"
        for i, (g, e) in enumerate(zip(got, expected)):
            if reason := _differ(g, e, f"{where}[{i}]", same, wrong):
                return reason
        return ""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{where}: expected a mapping, got {_kind(got)}"
        if set(got) != set(expected):
            return f"{where}: not the expected keys"
        for k in sorted(expected):
            if reason := _differ(got[k], expected[k], f"{where}{_key(k)}", same, wrong):
                return reason
        return ""
    if isinstance(expected, (int, float)) and not isinstance(expected, bool) and (
            isinstance(got, bool) or not isinstance(got, (int, float))):
        return f"{where}: expected a number, got {_kind(got)}"
    return "" if same(got, expected) else f"{where}: {wrong}"


def _kind(value) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "a truth value", type(None): "null"}.get(
        type(value), "a number")


def _key(k: str) -> str:
    """A key as it appears in a reason: its name when it is a plain word (a name the probe's code wrote, such
    as 'scaling'), else only that it is a key: keys built from drawn inputs ('k=3', a file name) stay out."""
    return f"[{k!r}]" if re.fullmatch(r"[A-Za-z_][A-Za-z_ ]{0,40}", k) else "[a key]"


def _has_nan(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return False


# ------------------------------------------------------------------ the instructor's probe file
@dataclass
class Probe:
    grade_id: str  # the test cell whose points this probe decides
    name: str  # the function's name in the probe file
    source: str  # the function's source, without decorators: what runs in the kernel
    compare: Comparator


def probe(grade_id: str, compare: Comparator = exact):
    """Mark a function of the probe file as the probe of test cell `grade_id`."""

    def mark(fn):
        fn._peftlab_probe = (grade_id, compare)
        return fn

    return mark


def probe_file(root: str | Path, assignment: str) -> Path:
    return Path(root) / PROBE_DIR / f"{assignment}.py"


def load(path: str | Path) -> dict[str, Probe]:
    """{grade_id: Probe} of a probe file (instructor code: it runs in the grader, which trusts it)."""
    path = Path(path)
    text = path.read_text()
    names = runpy.run_path(str(path), run_name=f"peftlab_probes_{path.stem}")
    defs = {n.name: n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)}
    lines = text.splitlines()

    def source_of(node) -> str:
        return "\n".join(lines[node.lineno - 1:node.end_lineno])  # from `def`, decorators left out

    marked = {name: fn._peftlab_probe for name, fn in names.items() if getattr(fn, "_peftlab_probe", None)}
    # Plain functions of the file are helpers: they travel with every probe into the kernel.
    helpers = "".join(source_of(node) + "\n" for name, node in defs.items() if name not in marked)
    probes: dict[str, Probe] = {}
    for name, (grade_id, compare) in marked.items():
        if name not in defs:
            continue
        if grade_id in probes:
            raise GradingError(f"{path}: two probes for {grade_id!r} ({probes[grade_id].name} and {name}); keep one.")
        probes[grade_id] = Probe(grade_id, name, helpers + source_of(defs[name]), compare)
    return probes


def check_coverage(probes: dict[str, Probe], tests: list[str], path: Path) -> None:
    """Every autograded test needs a probe: a test without one would be decided by the student's kernel."""
    missing = [t for t in tests if t not in probes]
    extra = [g for g in probes if g not in tests]
    if missing or extra:
        raise GradingError(f"{path}: " + "; ".join(
            ([f"no probe for the test cell(s) {', '.join(missing)}"] if missing else [])
            + ([f"probe(s) for {', '.join(extra)}, which is not an autograded test cell"] if extra else [])))


def digest(path: str | Path, *parts: str) -> str:
    """What the expected values depend on: the probe file, the solution, the parameters, the seed,
    and the course package the solution imports (its code and data files, `package_digest`)."""
    h = hashlib.sha256(Path(path).read_bytes())
    for p in (*parts, package_digest()):
        h.update(b"\0" + p.encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def package_digest() -> str:
    """`tree_digest` of the installed course package (`peftlab`): a solution's values change with the package's
    code or its data (a held-out set that grows changes every held-out loss)."""
    return tree_digest(Path(__file__).resolve().parents[1])


def tree_digest(root: str | Path) -> str:
    """SHA-256 over every file under `root` (names and contents), compiled bytecode left out."""
    root, h = Path(root), hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo"):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


# ------------------------------------------------------------------ the kernel's side
_CELL = '''\
def __peftlab_probe():
    import json, math
{body}
    def plain(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        if isinstance(o, (set, frozenset)):
            return sorted(o, key=repr)
        raise TypeError(f"{{type(o).__name__}} is not plain data")
    try:
        out = {{"value": {name}({seed})}}
    except (Exception, SystemExit) as exc:
        out = {{"error": f"{{type(exc).__name__}}: {{exc}}"[:500]}}
    try:
        text = json.dumps(out, default=plain)
    except Exception as exc:
        text = json.dumps({{"error": f"the probe returned something that is not plain data ({{exc}})"[:500]}})
    from IPython.display import display
    display({{{mime!r}: text}}, raw=True)
__peftlab_probe()
del __peftlab_probe
'''


def cell_source(p: Probe, seed: int) -> str:
    """The code cell that runs probe `p` in the kernel and sends its value back as JSON."""
    body = "\n".join("    " + ln if ln.strip() else "" for ln in p.source.splitlines())
    return _CELL.format(body=body, name=p.name, seed=int(seed), mime=MIME)


# ------------------------------------------------------------------ the grader's side
def payload(outputs: list) -> tuple[str | None, str]:
    """(the JSON text of a probe cell's one payload, "") or (None, why there is none)."""
    found = []
    for o in outputs:
        data = o.get("data") if isinstance(o, dict) else None
        if isinstance(data, dict) and MIME in data:
            found.append(data[MIME])
    errors = [o for o in outputs if isinstance(o, dict) and o.get("output_type") == "error"]
    if len(found) > 1:
        return None, f"the probe sent {len(found)} results instead of one: its channel was tampered with"
    if not found:
        if errors:
            return None, f"the probe's cell failed ({error_name(errors[0].get('ename'))})"
        return None, "the probe sent no result (its output was suppressed, or the kernel stopped first)"
    text = found[0]
    if isinstance(text, list):  # nbformat may store a text output as a list of lines
        text = "".join(t for t in text if isinstance(t, str))
    if not isinstance(text, str):
        return None, f"the probe's result is not JSON text but {type(text).__name__}"
    if len(text.encode("utf-8", "replace")) > MAX_PAYLOAD:
        return None, f"the probe's result is larger than {MAX_PAYLOAD:,} bytes"
    return text, ""


def parse(text: str) -> tuple[object, str]:
    """(value, "") of a payload, or (None, the probe's error or why the payload is unusable)."""
    if json_depth(text) > MAX_DEPTH + 2:
        return None, f"the probe's result nests deeper than {MAX_DEPTH} levels"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"the probe's result is not valid JSON ({str(exc)[:100]})"
    if not isinstance(data, dict) or set(data) not in ({"value"}, {"error"}):
        return None, "the probe's result is not in the probe's format"
    if "error" in data:
        return None, f"the probe raised {error_name(str(data['error']).split(':', 1)[0])}"
    return data["value"], ""


def error_name(text) -> str:
    """The exception's class name only: its message is the student's code's to write, and could carry the
    probe's inputs or source into the feedback. The test cell above shows the course's own message."""
    name = str(text or "").strip()
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{0,80}", name) else "an exception"


def judge(p: Probe, text: str | None, why: str, expected_text: str) -> str:
    """"" when the probe's payload agrees with the expected one, else the reason it scores 0."""
    if text is None:
        return why
    got, reason = parse(text)
    if reason:
        return reason
    expected, reason = parse(expected_text)
    if reason:  # the solution's own payload was checked when it was computed: this cannot happen
        return f"the expected value of this probe is unusable ({reason})"
    try:
        verdict = p.compare(got, expected)
    except Exception as exc:  # garbage of a shape the comparator did not expect
        return f"the returned value could not be compared ({type(exc).__name__})"
    return verdict if isinstance(verdict, str) else ("" if verdict else "the grader's comparison failed")
