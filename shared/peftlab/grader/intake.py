"""Import a class's submissions: folders, zip files or single notebooks, named by student.

Every file found (`peftlab.grader.downloads`) ends in exactly one row of the
intake report (`rows`), with its fate (`FATES`) and the reason: no file is
dropped without a word, and no student is invented (a file that names no one
is reported, never guessed).

A zip name whose encoding is unknown (read as code page 437, not plain ASCII)
never names a student: such a file counts only where the layout carries an
LMS id (Canvas, Moodle), and is reported otherwise.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from .downloads import Found, find, stream
from .layouts import Named, attempt_key, identify, is_notebook
from .roster import Roster, Student
from .settings import Settings

# The fate of each file found, as the intake report and the console name it. A student's own file takes the
# student's final status instead (graded, invalid, tampered, timeout, ...: peftlab.grader.outcome).
FATES = {
    "graded": "the student's notebook, graded",
    "invalid": "the student's file, not gradable (see the reason)",
    "superseded": "an older attempt: the student's newest is graded",
    "duplicate": "an identical copy of the file graded for the student",
    "not-a-notebook": "not a .ipynb file (an upload of another kind, or a stray file)",
    "unknown-student": "no student could be given the file (see the reason)",
    "ignored": "not a submission: the release, an LMS's index, a system file, another assignment",
}


@dataclass
class Submission:
    student: str
    origin: str  # where it came from, for messages
    path: str = ""  # staged copy
    sha256: str = ""
    status: str = ""
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    # Who, as the download's layout (peftlab.grader.layouts) and the roster tell it.
    lms_id: str = ""
    name: str = ""
    email: str = ""
    late: bool = False
    layout: str = ""
    canvas_id: str = ""  # Canvas user id, from a Canvas download or the roster
    moodle_id: str = ""  # Moodle participant id, from a Moodle download or the roster
    sis_id: str = ""  # the institution's (SIS) id, from the roster only
    rejected: bool = False  # a file that is no student's submission: reported, never graded or recorded
    owner: str = ""  # for a rejected file: the student it belongs to, if any
    fate: str = ""  # for a rejected file: one of FATES; for a student's file, set only when not the status


def _digest(item: Found, limit: int) -> str | None:
    if item.sha256 is None:
        item.sha256 = "" if item.problem else stream(item, limit)
    return item.sha256 or None


def _gradescope_metadata(found: list[Found], limit: int) -> dict | None:
    """Gradescope's submission_metadata.yml files in the download, merged: {'submission_N': entry}."""
    import yaml

    merged = None
    for item in found:
        if Path(item.name).name != "submission_metadata.yml" or item.problem or item.open is None:
            continue
        try:
            with item.open() as fh:
                data = yaml.safe_load(fh.read(limit + 1))
        except Exception as exc:  # noqa: BLE001 (YAML nested too deep, a broken zip: one file, never the class)
            item.ignored = f"Gradescope's list of submitters, unreadable ({type(exc).__name__}); download it again"
            continue
        if isinstance(data, dict):
            merged = {**(merged or {}), **{str(k): v for k, v in data.items()}}
            item.ignored = f"Gradescope's list of submitters ({len(data)} submissions), read"
    return merged


def import_submissions(sources: list[str | Path], notebook: str, staging: Path, settings: Settings | None = None,
                       *, assignment: str = "", roster: Roster | None = None,
                       id_regex: re.Pattern | None = None) -> list[Submission]:
    """Stage the newest notebook of each student found in folders / zip files / single files.

    Students are named by the download's layout (`layouts.identify`) and, given a roster, mapped to its
    ids. A student's unreadable notebook is theirs, with status `invalid` and the reason; so is a student
    who uploaded only files that are not notebooks. Every other file comes back with `rejected=True`, its
    fate (`FATES`) and the reason, and is never graded or recorded."""
    limit = (settings or Settings()).max_notebook_bytes
    staging.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        found = find(sources, limit, stack)
        return _decide(found, notebook, staging, limit, assignment, roster, id_regex)


