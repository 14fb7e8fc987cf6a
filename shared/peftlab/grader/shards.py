"""A class graded in N independent slices, then merged: for batch clusters without Dask (a Slurm job array,
a Kubernetes indexed Job).

    peftlab-grade ASSIGNMENT SUBMISSIONS --shard 2/8      (one of eight jobs; each imports the same download)
    peftlab-grade merge ASSIGNMENT                         (once all eight have finished)

Shard i of N grades the students whose slice (`slice_of`: a hash of the
student's id, the same on every machine and in every run) is i, into its own
grading folder, WORK/shards/i-of-N: gradebook, feedback, CSV. The files no
student could be given are reported by shard 1 only. Every shard shares WORK's
class secret, so a submission draws the same probe inputs whichever shard
grades it. A shard killed midway resumes when run again, as any batch does;
until a run of it ends (`FINISHED`), merge refuses it, so a partial gradebook
is never merged as if it were the shard's whole slice.

`merge` copies every shard's records into WORK's gradebook (one upsert per
student: merging twice, or again after one shard was rerun, gives the same
gradebook), with each student's feedback and notebooks, and writes the grades
CSV and the LMS files from it, as one machine would.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

from sqlalchemy import text

from ..files import write_atomic
from . import course as course_mod
from .assignment import Assignment
from .course import GradingError
from .export import INTAKE_COLUMNS, csv_bytes, export_all, grades_csv
from .gradebook import INTAKE_TABLE, LMS_TABLE, STATUS_TABLE, open_gradebook, read_grades, record
from .intake import Submission
from .outcome import Outcome

FOLDER = re.compile(r"^(\d+)-of-(\d+)$")


def parse(spec: str) -> tuple[int, int]:
    """'i/N' -> (i, N), 1 <= i <= N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec or "")
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise GradingError(f"--shard {spec!r}: expected i/N with 1 <= i <= N, e.g. 3/8 (Slurm: "
                           "$((SLURM_ARRAY_TASK_ID + 1))/$SLURM_ARRAY_TASK_COUNT)")
    return int(m[1]), int(m[2])


def slice_of(student: str, n: int) -> int:
    """The shard (1..n) that grades `student`: the same on every machine and in every run."""
    return int(hashlib.sha256(student.encode()).hexdigest()[:12], 16) % n + 1


def mine(sub: Submission, i: int, n: int) -> bool:
    """Whether shard i of n handles this file: its student's slice, or (shard 1) a file no student was given."""
    return i == 1 if sub.rejected else slice_of(sub.student, n) == i


def shard_work(root: Path, assignment: str, work: Path, i: int, n: int) -> Path:
    """Shard i of n's grading folder under `work`, holding `work`'s class secret."""
    secret = Assignment(root, assignment, work).secret()
    folder = Path(work) / "shards" / f"{i}-of-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    mine_ = folder / "canary-secret"
    if not mine_.exists():
        write_atomic(mine_, secret)
    elif mine_.read_text() != secret:
        raise GradingError(f"{mine_} is not {work}'s class secret: this shard folder belongs to another class; "
                           "remove it or grade into another --work")
    return folder


FINISHED = "shard-finished"  # written when a shard's run ends, removed when one starts: a killed run leaves none


def started(folder: Path) -> None:
    """A shard's run begins: until it ends, merge refuses the shard (its gradebook is partial)."""
    (Path(folder) / FINISHED).unlink(missing_ok=True)


def finished(folder: Path, students: int) -> None:
    write_atomic(Path(folder) / FINISHED, f"{students}\n")


def shard_folders(work: Path) -> list[Path]:
    """The shard folders of `work`, all of one N and all N present, in order; else a GradingError that says
    which are missing."""
    found = {}
    for folder in sorted((Path(work) / "shards").glob("*-of-*")):
        m = FOLDER.match(folder.name)
        if m:
            found.setdefault(int(m[2]), {})[int(m[1])] = folder
    if not found:
        raise GradingError(f"no shard folders in {Path(work) / 'shards'}: grade with --shard i/N first")
    if len(found) > 1:
        raise GradingError(f"{Path(work) / 'shards'} holds shards of several splits ({', '.join(f'N={n}' for n in sorted(found))}); "
                           "remove the folders of the split not wanted")
    (n, by_index), = found.items()
    missing = [f"{i}/{n}" for i in range(1, n + 1) if i not in by_index or not (by_index[i] / FINISHED).is_file()]
    if missing:
        raise GradingError(f"shard(s) {', '.join(missing)} have not graded yet, or were stopped midway (no "
                           f"{FINISHED} in {Path(work) / 'shards'}/i-of-{n}); run them (again), then merge")
    return [by_index[i] for i in range(1, n + 1)]


