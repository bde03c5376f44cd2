"""The machinery every exercise check shares: run the learner's function, compare its result with
vislib's reference, and turn a difference into a hint that names the likely mistake.

A check is a function ``check(fn)`` decorated with ``exercise``. Inside, it calls the learner's
function through ``call`` (which refuses a function that leaves anything behind in the model or
that only calls vislib's own implementation) and compares results with ``expect`` (which names
the mistake whose output the learner's result matches). The decorator turns an unimplemented
function into "not implemented yet" instead of a traceback, and an exception raised inside the
learner's code into a hint that names the learner's line and what such an error usually means
(``explain_error``, a pure function of strings so that grading can use it for errors that
happened in another process).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from threadpoolctl import threadpool_limits

from vislib.hooks import model_state, state_changes


def layer_input(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """What ``layer`` receives when ``model`` reads ``x`` (a copy): the result of typical mistakes
    that read a hook's ``args`` instead of its output, or the wrong linear layer's input."""
    store = {}
    handle = model.get_submodule(layer).register_forward_pre_hook(
        lambda module, args: store.__setitem__("x", args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["x"]

NOT_IMPLEMENTED = "not implemented yet"


class NotImplementedYet(AssertionError):
    """Raised by a strict check (the graded one) when the learner's function is still a stub."""


def exercise(name: str, summary: str):
    """Make ``check(fn)`` an exercise check named ``name``.

    The check prints one success line (``summary`` says what was verified) or raises
    ``AssertionError`` with a hint; an exception raised inside the learner's code becomes such a
    hint too (``explain_error``). A function that still raises ``NotImplementedError`` prints
    "not implemented yet", so a learner's notebook runs top to bottom; with ``strict=True`` (the
    autograder's hidden tests) it raises ``NotImplementedYet``. Nothing is returned, so a
    notebook cell shows only the printed line (nbgrader would read a returned value as points).
    """

    def decorate(check):
        @functools.wraps(check)
        def run(fn, strict: bool = False) -> None:
            if not callable(fn):
                raise TypeError(f"pass your function itself to the check, e.g. checks.{name}({name}), "
                                f"not {type(fn).__name__}")
            try:
                with _apart_from_the_learner():
                    check(fn)
            except NotImplementedError:
                if strict:
                    raise NotImplementedYet(f"{name}: {NOT_IMPLEMENTED}") from None
                print(f"{name}: {NOT_IMPLEMENTED} (replace `raise NotImplementedError()` with your code)")
                return
            except AssertionError:
                raise
            except Exception as error:
                frame = learner_frame(error.__traceback__)
                if frame is None:  # the check's own error, not the learner's
                    raise
                raise AssertionError(explain_error(type(error).__name__, str(error), frame.line, frame.lineno,
                                                   name)) from error
            print(f"{name}: correct. {summary}")

        run.exercise = name
        return run

    return decorate


@contextmanager
def _apart_from_the_learner():
    """A check neither reseeds the learner's global random states, torch's and numpy's (the case models
    are built from seeds, t-SNE may draw from numpy's) nor competes with itself for a small shared CPU:
    its tiny models and t-SNE run on one thread (several threads wait for each other when other
    programs share the cores)."""
    threads = torch.get_num_threads()
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]), threadpool_limits(1):
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            np.random.set_state(numpy_state)


