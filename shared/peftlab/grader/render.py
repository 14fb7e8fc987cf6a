"""Feedback HTML that renders offline: the course's markdown as written, math as MathML, student content cleaned.

nbconvert's `sanitize_html=True` runs bleach over *every* markdown cell with an
allowlist that lacks `h1`..`h6`, `p`, `thead`, `th`, and escapes them: every
heading and table then reads as raw tags (TRAPS.md). Here trust is decided per
cell instead:

- markdown cells of the release (the instructor's text) render as written;
- everything a student or their code produced (their own markdown cells, the
  summary, which quotes their error messages, rich outputs) goes through bleach
  with an allowlist for documents (headings, tables, lists, images as data URIs)
  that *strips* what it drops, never escapes it;
- math is converted to MathML on the grader (latex2mathml), which browsers
  render natively, so no MathJax and no CDN;
- the page carries a Content-Security-Policy that forbids every script and
  every network fetch: whatever slips through cannot run or phone home.
"""

from __future__ import annotations

import base64
import functools
import html
import re

TRUSTED = "peftlab_trusted"  # cell metadata key: markdown written by the instructor

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
       "script-src 'none'; form-action 'none'; base-uri 'none'")

_DOC_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del", "details", "div",
    "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd",
    "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strong", "sub", "summary", "sup", "table",
    "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul", "var",
}
_ATTRS = {"*": ["class", "id", "title", "align"], "a": ["href"], "img": ["src", "alt", "width", "height"],
          "th": ["colspan", "rowspan", "style"], "td": ["colspan", "rowspan", "style"], "ol": ["start"]}

# Dropped from outputs: they run code in the reader's browser or need a live kernel.
_ACTIVE_MIME = ("application/javascript", "application/vnd.jupyter.widget-view+json",
                "application/vnd.jupyter.widget-state+json", "text/markdown")


def clean(fragment: str) -> str:
    """Untrusted HTML reduced to a document: tags outside the allowlist removed (their text kept)."""
    import bleach
    from bleach.css_sanitizer import CSSSanitizer

    return bleach.clean(fragment, tags=_DOC_TAGS, attributes=_ATTRS, protocols={"http", "https", "mailto", "data"},
                        css_sanitizer=CSSSanitizer(allowed_css_properties=["text-align"]), strip=True,
                        strip_comments=True)


def mathml(tex: str, display: str) -> str:
    """LaTeX as MathML (`display` is 'inline' or 'block'); what cannot be converted stays as code."""
    from latex2mathml.converter import convert

    try:
        return convert(tex.strip(), display=display)
    except Exception:  # latex2mathml raises its own errors, and others, for TeX it does not know
        return f'<code class="tex">{html.escape(tex)}</code>'


def clean_outputs(outputs: list) -> list:
    """Outputs as safe data: no scripts, widgets or raw markdown; HTML cleaned; SVG shown as an image."""
    import nbformat

    safe = []
    for o in outputs:
        o = dict(o)
        if "data" in o:
            data = {k: v for k, v in o["data"].items() if k not in _ACTIVE_MIME}
            if "text/html" in data:
                data["text/html"] = clean("".join(data["text/html"]))
            if "image/svg+xml" in data:  # an <img> cannot run the SVG's scripts; inline SVG could
                svg = "".join(data.pop("image/svg+xml")).encode()
                data.setdefault("text/html", f'<img alt="figure" src="data:image/svg+xml;base64,'
                                             f'{base64.b64encode(svg).decode()}">')
            if not data:
                data = {"text/plain": "[output removed: it needs JavaScript]"}
            o["data"] = data
        safe.append(nbformat.from_dict(o))
    return safe


@functools.lru_cache(maxsize=1)
def _exporter():
    """One exporter per process: its templates compile once (a quarter second each time otherwise)."""
    from jinja2 import DictLoader, pass_context
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    class Renderer(IPythonRenderer):
        # Math becomes a placeholder first, so that cleaning never sees (or mangles) the MathML.
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.math: list[str] = []

        def _hold(self, tex: str, display: str) -> str:
            self.math.append(mathml(tex, display))
            return f"peftlabmath{len(self.math) - 1}x"

        def block_math(self, body):
            return self._hold(body, "block")

        def inline_math(self, body):
            return self._hold(body, "inline")

        def latex_environment(self, name, body):
            return self._hold(f"\\begin{{{name}}}{body}\\end{{{name}}}", "block")

    class Exporter(HTMLExporter):
        @pass_context
        def markdown2html(self, context, source):
            cell = context.get("cell", {})
            renderer = Renderer(escape=False, attachments=cell.get("attachments", {}), embed_images=True,
                                anchor_link_text=self.anchor_link_text, exclude_anchor_links=True)
            out = MarkdownWithMath(renderer=renderer).render(source)
            if not cell.get("metadata", {}).get(TRUSTED):
                out = clean(out)
            return re.sub(r"peftlabmath(\d+)x", lambda m: renderer.math[int(m.group(1))], out)

    # The lab page without its scripts: require.js and MathJax come from a CDN and nothing here needs them.
    page = ("{%- extends 'index.html.j2' -%}\n"
            "{%- block html_head_js -%}{%- endblock html_head_js -%}\n"
            "{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}\n"
            "{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}\n"
            "{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}\n")
    exporter = Exporter(template_name="lab", template_file="feedback.html.j2",
                        extra_loaders=[DictLoader({"feedback.html.j2": page})])
    exporter.sanitize_html = False  # done per cell above and in clean_outputs
    return exporter


def render_html(nb) -> str:
    """The feedback notebook `nb` as one self-contained HTML page (cells marked TRUSTED render as written)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = clean_outputs(cell.get("outputs", []))
        elif cell.cell_type == "raw":  # nbconvert passes raw cells through as HTML
            cell.source = clean(cell.source)
    page, _ = _exporter().from_notebook_node(nb)
    meta = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
    return page.replace("<head>", "<head>\n" + meta, 1)
