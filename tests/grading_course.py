"""A class's worth of saliency submissions for testing the grader: honest ones, partial ones, one
per family of cheats, and the ones that hang, exit, warn, delete cells or do not parse.

``SUBMISSIONS`` maps a learner's name to (what their notebook does, the score it must get, the
kinds of report rows it must cause). ``python -m tests.grading_course COURSE`` builds the whole
class in COURSE (for a demonstration run of ``make autograde COURSE=...``).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENT = "saliency"
FULL_MARKS = 8.0  # saliency_map 3, relu_backward 2, occlusion_map 3

STUB = "raise NotImplementedError()"
SLOW_SALIENCY = '''
def saliency_map(model, x, target):
    while True:  # an endless loop
        pass
'''
STUBBORN_OCCLUSION = '''
import signal
import time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)

def occlusion_map(model, x, target, window, stride):
    while True:  # ignores Ctrl-C and SIGTERM too (and waits rather than spins, sparing a busy test machine)
        try:
            time.sleep(1)
        except BaseException:
            pass
'''
WARNING_SALIENCY = '''
import warnings

def saliency_map(model, x, target):
    warnings.warn("a warning that must not cost a point")
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return grad.abs().amax(dim=1)
'''
MEMORY_SALIENCY = '''
def saliency_map(model, x, target):
    hoard = [torch.ones(2**28) for _ in range(64)]  # 64 GiB, far more than the grader allows
    return hoard[0]
'''
VISLIB_ROUTES = '''
import threading, types
from concurrent.futures import ThreadPoolExecutor
from vislib.saliency import _input_gradient
import vislib.saliency as vs

def saliency_map(model, x, target):
    return _input_gradient(model, x, target).abs().amax(1)

def relu_backward(h_in, grad_out, rule):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(vs.relu_rule, rule).result()(h_in, grad_out)

occlusion_map = types.FunctionType(vs.occlusion.__code__, vs.occlusion.__globals__, "occlusion_map")
'''
PATCH_CHECKS = '''
checks.saliency_map = lambda *a, **k: None
import vislib.checks.harness
vislib.checks.harness.expect = lambda *a, **k: None
checks.relu_backward.__wrapped__.__code__ = (lambda fn: None).__code__
'''
ANYTHING = '''
class Anything:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None

checks = Anything()
import torch
torch.allclose = lambda *a, **k: True
'''
IPYTHON_MACHINERY = '''
ip = get_ipython()
ip.input_transformers_cleanup.append(lambda lines: [l for l in lines if not l.startswith("checks.")])
ip.input_transformers_cleanup.append(
    lambda lines: ["try:\\n"] + ["    " + l for l in lines] + ["\\nexcept BaseException:\\n    pass\\n"])
'''
EXIT = '''
import os
os._exit(0)
'''
SYNTAX_ERROR = '''
def saliency_map(model, x, target)
    return x
'''

# name: (solutions to replace, extra cells after the setup cell, score, report kinds that must appear)
SUBMISSIONS = {
    "honest": ({}, [], FULL_MARKS, set()),
    "warns": ({"saliency_map": WARNING_SALIENCY}, [], FULL_MARKS, set()),
    "partial": ({"occlusion_map": STUB}, [], 5.0, set()),
    "patches_checks": ({name: STUB for name in ("saliency_map", "relu_backward", "occlusion_map")}, [PATCH_CHECKS],
                       0.0, {"tampering"}),
    "anything_and_torch": ({name: STUB for name in ("saliency_map", "relu_backward", "occlusion_map")}, [ANYTHING],
                           0.0, {"tampering"}),
    "ipython_machinery": ({name: STUB for name in ("saliency_map", "relu_backward", "occlusion_map")},
                          [IPYTHON_MACHINERY], 0.0, {"tampering"}),
    "vislib_routes": ({"saliency_map": STUB, "relu_backward": STUB, "occlusion_map": VISLIB_ROUTES}, [], 0.0,
                      {"tampering"}),
    "hangs": ({"saliency_map": SLOW_SALIENCY}, [], 5.0, {"failure"}),
    "ignores_signals": ({"occlusion_map": STUBBORN_OCCLUSION}, [], 5.0, {"failure"}),
    "exits": ({name: STUB for name in ("saliency_map", "relu_backward", "occlusion_map")}, [EXIT], 0.0,
              {"failure", "tampering"}),
    "deletes_cells": ({}, ["delete check_relu_backward", "strip check_occlusion_map"], FULL_MARKS, {"restored"}),
    "syntax_error": ({"saliency_map": SYNTAX_ERROR}, [], 5.0, set()),
    "fills_memory": ({"saliency_map": MEMORY_SALIENCY}, [], 5.0, set()),
}
# The smaller class that `make test` grades: every family, with the flaws that do not interact in one notebook
# each (three submissions fewer to grade; the whole class runs in the demonstration).
COMBINED = {
    "warns_and_deletes_cells": ({"saliency_map": WARNING_SALIENCY},
                                ["delete check_relu_backward", "strip check_occlusion_map"], FULL_MARKS, {"restored"}),
    "partial_with_syntax_error": ({"saliency_map": SYNTAX_ERROR, "occlusion_map": STUB}, [], 2.0, set()),
    "patches_checks_and_ipython": ({name: STUB for name in ("saliency_map", "relu_backward", "occlusion_map")},
                                   [PATCH_CHECKS, IPYTHON_MACHINERY], 0.0, {"tampering"}),
}
IN_MAKE_TEST = (*COMBINED, "vislib_routes", "ignores_signals", "exits")


def submission(name: str) -> tuple:
    """(solutions to replace, extra cells, score, report kinds) of a learner of either class."""
    return SUBMISSIONS[name] if name in SUBMISSIONS else COMBINED[name]


def _solution(cell: dict) -> str:
    """A solution cell's code without nbgrader's markers."""
    source = "".join(cell["source"])
    return re.sub(r"[ \t]*### (BEGIN|END) SOLUTION\n?", "", source)


def notebook(name: str, course: Path) -> dict:
    """The learner ``name``'s notebook: the learners' version with their cells filled in."""
    replacements, extra, _, _ = submission(name)
    source = json.loads((course / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())
    solutions = {c["metadata"]["nbgrader"]["grade_id"]: _solution(c) for c in source["cells"]
                 if c["metadata"].get("nbgrader", {}).get("solution") and c["cell_type"] == "code"}
    nb = json.loads((course / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())
    for cell in nb["cells"]:
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if grade_id in solutions:
            code = replacements.get(grade_id, solutions[grade_id])
            cell["source"] = code if code != STUB else "".join(cell["source"])
    setup = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")
    for action in extra:
        verb, _, grade_id = action.partition(" ")
        index = next((i for i, c in enumerate(nb["cells"])
                      if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id), None)
        if verb == "delete" and index is not None:
            del nb["cells"][index]
        elif verb == "strip" and index is not None:
            del nb["cells"][index]["metadata"]["nbgrader"]
        else:
            cell = copy.deepcopy(nb["cells"][setup])
            cell.update(source=action, outputs=[], execution_count=None, metadata={})
            cell.pop("id", None)
            nb["cells"].insert(setup + 1, cell)
    return nb


def build(course: Path, names=tuple(SUBMISSIONS)) -> None:
    """A course folder with the saliency assignment and these learners' submissions."""
    course.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "assignments" / "nbgrader_config.py", course)
    (course / "source" / ASSIGNMENT).mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "assignments" / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", course / "source" / ASSIGNMENT)
    (course / "release" / ASSIGNMENT).mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "assignments" / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", course / "release" / ASSIGNMENT)
    for name in names:
        folder = course / "submitted" / name / ASSIGNMENT
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{ASSIGNMENT}.ipynb").write_text(json.dumps(notebook(name, course), indent=1))


if __name__ == "__main__":
    build(Path(sys.argv[1]))
    print(f"built {len(SUBMISSIONS)} submissions in {sys.argv[1]}; grade them with make autograde COURSE={sys.argv[1]}")
