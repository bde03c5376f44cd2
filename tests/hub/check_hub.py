"""A class on the course's JupyterHub, end to end in a real browser (`make test-hub`, as root).

Starts `make hub` with tests/hub/roster.csv (one instructor, two learners) in its own folder
(/srv/vislib-hubtest) on free loopback ports, then drives Debian's Chromium (Playwright):

1. the instructor logs in, opens formgrader in a tab of its own (JupyterHub's
   `frame-ancestors 'none'` stays) and generates and releases the `saliency` assignment;
2. each learner logs in, fetches it from the Assignments tab, writes `saliency_map` (Ada correctly, Ben
   without the absolute value), runs the setup and check cells and sees the check's message, saves,
   validates and submits;
3. from Ada's account (her kernel, her browser) every way into what is not hers is tried, and refused;
4. the instructor runs `vislib-grade saliency` in a terminal of their server (collect, vislib's trusted
   autograde, feedback, release, grades.csv, the integrity report) and sees both in formgrader;
5. each learner fetches the feedback and sees their score.

Whatever happens, the hub, the proxy and every server are stopped, the test accounts and their homes
removed and the ports freed; the last check says so. The whole run stops itself after
VISLIB_HUB_LIMIT_S seconds (default 1500), cleaning up on the way out. The file name keeps it out of the
plain `pytest tests` run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.browser.chromium import launch, only_from

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hub"))
from hubclient import Hub, request  # noqa: E402

HUB_ROOT = Path(os.environ.get("VISLIB_HUB_TEST_ROOT", "/srv/vislib-hubtest"))
ROSTER = ROOT / "tests" / "hub" / "roster.csv"
GROUP = "vhtest-instr"
TEACH, ADA, BEN = "vhtest-teach", "vhtest-ada", "vhtest-ben"
LIMIT_S = int(os.environ.get("VISLIB_HUB_LIMIT_S", "1500"))
ARTEFACTS = ROOT / "build" / "hub"
HUBCTL = ["/usr/bin/python3", str(ROOT / "hub" / "hubctl.py"), "--root", str(HUB_ROOT)]

RIGHT = """def saliency_map(model, x, target):
    x = x.detach().clone().requires_grad_(True)
    scores = model(x).gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(scores, x)
    return grad.abs().amax(dim=1)
