"""The notebook time budget: under `pytest --nbval-lax notebooks`, each notebook must run top to
bottom (kernel start included) within VISLIB_NOTEBOOK_BUDGET_S seconds (default 60)."""

import os
from collections import defaultdict

import pytest

BUDGET_S = float(os.environ.get("VISLIB_NOTEBOOK_BUDGET_S", "60"))
_seconds = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    terminalreporter.section("notebook run times")
    for path, seconds in sorted(_seconds.items()):
        flag = "" if seconds <= BUDGET_S else f"  OVER the {BUDGET_S:.0f} s budget"
        terminalreporter.write_line(f"{seconds:6.1f} s  {path}{flag}")
    terminalreporter.write_line(f"{sum(_seconds.values()):6.1f} s  all notebooks")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    if any(seconds > BUDGET_S for seconds in _seconds.values()) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
