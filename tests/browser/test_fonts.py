"""The course site's and the feedback pages' font stacks name a Korean font after their Latin ones (the
browser checks, `make check-book` and `make check-feedback`, prove that the Korean is drawn with it)."""

import re

import nbformat

from tests.browser.test_book import ROOT
from vislib.grading.feedback import FeedbackExporter


def _after_latin(stack: str, korean: str, latin: str) -> bool:
    families = [family.strip().strip("'\"").lower() for family in stack.split(",")]
    return korean.lower() in families and families.index(latin) < families.index(korean.lower())


def test_the_site_names_korean_fonts_after_the_latin_ones():
    css = (ROOT / "book" / "templates" / "course.css").read_text()
    root = re.search(r"html:root\s*\{([^}]*)\}", css).group(1)  # outranks the :root of JupyterLab's styles
    stacks = dict(re.findall(r"(--[\w-]+):\s*([^;]+);", root))
    assert _after_latin(stacks["--course-sans"], "Noto Sans CJK KR", "arial")
    assert _after_latin(stacks["--jp-code-font-family-default"], "Noto Sans Mono CJK KR", "dejavu sans mono")
    assert stacks["--jp-ui-font-family"] == stacks["--jp-content-font-family"] == "var(--course-sans)"
    assert ".course-index { font-family: var(--course-sans);" in css


def test_feedback_pages_name_korean_fonts_after_the_latin_ones():
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# 피드백\n\n기울기 $x$")]
    html, _ = FeedbackExporter().from_notebook_node(notebook)
    head = html.split("</head>", 1)[0]
    body_stack = re.findall(r"\bbody \{ font-family: ([^;]+);", head)[-1]  # the last rule of the head wins
    code_stack = re.findall(r"code, kbd, pre, samp \{ font-family: ([^;]+);", head)[-1]
    assert _after_latin(body_stack, "Noto Sans CJK KR", "arial")
    assert _after_latin(code_stack, "Noto Sans Mono CJK KR", "courier new")
    assert "Noto Sans CJK KR" in head[head.rindex("<style"):], "the Korean fonts come in the head's last style"