"""
NO_ABS = RIGHT.replace("grad.abs().amax(dim=1)", "grad.amax(dim=1)")  # the typical mistake: signed gradients
LEARNERS = {ADA: (RIGHT, "saliency_map: correct."), BEN: (NO_ABS, "take the absolute value of the gradient")}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="make test-hub needs root (it creates Unix accounts)")


class OutOfTime(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Nobody listens on it (connections closing, in TIME_WAIT, do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def uids_alive(uids: set[int]) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                status = (entry / "status").read_text()
                uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
                state = re.search(r"^State:\s+(\S)", status, re.M).group(1)
                if uid in uids and state != "Z":
                    found.append(f"{entry.name} {(entry / 'cmdline').read_bytes()[:120]!r}")
    return found


def running(uid: int, word: str) -> bool:
    return any(word in line for line in uids_alive({uid}))


@pytest.fixture(scope="module")
def hub():
    """`make hub` with the test roster; afterwards (also on failure or SIGTERM) everything is gone."""
    def stop(signum, _frame):
        raise OutOfTime(f"stopped by signal {signum} (the {LIMIT_S} s limit or a kill request)")

    previous = signal.signal(signal.SIGALRM, stop), signal.signal(signal.SIGTERM, stop)
    signal.alarm(LIMIT_S)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    subprocess.run([*HUBCTL, "remove"], check=True)  # whatever an interrupted run left
    ports = {"HUB_PORT": free_port(), "HUB_API_PORT": free_port(), "PROXY_API_PORT": free_port()}
    log = (ARTEFACTS / "hub.log").open("w")
    command = ["make", "--no-print-directory", "hub", f"ROSTER={ROSTER}", f"HUB_ROOT={HUB_ROOT}",
               f"HUB_GROUP={GROUP}", *(f"{k}={v}" for k, v in ports.items())]
    make = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{ports['HUB_PORT']}"
    uids = set()
    try:
        deadline = time.monotonic() + 900  # the first `make hub` installs /opt/vislib-hub (minutes)
        while not _healthy(url):
            if make.poll() is not None:
                tail = (ARTEFACTS / "hub.log").read_text()[-4000:]
                raise RuntimeError(f"make hub exited with {make.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError("the hub did not answer within 900 s")
            time.sleep(1)
        uids = {pwd.getpwnam(u).pw_uid for u in (TEACH, ADA, BEN)}
        with (HUB_ROOT / "state" / "passwords.csv").open() as f:
            passwords = {r["username"]: r["password"] for r in csv.DictReader(f)}
        yield Hub(url, HUB_ROOT), passwords, ports
    finally:
        try:
            subprocess.run(["make", "--no-print-directory", "hub-stop", f"HUB_ROOT={HUB_ROOT}"], cwd=ROOT,
                           stdout=log, stderr=subprocess.STDOUT, timeout=120)
            with contextlib.suppress(subprocess.TimeoutExpired):
                make.wait(30)
            if make.poll() is None:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait(10)
            subprocess.run([*HUBCTL, "remove"], stdout=log, stderr=subprocess.STDOUT, timeout=300)
        finally:
            log.close()
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
        # nothing left behind: no process, account, folder or port
        assert not uids_alive(uids), f"processes of the test accounts left: {uids_alive(uids)}"
        for user in (TEACH, ADA, BEN):
            with pytest.raises(KeyError):
                pwd.getpwnam(user)
            assert not Path(f"/home/{user}").exists()
        assert not HUB_ROOT.exists()
        assert all(port_free(p) for p in ports.values()), f"a port is still taken: {ports}"


def _healthy(url: str) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        if sock.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) != 0:
            return False
    with contextlib.suppress(OSError):
        return request(f"{url}/hub/health", timeout=5)[0] == 200
    return False


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def people(hub, browser):
    """One logged-in browser context per person (a page at their JupyterLab), made on first use."""
    (h, passwords, _), pages = hub, {}

    def page_of(user: str):
        if user not in pages:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(60_000)
            only_from(page, h.url)  # nothing but our hub
            page.goto(f"{h.url}/hub/login")
            page.fill("#username_input", user)
            page.fill("#password_input", passwords[user])
            page.click("#login_submit")
            page.wait_for_url(re.compile(rf"/user/{user}/lab"), timeout=300_000)  # the server spawns first
            page.wait_for_selector("#jp-main-dock-panel", timeout=180_000)
            pages[user] = page
        return pages[user]

    yield page_of
    for page in pages.values():
        with contextlib.suppress(Exception):
            page.screenshot(path=str(ARTEFACTS / f"last-{page.url.split('/user/')[-1].split('/')[0]}.png"))
            page.context.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"))


def close_modal(page, modal_id: str) -> None:
    page.locator(f"#{modal_id} .modal-footer button").first.click()
    page.locator(f"#{modal_id}").wait_for(state="detached")


def test_1_instructor_releases_saliency(hub, people):
    h, _, _ = hub
    lab = people(TEACH)
    formgrader = lab.context.new_page()  # formgrader in a tab of its own: JupyterHub forbids framing it
    formgrader.set_default_timeout(60_000)
    answer = formgrader.goto(f"{h.url}/user/{TEACH}/formgrader/manage_assignments")
    assert answer.status == 200
    assert answer.headers.get("content-security-policy") == "frame-ancestors 'none'"
    row = formgrader.locator("tr", has=formgrader.locator("td.name", has_text="saliency"))
    row.locator("td.assign a").click()
    formgrader.locator("#success-modal").wait_for(timeout=180_000)
    close_modal(formgrader, "success-modal")
    row.locator("td.release a").click()
    formgrader.locator("#success-modal").wait_for(timeout=120_000)
    close_modal(formgrader, "success-modal")
    expect(row.locator("td.status")).to_contain_text("released")
    shot(formgrader, "1-released")
    assert (HUB_ROOT / "exchange/vislib/outbound/saliency/saliency.ipynb").exists()


def open_assignments(page):
    tab = page.locator(".lm-TabBar-tab", has_text="Assignments")
    if tab.count() == 0:
        page.locator(".lm-MenuBar-itemLabel", has_text="Nbgrader").click()
        page.locator(".lm-Menu-itemLabel", has_text="Assignment List").click()
    else:
        tab.first.click()
    page.locator("#refresh_assignments_list").click()
    return page.locator("#assignments")


def cell(page, index: int):
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def run_cell(page, index: int) -> None:
    target = cell(page, index)
    prompt = target.locator(".jp-InputPrompt")
    for _ in range(3):  # a key pressed while the kernel's session is still connecting can be lost: press again
        target.scroll_into_view_if_needed()
        prompt.click()  # select the cell (command mode), then run it
        page.keyboard.press("Shift+Enter")
        with contextlib.suppress(AssertionError):
            expect(prompt).to_have_text(re.compile(r"\[(\*|\d+)\]"), timeout=15_000)
            break
    expect(prompt).to_have_text(re.compile(r"\[\d+\]"), timeout=180_000)


@pytest.mark.parametrize("user", [ADA, BEN])
def test_2_learner_fetches_works_validates_submits(hub, people, user):
    code, message = LEARNERS[user]
    page = people(user)
    panel = open_assignments(page)
    released = panel.locator("#released_assignments_list .list_item", has_text="saliency")
    released.locator("button", has_text="Fetch").click()
    fetched = panel.locator("#fetched_assignments_list .list_item", has_text="saliency").first
    fetched.wait_for()
    assert Path(f"/home/{user}/saliency/saliency.ipynb").exists()
    assert pwd.getpwuid(Path(f"/home/{user}/saliency/saliency.ipynb").stat().st_uid).pw_name == user

    page.goto(f"{hub[0].url}/user/{user}/lab/tree/saliency/saliency.ipynb")
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=180_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=180_000)
    run_cell(page, 1)  # the setup cell: vislib, ShapesNet, the data
    editor = cell(page, 3).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(code)
    run_cell(page, 3)
    run_cell(page, 4)  # checks.saliency_map(saliency_map)
    expect(cell(page, 4).locator(".jp-OutputArea")).to_contain_text(message, timeout=120_000)
    page.keyboard.press("Control+s")
    expect(page.locator(".jp-mod-current.jp-mod-dirty")).to_have_count(0, timeout=30_000)
    shot(page, f"2-{user}-check")

    panel = open_assignments(page)
    fetched = panel.locator("#fetched_assignments_list .list_item", has_text="saliency").first
    fetched.locator(".assignment-notebooks-link").first.click()
    panel.locator("#fetched_assignments_list button", has_text="Validate").first.click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=300_000)  # nbgrader runs the whole notebook in a fresh kernel
    # nbgrader's verdict: the written answer (and the exercises not done yet) are listed as failing
    expect(dialog).to_contain_text("Validation Results")
    shot(page, f"2-{user}-validated")
    dialog.locator(".jp-Dialog-button").last.click()
    dialog.wait_for(state="detached")
    panel.locator("#fetched_assignments_list button", has_text="Submit").first.click()
    panel.locator("#submitted_assignments_list .list_item", has_text="saliency").first.wait_for(timeout=120_000)
    shot(page, f"2-{user}-submitted")


ATTEMPTS = r"""
import json, os, subprocess, urllib.error, urllib.request
paths = json.loads({paths!r})
direct = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
result = {{}}