# What typical errors inside a learner's function usually mean: (pattern of the message, meaning).
# The first pattern that matches the error's type and message wins.
_MEANINGS = (
    (r"RemovableHandle", "a forward hook's return value replaces the layer's output, and yours returns a hook's "
                         "handle (register_hook returns one, and a lambda returns whatever its expression gives): "
                         "write the hook with def and let it return None, or return a tensor"),
    (r"hook returned|returned an incorrect", "a hook must return None (to keep the gradient or output as it is) or "
                                             "a tensor of the same shape, nothing else"),
    (r"differentiated Tensors does not require grad", "the tensor you differentiate with respect to is not part "
                                                      "of the graph: a .detach() (or torch.no_grad()) cut it off; "
                                                      "keep the tensor the forward pass used (a hook's output "
                                                      "itself) and detach only what you return"),
    (r"does not require grad and does not have a grad_fn",
     "the score is not connected to the tensor you differentiate: make a copy of the input that requires grad "
     "(x.detach().clone().requires_grad_(True)) before the forward pass, keep the graph (no .detach(), no "
     "torch.no_grad(), no .item() on the way) and take the gradient with respect to that very tensor"),
    (r"appears to not have been used in the graph", "the tensor you differentiate with respect to is not the one "
                                                    "the score was computed from: a .detach() or .clone() made a "
                                                    "new tensor; keep the tensor that the forward pass used"),
    (r"backward through the graph a second time", "each forward pass builds a graph that one backward pass (or "
                                                  "autograd.grad) uses up: sum the scores into one number and "
                                                  "differentiate once, or run a new forward pass for each gradient"),
    (r"BackwardHookFunction.*inplace|inplace.*BackwardHookFunction",
     "register_full_backward_hook cannot handle a layer whose output an inplace operation changes (an inplace "
     "ReLU, or the layer after it): catch the gradient with a hook on the layer's output tensor "
     "(output.register_hook in a forward hook) or with torch.autograd.grad(score, output)"),
    (r"modified by an inplace operation", "a tensor that autograd still needs was changed in place (an inplace "
                                          "ReLU, +=, clamp_, x[...] = ...): work on a copy (.clone()) or use "
                                          "out-of-place operations"),
    (r"leaf Variable that requires grad", "a tensor that requires grad cannot be changed in place: change it "
                                          "inside torch.no_grad(), or work on a detached copy"),
    (r"implicitly created only for scalar", "backward() needs one number: sum the scores of all images "
                                            "(scores.sum()) before differentiating"),
    (r"numpy\(\) on Tensor that requires grad", "call .detach() before .numpy()"),
    (r"shapes cannot be multiplied|must match the size|does not broadcast|size mismatch|shape .* is invalid",
     "two tensors' shapes do not fit together: print the .shape of each tensor on this line. A linear layer's "
     "weight is [classes, features] (weight[target] is one row per image); a batch of images is [B, C, H, W]"),
    (r"out of bounds|out of range|Index tensor must have the same number of dimensions",
     "an index does not fit the tensor: check which dimension you index and its size (logits[i, target[i]] or "
     "logits.gather(1, target[:, None]) picks each image's class)"),
    (r"'NoneType' object has no attribute", "a value you expected is None: .grad stays None unless backward() "
                                            "reached that tensor (a leaf that requires grad), and a hook's store "
                                            "stays empty unless the hooked layer ran"),
    (r"view size is not compatible", "use .reshape(...) instead of .view(...) on a permuted or sliced tensor"),
    (r"expected .*dtype|expected scalar type|but got: .* != ", "the tensors have different dtypes: convert with "
                                                              ".float() (or .long() for indices)"),
    (r"^KeyError", "a dictionary has no such key: did the hook that fills it run (right layer name)?"),
)


def explain_error(error_type: str, message: str, learner_line: str | None, line_number: int | None,
                  name: str) -> str:
    """The hint for an exception raised inside the learner's ``name``: which of their lines raised it
    and what such an error usually means. Only strings in, so it also explains an error that happened
    in another process (the autograder's)."""
    first = message.strip().splitlines()[0].rstrip(".") if message.strip() else ""
    where = f" on line {line_number}" if line_number else ""
    code = f" (`{learner_line.strip()}`)" if learner_line and learner_line.strip() else ""
    text = f"your {name} raised {error_type}{where}{code}: {first}"
    for pattern, meaning in _MEANINGS:
        if re.search(pattern, f"{error_type}: {message}", re.S):
            return f"{text}. This usually means: {meaning}."
    return f"{text}. Look at that line: the error is in your code."


