"""The grader's side of the runner (``vislib.grading.runner``): start runners from one zygote, feed
them a submission's cells, call the learner's functions there, and stop runners that hang or die.

``RemoteFunction`` stands for a learner's function inside a check: the check runs in the grader,
compares with its own reference and decides; only the learner's function runs in the runner.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from dataclasses import dataclass, field

from vislib.checks.harness import LearnerError, Outcome
from vislib.checks.language import _
from vislib.checks.offlimits import OffLimitsCall
from vislib.grading import wire
from vislib.grading.zygote import zygote


class RunnerGone(AssertionError):
    """The runner stopped answering: it ran over its time or ended (exit, crash, memory)."""


@dataclass
class Runner:
    """One submission's runner: ``cells`` are the learner's code cells (index, source) in order;
    ``checks`` name the exercises, whose assignments' rules go behind tripwires."""

    cells: list[tuple[int, str]]
    checks: list[str]
    imports: list[str]
    timeout: float
    memory_bytes: int | None = None
    cpu_seconds: int | None = None
    stopped_cells: dict[int, str] = field(default_factory=dict)  # cell index -> why it stopped a runner
    refused: set[str] = field(default_factory=set)
    stopped_calls: list[str] = field(default_factory=list)  # "name: why", for the report
    _pid: int | None = None
    _sock: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start_in_background(self) -> None:
        """Start the runner and run the cells while the grader does other work (the kernel)."""
        threading.Thread(target=self._start, daemon=True).start()

    def _start(self) -> None:
        with self._lock:
            self._start_unlocked()

    def _start_unlocked(self) -> None:
        """Fork a runner and run the cells, skipping those that stopped an earlier runner."""
        while self._sock is None:
            self._pid, self._sock = zygote().spawn({"kind": "runner", "checks": self.checks, "imports": self.imports,
                                                    "memory_bytes": self.memory_bytes,
                                                    "cpu_seconds": self.cpu_seconds})
            for index, source in self.cells:
                if index in self.stopped_cells:
                    continue
                try:
                    self._ask({"op": "cell", "source": source})  # a cell's own error is the feedback run's to show
                except RunnerGone as gone:
                    self.stopped_cells[index] = str(gone)
                    break

    def _ask(self, message: dict) -> dict:
        assert self._sock is not None
        self._sock.settimeout(self.timeout)
        try:
            wire.send(self._sock, message)
            reply = wire.receive(self._sock, trusted=False)
        except TimeoutError:
            self.stop()
            raise RunnerGone(_("it ran for more than {seconds:.0f} s and was stopped", seconds=self.timeout)) from None
        except (EOFError, OSError, ValueError):
            self.stop()
            raise RunnerGone(_("the Python process running it ended (an exit, a crash, or memory ran out)")) from None
        if not isinstance(reply, dict):
            self.stop()
            raise RunnerGone(_("the Python process running it sent a malformed reply"))
        self.refused.update(str(r) for r in reply.get("refused", ()))
        return reply

    def call(self, name: str, args: tuple, kwargs: dict, models: list) -> dict:
        self._start()
        try:
            return self._ask({"op": "call", "name": name, "args": args, "kwargs": kwargs, "models": models})
        except RunnerGone as gone:
            self.stopped_calls.append(f"{name}: {gone}")
            raise

    def close(self) -> None:
        """Stop the runner once it has finished starting (a start is bounded by the cells' time limits)."""
        with self._lock:
            self.stop()

    def stop(self) -> None:
        """Kill the runner and everything it started (its own session)."""
        pid = self._pid
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._sock is not None:
            self._sock.close()
        self._pid, self._sock = None, None


@dataclass
class RemoteFunction:
    """The learner's function ``name`` in ``runner``, as a check sees it."""

    runner: Runner
    name: str

    def run_reported(self, args: tuple, kwargs: dict, models: list) -> Outcome:
        try:
            reply = self.runner.call(self.name, tuple(args), dict(kwargs), list(models))
        except RunnerGone as gone:
            raise AssertionError(_("your {name}: {why}. Look for an endless loop, an exit, or a very large tensor.",
                                   name=self.name, why=gone.args[0])) from None
        if reply.get("missing"):
            raise AssertionError(_("{name} is not defined in your notebook: keep the function's name and run the "
                                   "cell that defines it", name=self.name))
        if reply.get("not_implemented"):
            raise NotImplementedError
        if reply.get("error"):
            error = reply["error"]
            raise LearnerError(str(error.get("type")), str(error.get("message")), error.get("line"),
                               error.get("line_number"))
        return Outcome(wire.restore(reply.get("result")), [str(h) for h in reply.get("off_limits", ())],
                       [[str(c) for c in changes] for changes in reply.get("model_changes", ())],
                       [int(i) for i in reply.get("changed_arguments", ())],
                       [int(i) for i in reply.get("grad_switched_arguments", ())])

    def __call__(self, *args, **kwargs):
        """A call from inside a check (not through ``harness.call``): the result, or the error."""
        outcome = self.run_reported(args, kwargs, [])
        if outcome.off_limits:
            raise OffLimitsCall(outcome.off_limits[0])
        return outcome.result
