"""What a learner's function must not use: vislib's own implementation of the exercise, and the
peer libraries that implement it (Captum, pytorch-grad-cam, torchcam).

One rule per assignment (``OffLimits`` in each checks module): whole vislib modules, private
helpers included, plus named functions of other modules, less the public helpers the assignment
hands out. It is enforced by one mechanism, tripwires: each off-limits function's code is swapped
for code that records the call and raises ``OffLimitsCall``. A swap holds whatever route reaches
the function (a private import, a thread, a disabled profiler, a copy of its ``__code__`` taken
during the call), and ``called_peer_or_copy`` watches for what a swap cannot see: code copied
before the call, and the peer libraries. In the learner's own kernel this is helpful feedback; the
grader (``vislib.grading``) installs the tripwires for good in a process whose learner code cannot
restore the originals.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from vislib.checks.language import Joined, _, joined
from vislib.grading.confine import PEER_LIBRARIES

_hits: list[str] = []  # what was entered since the last ``clear_hits``


class OffLimitsCall(RuntimeError):
    """Raised by a tripwire: the learner's code called vislib's implementation of the exercise."""

    def __init__(self, name: str):
        _hits.append(name)
        super().__init__(_("{function} is off limits in this assignment: the exercise is to write it yourself",
                           function=name))


def clear_hits() -> None:
    _hits.clear()


def hits() -> list[str]:
    return list(_hits)


@dataclass(frozen=True)
class OffLimits:
    """An assignment's rule: ``modules`` (every function and method defined in them, private ones
    too) and ``functions`` are off limits, except the public helpers in ``allowed``."""

    modules: tuple[str, ...] = ()
    functions: tuple[Callable, ...] = ()
    allowed: tuple[Callable, ...] = ()
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def targets(self) -> list[types.FunctionType]:
        """The Python functions the rule covers, unwrapped from their decorators."""
        if "targets" not in self._cache:
            allowed = {inspect.unwrap(f) for f in self.allowed}
            found = [f for name in self.modules for f in _defined_in(importlib.import_module(name))]
            found += [inspect.unwrap(f) for f in self.functions]
            unique = {id(f): f for f in found if isinstance(f, types.FunctionType) and f not in allowed}
            self._cache["targets"] = list(unique.values())
        return self._cache["targets"]

    def names(self) -> Joined:
        """The rule in words, for messages."""
        parts = [_("{module} (all of it)", module=m) for m in self.modules]
        parts += [f"{f.__module__}.{f.__qualname__}" for f in self.functions]
        return joined([*parts, *PEER_LIBRARIES], ", ")

    def fingerprints(self) -> set:
        if "fingerprints" not in self._cache:
            self._cache["fingerprints"] = {_fingerprint(f.__code__) for f in self.targets()}
        return self._cache["fingerprints"]


def _defined_in(module: types.ModuleType) -> Iterator[Callable]:
    """Functions defined in ``module`` and the methods of its classes (not dunder methods, which
    pickling and printing a helper object such as a ReceptiveField need)."""
    for value in vars(module).values():
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if isinstance(value, types.FunctionType):
            yield inspect.unwrap(value)
        elif isinstance(value, type):
            for name, member in vars(value).items():
                if name.startswith("__"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if isinstance(member, types.FunctionType):
                    yield inspect.unwrap(member)


def _fingerprint(code: types.CodeType) -> tuple:
    """What stays the same when a code object is copied under another name."""
    return code.co_code, repr(code.co_consts), code.co_names


def _tripwire(function: types.FunctionType) -> types.CodeType:
    """Code for ``function`` that raises ``OffLimitsCall`` (with as many free variables as the
    original, which Python requires of a swapped ``__code__``)."""
    name = f"{function.__module__}.{function.__qualname__}"
    free = function.__code__.co_freevars
    cells = "".join(f"    {v} = None\n" for v in free)
    touch = "".join(f"        {v}\n" for v in free)
    source = (f"def _outer():\n{cells}    def {function.__name__}(*args, **kwargs):\n{touch}"
              f"        raise __import__('vislib.checks.offlimits', fromlist=['_']).OffLimitsCall({name!r})\n"
              f"    return {function.__name__}\n")
    namespace: dict = {}
    exec(compile(source, f"<off limits: {name}>", "exec"), namespace)
    return namespace["_outer"]().__code__


@contextmanager
def tripwires(rule: OffLimits):
    """Swap every function of ``rule`` for its tripwire while the block runs; restore them after."""
    originals = [(f, f.__code__) for f in rule.targets()]
    for function, _code in originals:
        function.__code__ = _tripwire(function)
    try:
        yield
    finally:
        for function, code in originals:
            function.__code__ = code


def install_for_good(rules: list[OffLimits]) -> None:
    """Swap the functions of ``rules`` for tripwires and keep no reference to the originals: for a
    process that runs only learner code from now on (the grader's runner)."""
    for rule in rules:
        for function in rule.targets():
            function.__code__ = _tripwire(function)


def _peer_directories() -> tuple[str, ...]:
    """Where the peer libraries are installed (found without importing them)."""
    found = []
    for name in PEER_LIBRARIES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found.extend(spec.submodule_search_locations)
    return tuple(found)


@contextmanager
def watching(rule: OffLimits):
    """Record, while the block runs and in every thread, a call of code copied from ``rule``'s
    functions or of a peer library (a profile hook; the tripwires catch the rest)."""
    fingerprints, peers, seen = rule.fingerprints(), _peer_directories(), {}

    def watch(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if code not in seen:
            seen[code] = (_fingerprint(code) in fingerprints and not code.co_filename.startswith("<off limits")
                          or bool(peers) and code.co_filename.startswith(peers))
            if seen[code]:
                _hits.append(f"{code.co_name} ({code.co_filename})")

    previous, previous_for_threads = sys.getprofile(), threading.getprofile()
    sys.setprofile(watch)
    threading.setprofile(watch)
    try:
        yield
    finally:
        sys.setprofile(previous)
        threading.setprofile(previous_for_threads)
