"""What every grading worker needs, imported once by the process that forks the workers.

The grading fork server (`peftlab.grader.forkserver`) imports it once, and
each submission's worker is forked from the server with all of it in memory. A fresh Python per submission spent
most of its time here (importing nbgrader, nbconvert, SQLAlchemy and alembic,
and SQLAlchemy's first mapper set-up; about 3.4 s of a fixture submission's
5.4 s on an idle 2-core machine, `bench/grading.py`).

Importing this module has side effects on purpose: it opens (and deletes) one
throw-away gradebook so that the ORM is configured before the fork, and renders
an empty feedback page so that the feedback templates are compiled.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jsonschema  # noqa: F401  (inspect: the notebook's schema)
import nbformat
import nbformat.validator  # noqa: F401
from jupyter_client.manager import AsyncKernelManager  # noqa: F401  (the sandboxed kernel)
from nbclient import NotebookClient  # noqa: F401
from nbconvert import HTMLExporter  # noqa: F401  (feedback)
from nbgrader.apps import NbGraderAPI  # noqa: F401
from papermill.translators import translate_parameters  # noqa: F401  (grading parameters; half a second)

from . import feedback, probes, render, worker  # noqa: F401
from .gradebook import open_gradebook


def _configure_gradebook() -> None:
    with tempfile.TemporaryDirectory(prefix="peftlab-warm-") as folder, open_gradebook(Path(folder)):
        pass


_configure_gradebook()
render.render_html(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("$x$")]))  # compiles the templates