def attempt(name, action):
    try:
        action()
        result[name] = "ALLOWED"
    except PermissionError as error:
        result[name] = "refused: " + type(error).__name__
    except urllib.error.HTTPError as error:
        result[name] = f"refused: HTTP {{error.code}}" if error.code in (401, 403, 404) else f"HTTP {{error.code}}"
    except Exception as error:
        result[name] = f"error: {{type(error).__name__}}: {{error}}"

def get(url, token=None, method="GET"):
    headers = {{"Authorization": f"token {{token}}"}} if token else {{}}
    request = urllib.request.Request(url, method=method, headers=headers)
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}), NoRedirect)
    with opener.open(request, timeout=20) as answer:
        return answer.read()

mine = os.environ["JUPYTERHUB_API_TOKEN"]
attempt("another learner's home", lambda: os.listdir(paths["other_home"]))
attempt("another learner's work", lambda: open(paths["other_work"]).read())
attempt("the list of submissions", lambda: os.listdir(paths["inbound"]))
attempt("another learner's submission, by its exact name", lambda: open(paths["other_submission"]).read())
attempt("the course's source/ (solutions, hidden tests)", lambda: open(paths["source"]).read())
attempt("the course folder", lambda: os.listdir(paths["course"]))
attempt("the gradebook", lambda: open(paths["gradebook"], "rb").read())
attempt("the integrity report", lambda: os.stat(paths["integrity"]))
attempt("the grades", lambda: os.stat(paths["grades"]))
attempt("changing the released assignment", lambda: open(paths["released"], "a"))
attempt("signalling another learner's server", lambda: os.kill(paths["other_pid"], 0))
attempt("the hub's user list (admin API)", lambda: get(paths["hub"] + "/hub/api/users", mine))
other_api = paths["hub"] + "/hub/api/users/" + paths["other"]
attempt("starting another learner's server", lambda: get(other_api + "/server", mine, "POST"))
attempt("a token for another learner", lambda: get(other_api + "/tokens", mine, "POST"))
attempt("another learner's server, through the hub",
        lambda: get(paths["hub"] + "/user/" + paths["other"] + "/api/contents", mine))