def _decide(found: list[Found], notebook: str, staging: Path, limit: int, assignment: str,
            roster: Roster | None, id_regex: re.Pattern | None) -> list[Submission]:
    rejected: list[Submission] = []

    def reject(item: Found, fate: str, reason: str, owner: str = "", named: Named | None = None) -> None:
        tag = hashlib.sha256(item.origin.encode("utf-8", "surrogateescape")).hexdigest()
        rejected.append(Submission(student="rejected-" + tag[:8], origin=item.origin, sha256=tag, status="invalid",
                                   reason=f"{item.origin}: {reason}", rejected=True, owner=owner, fate=fate,
                                   layout=named.layout if named else "", late=bool(named and named.late)))

    gradescope = _gradescope_metadata(found, limit)
    notebooks: dict[str, list[tuple[Found, Named, Student | None]]] = {}
    others: dict[str, list[tuple[Found, Named, Student | None]]] = {}

    def _place(item: Found) -> None:
        """Give the file to a student, or reject it with its fate."""
        if item.ignored:
            reject(item, "ignored", item.ignored)
            return
        if item.whole:
            reject(item, "invalid", item.problem)
            return
        named = identify(item.name, notebook, assignment, id_regex, gradescope)
        notebook_file = is_notebook(item.name)
        if named.ignored:
            reject(item, "ignored", named.ignored, owner=named.student, named=named)
            return
        if named.problem:
            reject(item, "unknown-student" if notebook_file or item.problem else "not-a-notebook",
                   named.problem + (f"; it {item.problem}" if item.problem else ""), named=named)
            return
        if item.undecodable and not named.lms_id:
            reject(item, "unknown-student", (
                f"the zip stores this name as {item.undecodable!r} without saying its encoding (no UTF-8 flag, not "
                f"UTF-8); read by the zip rule (code page 437) it is {item.name!r}, which cannot be trusted as a "
                "student's name: re-create the zip with UTF-8 names (7-Zip, Python's zipfile, macOS) or rename the "
                "file in plain ASCII"), named=named)
            return
        if named.by_name and roster is None:
            reject(item, "unknown-student", (
                f"a {named.layout} download names students by display name ({named.name!r}), which is not an id: "
                "pass --roster class.csv (columns id, name; matched by exact name), or --id-regex"), named=named)
            return
        person = None
        if roster is not None:
            person, why = roster.match(named)
            if person is None:
                reject(item, "unknown-student", why, named=named)
                return
            named.student = person.id
        if item.undecodable:
            named.name = ""  # the display name is garbled; the LMS id is not
        (notebooks if notebook_file else others).setdefault(named.student, []).append((item, named, person))

    for item in found:
        try:
            _place(item)
        except Exception as exc:  # noqa: BLE001 (one file that breaks a rule is that file's row, never a traceback)
            reject(item, "invalid", f"could not be read ({type(exc).__name__}: {str(exc)[:200]}); download it again")

    out: list[Submission] = []
    for student in sorted(set(notebooks) | set(others)):
        group = notebooks.get(student, [])
        extra = others.get(student, [])
        if not group:  # only files that are not notebooks: the student is there, and invalid
            item, named, person = extra[0]
            kinds = ", ".join(Path(i.name).name for i, _, _ in extra)
            sub = _submission(student, item, named, person)
            sub.status, sub.fate = "invalid", "not-a-notebook"
            sub.reason = (f"no notebook submitted, only {kinds}: submit the .ipynb file itself "
                          "(Jupyter: File > Download; Colab: File > Download > Download .ipynb)")
            sub.sha256 = hashlib.sha256(sub.reason.encode()).hexdigest()
            for i, n, _ in extra[1:]:
                reject(i, "not-a-notebook", f"not a notebook; {student} submitted no notebook", student, n)
            out.append(sub)
            continue
        chosen = _choose(student, group, assignment, limit, reject)
        if chosen is None:  # several different newest copies: the student is invalid, every copy named
            newest = _newest(group, assignment)
            item, named, person = newest[0]
            sub = _submission(student, item, named, person)
            sub.status, sub.reason = "invalid", (
                f"{len(newest)} different submissions for {student} and nothing tells which is newer: "
                + ", ".join(g[0].origin for g in newest) + "; keep one and run again")
            sub.sha256 = hashlib.sha256(sub.reason.encode()).hexdigest()
            for i, n, _ in newest[1:]:
                reject(i, "invalid", f"one of {len(newest)} different submissions for {student}; see {item.origin}",
                       student, n)
            out.append(sub)
        else:
            item, named, person = chosen
            sub = _submission(student, item, named, person)
            if named.late:
                sub.notes.append(f"submitted late ({named.layout} marks it late)")
            if not item.problem:
                sub.sha256 = stream(item, limit, staging / f"{student}.ipynb")
                sub.path = str(staging / f"{student}.ipynb") if sub.sha256 else ""
            if item.problem:
                sub.status, sub.reason = "invalid", f"{item.origin} {item.problem}"
                sub.sha256 = hashlib.sha256(item.origin.encode("utf-8", "surrogateescape")).hexdigest()
            out.append(sub)
        for i, n, _ in extra:
            reject(i, "not-a-notebook", f"not a notebook; {student}'s notebook {out[-1].origin} is the one graded",
                   student, n)
    return [*out, *rejected]


