"""HTML feedback for one student: a table of points and reasons, then the notebook as graded.

Hidden tests never reach it. Their cells show only the visible code and the
error's one-line message, and every output of every cell is scrubbed of any
line of hidden-test code (`scrub`): code in the student's kernel can see each
cell as it runs and print it later, or put it in an exception's message.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .inspect import graded_cells, new_cell_id
from .outcome import FLAGGED, STATUSES, Outcome, clip
from .probes import MIME as PROBE_MIME
from .render import TRUSTED, render_html

_REGION = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)
_MARKERS = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
SCRUBBED = "[line removed: it quotes a hidden test]"
_TEXT_MIME = ("text/plain", "text/html", "text/markdown", "text/latex", "application/javascript", "image/svg+xml")


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text)


def hidden_lines(source: Path, release: Path) -> set[str]:
    """Whitespace-free hidden-test lines of the source notebook that the release does not show."""
    public = set()
    for cell in json.loads(release.read_text())["cells"]:
        public |= {_norm(ln) for ln in "".join(cell["source"]).splitlines()}
    secret = set()
    for cell in json.loads(source.read_text())["cells"]:
        for body in _REGION.findall("".join(cell["source"])):
            secret |= {_norm(ln) for ln in body.splitlines()}
    return {s for s in secret - public if len(s) >= 8}


def scrub(text: str, secret: set[str]) -> str:
    """`text` with every line that holds a hidden-test line (spaces ignored) or marker replaced."""
    if not secret and not any(m in text for m in _MARKERS):
        return text
    out = []
    for line in text.splitlines(keepends=True):
        flat = _norm(line)
        if any(m.replace(" ", "") in flat for m in _MARKERS) or any(s in flat for s in secret):
            out.append(SCRUBBED + ("\n" if line.endswith("\n") else ""))
        else:
            out.append(line)
    return "".join(out)


def _scrub_value(value, secret):
    if isinstance(value, str):
        return scrub(value, secret)
    if isinstance(value, list):
        return [_scrub_value(v, secret) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v, secret) for k, v in value.items()}
    return value


def scrub_outputs(outputs: list, secret: set[str]) -> list:
    """Outputs with hidden-test lines removed from every text they carry (streams, rich data, errors)."""
    import nbformat

    clean = []
    for o in outputs:
        o = dict(o)
        if "text" in o:
            o["text"] = _scrub_value(o["text"], secret)
        if "data" in o:
            o["data"] = {mime: (_scrub_value(v, secret) if mime in _TEXT_MIME or mime.endswith("json") else v)
                         for mime, v in o["data"].items()}
        for key in ("ename", "evalue", "traceback"):
            if key in o:
                o[key] = _scrub_value(o[key], secret)
        clean.append(nbformat.from_dict(o))
    return clean


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~$])")


def md_text(text: str) -> str:
    """`text` as literal markdown: every character markdown or HTML would read (`__base__` as bold, `<b>`,
    a `|` ending a table cell, `$` opening math) is backslash-escaped, and a line break becomes a space."""
    return _MD_SPECIAL.sub(r"\\\1", str(text).replace("\r", " ").replace("\n", " "))


def summary_markdown(out: Outcome, assignment: str) -> str:
    """The summary at the top of the feedback. Every name and reason in it is the student's or derived from
    the student's work, so it is written as literal text (`md_text`), never read as markdown."""
    auto = {g: v for g, v in out.grades.items() if not v["manual"]}
    score = sum(v["score"] or 0 for v in auto.values()) if out.status not in FLAGGED else 0
    lines = [f"# Feedback: {md_text(assignment)}, {md_text(out.student)}", "",
             f"**Status: {out.status}** ({STATUSES[out.status]})" + (f": {md_text(out.reason)}" if out.reason else ""),
             ""]
    if auto:
        lines += [f"Autograded points: **{score:g} of {sum(v['max'] for v in auto.values()):g}**"
                  + (" (written answers are graded by hand)" if len(auto) < len(out.grades) else ""), "",
                  "| test | points | why |", "|---|---|---|"]
        for gid, v in auto.items():
            why = out.errors.get(gid, "passed" if v["score"] == v["max"] else "")
            lines.append(f"| {md_text(gid)} | {v['score'] or 0:g} / {v['max']:g} | {md_text(clip(why))} |")
    if out.notes:
        lines += ["", "Notes:", *[f"- {md_text(n)}" for n in out.notes]]
    return "\n".join(lines)


def mark_trusted(nb, release: Path) -> None:
    """Mark the markdown cells whose text is the release's own (the instructor's); the rest is the student's."""
    ours = {"".join(c["source"]).strip() for c in json.loads(release.read_text())["cells"]
            if c["cell_type"] == "markdown" and "nbgrader" not in c.get("metadata", {})}
    for cell in nb.cells:
        cell.metadata.pop(TRUSTED, None)  # a student cannot mark their own cell
        if cell.cell_type == "markdown" and cell.source.strip() in ours:
            cell.metadata[TRUSTED] = True


def write_feedback(graded_nb: Path | None, release: Path, source: Path, out: Outcome, assignment: str,
                   dest: Path) -> Path:
    """HTML feedback: the student's notebook as graded, hidden tests' code removed from code and outputs."""
    import nbformat

    secret = hidden_lines(source, release)
    out.errors = {gid: scrub(err, secret) for gid, err in out.errors.items()}
    out.notes = [scrub(note, secret) for note in out.notes]  # a probe's reason quotes what the student returned
    summary = nbformat.v4.new_markdown_cell(summary_markdown(out, assignment), id="peftlab-summary")
    if graded_nb is None or not graded_nb.is_file():
        nb = nbformat.v4.new_notebook(cells=[summary])
    else:
        nb = nbformat.read(graded_nb, as_version=4)
        summary.id = new_cell_id(nb, summary.id)
        visible = {gid: c for gid, (_, c) in graded_cells(json.loads(release.read_text()))[0].items()}
        hidden = {gid for gid, (_, c) in graded_cells(json.loads(source.read_text()))[0].items()
                  if "BEGIN HIDDEN TESTS" in "".join(c["source"])}
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if cell.cell_type == "code":
                cell.execution_count = None
            if gid in hidden:
                # Visible code only; of the outputs, the error's one-line message (no traceback, which
                # quotes the hidden code, and no printed output, which could carry it too).
                cell.source = "".join(visible[gid]["source"]).rstrip() + "\n# (hidden tests ran here; their code is not shown)"
                cell.outputs = [nbformat.from_dict({**o, "traceback": [f"{o.get('ename', 'Error')}: {o.get('evalue', '')}"]})
                                for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if cell.cell_type == "code":
                # The grader saves the notebook as it stood before the probes (`GuardedExecute`); a probe's
                # payload has no place in it, whatever put it there.
                kept = [o for o in cell.get("outputs", []) if PROBE_MIME not in (o.get("data") or {})]
                cell.outputs = scrub_outputs(kept, secret)
        nb.cells.insert(0, summary)
    mark_trusted(nb, release)
    html = render_html(nb)  # student content and outputs cleaned, the instructor's markdown as written
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(html, encoding="utf-8")
    return dest