def _students(folder: Path, assignment: str) -> list[dict]:
    """Every recorded student of a shard, with what the gradebook keeps about them."""
    with open_gradebook(folder) as gb:
        for table in (STATUS_TABLE, INTAKE_TABLE, LMS_TABLE):
            gb.db.execute(text(table))
        q = lambda sql: [dict(r._mapping) for r in gb.db.execute(text(sql), {"a": assignment})]  # noqa: E731
        status = q("SELECT * FROM peftlab_status WHERE assignment = :a")
        intake = {r["student"]: r for r in q("SELECT * FROM peftlab_intake WHERE assignment = :a")}
        lms = {r["student"]: r for r in q("SELECT * FROM peftlab_lms WHERE assignment = :a")}
        people = {s.id: {"first_name": s.first_name, "last_name": s.last_name, "email": s.email,
                         "lms_user_id": s.lms_user_id} for s in gb.students}
    return [{"status": r, "intake": intake.get(r["student"]), "lms": lms.get(r["student"]),
             "person": people.get(r["student"], {})} for r in status]


def merge(root: Path, assignment: str, work: Path, log=print, **exports) -> Path:
    """Every shard of `work` into `work`'s gradebook, feedback and notebooks; the grades CSV and LMS files
    written from it. The CSV's path."""
    work = Path(work)
    folders = shard_folders(work)
    template = work / "template" / assignment
    if not (work / "gradebook.db").is_file() or not template.is_dir():  # the assignment in the class's gradebook
        shutil.rmtree(template, ignore_errors=True)
        course_mod.scratch_course(root, [assignment], into=template)
        course_mod.generate(template, assignment, db_folder=work)
    merged = 0
    for folder in folders:
        for entry in _students(folder, assignment) if (folder / "gradebook.db").is_file() else []:
            st = entry["status"]
            student = st["student"]
            out = Outcome(student=student, status=st["status"], reason=st["reason"], notes=json.loads(st["notes"]),
                          grades=read_grades(folder, assignment, student))
            record(work, assignment, Submission(student=student, origin="", sha256=st["sha256"]), out)
            _identity(work, assignment, student, entry)
            for step in ("submitted", "autograded", "feedback"):
                src = folder / step / (assignment if step == "feedback" else student) / (
                    student if step == "feedback" else assignment)
                dest = work / src.relative_to(folder)
                shutil.rmtree(dest, ignore_errors=True)
                if src.is_dir():
                    shutil.copytree(src, dest, symlinks=True)
            merged += 1
    _merge_intake(work, assignment, folders)
    csv_path = grades_csv(work, assignment, work / f"{assignment}-grades.csv")
    export_all(work, assignment, **exports)  # canvas_column, roster, moodle_worksheet: as `peftlab-grade` takes them
    log(f"{assignment}: {merged} student(s) from {len(folders)} shard(s) merged into {work}; grades: {csv_path}")
    return csv_path


def _identity(work: Path, assignment: str, student: str, entry: dict) -> None:
    """The shard's identity rows as they are (when it was graded included), the student's names."""
    with open_gradebook(work) as gb:
        for table in (INTAKE_TABLE, LMS_TABLE):
            gb.db.execute(text(table))
        person = gb.update_or_create_student(student)
        for key, value in entry["person"].items():
            if value:
                setattr(person, key, value)
        for table, row in (("peftlab_intake", entry["intake"]), ("peftlab_lms", entry["lms"])):
            if row:
                names = ", ".join(f":{k}" for k in row)
                gb.db.execute(text(f"INSERT OR REPLACE INTO {table} ({', '.join(row)}) VALUES ({names})"), row)
        gb.db.commit()


def _merge_intake(work: Path, assignment: str, folders: list[Path]) -> None:
    """The shards' intake reports as one (every file once: shard 1 alone reports files no student was given)."""
    rows = []
    for folder in folders:
        path = folder / f"{assignment}-intake.csv"
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                rows += [[r[c] for c in INTAKE_COLUMNS] for r in csv.DictReader(fh)]
    write_atomic(work / f"{assignment}-intake.csv", csv_bytes(INTAKE_COLUMNS, sorted(rows)))

