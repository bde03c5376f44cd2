"""The order of a test run, and the notebooks' run times.

Order: the two grading files (each grades a class with `make autograde`, minutes) start first, then the
notebooks and the slowest unit tests, then the rest, so that with `pytest -n` the longest work does not
come last (`make test` passes --no-loadscope-reorder so that pytest-xdist keeps this order).

Run times: under `pytest --nbval-lax notebooks`, each notebook's time (kernel start included) is
reported against its 60 s target. `make test` only reports it: a slow laptop is not a failure. `make
bench` enforces the target on a quiet machine, and `.ci/run` sets VISLIB_NOTEBOOK_GUARD_S, a wide
regression guard over which a notebook fails."""

import os
from collections import defaultdict

import pytest

TARGET_S = 60.0
GUARD_S = float(os.environ["VISLIB_NOTEBOOK_GUARD_S"]) if os.environ.get("VISLIB_NOTEBOOK_GUARD_S") else None
_seconds = defaultdict(float)
SLOWEST_FILES = ("tests/test_assignments.py", "tests/test_grading.py")
SLOW_UNIT_FILES = ("tests/test_cam_family.py", "tests/test_wheel.py")  # 30 s and more: not last


def _start_rank(item) -> int:
    path = item.nodeid.split("::")[0]
    return 0 if path in SLOWEST_FILES else 1 if path.endswith(".ipynb") or path in SLOW_UNIT_FILES else 2


def pytest_collection_modifyitems(items):
    items.sort(key=_start_rank)  # stable: a file's tests keep their order


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    terminalreporter.section("notebook run times")
    for path, seconds in sorted(_seconds.items()):
        flag = f"  over the {TARGET_S:.0f} s target (make bench measures it on a quiet machine)" \
            if seconds > TARGET_S else ""
        if GUARD_S is not None and seconds > GUARD_S:
            flag = f"  OVER the {GUARD_S:.0f} s regression guard"
        terminalreporter.write_line(f"{seconds:6.1f} s  {path}{flag}")
    terminalreporter.write_line(f"{sum(_seconds.values()):6.1f} s  all notebooks")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    if GUARD_S is not None and any(s > GUARD_S for s in _seconds.values()) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
