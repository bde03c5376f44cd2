"""The grader's *zygote*: one process that imports torch, vislib, matplotlib and IPython's kernel
once (about 5 s) and then forks, on request, the processes a submission needs: a runner
(``vislib.grading.runner``) and each start of the feedback kernel (``vislib.grading.kernel``).
A submission then costs a fork, not an import, and its notebook's first cell does not import torch
and vislib again.

It only imports: it runs no computation, so no thread pool exists yet when it forks. Each child
leaves the zygote's session at once (the grader kills it, and all it started, with one signal)
and confines itself before it runs any learner's code.

``python -m vislib.grading.zygote FD``: requests arrive on the socket FD; each reply is the
child's pid with the child's end of a new socket pair (runners talk over it; kernels over ZeroMQ).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

from vislib.grading import wire


def main(control_fd: int) -> None:
    """Import what the children need, then fork one per request."""
    os.environ["MPLBACKEND"] = "Agg"  # a runner draws nowhere; a kernel switches to the inline backend
    import matplotlib.pyplot  # noqa: F401 (its font cache is read now, while the files may be read)
    from ipykernel.kernelapp import IPKernelApp  # noqa: F401 (the feedback kernel's machinery)
    from matplotlib_inline import backend_inline  # noqa: F401

    import vislib.checks  # noqa: F401 (the checks' modules and, through them, vislib's)
    from vislib.grading import kernel, runner

    control = socket.socket(fileno=control_fd)
    while True:
        try:
            request = wire.receive(control, trusted=True)
        except EOFError:
            return
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            control.close()
            theirs.close()
            os.setsid()
            try:
                if request["kind"] == "kernel":
                    ours.close()
                    kernel.serve(request["argv"], request["env"], request["cwd"])
                else:
                    runner.serve(ours, request)
            finally:
                os._exit(0)
        ours.close()
        socket.send_fds(control, [str(pid).encode()], [theirs.fileno()])
        theirs.close()
        _reap()


def _reap() -> None:
    """Collect children that have ended, so none is left as a zombie."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


class Zygote:
    """The grader's handle on its zygote."""

    def __init__(self):
        self.control, theirs = socket.socketpair()
        self.process = subprocess.Popen([sys.executable, "-m", "vislib.grading.zygote", str(theirs.fileno())],
                                        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self._lock = threading.Lock()  # the runner starts in a thread while the kernel starts

    def spawn(self, request: dict) -> tuple[int, socket.socket]:
        """Fork a child for ``request`` (``kind``: ``"runner"`` or ``"kernel"``): its pid and its socket."""
        with self._lock:
            wire.send(self.control, request)
            message, fds, _, _ = socket.recv_fds(self.control, 64, 1)
        if not fds:
            raise RuntimeError(f"the grader's zygote did not start a {request['kind']}")
        return int(message), socket.socket(fileno=fds[0])


_zygote: Zygote | None = None
_started = threading.Lock()


def zygote() -> Zygote:
    """The grader's zygote, started on first use (start it early: it takes a few seconds)."""
    global _zygote
    with _started:
        if _zygote is None or _zygote.process.poll() is not None:
            _zygote = Zygote()
        return _zygote


if __name__ == "__main__":
    main(int(sys.argv[1]))
