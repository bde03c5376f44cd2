"""A learner's feedback page in headless Chromium, with the network off: its formulas are drawn
(MathML, no MathJax from a CDN) and nothing but the file itself is requested.

One honest saliency submission is graded by `make autograde` in a temporary course; its feedback
page must show every formula of the assignment's markdown, each with a size on the page. A
screenshot goes to build/site-check/feedback.png. Run with `make check-feedback`.
"""

from __future__ import annotations

import subprocess

from playwright.sync_api import sync_playwright

from tests import grading_course
from tests.browser.check_site import ROOT, SHOTS, formulas_in_sources
from tests.browser.chromium import launch, offline_context

DRAWN_FORMULAS = """() => [...document.querySelectorAll("math")]
    .filter(math => { const box = math.getBoundingClientRect(); return box.width > 0 && box.height > 0; }).length"""


def test_a_feedback_page_draws_its_formulas_offline(tmp_path):
    grading_course.build(tmp_path, ("honest",))
    done = subprocess.run(["make", "-s", "autograde", f"COURSE={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    page_file = tmp_path / "feedback" / "honest" / "saliency" / "saliency.html"
    assert "cdnjs" not in page_file.read_text()
    expected = formulas_in_sources(tmp_path / "release" / "saliency" / "saliency.ipynb")
    refused = []
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = offline_context(browser, refused).new_page()
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            drawn = page.evaluate(DRAWN_FORMULAS)
            score = page.locator("text=Score").count()
            page.screenshot(path=SHOTS / "feedback.png", full_page=True)
        finally:
            browser.close()
    print(f"\nfeedback page: {drawn} formulas drawn, {expected} in the assignment's markdown")
    assert not refused, f"the feedback page requested the network: {refused}"
    assert expected > 0 and drawn == expected, f"{drawn} of {expected} formulas drawn"
    assert score > 0, "the page shows no score"