attempt("another learner's server, on its own port", lambda: get(paths["other_server"] + "/api/contents", mine))
attempt("the instructor's server", lambda: get(paths["hub"] + "/user/" + paths["instructor"] + "/api/contents", mine))
attempt("the proxy's routing API", lambda: get(paths["proxy_api"] + "/api/routes"))
attempt("the hub's secrets", lambda: os.listdir(paths["state"]))
submit = subprocess.run(["nbgrader", "submit", "saliency", "--student", paths["other"]], cwd=os.path.expanduser("~"),
                        capture_output=True, text=True)
forged = "submitted, to be refused at collection" if submit.returncode == 0 else "refused: " + submit.stderr[-200:]
result["submitting as another learner (nbgrader submit --student)"] = forged
print(json.dumps(result))
"""


def test_3_nobody_where_they_do_not_belong(hub, people):
    h, _, ports = hub
    inbound = HUB_ROOT / "exchange/vislib/inbound"
    ben_submission = next(inbound.glob(f"{BEN}+saliency+*"))  # root knows its name; Ada does not, we tell her
    paths = {
        "other": BEN, "instructor": TEACH, "other_home": f"/home/{BEN}",
        "other_work": f"/home/{BEN}/saliency/saliency.ipynb",
        "inbound": str(inbound), "other_submission": str(ben_submission / "saliency.ipynb"),
        "course": str(HUB_ROOT / "course"), "source": str(HUB_ROOT / "course/source/saliency/saliency.ipynb"),
        "gradebook": str(HUB_ROOT / "course/gradebook.db"), "integrity": str(HUB_ROOT / "course/integrity.csv"),
        "grades": str(HUB_ROOT / "course/grades.csv"),
        "released": str(HUB_ROOT / "exchange/vislib/outbound/saliency/saliency.ipynb"),
        "other_pid": h.server_pid(BEN), "hub": h.url, "state": str(HUB_ROOT / "state"),
        "other_server": f"http://127.0.0.1:{h.server_port(BEN)}/user/{BEN}",
        "proxy_api": f"http://127.0.0.1:{ports['PROXY_API_PORT']}",
    }
    printed, error, kernel = h.run(ADA, ATTEMPTS.format(paths=json.dumps(paths)), timeout=120)
    assert error is None, printed
    result = json.loads(printed.strip().splitlines()[-1])
    (ARTEFACTS / "3-isolation.json").write_text(json.dumps(result, indent=1))
    not_refused = {k: v for k, v in result.items() if not v.startswith(("refused", "submitted, to be refused"))}
    assert not not_refused, f"Ada got where she does not belong: {not_refused}"
    assert len(result) == 20

    # in Ada's browser: another person's server, the instructor's formgrader, the hub's admin page
    page = people(ADA)
    probe = page.context.new_page()
    for path in (f"/user/{BEN}/lab", f"/user/{TEACH}/formgrader", "/hub/admin"):
        answer = probe.goto(h.url + path)
        assert answer.status == 403, (path, answer.status, probe.url)
        assert f"/user/{ADA}/" not in probe.url or path == "/hub/admin"
    answer = probe.goto(f"{h.url}/user/{ADA}/formgrader")  # her own server has no formgrader
    assert answer.status == 404
    probe.close()


def test_4_instructor_grades_with_trusted_grading(hub, people):
    h, _, _ = hub
    page = people(TEACH)
    page.goto(f"{h.url}/user/{TEACH}/lab")
    page.wait_for_selector("#jp-main-dock-panel")
    page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
    page.locator(".lm-Menu-itemLabel", has_text="New").first.hover()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Terminal$")).click()
    terminal = page.locator(".jp-Terminal").last
    terminal.wait_for()
    terminal.click()
    time.sleep(2)  # the shell's prompt
    started = time.time()
    page.keyboard.type("vislib-grade saliency\n")
    uid = pwd.getpwnam(TEACH).pw_uid
    grades = HUB_ROOT / "course/grades.csv"
    done = lambda: grades.exists() and grades.stat().st_mtime >= started  # noqa: E731
    deadline = time.monotonic() + 300  # a guard against a lost key press, not a speed claim
    while not running(uid, "vislib-grade") and not done():
        if time.monotonic() > deadline:
            shot(page, "4-terminal")
            raise AssertionError("vislib-grade did not start in the instructor's terminal (see 4-terminal.png)")
        time.sleep(0.5)
    deadline = time.monotonic() + 900
    while running(uid, "vislib-grade") or not done():
        assert time.monotonic() < deadline, "vislib-grade did not finish within 900 s"
        assert running(uid, "vislib-grade") or done(), "vislib-grade stopped without grades.csv"
        time.sleep(2)
    shot(page, "4-graded-terminal")
    with grades.open() as f:
        scores = {r["student_id"]: (float(r["score"]), float(r["max_score"])) for r in csv.DictReader(f)}
    assert set(scores) == {ADA, BEN}, scores
    assert scores[ADA][0] > scores[BEN][0], scores  # Ada's saliency_map earns its points, Ben's does not
    # Ada's forgery under Ben's name was not collected: Ben's collected notebook is Ben's own
    collected = (HUB_ROOT / f"course/submitted/{BEN}/saliency/saliency.ipynb").read_text()
    assert "grad.amax(dim=1)" in collected and "grad.abs()" not in collected.split("def saliency_map")[1][:400]
    forged = (HUB_ROOT / "course/forged.csv").read_text()
    assert f"{BEN},{ADA}" in forged
    # and formgrader shows both, graded
    formgrader = page.context.new_page()
    formgrader.goto(f"{h.url}/user/{TEACH}/formgrader/gradebook/saliency/saliency")
    for learner in (ADA, BEN):
        expect(formgrader.locator("body")).to_contain_text(learner)
    shot(formgrader, "4-formgrader")
    formgrader.close()


@pytest.mark.parametrize("user", [ADA, BEN])
def test_5_learner_fetches_feedback_and_sees_score(hub, people, user):
    h, _, _ = hub
    page = people(user)
    page.goto(f"{h.url}/user/{user}/lab")
    page.wait_for_selector("#jp-main-dock-panel")
    panel = open_assignments(page)
    submitted = panel.locator("#submitted_assignments_list .list_item", has_text="saliency").first
    submitted.locator("button", has_text="Fetch Feedback").click()
    expect(panel.locator("#submitted_assignments_list")).to_contain_text("view feedback", timeout=120_000)
    shot(page, f"5-{user}-feedback-fetched")
    (html,) = Path(f"/home/{user}/saliency/feedback").glob("*/saliency.html")
    relative = urllib.parse.quote(str(html.relative_to(f"/home/{user}")))
    feedback = page.context.new_page()
    feedback.goto(f"{h.url}/user/{user}/files/{relative}")
    with (HUB_ROOT / "course/grades.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["student_id"] == user)
    score = f"Score: {float(row['score']):.1f} / {float(row['max_score']):.1f}"
    expect(feedback.locator("body")).to_contain_text(score)
    shot(feedback, f"5-{user}-feedback")
    feedback.close()
