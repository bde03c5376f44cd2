"""The kernel in which the grader runs a submission's notebook top to bottom, for the feedback page
(the learner's own pictures and messages). Its results decide no points: the test cells are
graded apart (``vislib.grading.autograde``). It is an ordinary IPython kernel, confined like the
runner (``confine``): it may read Python's installation, vislib and its weights, and its own
folder, and write only there, so a submission cannot read other learners' work, the solutions or
the gradebook, nor start processes. Learners' warnings are not shown: they cost nothing.

Each start is a fork of the grader's zygote (``vislib.grading.zygote``), which has torch, vislib,
matplotlib and ipykernel imported already: jupyter_client starts it through ``ZygoteProvisioner``
(registered as the kernel provisioner ``vislib-zygote``). ``VISLIB_GRADING_LOG`` names the file
for what was refused, ``VISLIB_GRADING_MEMORY`` the memory limit in bytes.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import tempfile
import warnings
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

from vislib.grading import confine

PROVISIONER = "vislib-zygote"


def serve(argv: list[str], env: dict[str, str], cwd: str) -> None:
    """Become the kernel (in a child of the zygote): IPKernelApp with ``argv`` (``-f CONNECTION_FILE``
    ...), in ``cwd`` with the environment ``env``, confined before the first cell runs."""
    from ipykernel.kernelapp import IPKernelApp

    from vislib.models import weights_folder

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    scratch = tempfile.mkdtemp(prefix="vislib-kernel-")
    os.environ.update(TMPDIR=scratch, TORCHINDUCTOR_CACHE_DIR=scratch)
    tempfile.tempdir = scratch
    warnings.simplefilter("ignore")
    app = IPKernelApp.instance(parent_handle=os.getppid())  # it ends when the zygote, its parent, does
    app.initialize(argv)
    app.shell.enable_matplotlib("inline")  # as a new kernel has it (the zygote imported matplotlib with Agg)
    rules = confine.Rules(readable=(*confine.python_roots(), *confine.SYSTEM_ROOTS, confine.package_folder("vislib"),
                                    weights_folder()),
                          writable=(os.path.realpath(cwd), scratch))
    log = os.environ.get("VISLIB_GRADING_LOG")
    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if log else None
    confine.confine(rules, memory_bytes=int(os.environ.get("VISLIB_GRADING_MEMORY", 0)) or None, log_fd=log_fd)
    app.start()


class ZygoteProvisioner(LocalProvisioner):
    """jupyter_client's local provisioner, with the kernel forked by the grader's zygote instead of
    started as a new Python (which imported torch and vislib again: about 8 s per start)."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        from vislib.grading.zygote import zygote

        arguments = cmd[cmd.index("vislib.grading.kernel") + 1:]
        pid, sock = zygote().spawn({"kind": "kernel", "argv": arguments, "env": dict(kwargs.get("env") or os.environ),
                                    "cwd": str(kwargs.get("cwd") or os.getcwd())})
        sock.close()
        self.process = _ForkedProcess(pid)
        self.pid = self.pgid = pid  # the kernel leads its own session: killpg reaches all it started
        self.cwd = kwargs.get("cwd", os.getcwd())
        return self.connection_info


class _ForkedProcess:
    """The part of ``subprocess.Popen`` a provisioner uses, for a kernel that is the zygote's child,
    not ours: its end is seen through a pidfd. Its exit status is its parent's to collect, so
    ``returncode`` is 1 for any end."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # it ended (and was collected) already
            self._pidfd, self.returncode = None, 1

    def poll(self) -> int | None:
        return self.wait(timeout=0)

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None and select.select([self._pidfd], [], [], timeout)[0]:
            self.returncode = 1
            os.close(self._pidfd)
            self._pidfd = None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


if __name__ == "__main__":  # a kernel outside the grader: python -m vislib.grading.kernel -f CONNECTION_FILE
    serve(sys.argv[1:], dict(os.environ), os.getcwd())
