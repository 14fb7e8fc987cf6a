"""nbgrader preprocessors the grader adds to nbgrader's autograde pipeline.

They report what they saw (canary results, dropped output) by appending JSON
lines to `findings`, a file in the worker's scratch folder, which the kernel
cannot see: preprocessors are built by nbgrader from configuration, so a file
named in that configuration is how their findings come back to the worker.
"""

from __future__ import annotations

import copy
import json
import random
import time
from datetime import datetime

import nbformat
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from nbgrader.utils import is_grade, is_solution
from traitlets import Bool, Dict, Integer, List, Unicode

from . import progress
from .inspect import new_cell_id
from .probes import MAX_PAYLOAD, MIME, cell_source, load, payload

_CANARY_WORDS = ["trainable parameters", "merged weight", "held-out loss", "rank of the update", "scaling",
                 "masked labels", "module count", "output shape", "quantized bytes", "row count"]


def report(findings: str, **entry) -> None:
    if findings:
        with open(findings, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")


def read_findings(findings: str) -> list[dict]:
    try:
        with open(findings, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


class InjectParameters(NbGraderPreprocessor):
    """papermill-style: a cell with the grading parameters right after the `parameters` cell."""

    parameters = Dict().tag(config=True)

    def preprocess(self, nb, resources):
        if self.parameters:
            # Lazy: papermill imports pyarrow when it can, whose threads the fork server must not have yet.
            from papermill.translators import translate_parameters

            source = translate_parameters("python", "python", dict(self.parameters), "Parameters injected for grading")
            cell = nbformat.v4.new_code_cell(source, id=new_cell_id(nb, "peftlab-injected-parameters"))
            cell.metadata["tags"] = ["injected-parameters"]
            tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
            nb.cells.insert(tagged[0] + 1 if tagged else 0, cell)
        return nb, resources


def canary_source(rng: random.Random) -> str:
    """Looks like one of the course's test cells; always fails unless the kernel lies."""
    what = rng.choice(_CANARY_WORDS)
    a = rng.randint(2, 9_999)
    b = a + rng.randint(1, 97)
    return f"# Checks the {what} once more.\nchecks.assert_equal({a}, {b}, \"{what}\")"


class InsertCanaries(NbGraderPreprocessor):
    """Test-like cells that must fail, placed after randomly chosen test cells."""

    seed = Unicode("").tag(config=True)
    count = Integer(2).tag(config=True)

    def preprocess(self, nb, resources):
        rng = random.Random(self.seed)
        tests = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and is_grade(c) and not is_solution(c)]
        for i in sorted(rng.sample(tests, min(self.count, len(tests))), reverse=True):
            cell = nbformat.v4.new_code_cell(canary_source(rng), id=new_cell_id(nb, f"peftlab-canary-{i}"))
            cell.metadata["peftlab"] = {"canary": True}
            nb.cells.insert(i + 1, cell)
        return nb, resources


class CheckCanaries(NbGraderPreprocessor):
    """Report whether each canary failed, then remove the canaries."""

    findings = Unicode("").tag(config=True)

    def preprocess(self, nb, resources):
        kept = []
        for cell in nb.cells:
            if cell.metadata.get("peftlab", {}).get("canary"):
                failed = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
                report(self.findings, kind="canary", failed=failed, ran=cell.get("execution_count") is not None)
            else:
                kept.append(cell)
        nb.cells = kept
        return nb, resources


class InsertProbes(NbGraderPreprocessor):
    """One cell per probe and seed at the end of the notebook: they run after every cell of the student's.

    `seeds`: the submission's own seed first; more seeds ask the same probes again on other inputs (the
    solution's run for a whole class, or the fair-grading gate's check that points do not depend on the seed)."""

    probes = Unicode("").tag(config=True)  # the assignment's probe file; "" for none
    seeds = List(Integer()).tag(config=True)

    def preprocess(self, nb, resources):
        if self.probes:
            loaded = load(self.probes)
            for seed in self.seeds:
                for gid, p in loaded.items():
                    cell = nbformat.v4.new_code_cell(cell_source(p, seed), id=new_cell_id(nb, f"peftlab-probe-{seed}"))
                    cell.metadata["peftlab"] = {"probe": gid, "seed": int(seed)}
                    nb.cells.append(cell)
        return nb, resources


class CollectProbes(NbGraderPreprocessor):
    """Report each probe cell's payload (or why there is none), then remove the probe cells."""

    findings = Unicode("").tag(config=True)

    def preprocess(self, nb, resources):
        kept = []
        for cell in nb.cells:
            meta = cell.metadata.get("peftlab", {})
            if meta.get("probe"):
                text, why = payload(list(cell.get("outputs", [])))
                report(self.findings, kind="probe", grade_id=meta["probe"], seed=meta.get("seed", 0), text=text, why=why)
            else:
                kept.append(cell)
        nb.cells = kept
        nb.metadata.pop("widgets", None)  # widget state is kernel-written, and could hold what a probe sent
        return nb, resources


class GuardedExecute(Execute):
    """nbgrader's Execute with a cap on the output a kernel may send back, in total per submission (outputs,
    display updates, charged once per output they rewrite, and widget state alike), and a wall around the probes.

    Probe cells have a budget of their own, so a notebook that printed its 2 MiB does not silence its
    probes (nor can a probe cell print more).

    Nothing the probes send or see may reach the saved notebook, hence the feedback (grading/README.md,
    Probes): student code runs in the same kernel and sees each probe cell's source and seed, and could
    copy them, or the payloads, into an earlier output with `update_display_data` (or a `display_id` shared
    with one of its own outputs). So the notebook's outputs are taken as they stood when the first probe cell
    started and put back when the kernel is done, and while probes run no message may reach an earlier
    output: updates, display ids and widget messages are dropped. Before that, a display update is kept only
    for a display the student's own cells created, and nothing of the probes' MIME type is kept outside a
    probe cell."""

    max_output_bytes = Integer(2 * 2**20).tag(config=True)
    findings = Unicode("").tag(config=True)
    # A message over the sandbox's size limit (Policy.max_message_bytes, 64 MiB) is dropped by ZeroMQ before
    # this process holds it, and the kernel's output channel with it: the cell's "idle" never comes. nbgrader
    # would make that an error of the whole submission; here the cells run on, without their outputs.
    raise_on_iopub_timeout = Bool(False).tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        start = time.time()
        self._snapshot, self._displays = None, set()
        try:
            return super().preprocess(nb, resources, km=km)
        finally:
            self._restore(getattr(self, "nb", None) or nb)
            report(self.findings, kind="timing", **cell_times(nb, start, time.time()))

    def preprocess_cell(self, cell, resources, index):
        if self._snapshot is None and _is_probe(cell):
            # The student's notebook as it stood before any probe ran: what is saved and fed back.
            self._snapshot = {i: (copy.deepcopy(c.get("outputs", [])), c.get("execution_count"))
                              for i, c in enumerate(self.nb.cells) if c.cell_type == "code" and not _is_probe(c)}
        # How far the notebook got, for the feedback of one stopped at the wall limit (peftlab.grader.progress).
        progress.started(self.findings, self.nb, index)
        try:
            return super().preprocess_cell(cell, resources, index)
        finally:
            progress.finished(self.findings, self.nb, index)

    def _restore(self, nb) -> None:
        if not getattr(self, "_snapshot", None):
            return
        for i, (outputs, count) in self._snapshot.items():
            if i < len(nb.cells):
                nb.cells[i]["outputs"], nb.cells[i]["execution_count"] = outputs, count

    def process_message(self, msg, cell, cell_index):
        kind, content = msg.get("msg_type"), msg.get("content") or {}
        transient = content.get("transient") if isinstance(content, dict) else None
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        probing = self._snapshot is not None
        if kind in ("display_data", "execute_result", "update_display_data"):
            data = content.get("data") if isinstance(content.get("data"), dict) else {}
            if MIME in data and not _is_probe(cell):
                return None  # a probe's payload outside a probe cell: never the student's to show
            if kind == "update_display_data" and (probing or display_id not in self._displays):
                return None  # an update of a display the student did not create, or during the probes
            if display_id and probing:
                # No display id while probes run: it would write this output into every earlier one sharing it.
                msg = {**msg, "content": {**content, "transient": {}}}
            elif display_id and kind != "update_display_data" and not _is_probe(cell):
                self._displays.add(display_id)
        elif probing and kind.startswith("comm"):
            return None  # widget messages can write outputs elsewhere (Output widgets) or notebook metadata
        return super().process_message(msg, cell, cell_index)

    def output(self, outs, msg, display_id, cell_index):
        if _is_probe(self.nb.cells[cell_index]):
            sent = getattr(self, "_probe_sent", {})
            self._probe_sent = sent
            sent[cell_index] = sent.get(cell_index, 0) + len(json.dumps(msg.get("content", {}), default=str))
            return super().output(outs, msg, display_id, cell_index) if sent[cell_index] <= 4 * MAX_PAYLOAD else None
        if not self._charge(msg, 1, cell_index):
            return None
        return super().output(outs, msg, display_id, cell_index)

    def _charge(self, msg, copies: int, cell_index) -> bool:
        """Count `copies` of the message against the submission's output total; False once it is spent."""
        self._sent = getattr(self, "_sent", 0) + copies * content_size(msg.get("content", {}))
        if self._sent > self.max_output_bytes:
            if not getattr(self, "_capped", False):
                self._capped = True
                report(self.findings, kind="note",
                       text=f"output past {self.max_output_bytes:,} bytes was dropped (from cell {cell_index})")
            return False
        return True

    def _update_display_id(self, display_id, msg):
        # A display update rewrites every earlier output with its id, in place, without passing through
        # `output`: charged once per output it rewrites (8 updates of 40 MB once made a 320 MB notebook).
        targets = sum(len(ix) for ix in self._display_id_map.get(display_id, {}).values())
        if targets and self._charge(msg, targets, "with a display update"):
            super()._update_display_id(display_id, msg)

    def handle_comm_msg(self, outs, msg, cell_index):
        # Widget state is kept and saved into the notebook's metadata: the same budget.
        if self._charge(msg, 1, cell_index):
            super().handle_comm_msg(outs, msg, cell_index)


def content_size(value) -> int:
    """Characters in a message's content, counted in place: json.dumps would copy a 40 MB output once more."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            total += 8
    return total


def _is_probe(cell) -> bool:
    return bool(cell.get("metadata", {}).get("peftlab", {}).get("probe"))


def cell_times(nb, start: float, end: float) -> dict[str, float]:
    """Seconds spent starting the kernel, in the notebook's cells, in canary and probe cells, and shutting down.

    From the execution timestamps nbclient records in each cell's metadata (for the benchmark's profile)."""
    def when(cell, key):
        stamp = cell.get("metadata", {}).get("execution", {}).get(key)
        try:
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None
        except (AttributeError, ValueError):
            return None

    spans = {"cells": 0.0, "canaries": 0.0, "probes": 0.0}
    first, last = None, None
    for cell in nb.cells:
        begin, finish = when(cell, "iopub.execute_input"), when(cell, "shell.execute_reply")
        if begin is None or finish is None:
            continue
        first = begin if first is None else min(first, begin)
        last = finish if last is None else max(last, finish)
        meta = cell.get("metadata", {}).get("peftlab", {})
        kind = "probes" if meta.get("probe") else "canaries" if meta.get("canary") else "cells"
        spans[kind] += max(0.0, finish - begin)
    spans["kernel_start"] = max(0.0, (first or end) - start)
    spans["kernel_stop"] = max(0.0, end - (last or end))
    return {k: round(v, 3) for k, v in spans.items()}
