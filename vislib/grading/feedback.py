"""Feedback pages whose formulas need no network: the markdown's TeX becomes MathML when the page is
made, which browsers draw themselves, so a page stays one self-contained file (nbgrader releases
feedback to learners as a single HTML file, and nbgrader's template loads MathJax from a CDN). Its font
stacks name a Korean font after the Latin ones, for the learners' Korean text and messages.

``assignments/nbgrader_config.py`` makes ``FeedbackExporter`` nbgrader's feedback exporter.
"""

from __future__ import annotations

import copy
import html
import re

from latex2mathml.converter import convert
from nbconvert import HTMLExporter

# Formulas as MathJax's tex2jax finds them in markdown ($ escaped as \$ is not a delimiter).
FORMULA = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<![\\$])\$((?:[^$\\\n]|\\.)+?)\$", re.S)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
CDN_MATHJAX = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*mathjax[^\"]*\"[^>]*>\s*</script>", re.I)
TOKEN = "VISLIBFORMULA{:05d}X"
# nbgrader's feedback page (Bootstrap 3) with a Korean font after its Latin ones: Hangul and hanja are drawn
# with Noto Sans CJK KR (fonts-noto-cjk), Apple SD Gothic Neo (macOS) or Malgun Gothic (Windows), not with
# whatever CJK font the system falls back to. Placed last in the head, so it outranks Bootstrap's rules.
KOREAN_FONTS = """<style>
body { font-family: "Helvetica Neue", Helvetica, Arial, "Noto Sans CJK KR", "Noto Sans KR", "Apple SD Gothic Neo",
  "Malgun Gothic", sans-serif; }
code, kbd, pre, samp { font-family: Menlo, Monaco, Consolas, "Courier New", "Noto Sans Mono CJK KR", monospace; }
</style>
"""


def to_mathml(tex: str, display: bool) -> str:
    """One formula as MathML; one that does not convert stays as its TeX, in a code span."""
    try:
        return convert(tex.strip(), display="block" if display else "inline")
    except Exception:  # noqa: BLE001 (latex2mathml raises many kinds; the reader still sees the TeX)
        return f"<code>{html.escape(tex)}</code>"


def _tokenise(source: str, formulas: list[str]) -> str:
    """``source`` with each formula outside code replaced by a token (markdown leaves tokens alone)."""
    def replace(match: re.Match) -> str:
        display = match.group(1) is not None or match.group(2) is not None
        tex = next(g for g in match.groups() if g is not None)
        formulas.append(to_mathml(tex, display))
        return TOKEN.format(len(formulas) - 1)

    parts, last = [], 0
    for code in CODE.finditer(source):
        parts.append(FORMULA.sub(replace, source[last:code.start()]))
        parts.append(code.group(0))
        last = code.end()
    parts.append(FORMULA.sub(replace, source[last:]))
    return "".join(parts)


class FeedbackExporter(HTMLExporter):
    """nbconvert's HTML exporter, with the markdown's formulas as MathML, no MathJax script, Korean fonts."""

    def from_notebook_node(self, nb, resources=None, **kw):
        formulas: list[str] = []
        nb = copy.deepcopy(nb)
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source = _tokenise(cell.source, formulas)
        body, resources = super().from_notebook_node(nb, resources, **kw)
        body = CDN_MATHJAX.sub("", body)
        body = body.replace("</head>", KOREAN_FONTS + "</head>", 1)
        body = re.sub(r"VISLIBFORMULA(\d{5})X", lambda m: formulas[int(m.group(1))], body)
        return body, resources
