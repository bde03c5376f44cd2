"""The built course site in headless Chromium, with the network off: every notebook page shows its
figures and its formulas.

From build/site/index.html (file://; the browser is offline and every request for anything but a
file is refused and recorded: the site must stand alone) the index links every notebook of
notebooks/ and all its thumbnails load; each page, reached through the index's link, shows at least
one figure and as many loaded (decoded, non-empty) images as the build found figures in the executed
notebook (build/site/manifest.json). Once MathJax has typeset a page, every formula of the
notebook's markdown is rendered (none shows an error) and no raw TeX ($$, \\(, \\[, $x$) is left in
the page's visible text outside code. No page may request a URL that is not a file, nor fail to load
a file (a missing MathJax font or extension). Every character of every page's visible text beyond ASCII
(Hangul, hanja, Greek, math) is drawn with a real glyph of an installed font, not the missing-glyph box,
and no output shows matplotlib's warning of a figure drawn without a glyph (tests/browser/glyphs.py); a
test below proves on pages it writes itself that this check fails on a
character no font has and on Korean when no Korean font is installed, and passes on Korean with
fonts-noto-cjk, drawn with the Korean fonts that course.css names. Screenshots go to build/site-check/.

Run with `make check-book` after `make book` (VISLIB_SITE=path checks another build).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import unicodedata
from pathlib import Path

import nbformat
from playwright.sync_api import sync_playwright

from tests.browser.chromium import LOCAL, launch, offline_context
from tests.browser.glyphs import (
    NO_GLYPH,
    figure_tofu,
    glyph_check_on_test_pages,
    glyph_report,
    matplotlib_warning_for,
    missing_glyphs,
)
from tests.browser.test_book import build  # book/build.py

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("VISLIB_SITE", ROOT / "build" / "site"))
SHOTS = ROOT / "build" / "site-check"
TYPESET_TIMEOUT_MS = 60_000
LOADED_IMAGES = ("(selector) => [...document.querySelectorAll(selector)]"
                 ".filter(image => image.complete && image.naturalWidth > 0).length")
# Resolves once MathJax (if the page loads it) has finished its start-up typesetting and all queued after it.
# The hook returns nothing: a hook that returns MathJax's queue entry would make the start-up wait for it.
TYPESET = """() => new Promise(resolve => {
    if (!window.MathJax || !MathJax.Hub) return resolve(true);
    MathJax.Hub.Register.StartupHook("End", () => { MathJax.Hub.Queue(() => resolve(true)); });
})"""
# Formulas MathJax rendered (its HTML-CSS output), and the text of those that show an error: a TeX error,
# an undefined macro (shown as its name, backslash included) or MathJax's own "Math Processing Error".
FORMULAS = """() => {
    const shown = [...document.querySelectorAll("span.MathJax > .math, span.MathJax > nobr > .math")];
    const wrong = shown.filter(math => math.querySelector(".merror, .noError") || math.textContent.includes("\\\\"));
    return {rendered: shown.length, errors: [...wrong, ...document.querySelectorAll(".MathJax_Error")]
        .map(math => math.textContent)};
}"""
# The text a reader sees, without code (code keeps its $ and backslashes, and MathJax leaves it alone).
VISIBLE_PROSE = """() => {
    const hide = document.head.appendChild(document.createElement("style"));
    hide.textContent = "pre, code, .jp-InputArea-editor { display: none !important; }";
    const text = document.body.innerText;
    hide.remove();
    return text;
}"""
# Raw TeX a reader would see if MathJax had not run: display or inline delimiters, environments.
RAW_TEX = re.compile(r"\$\$|\\\(|\\\[|\\begin\{|\$[^\s$](?:[^$\n]*[^\s$])?\$")
# Formulas in notebook markdown as tex2jax finds them ($ escaped as \$ is not a delimiter).
SOURCE_TEX = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<!\\)\$(?:[^$\\]|\\.)+\$", re.S)


def formulas_in_sources(notebook: Path) -> int:
    """How many formulas the markdown cells of ``notebook`` hold."""
    cells = nbformat.read(notebook, as_version=4).cells
    return sum(len(SOURCE_TEX.findall(cell.source)) for cell in cells if cell.cell_type == "markdown")


def test_every_notebook_page_shows_its_figures_and_formulas_offline():
    assert (SITE / "manifest.json").exists(), f"no site in {SITE}: run `make book` first"
    manifest = {entry["page"]: entry for entry in json.loads((SITE / "manifest.json").read_text())}
    notebooks = {f"{path.stem}.html" for path in (ROOT / "notebooks").glob("*.ipynb")}
    SHOTS.mkdir(parents=True, exist_ok=True)
    refused, failed, shown, formulas, raw_tex, glyphs, figure_glyphs = [], [], {}, {}, {}, {}, {}

    def record_failure(request):
        if request.url.startswith(LOCAL):
            failed.append(f"{request.url}: {request.failure}")

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = offline_context(browser, refused).new_page()
            page.on("requestfailed", record_failure)
            page.goto((SITE / "index.html").resolve().as_uri(), wait_until="load")
            page.screenshot(path=SHOTS / "index.png", full_page=True)
            links = page.locator(".course-card > a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
            thumbnails = page.evaluate(LOADED_IMAGES, ".course-card img")
            raw_tex["index.html"] = RAW_TEX.findall(page.evaluate(VISIBLE_PROSE))
            glyphs["index.html"] = missing_glyphs(page)
            for href in links:
                page.goto((SITE / href).resolve().as_uri(), wait_until="load")
                page.wait_for_function(TYPESET, timeout=TYPESET_TIMEOUT_MS, polling=500)
                shown[href] = page.evaluate(LOADED_IMAGES, ".jp-OutputArea-output img")
                formulas[href] = page.evaluate(FORMULAS)
                raw_tex[href] = RAW_TEX.findall(page.evaluate(VISIBLE_PROSE))
                glyphs[href], figure_glyphs[href] = missing_glyphs(page), figure_tofu(page)
                page.screenshot(path=SHOTS / href.replace(".html", ".png"))
        finally:
            browser.close()

    expected = {href: formulas_in_sources(SITE / manifest[href]["source"]) for href in links}
    print(f"\n{'page':32} {'figures':>8} {'executed':>8} {'formulas':>8} {'in source':>9} {'glyphs':>7}")
    for href, figures in shown.items():
        print(f"{href:32} {figures:8} {manifest[href]['figures']:8} {formulas[href]['rendered']:8} {expected[href]:9}"
              f" {glyphs[href]['checked']:7}")
    print(f"{'index.html':32} {'':8} {'':8} {'':8} {'':9} {glyphs['index.html']['checked']:7}"
          "   (glyphs: distinct non-ASCII characters checked, per font)")
    assert not refused, f"pages requested the network: {sorted(set(refused))}"
    assert not failed, f"files failed to load: {failed}"
    assert notebooks <= set(links), f"the index does not link {sorted(notebooks - set(links))}"
    assert thumbnails == len(links), f"only {thumbnails} of {len(links)} thumbnails load"
    missing = {href: (figures, manifest[href]["figures"]) for href, figures in shown.items()
               if figures == 0 or figures < manifest[href]["figures"]}
    assert not missing, f"pages missing figures (shown, expected): {missing}"
    unrendered = {href: (formulas[href]["rendered"], expected[href]) for href in links
                  if formulas[href]["rendered"] < expected[href]}
    assert not unrendered, f"pages missing formulas (rendered, in the notebook): {unrendered}"
    errors = {href: found["errors"] for href, found in formulas.items() if found["errors"]}
    assert not errors, f"formulas that MathJax could not render: {errors}"
    raw = {href: found for href, found in raw_tex.items() if found}
    assert not raw, f"raw TeX left in the pages' text: {raw}"
    tofu = {href: found for href, found in glyphs.items() if found["missing"] or found["unusable"]}
    assert not tofu, f"characters without a glyph (drawn as the missing-glyph box):\n{glyph_report(tofu)}"
    in_figures = {href: found for href, found in figure_glyphs.items() if found}
    assert not in_figures, f"figures with characters drawn without a glyph (matplotlib's warnings): {in_figures}"


# The check's own test: pages made with the course's template and course.css, holding Korean prose, hanja,
# Latin-1, Greek and math symbols, and a code cell's Korean output (as a check's message would be); the page
# that must fail adds a character no font has, and matplotlib's warning for a Korean title it drew as boxes.
KOREAN = "합성곱 신경망이 본 것: 특징 맵과 기울기(gradient)를 시각화합니다. 可視化 · café · α ∑ ∂ — “따옴표”"
KOREAN_OUTPUT = "정답입니다! 다음 단계로 넘어가세요 → 05_cam"


def korean_page(folder: Path, name: str, extra: str = "", stderr: str = "") -> str:
    notebook = nbformat.v4.new_notebook()
    outputs = [nbformat.v4.new_output("stream", name="stdout", text=KOREAN_OUTPUT + "\n")]
    if stderr:
        outputs.append(nbformat.v4.new_output("stream", name="stderr", text=stderr))
    notebook.cells = [nbformat.v4.new_markdown_cell(f"# 한국어 쪽\n\n{KOREAN}{extra}"),
                      nbformat.v4.new_code_cell(f"print({KOREAN_OUTPUT!r})", outputs=outputs)]
    html = build.render_page(notebook, build.page_exporter(), "한국어 쪽", None, None)
    (folder / name).write_text(html, encoding="utf-8")
    return (folder / name).as_uri()


def cjk(chars) -> set[str]:
    return {char for char in chars if unicodedata.name(char, "").startswith(("HANGUL", "CJK"))}


def test_the_glyph_check_fails_on_missing_glyphs_and_passes_on_korean(tmp_path):
    shutil.copy(ROOT / "book" / "templates" / "course.css", tmp_path / "course.css")
    korean = korean_page(tmp_path, "korean.html")
    warning = matplotlib_warning_for("기울기 지도")
    tofu = korean_page(tmp_path, "tofu.html", extra=f" 그리고 {NO_GLYPH} 하나.",
                       stderr=f"/tmp/ipykernel_1/1.py:3: UserWarning: {warning}\n  figure.savefig(buffer)\n")
    refused = []
    SHOTS.mkdir(parents=True, exist_ok=True)
    seen = glyph_check_on_test_pages(korean, tofu, tmp_path,
                                     ".jp-RenderedMarkdown p", ".jp-OutputArea pre",
                                     SHOTS / "glyph-check-without-korean-fonts.png", refused)
    with_fonts, figures_with_fonts, with_tofu = seen["with_fonts"], seen["figures_with_fonts"], seen["with_tofu"]
    figures_with_tofu, without_fonts = seen["figures_with_tofu"], seen["without_fonts"]
    prose, output = seen["prose"], seen["output"]

    shown = cjk("한국어 쪽" + KOREAN + KOREAN_OUTPUT)
    report = glyph_report({"korean.html": without_fonts, "tofu.html": with_tofu})
    print(f"\nKorean page: {with_fonts['checked']} characters checked; prose drawn with {prose}, output with {output}"
          f"\nthe reports of the failures that must fail:\n{report}\nin figures: {figures_with_tofu}")
    assert not refused, refused
    assert not with_fonts["missing"] and not with_fonts["unusable"], glyph_report({"korean.html": with_fonts})
    assert with_fonts["checked"] >= len(shown)
    assert "Noto Sans CJK KR" in prose and "Noto Sans Mono CJK KR" in output, "course.css names the Korean fonts"
    assert [entry["char"] for entry in with_tofu["missing"]] == [NO_GLYPH], with_tofu
    assert not figures_with_fonts and figures_with_tofu == [warning], (figures_with_fonts, figures_with_tofu, warning)
    assert {entry["char"] for entry in without_fonts["missing"]} == shown, "every Hangul and hanja, nothing else"
    for piece in ("korean.html", "tofu.html", "U+10FFFD", "U+D569", "그리고", "합성곱 신경망이"):  # U+D569: 합
        assert piece in report, piece
