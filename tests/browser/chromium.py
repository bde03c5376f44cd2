"""Debian's Chromium for the browser checks: headless, driven by Playwright, never downloaded.

The machines that run the course are offline, and CI runs as root: no sandbox, no GPU, no
background traffic, no proxy.
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = os.environ.get("VISLIB_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--no-proxy-server"]


def launch(playwright, env: dict | None = None):
    """A headless Chromium browser from /usr/bin/chromium (or $VISLIB_CHROMIUM); ``env``: its environment
    (default: this process's)."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install chromium (make test-browser does it)")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS, env=env)


def only_from(page, prefix: str):
    """Refuse every request of ``page`` whose URL does not start with ``prefix``."""
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(prefix) else route.abort())


LOCAL = ("file://", "data:")


def offline_context(browser, refused: list):
    """A browser context with the network off, in which every request for anything but a file is
    refused and its URL added to ``refused``: a page checked in it must stand alone."""
    def only_files(route):
        if route.request.url.startswith(LOCAL):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_offline(True)
    context.route("**/*", only_files)
    return context
