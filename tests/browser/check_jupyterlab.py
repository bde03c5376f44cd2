"""The explorers in a real browser: JupyterLab + headless Chromium, driven by Playwright.

Starts JupyterLab on 127.0.0.1 (a free port, a random token) on a copy of a course notebook, opens
it in Debian's Chromium (/usr/bin/chromium, no browser download), runs all cells, changes the
explorer's "class" dropdown, and checks that the explorer's plot area changed (screenshots before
and after, saved to build/browser/). Then it shuts the browser and the server (with its kernels)
down and checks that no process it started is left. The whole test stops itself after
VISLIB_BROWSER_LIMIT_S seconds (default 420), cleaning up on the way out.

Run with `make test-browser` (the file name keeps it out of the plain `pytest tests` run).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
from PIL import Image, ImageChops
from playwright.sync_api import sync_playwright

from tests.browser.chromium import launch, only_from
from vislib.widgets import EXPLORER_CLASS, PLOT_CLASS

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / os.environ.get("VISLIB_BROWSER_NOTEBOOK", "notebooks/05_cam.ipynb")
CONTROL = os.environ.get("VISLIB_BROWSER_CONTROL", "class")  # the label of the dropdown to change
LIMIT_S = int(os.environ.get("VISLIB_BROWSER_LIMIT_S", "420"))
ARTEFACTS = ROOT / "build" / "browser"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MIN_CHANGED_FRACTION = 0.01  # a new target class must repaint at least 1% of the plot's pixels


class OutOfTime(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise OutOfTime after ``seconds`` (and on SIGTERM), so every ``finally`` below still runs."""
    def stop(signum, _frame):
        raise OutOfTime(f"stopped by signal {signum} after the {seconds} s limit or a kill request")

    previous = signal.signal(signal.SIGALRM, stop), signal.signal(signal.SIGTERM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lab_settings(settings_dir: Path):
    """Fresh user settings: no autosave, no kernel dialog, no news or update checks (offline, and no pop-up),
    and English whatever the system's locale: with the Korean language pack installed, JupyterLab speaks
    Korean on a Korean system, and this test finds the menus by their English labels."""
    for plugin, values in {"docmanager-extension/plugin": {"autosave": False},
                           "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
                           "translation-extension/plugin": {"locale": "en"}}.items():
        path = settings_dir / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@contextlib.contextmanager
def jupyter_lab(root: Path, token: str):
    """JupyterLab serving ``root`` on 127.0.0.1; yields (base url, server process). On exit: the
    shutdown API, then SIGTERM, then SIGKILL for the server and every process it started."""
    home = root.parent / "jupyter"
    lab_settings(home / "settings")
    port = free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
               "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
               f"--ServerApp.shutdown_no_activity_timeout={LIMIT_S}"]  # the last resort if this test is killed
    if os.geteuid() == 0:  # CI runs as root
        command.append("--allow-root")
    log = (root.parent / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    started = []
    try:
        wait_until_up(url, token, server, root.parent / "jupyterlab.log")
        yield url, server, started
    finally:
        started.extend(descendants(server.pid))
        with contextlib.suppress(OSError):
            api(url, token, "shutdown", method="POST")
        for sig, grace in ((None, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if sig is not None:
                for process in [server, *started]:
                    with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                        os.kill(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(grace)
            if server.poll() is not None and not alive(started):
                break
        log.close()


def api(url: str, token: str, path: str, method: str = "GET", body: dict | None = None, timeout: float = 5):
    """One call to the Jupyter server's REST API (never through a proxy); the decoded JSON answer."""
    request = urllib.request.Request(f"{url}/api/{path}", method=method, headers={"Authorization": f"token {token}"},
                                     data=None if body is None else json.dumps(body).encode())
    with NO_PROXY.open(request, timeout=timeout) as answer:
        text = answer.read()
    return json.loads(text) if text else None


def wait_until_up(url: str, token: str, server: subprocess.Popen, log: Path, seconds: float = 90):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            api(url, token, "status", timeout=2)
            return
        time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {seconds} s:\n{log.read_text()[-3000:]}")


def descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).children(recursive=True)
    return []


def alive(processes) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def changed_fraction(before: bytes, after: bytes) -> float:
    """The fraction of pixels that differ between two PNG screenshots (1.0 if their sizes differ)."""
    first, second = (Image.open(io.BytesIO(png)).convert("RGB") for png in (before, after))
    if first.size != second.size:
        return 1.0
    difference = ImageChops.difference(first, second).convert("L").point(lambda v: 255 if v > 16 else 0)
    return difference.histogram()[255] / (first.width * first.height)


def wait_for_idle(page, seconds: float = 120):
    """Until the kernel is idle and no cell shows the busy prompt [*]."""
    page.wait_for_function(
        """() => {
            const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
            const busy = [...document.querySelectorAll('.jp-InputArea-prompt')].some(p => p.textContent.includes('*'));
            return indicator && indicator.getAttribute('data-status') === 'idle' && !busy;
        }""", timeout=seconds * 1000, polling=500)


def run_all_cells(page):
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def test_explorer_reacts_in_jupyterlab(tmp_path):
    assert NOTEBOOK.exists(), f"{NOTEBOOK} is missing"
    ours_before = {p.pid for p in descendants(os.getpid())}
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)  # the course notebook itself is never written to
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    with time_limit(LIMIT_S), jupyter_lab(root, token) as (url, server, started):
        with sync_playwright() as playwright:
            browser = launch(playwright)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(60_000)
                only_from(page, url)  # nothing but our JupyterLab (the machine is offline anyway)
                # The notebook's kernel is started here, so the page needs no kernel dialog.
                api(url, token, "sessions", "POST", {"path": NOTEBOOK.name, "type": "notebook", "name": NOTEBOOK.name,
                                                     "kernel": {"name": "python3"}}, timeout=60)
                page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}")
                page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)
                page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
                run_all_cells(page)
                explorer = page.locator(f".{EXPLORER_CLASS}").last
                plot_image = explorer.locator(f".{PLOT_CLASS} img")
                plot_image.wait_for(state="visible", timeout=(LIMIT_S - 60) * 1000)  # after the cells above it
                wait_for_idle(page)
                explorer.scroll_into_view_if_needed()
                plot = explorer.locator(f".{PLOT_CLASS}")
                before, source_before = plot.screenshot(), plot_image.get_attribute("src")
                (ARTEFACTS / "before.png").write_bytes(before)

                label = page.locator("label", has_text=re.compile(f"^{re.escape(CONTROL)}$"))
                select = explorer.locator(".widget-dropdown").filter(has=label).locator("select")
                options = select.locator("option").all_inner_texts()
                current = select.evaluate("s => s.options[s.selectedIndex].text")
                choice = [option for option in options if option != current][-1]
                select.select_option(label=choice)
                page.wait_for_function(
                    "([selector, old]) => { const img = document.querySelectorAll(selector);"
                    " const last = img[img.length - 1]; return last && last.src !== old; }",
                    arg=[f".{EXPLORER_CLASS} .{PLOT_CLASS} img", source_before], timeout=60_000, polling=250)
                wait_for_idle(page)
                after = plot.screenshot()
                (ARTEFACTS / "after.png").write_bytes(after)
            finally:
                with contextlib.suppress(Exception):  # the whole page, to see what happened on a failure
                    page.screenshot(path=ARTEFACTS / "page.png")
                browser.close()
        fraction = changed_fraction(before, after)
        print(f"{CONTROL!r}: {current!r} -> {choice!r} changed {fraction:.1%} of the plot's pixels")
        assert fraction > MIN_CHANGED_FRACTION, f"the plot barely changed ({fraction:.2%} of its pixels)"

    leftover = alive(started) + [p for p in alive(descendants(os.getpid())) if p.pid not in ours_before]
    assert server.poll() is not None, "the JupyterLab server is still running"
    assert not leftover, f"processes left behind: {[(p.pid, p.name()) for p in leftover]}"
