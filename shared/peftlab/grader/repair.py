"""Notebooks whose nbgrader metadata an editor stripped: re-attach it by matching cells to the release.

Colab, VS Code and other editors drop unknown cell metadata (nbgrader #424,
#1398): every cell is there, with the student's work, but nothing marks which
cell is which graded cell, and nbgrader would call them all deleted. Matching,
cell by cell against the release, only where it cannot be wrong:

1. cells whose type and text are the release's (tests, instructions, blank
   answers) are anchors, aligned in order (difflib);
2. between two anchors, the release's and the submission's cells are paired
   by position when both have the same number of cells of the same types, or
   a graded cell is paired with the one cell of its type there.

Anything else is ambiguous and left unmatched. A graded cell with no cell of
its type left in its place (fewer cells of that type than the release has
there) was deleted: the partly repaired notebook then goes
through the usual checks and is `tampered`. Ambiguity alone gives the status
`metadata-missing`, with the fix.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_atomic
from .inspect import read_json
from .settings import Settings


@dataclass
class Repair:
    """What `reattach` did: matched {grade_id: how}, the ids it could not place, and why."""

    nb: dict
    matched: dict[str, str] = field(default_factory=dict)
    ambiguous: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.ambiguous and not self.deleted

    def note(self) -> str:
        how = ", ".join(f"{gid} ({why})" for gid, why in self.matched.items())
        return f"nbgrader metadata was missing (an editor such as Colab strips it); re-attached by matching: {how}"


def _text(cell: dict) -> str:
    src = cell.get("source", "")
    return "\n".join(line.rstrip() for line in ("".join(src) if isinstance(src, list) else src).strip().splitlines())


def stripped(nb: dict, release: dict) -> bool:
    """True when the release has graded cells and no cell of `nb` carries nbgrader metadata."""
    has = any("nbgrader" in c.get("metadata", {}) for c in release.get("cells", []))
    return has and not any("nbgrader" in c.get("metadata", {}) for c in nb.get("cells", []))


def reattach(nb: dict, release: dict) -> Repair:
    """A copy of `nb` with the release's nbgrader metadata put back on the cells that match unambiguously."""
    nb = copy.deepcopy(nb)
    rel, sub = release["cells"], nb["cells"]
    out = Repair(nb)

    def key(c):
        return f"{c['cell_type']}\0{_text(c)}"

    def give(r: int, s: int, why: str) -> None:
        meta = rel[r]["metadata"].get("nbgrader")
        if meta is not None:
            sub[s].setdefault("metadata", {})["nbgrader"] = copy.deepcopy(meta)
            out.matched[meta["grade_id"]] = f"cell {s + 1}, {why}"

    blocks = difflib.SequenceMatcher(None, [key(c) for c in rel], [key(c) for c in sub], autojunk=False)
    r0 = s0 = 0
    for r1, s1, size in blocks.get_matching_blocks():  # the last block is (len, len, 0): closes the final gap
        gap_r, gap_s = list(range(r0, r1)), list(range(s0, s1))
        if [rel[i]["cell_type"] for i in gap_r] == [sub[j]["cell_type"] for j in gap_s]:
            for i, j in zip(gap_r, gap_s):
                give(i, j, "same place")
        else:
            for i in gap_r:
                meta = rel[i]["metadata"].get("nbgrader")
                if meta is None:
                    continue
                kind = rel[i]["cell_type"]
                same_r = [x for x in gap_r if rel[x]["cell_type"] == kind]
                same_s = [y for y in gap_s if sub[y]["cell_type"] == kind]
                if len(same_s) < len(same_r):  # fewer cells of its type than the release has here: deleted
                    out.deleted.append(meta["grade_id"])
                elif len(same_r) == 1 and len(same_s) == 1:
                    give(i, same_s[0], f"the only {kind} cell there")
                else:
                    out.ambiguous.append(meta["grade_id"])
        for k in range(size):
            give(r1 + k, s1 + k, "same text")
        r0, s0 = r1 + size, s1 + size
    return out


def repair_file(path: Path, release: Path, settings: Settings | None = None) -> tuple[str, str, str]:
    """Repair the staged notebook at `path` in place if its metadata was stripped.

    Returns (status, reason, note): ('', '', '') when nothing was stripped or the notebook is unreadable
    (the usual checks report that); ('', '', note) after a complete repair; ('metadata-missing', why, '')
    when some cells cannot be placed. With a graded cell deleted the partial repair is
    written and the usual checks say `tampered`."""
    nb, problem = read_json(path, settings)  # size and depth first: json.loads recurses
    if problem or not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return "", "", ""  # the usual checks say what is wrong, in the same words
    rel = json.loads(Path(release).read_text(encoding="utf-8"))  # the course's own file: trusted
    try:
        if not stripped(nb, rel):
            return "", "", ""
        fixed = reattach(nb, rel)
    except (ValueError, KeyError, TypeError, AttributeError):  # malformed cells: the usual checks name them
        return "", "", ""
    if fixed.ambiguous and not fixed.deleted:
        placed = f" (placed: {', '.join(fixed.matched)})" if fixed.matched else ""
        return "metadata-missing", (
            "the notebook has no nbgrader metadata (Colab, VS Code and other editors strip it) and the cells for "
            f"{', '.join(fixed.ambiguous)} cannot be told apart{placed}. Fix: open the released notebook in "
            "Jupyter, paste the answers into its cells, and submit that file; or, as the instructor, put the "
            "answer into the right cell and grade again"), ""
    write_atomic(Path(path), json.dumps(fixed.nb, ensure_ascii=False, indent=1).encode())
    if fixed.complete:
        return "", "", fixed.note()
    return "", "", (fixed.note() + f"; no cell left for {', '.join(fixed.deleted)}: deleted")
