"""Confine a process that runs a learner's code: what it may read and write, and which doors stay
shut (new processes, sockets, ctypes, the garbage collector's object lists, the peer libraries).

The rules are an audit hook (PEP 578): once added it cannot be removed, and it sees every file
Python opens, every import and every process it would start. It is not a sandbox against native
code: ctypes stays open to the libraries that use it (threadpoolctl, torch) and shut to code that
is not a library's, and code objects cannot be forged to pass for a library's. It keeps a
learner's Python from reading other learners' work, the course's solutions or the gradebook, and
from reaching code that the grader forbids. Limits
on memory and CPU time come from the kernel (``resource``).
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

# The libraries beside the course that implement its exercises: off limits in a learner's functions.
PEER_LIBRARIES = ("captum", "pytorch_grad_cam", "torchcam")
# Python's own installation and the system's shared data: what importing libraries needs to read.
SYSTEM_ROOTS = ("/usr", "/lib", "/lib64", "/etc", "/proc/self", "/proc/cpuinfo", "/proc/meminfo",
                "/sys/devices/system/cpu", "/sys/fs/cgroup", "/dev/null", "/dev/urandom", "/dev/shm")
_SHUT = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
         "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "socket.connect", "socket.bind",
         "socket.sendto", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.remote_exec")
_PATH_CHANGES = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
                 "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "os.setxattr",
                 "os.removexattr")
_LISTINGS = ("os.listdir", "os.scandir")
_CTYPES = os.path.dirname(ctypes.__file__) + "/"


@dataclass
class Rules:
    """Where the confined process may read and write. ``hidden`` folders inside ``readable`` ones are not
    readable, and ``readable`` folders inside ``hidden`` ones are again (ShapesNet's weights inside the
    hidden vislib): the deepest folder that holds a path decides."""

    readable: tuple[str, ...]
    writable: tuple[str, ...]
    hidden: tuple[str, ...] = ()
    refused: list[str] = field(default_factory=list)  # what was refused, in words, for the report

    def may_read(self, path: str) -> bool:
        if self.may_write(path):
            return True
        readable, hidden = _deepest(path, self.readable), _deepest(path, self.hidden)
        return readable > hidden  # -1 where no folder holds it; a folder both readable and hidden is hidden

    def may_write(self, path: str) -> bool:
        return _under(path, self.writable)


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == root.rstrip("/") or path.startswith(root.rstrip("/") + "/") for root in roots)


def _deepest(path: str, roots: Iterable[str]) -> int:
    """The length of the longest of ``roots`` that is ``path`` or a folder above it; -1 for none."""
    return max((len(root.rstrip("/")) for root in roots if _under(path, (root,))), default=-1)


def _real(path) -> str:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return os.path.realpath(os.fspath(path))


def python_roots() -> tuple[str, ...]:
    """The interpreter's and the environment's folders (site-packages included)."""
    return tuple({_real(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)})


def package_folder(name: str) -> str | None:
    """Where an installed package lives, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return _real(list(spec.submodule_search_locations)[0])


def peer_folders() -> tuple[str, ...]:
    return tuple(folder for name in PEER_LIBRARIES if (folder := package_folder(name)))


def _library_caller(libraries: tuple[str, ...]) -> bool:
    """Whether the code that called into ctypes or ``compile`` (the innermost frame outside ctypes
    and this module) is an installed library's or the import system's, not a learner's cell."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(_CTYPES) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return False
    name = frame.f_code.co_filename
    return name.startswith("<frozen ") or _under(_real(name), libraries)


def _writes(mode, flags) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    if isinstance(flags, int):
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
    return False


def confine(rules: Rules, memory_bytes: int | None = None, cpu_seconds: int | None = None,
            file_bytes: int = 256 * 2**20, log_fd: int | None = None) -> None:
    """Apply ``rules`` to this process for good, and limit its memory, CPU time and the size of
    the files it writes. Each refusal is noted in ``rules.refused`` (and written to ``log_fd``)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    if cpu_seconds:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def refuse(what: str) -> None:
        rules.refused.append(what)
        if log_fd is not None:
            os.write(log_fd, (what + "\n").encode(errors="replace"))
        raise PermissionError(f"the grader does not allow this: {what}")

    rules.readable += (f"/proc/{os.getpid()}",)  # what /proc/self names, spelt with the number
    libraries = python_roots()

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            if path is None or isinstance(path, int):
                return
            real = _real(path)
            if _writes(mode, flags):
                if not rules.may_write(real):
                    refuse(f"writing {real}")
            elif not rules.may_read(real):
                refuse(f"reading {real}")
        elif event == "import":
            if args and str(args[0]).split(".")[0] in PEER_LIBRARIES:
                refuse(f"importing {args[0]}")
        elif event == "ctypes.dlopen":  # libraries load their own shared objects (torch does on import)
            if args and args[0] is not None and not rules.may_read(_real(args[0])):
                refuse(f"loading {args[0]}")
        elif event.startswith("ctypes."):  # threadpoolctl and torch call C through ctypes; a learner may not
            if not _library_caller(libraries):
                refuse(event)
        elif event == "compile" and len(args) > 1 and isinstance(args[1], str) and args[1].startswith("/"):
            # code that claims a library's file as its own would pass for library code above
            if _under(_real(args[1]), libraries) and not _library_caller(libraries):
                refuse(f"compiling code as {args[1]}")
        elif event == "code.__new__" and not _library_caller(libraries):
            refuse("building a code object")
        elif event.startswith(_SHUT):
            refuse(event)
        elif event in _PATH_CHANGES:
            for path in args[:2]:
                if isinstance(path, (str, bytes, os.PathLike)) and not rules.may_write(_real(path)):
                    refuse(f"{event} {_real(path)}")
        elif event in _LISTINGS and args and isinstance(args[0], (str, bytes, os.PathLike)):
            if not rules.may_read(_real(args[0])):
                refuse(f"listing {_real(args[0])}")

    sys.addaudithook(hook)