def _submission(student: str, item: Found, named: Named, person: Student | None) -> Submission:
    canvas = named.lms_id if named.layout == "Canvas" else ""
    moodle = named.lms_id if named.layout == "Moodle" else ""
    if person is not None:
        canvas, moodle = canvas or person.canvas_id, moodle or person.moodle_id
    return Submission(student=student, origin=item.origin, lms_id=named.lms_id, late=named.late,
                      layout=named.layout, name=person.name if person and person.name else named.name,
                      email=(person.email if person and person.email else named.email),
                      canvas_id=canvas, moodle_id=moodle, sis_id=person.sis_id if person else "")


def _newest(group, assignment: str):
    """The copies that count: the assignment's own folder where nbgrader's layout has several, then the newest."""
    pool = group
    if assignment and any(g[1].folder == assignment for g in group):  # submitted/<student>/<other assignment>/
        pool = [g for g in group if not g[1].folder or g[1].folder == assignment]
    top = max(attempt_key(g[1].attempt) for g in pool)
    return [g for g in pool if attempt_key(g[1].attempt) == top]


def _choose(student: str, group, assignment: str, limit: int, reject):
    """The file to grade for `student`, every other copy rejected with its fate; None when the newest differ.

    Of identical newest copies, the one whose time counts is kept: a copy from a layout that says whether it
    was late (Canvas, a Gradescope export) over one that says nothing (nbgrader's folder), and an on-time one
    over a late one (the student had handed in that very notebook in time)."""
    newest = _newest(group, assignment)
    top = newest[0][1].attempt
    for g in group:
        if any(g is n for n in newest):
            continue
        if assignment and g[1].folder and g[1].folder != assignment and any(n[1].folder == assignment for n in newest):
            reject(g[0], "ignored", f"another assignment's folder ({g[1].folder}); {newest[0][0].origin} is graded",
                   student, g[1])
        else:
            reject(g[0], "superseded", f"an older submission of {student} (attempt {g[1].attempt or 'none'} < "
                                       f"{top}); the newest, {newest[0][0].origin}, is graded", student, g[1])
    if len(newest) == 1:
        return newest[0]
    digests = {_digest(g[0], limit) for g in newest}
    if len(digests) != 1 or None in digests:
        return None
    chosen = min(newest, key=lambda g: (not g[1].timed, g[1].late))
    for g in newest:
        if g is not chosen:
            reject(g[0], "duplicate", f"a second submission for {student}, identical to {chosen[0].origin}; ignored",
                   student, g[1])
    return chosen


def rows(subs: list[Submission], statuses: dict[str, tuple[str, str]] | None = None) -> list[dict]:
    """One row per file found, for ASSIGNMENT-intake.csv and the console: file, student, fate, reason.

    `statuses` ({student: (status, reason)}, after grading) gives a student's own file its final fate: a file
    found gradable at import but then `invalid` (or `tampered`, `timeout`...) never says `graded`."""
    statuses = statuses or {}
    out = []
    for s in subs:
        if s.rejected:
            out.append({"file": s.origin, "student": s.owner, "lms_id": "", "name": "", "layout": s.layout,
                        "late": "", "fate": s.fate or "unknown-student", "reason": s.reason})
            continue
        status, reason = statuses.get(s.student, (s.status, s.reason))
        fate = s.fate or status or "graded"
        out.append({"file": s.origin, "student": s.student, "lms_id": s.lms_id, "name": s.name, "layout": s.layout,
                    "late": "yes" if s.late else "", "fate": fate, "reason": reason})
    return out


def fate_counts(table: list[dict]) -> str:
    """'14 files: 9 graded, 2 superseded, 1 duplicate, ...' for the console."""
    counts = Counter(r["fate"] for r in table)
    order = [*FATES, *sorted(set(counts) - set(FATES))]
    return f"{len(table)} file(s) found: " + ", ".join(f"{counts[f]} {f}" for f in order if counts[f])
