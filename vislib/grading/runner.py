"""The runner: the process where a submission's functions run while the grader checks them.

A runner is a fork of the grader's zygote (``vislib.grading.zygote``), which has torch and vislib
imported, in its own session. Before it runs any of the learner's code, it:

- puts the assignment's off-limits functions behind tripwires for good (``install_for_good``:
  no reference to the originals is left in the process),
- confines itself (``confine``): no reading outside Python's installation and its own folder,
  vislib's and the peer libraries' files included, no new process, limited memory and CPU.

Then it runs the learner's cells and answers calls: ``{"op": "call", "name": ...}`` runs the
learner's function through the same ``run_here`` as the checks in the learner's kernel, and
replies with plain data (``wire.portable``). It never sees the expected results: those stay with
the grader, which decides the points.
"""

from __future__ import annotations

import importlib
import linecache
import os
import socket
import tempfile
import traceback

import torch

from vislib.grading import confine, wire


def serve(sock: socket.socket, request: dict) -> None:
    """Be a runner (in a child of the zygote) for one submission, answering on ``sock``."""
    folder = tempfile.mkdtemp(prefix="vislib-runner-")
    os.chdir(folder)
    log = os.open(os.path.join(folder, "output.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    torch.set_num_threads(1)
    from vislib import checks
    from vislib.checks import harness, offlimits

    offlimits.install_for_good([harness.off_limits_of(getattr(checks, name)) for name in request["checks"]])
    linecache.clearcache()
    for module in request.get("imports", ()):
        if module.split(".")[0] == "vislib":
            _try_import(module)
    hidden = tuple(filter(None, [confine.package_folder("vislib"), *confine.peer_folders()]))
    from vislib.models import weights_folder  # ShapesNet's weights: a learner's cell may load the course model

    rules = confine.Rules(readable=confine.python_roots() + confine.SYSTEM_ROOTS + (weights_folder(),),
                          writable=(folder,), hidden=hidden)
    confine.confine(rules, memory_bytes=request.get("memory_bytes"), cpu_seconds=request.get("cpu_seconds"))
    namespace = {"__name__": "__main__", "get_ipython": _NoShell}
    cells = 0
    while True:
        try:
            message = wire.receive(sock, trusted=True)
        except EOFError:
            return
        if message["op"] == "cell":
            cells += 1
            reply = _run_cell(message["source"], namespace, f"<cell {cells}>")
        else:
            reply = _call(message, namespace)
        reply["refused"] = list(rules.refused)
        wire.send(sock, reply)


def _try_import(module: str) -> None:
    """Import a vislib module the learner's cells import, before the process is confined (vislib's
    files are hidden then); a missing one is the cell's problem, not the runner's."""
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 (any failure here shows again when the cell runs)
        pass


class _NoShell:
    """What ``get_ipython()`` returns in the runner: IPython's magics (``%matplotlib``) do nothing here."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _run_cell(source: str, namespace: dict, filename: str) -> dict:
    from IPython.core.inputtransformer2 import TransformerManager

    source = TransformerManager().transform_cell(source)
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    try:
        code = compile(source, filename, "exec")
        exec(code, namespace)
    except BaseException as error:  # noqa: BLE001 (a cell's failure is reported, the runner goes on)
        return {"error": _describe(error)}
    return {"error": None}


def _call(message: dict, namespace: dict) -> dict:
    from vislib.checks.harness import run_here
    from vislib.checks.offlimits import OffLimits

    fn = namespace.get(message["name"])
    if not callable(fn):
        return {"missing": True}
    try:
        outcome = run_here(fn, message["args"], message["kwargs"], message["models"], OffLimits())  # tripwires are in
    except NotImplementedError:
        return {"not_implemented": True}
    except BaseException as error:  # noqa: BLE001 (the learner's exception goes back as words)
        return {"error": _describe(error)}
    return {"result": wire.portable(outcome.result), "off_limits": [str(h) for h in outcome.off_limits],
            "model_changes": [[str(c) for c in changes] for changes in outcome.model_changes],
            "changed_arguments": [int(i) for i in outcome.changed_arguments],
            "grad_switched_arguments": [int(i) for i in outcome.grad_switched_arguments]}


def _describe(error: BaseException) -> dict:
    """An exception as words: its type, message, and the innermost line of the learner's cells."""
    line, number = None, None
    frames = traceback.StackSummary.extract(traceback.walk_tb(error.__traceback__), lookup_lines=False)
    for frame in reversed(frames):  # lines are looked up for the learner's cells only (vislib's are hidden)
        if frame.filename.startswith("<cell "):
            line, number = linecache.getline(frame.filename, frame.lineno).strip(), frame.lineno
            break
    return {"type": type(error).__name__, "message": str(error)[:2000], "line": line, "line_number": number}
