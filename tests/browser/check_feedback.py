"""A learner's feedback page in headless Chromium, with the network off: its formulas are drawn
(MathML, no MathJax from a CDN), nothing but the file itself is requested, and every character of its
visible text beyond ASCII (the learners' Korean, the check messages) is drawn with a real glyph of an
installed font, not the missing-glyph box, and no output shows matplotlib's warning of a figure drawn
without a glyph (tests/browser/glyphs.py).

One honest saliency submission is graded by `make autograde` in a temporary course; its feedback
page must show every formula of the assignment's markdown, each with a size on the page. A second
test proves the glyph check on the page's own styles, whatever the assignment's text: a copy of the
page with a Korean paragraph and a Korean check message passes, drawn with the Korean fonts that the
page names; with a character no font has (or matplotlib's warning), or in a browser without Korean
fonts, it fails. Screenshots
go to build/site-check/. Run with `make check-feedback`.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata

import pytest
from playwright.sync_api import sync_playwright

from tests import grading_course
from tests.browser.check_site import ROOT, SHOTS, formulas_in_sources
from tests.browser.chromium import launch, offline_context
from tests.browser.glyphs import (
    NO_GLYPH,
    figure_tofu,
    glyph_check_on_test_pages,
    glyph_report,
    matplotlib_warning_for,
    missing_glyphs,
)

DRAWN_FORMULAS = """() => [...document.querySelectorAll("math")]
    .filter(math => { const box = math.getBoundingClientRect(); return box.width > 0 && box.height > 0; }).length"""


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A course with one honest saliency submission, graded by `make autograde`: its folder."""
    course = tmp_path_factory.mktemp("course")
    grading_course.build(course, ("honest",))
    done = subprocess.run(["make", "-s", "autograde", f"COURSE={course}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return course


def test_a_feedback_page_draws_its_formulas_and_its_characters_offline(graded):
    page_file = graded / "feedback" / "honest" / "saliency" / "saliency.html"
    assert "cdnjs" not in page_file.read_text()
    expected = formulas_in_sources(graded / "release" / "saliency" / "saliency.ipynb")
    refused = []
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = offline_context(browser, refused).new_page()
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            drawn = page.evaluate(DRAWN_FORMULAS)
            score = page.locator("text=Score").count()
            glyphs, in_figures = missing_glyphs(page), figure_tofu(page)
            page.screenshot(path=SHOTS / "feedback.png", full_page=True)
        finally:
            browser.close()
    print(f"\nfeedback page: {drawn} formulas drawn, {expected} in the assignment's markdown; "
          f"{glyphs['checked']} distinct non-ASCII characters checked (per font)")
    assert not refused, f"the feedback page requested the network: {refused}"
    assert expected > 0 and drawn == expected, f"{drawn} of {expected} formulas drawn"
    assert score > 0, "the page shows no score"
    assert not glyphs["missing"] and not glyphs["unusable"], (
        f"characters without a glyph (drawn as the missing-glyph box):\n{glyph_report({page_file.name: glyphs})}")
    assert not in_figures, f"figures with characters drawn without a glyph (matplotlib's warnings): {in_figures}"


KOREAN = "기울기의 절댓값이 클수록 그 픽셀이 점수에 더 큰 영향을 줍니다. 可視化 · α ∂"
MESSAGE = "AssertionError: 지도의 모양이 [B, H, W]가 아닙니다 → 채널 축을 줄이세요"


def test_the_glyph_check_fails_on_missing_glyphs_and_passes_on_korean(graded, tmp_path):
    html = (graded / "feedback" / "honest" / "saliency" / "saliency.html").read_text(encoding="utf-8")
    body = html.index(">", html.index("<body")) + 1

    def with_text(name: str, extra: str = "", stderr: str = "") -> str:
        added = f'<div class="text_cell_render rendered_html"><p>{KOREAN}{extra}</p></div><pre>{MESSAGE}{stderr}</pre>'
        (tmp_path / name).write_text(html[:body] + added + html[body:], encoding="utf-8")
        return (tmp_path / name).as_uri()

    warning = matplotlib_warning_for("기울기 지도")
    korean = with_text("korean.html")
    tofu = with_text("tofu.html", f" 그리고 {NO_GLYPH} 하나.", stderr=f"\n/tmp/1.py:3: UserWarning: {warning}")
    refused = []
    SHOTS.mkdir(parents=True, exist_ok=True)
    seen = glyph_check_on_test_pages(korean, tofu, tmp_path,
                                     ".rendered_html p", "pre",
                                     SHOTS / "glyph-check-feedback-without-korean-fonts.png", refused)
    with_fonts, figures_with_fonts, with_tofu = seen["with_fonts"], seen["figures_with_fonts"], seen["with_tofu"]
    figures_with_tofu, without_fonts = seen["figures_with_tofu"], seen["without_fonts"]
    prose, message = seen["prose"], seen["output"]

    visible = re.sub(r"<(script|style)\b.*?</\1>", "", html, flags=re.S)  # the assignment's own Korean too
    shown = {char for char in visible + KOREAN + MESSAGE if unicodedata.name(char, "").startswith(("HANGUL", "CJK"))}
    report = glyph_report({"korean.html": without_fonts, "tofu.html": with_tofu})
    print(f"\nKorean feedback page: {with_fonts['checked']} characters checked; prose drawn with {prose}, "
          f"the message with {message}\nthe reports of the failures that must fail:\n{report}\n"
          f"in figures: {figures_with_tofu}")
    assert not refused, refused
    assert not with_fonts["missing"] and not with_fonts["unusable"], glyph_report({"korean.html": with_fonts})
    assert "Noto Sans CJK KR" in prose and "Noto Sans Mono CJK KR" in message, "the page names the Korean fonts"
    assert [entry["char"] for entry in with_tofu["missing"]] == [NO_GLYPH], with_tofu
    assert not figures_with_fonts and figures_with_tofu == [warning], (figures_with_fonts, figures_with_tofu, warning)
    assert {entry["char"] for entry in without_fonts["missing"]} == shown, "every Hangul and hanja, nothing else"
    for piece in ("korean.html", "tofu.html", "U+10FFFD", "U+AE30", "그리고", "기울기의 절댓값이"):  # U+AE30: 기
        assert piece in report, piece
