"""The kernel in which the grader runs a submission's notebook top to bottom, for the feedback page
(the learner's own pictures and messages). Its results decide no points: the test cells are
graded apart (``vislib.grading.autograde``). It is an ordinary IPython kernel, confined like the
runner (``confine``): it may read Python's installation, vislib and its weights, and its own
folder, and write only there, so a submission cannot read other learners' work, the solutions or
the gradebook, nor start processes.

``python -m vislib.grading.kernel -f CONNECTION_FILE``; ``VISLIB_GRADING_LOG`` names the file for
what was refused, ``VISLIB_GRADING_MEMORY`` the memory limit in bytes.
"""

from __future__ import annotations

import os
import sys
import tempfile

from vislib.grading import confine


def main() -> None:
    scratch = tempfile.mkdtemp(prefix="vislib-kernel-")
    os.environ.update(TMPDIR=scratch, TORCHINDUCTOR_CACHE_DIR=scratch)
    tempfile.tempdir = scratch
    import matplotlib.font_manager  # noqa: F401 (reads or builds the font cache while that is allowed)
    import torch  # noqa: F401 (every assignment needs it: load it unconfined, like the runner's zygote)
    from ipykernel.kernelapp import IPKernelApp

    from vislib.models import weights_folder

    app = IPKernelApp.instance()
    app.initialize(sys.argv[1:])
    rules = confine.Rules(readable=(*confine.python_roots(), *confine.SYSTEM_ROOTS, confine.package_folder("vislib"),
                                    weights_folder()),
                          writable=(os.path.realpath(os.getcwd()), scratch))
    log = os.environ.get("VISLIB_GRADING_LOG")
    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if log else None
    confine.confine(rules, memory_bytes=int(os.environ.get("VISLIB_GRADING_MEMORY", 0)) or None, log_fd=log_fd)
    app.start()


if __name__ == "__main__":
    main()