def _library_folders() -> tuple[str, ...]:
    """Folders whose files are not the learner's: vislib, the standard library and the installed
    packages (torch, numpy, scikit-learn)."""
    paths = sysconfig.get_paths()
    folders = {os.path.dirname(os.path.dirname(os.path.abspath(__file__))), paths["stdlib"], paths["platstdlib"],
               paths["purelib"], paths["platlib"]}
    return tuple(os.path.join(os.path.realpath(f), "") for f in folders)


def learner_frame(tb) -> traceback.FrameSummary | None:
    """The innermost frame of traceback ``tb`` that is the learner's code (a notebook cell or their
    own file), not vislib, the standard library or an installed package such as torch; None when the
    learner's code is not in it (the check's own error)."""
    libraries = _library_folders()
    for frame in reversed(traceback.extract_tb(tb)):
        if not os.path.realpath(frame.filename).startswith(libraries):
            return frame
    return None


@contextmanager
def unless_unimplemented(name: str = "your function"):
    """For the cell that draws the learner's own result: a stub shows a note, not a traceback."""
    try:
        yield
    except NotImplementedError:
        print(f"{name}: {NOT_IMPLEMENTED}; its picture appears here once it works")


# --------------------------------------------------------------------------- running the learner's code


@dataclass(frozen=True)
class Forbidden:
    """vislib functions that the learner's code must not call: the exercise is to write them."""

    functions: tuple

    def code_objects(self) -> set:
        return {inspect.unwrap(f).__code__ for f in self.functions}

    def names(self) -> str:
        return ", ".join(f"{f.__module__}.{f.__qualname__}" for f in self.functions)


