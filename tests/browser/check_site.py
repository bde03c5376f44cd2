"""The built course site in headless Chromium: every notebook page shows its figures.

From build/site/index.html (file://, every other request refused: the site must stand alone) the
index links every notebook of notebooks/ and all its thumbnails load; each page, reached through the
index's link, shows at least one figure and as many loaded (decoded, non-empty) images as the build
found figures in the executed notebook (build/site/manifest.json). Screenshots go to build/site-check/.

Run with `make check-book` after `make book` (VISLIB_SITE=path checks another build).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.browser.chromium import launch, only_from

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("VISLIB_SITE", ROOT / "build" / "site"))
SHOTS = ROOT / "build" / "site-check"
LOADED_IMAGES = ("(selector) => [...document.querySelectorAll(selector)]"
                 ".filter(image => image.complete && image.naturalWidth > 0).length")


def test_every_notebook_page_shows_its_figures():
    assert (SITE / "manifest.json").exists(), f"no site in {SITE}: run `make book` first"
    manifest = {entry["page"]: entry for entry in json.loads((SITE / "manifest.json").read_text())}
    notebooks = {f"{path.stem}.html" for path in (ROOT / "notebooks").glob("*.ipynb")}
    SHOTS.mkdir(parents=True, exist_ok=True)
    shown = {}
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            only_from(page, "file://")
            page.goto((SITE / "index.html").resolve().as_uri(), wait_until="load")
            page.screenshot(path=SHOTS / "index.png", full_page=True)
            links = page.locator(".course-card > a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
            thumbnails = page.evaluate(LOADED_IMAGES, ".course-card img")
            for href in links:
                page.goto((SITE / href).resolve().as_uri(), wait_until="load")
                shown[href] = page.evaluate(LOADED_IMAGES, ".jp-OutputArea-output img")
                page.screenshot(path=SHOTS / href.replace(".html", ".png"))
        finally:
            browser.close()

    for href, figures in shown.items():
        print(f"{href}: {figures} figures shown, {manifest[href]['figures']} in the executed notebook")
    assert notebooks <= set(links), f"the index does not link {sorted(notebooks - set(links))}"
    assert thumbnails == len(links), f"only {thumbnails} of {len(links)} thumbnails load"
    missing = {href: (figures, manifest[href]["figures"]) for href, figures in shown.items()
               if figures == 0 or figures < manifest[href]["figures"]}
    assert not missing, f"pages missing figures (shown, expected): {missing}"