def call(name: str, fn: Callable, *args, models: Iterable[nn.Module] = (), forbidden: Forbidden | None = None):
    """``fn(*args)``, refused when it changes anything in ``models`` (hooks, modes, requires_grad,
    .grad, parameters, buffers), changes a tensor argument in place, or calls a ``forbidden`` vislib
    function. ``NotImplementedError`` passes through to ``exercise``."""
    models = list(models)
    before = [model_state(m) for m in models]
    tensors = [(i, a.detach().clone()) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    seen = _calls_into(forbidden, fn, args)
    result = seen.result
    if seen.called:
        raise AssertionError(f"your {name} calls vislib's own implementation ({forbidden.names()}): the exercise "
                             "is to write it yourself; vislib's version is what the check compares with")
    for model, state in zip(models, before):
        changes = state_changes(state, model_state(model))
        if changes:
            raise AssertionError(f"your {name} changed the model: {'; '.join(changes)}. {_advice(changes)}")
    for i, copy in tensors:
        if not torch.equal(args[i].detach(), copy) and not (args[i].isnan() & copy.isnan()).any():
            raise AssertionError(f"your {name} changed its argument number {i + 1} in place; work on a copy "
                                 "(e.g. tensor.clone()) or use out-of-place operations")
    _no_requires_grad_left(name, args)
    return result


def _no_requires_grad_left(name: str, args) -> None:
    """A check hands over plain data (no tensor argument requires grad), so an argument that requires
    grad after the call was switched on by the learner's function, in the caller's tensor."""
    for i, arg in enumerate(args):
        if isinstance(arg, torch.Tensor) and arg.requires_grad:
            raise AssertionError(f"your {name} set requires_grad on its argument number {i + 1}, the caller's own "
                                 "tensor: differentiate with respect to a copy, x.detach().clone()"
                                 ".requires_grad_(True), and leave the argument as it was")


def _advice(changes: list[str]) -> str:
    if any("hooks" in c for c in changes):
        return "Remove every hook you register (handle.remove()), best in a `finally:` block."
    if any("requires_grad" in c for c in changes):
        return "Put requires_grad back as you found it, or take gradients with torch.autograd.grad."
    if any(".grad" in c for c in changes):
        return ("Calling .backward() adds into the parameters' .grad: use torch.autograd.grad(score, x), "
                "or freeze the parameters while you work and restore them after.")
    if any("train/eval mode" in c for c in changes):
        return "Leave the model's train/eval mode as it was."
    if any("setting" in c for c in changes):
        return ("Put back every module setting you change (e.g. module.inplace), best in a `finally:` block, or "
                "leave it alone.")
    return "Work on copies and leave the model as you found it."


@dataclass
class _Seen:
    result: object = None
    called: bool = False


def _calls_into(forbidden: Forbidden | None, fn, args) -> _Seen:
    """Run ``fn(*args)`` and note whether it entered one of the ``forbidden`` functions (a
    profile hook watches Python calls only while ``fn`` runs)."""
    seen = _Seen()
    if forbidden is None:
        seen.result = fn(*args)
        return seen
    codes = forbidden.code_objects()

    def watch(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            seen.called = True

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        seen.result = fn(*args)
    finally:
        sys.setprofile(previous)
    return seen


# --------------------------------------------------------------------------- comparing results


def returned_tensor(name: str, got, shape, what: str = "the image", why: str = "") -> torch.Tensor:
    """``got`` if it is a tensor of ``shape``; else an error saying what the learner's ``name`` must
    return (``why``: what the expected shape means, and the case)."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"your {name} must return {what} as a torch.Tensor, got {type(got).__name__}")
    if got.shape != tuple(shape):
        raise AssertionError(f"your {name} returns shape {list(got.shape)}; expected {list(shape)}{why}")
    return got


def expect(name: str, got, expected: torch.Tensor, mistakes: dict[str, torch.Tensor] | None = None,
           what: str = "result", rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """``got`` must equal ``expected``; if it equals one of ``mistakes`` (hint -> what that mistake
    gives) instead, the hint is the message. Shapes are checked first, with the expected shape."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"your {name} must return a torch.Tensor ({what}), got {type(got).__name__}")
    got = got.detach().to(expected.device, expected.dtype) if got.is_floating_point() else got.detach()
    for hint, wrong in (mistakes or {}).items():
        if got.shape == wrong.shape and not close(expected, wrong, rtol, atol) and close(got, wrong, rtol, atol):
            raise AssertionError(f"your {name} gives a different {what}: {hint}")
    if got.shape != expected.shape:
        raise AssertionError(f"your {name} returns shape {list(got.shape)}; expected {list(expected.shape)} ({what})")
    if not torch.isfinite(got).all():
        raise AssertionError(f"your {name} returns NaN or infinite values; look for a division by zero")
    if not close(got, expected, rtol, atol):
        raise AssertionError(f"your {name} gives a different {what}: {_describe(got, expected)}")


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Same shape and equal up to ``rtol`` and ``atol`` times the larger of 1 and b's largest value."""
    scale = b.abs().max().item() if b.numel() else 0.0
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol * max(1.0, scale))


def _describe(got: torch.Tensor, expected: torch.Tensor) -> str:
    """A generic hint: a constant factor, a sign, or where the largest difference is."""
    flat_got, flat_expected = got.double().flatten(), expected.double().flatten()
    denominator = flat_expected.dot(flat_expected)
    if denominator > 0:
        factor = (flat_got.dot(flat_expected) / denominator).item()
        if abs(factor) > 1e-6 and torch.allclose(flat_got, factor * flat_expected, rtol=1e-3,
                                                 atol=1e-6 * flat_expected.abs().max().item()):
            if factor < 0:
                return f"it is {-factor:.3g} times the expected one with the opposite sign: check the sign"
            return f"it is {factor:.3g} times the expected one: check how you scale or normalise"
    worst = (flat_got - flat_expected).abs().argmax().item()
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), expected.shape))
    return (f"the largest difference is at index {list(index)}: yours {flat_got[worst].item():.4g}, "
            f"expected {flat_expected[worst].item():.4g}")
