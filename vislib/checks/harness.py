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
import sysconfig
import traceback
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from threadpoolctl import threadpool_limits

from vislib.checks import offlimits
from vislib.checks.language import Message, _, joined
from vislib.checks.offlimits import OffLimits
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

class CheckFailure(AssertionError):
    """A check's verdict: an ``AssertionError`` whose ``message`` (a ``language.Message``) is shown in
    the language active when it is displayed (a notebook's traceback, the grader's feedback);
    ``render`` shows it in a given language."""

    def __init__(self, message: Message):
        super().__init__(message)
        self.message = message

    def render(self, language: str) -> str:
        return self.message.render(language)


class ModelChanged(CheckFailure):
    """The learner's function changed a model: ``changes`` lists what, in ``vislib.hooks``' words."""

    def __init__(self, message: Message, changes: list[str]):
        super().__init__(message)
        self.changes = changes


class NotImplementedYet(CheckFailure):
    """Raised by a strict check (the graded one) when the learner's function is still a stub."""


def exercise(name: str, summary: str):
    """Make ``check(fn)`` an exercise check named ``name``.

    The check prints one success line (``summary`` says what was verified) or raises
    ``AssertionError`` with a hint; an exception raised inside the learner's code becomes such a
    hint too (``explain_error``). A function that still raises ``NotImplementedError`` prints
    "not implemented yet", so a learner's notebook runs top to bottom; with ``strict=True`` (the
    autograder's hidden tests) it raises ``NotImplementedYet``. Nothing is returned, so a
    notebook cell shows only the printed line (nbgrader would read a returned value as points).
    While it runs, the ``OFF_LIMITS`` rule of the check's module applies to the learner's code.
    """

    def decorate(check):
        @functools.wraps(check)
        def run(fn, strict: bool = False) -> None:
            if not callable(fn):
                raise TypeError(_("pass your function itself to the check, e.g. checks.{name}({name}), not {type}",
                                  name=name, type=type(fn).__name__))
            token = _rule.set(off_limits_of(run))
            try:
                with _apart_from_the_learner():
                    check(fn)
            except NotImplementedError:
                if strict:
                    raise NotImplementedYet(_("{name}: not implemented yet", name=name)) from None
                print(_("{name}: not implemented yet (replace `raise NotImplementedError()` with your code)",
                        name=name))
                return
            except LearnerError as error:  # raised in the grader's runner
                raise CheckFailure(explain_error(error.error_type, error.message, error.line, error.line_number,
                                                 name)) from None
            except AssertionError:
                raise
            except Exception as error:
                frame = learner_frame(error.__traceback__)
                if frame is None:  # the check's own error, not the learner's
                    raise
                raise CheckFailure(explain_error(type(error).__name__, str(error), frame.line, frame.lineno,
                                                 name)) from error
            finally:
                _rule.reset(token)
            print(_("{name}: correct. {summary}", name=name, summary=summary))

        run.exercise = name
        return run

    return decorate


def off_limits_of(check: Callable) -> OffLimits:
    """The rule of the assignment that ``check`` belongs to: its module's ``OFF_LIMITS``."""
    return inspect.unwrap(check).__globals__["OFF_LIMITS"]


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
    (r"RemovableHandle",
     _("a forward hook's return value replaces the layer's output, and yours returns a hook's handle (register_hook "
       "returns one, and a lambda returns whatever its expression gives): write the hook with def and let it "
       "return None, or return a tensor")),
    (r"hook returned|returned an incorrect",
     _("a hook must return None (to keep the gradient or output as it is) or a tensor of the same shape, nothing "
       "else")),
    (r"differentiated Tensors does not require grad",
     _("the tensor you differentiate with respect to is not part of the graph: a .detach() (or torch.no_grad()) "
       "cut it off; keep the tensor the forward pass used (a hook's output itself) and detach only what you "
       "return")),
    (r"does not require grad and does not have a grad_fn",
     _("the score is not connected to the tensor you differentiate: make a copy of the input that requires grad "
       "(x.detach().clone().requires_grad_(True)) before the forward pass, keep the graph (no .detach(), no "
       "torch.no_grad(), no .item() on the way) and take the gradient with respect to that very tensor")),
    (r"appears to not have been used in the graph",
     _("the tensor you differentiate with respect to is not the one the score was computed from: a .detach() or "
       ".clone() made a new tensor; keep the tensor that the forward pass used")),
    (r"backward through the graph a second time",
     _("each forward pass builds a graph that one backward pass (or autograd.grad) uses up: sum the scores into "
       "one number and differentiate once, or run a new forward pass for each gradient")),
    (r"BackwardHookFunction.*inplace|inplace.*BackwardHookFunction",
     _("register_full_backward_hook cannot handle a layer whose output an inplace operation changes (an inplace "
       "ReLU, or the layer after it): catch the gradient with a hook on the layer's output tensor "
       "(output.register_hook in a forward hook) or with torch.autograd.grad(score, output)")),
    (r"modified by an inplace operation",
     _("a tensor that autograd still needs was changed in place (an inplace ReLU, +=, clamp_, x[...] = ...): work "
       "on a copy (.clone()) or use out-of-place operations")),
    (r"leaf Variable that requires grad",
     _("a tensor that requires grad cannot be changed in place: change it inside torch.no_grad(), or work on a "
       "detached copy")),
    (r"implicitly created only for scalar",
     _("backward() needs one number: sum the scores of all images (scores.sum()) before differentiating")),
    (r"numpy\(\) on Tensor that requires grad", _("call .detach() before .numpy()")),
    (r"shapes cannot be multiplied|must match the size|does not broadcast|size mismatch|shape .* is invalid",
     _("two tensors' shapes do not fit together: print the .shape of each tensor on this line. A linear layer's "
       "weight is [classes, features] (weight[target] is one row per image); a batch of images is [B, C, H, W]")),
    (r"out of bounds|out of range|Index tensor must have the same number of dimensions",
     _("an index does not fit the tensor: check which dimension you index and its size (logits[i, target[i]] or "
       "logits.gather(1, target[:, None]) picks each image's class)")),
    (r"'NoneType' object has no attribute",
     _("a value you expected is None: .grad stays None unless backward() reached that tensor (a leaf that "
       "requires grad), and a hook's store stays empty unless the hooked layer ran")),
    (r"view size is not compatible", _("use .reshape(...) instead of .view(...) on a permuted or sliced tensor")),
    (r"expected .*dtype|expected scalar type|but got: .* != ",
     _("the tensors have different dtypes: convert with .float() (or .long() for indices)")),
    (r"^KeyError", _("a dictionary has no such key: did the hook that fills it run (right layer name)?")),
)


def explain_error(error_type: str, message: str, learner_line: str | None, line_number: int | None,
                  name: str) -> Message:
    """The hint for an exception raised inside the learner's ``name``: which of their lines raised it
    and what such an error usually means. Only strings in, so it also explains an error that happened
    in another process (the autograder's). The error's own message (Python's or torch's) is shown as
    it is."""
    first = message.strip().splitlines()[0].rstrip(".") if message.strip() else ""
    where = _(" on line {number}", number=line_number) if line_number else ""
    code = f" (`{learner_line.strip()}`)" if learner_line and learner_line.strip() else ""
    text = _("your {name} raised {error_type}{where}{code}: {message}", name=name, error_type=error_type,
             where=where, code=code, message=first)
    for pattern, meaning in _MEANINGS:
        if re.search(pattern, f"{error_type}: {message}", re.S):
            return _("{text}. This usually means: {meaning}.", text=text, meaning=meaning)
    return _("{text}. Look at that line: the error is in your code.", text=text)


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
def unless_unimplemented(name: str | None = None):
    """For the cell that draws the learner's own result: a stub shows a note, not a traceback."""
    try:
        yield
    except NotImplementedError:
        print(_("{name}: not implemented yet; its picture appears here once it works",
                name=name or _("your function")))


# --------------------------------------------------------------------------- running the learner's code


class LearnerError(Exception):
    """An exception the learner's function raised in another process (the grader's runner): its
    type's name, its message, and the learner's line that raised it."""

    def __init__(self, error_type: str, message: str, line: str | None = None, line_number: int | None = None):
        super().__init__(f"{error_type}: {message}")
        self.error_type, self.message, self.line, self.line_number = error_type, message, line, line_number


@dataclass
class Outcome:
    """What one call of the learner's function did: its result, the off-limits code it entered,
    what it changed in each model, and which tensor arguments it changed in place."""

    result: object
    off_limits: list[str]
    model_changes: list[list[str]]
    changed_arguments: list[int]
    grad_switched_arguments: list[int]  # tensor arguments whose requires_grad the function switched on


_rule: ContextVar[OffLimits] = ContextVar("off_limits", default=OffLimits())  # noqa: B039 (frozen)


def run_here(fn: Callable, args: tuple, kwargs: dict, models: list[nn.Module], rule: OffLimits) -> Outcome:
    """Call ``fn(*args, **kwargs)`` in this process and report what it did (see ``Outcome``).
    The learner's exceptions pass through; ``rule``'s functions are tripwires meanwhile."""
    before = [model_state(m) for m in models]
    tensors = [(i, a.detach().clone()) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    flags = {i: a.requires_grad for i, a in enumerate(args) if isinstance(a, torch.Tensor)}
    rule.fingerprints()  # taken from the originals, before the tripwires replace them
    offlimits.clear_hits()
    try:
        with offlimits.tripwires(rule), offlimits.watching(rule):
            result = fn(*args, **kwargs)
    except Exception:
        if offlimits.hits():  # a tripwire's error, or what followed it, is not the learner's mistake
            return Outcome(None, offlimits.hits(), [], [], [])
        raise
    changed = [i for i, copy in tensors
               if not torch.equal(args[i].detach(), copy) and not (args[i].isnan() & copy.isnan()).any()]
    switched = [i for i, copy in tensors if args[i].requires_grad and not copy.requires_grad and not flags[i]]
    return Outcome(result, offlimits.hits(), [state_changes(b, model_state(m)) for b, m in zip(before, models)],
                   changed, switched)


def call(name: str, fn: Callable, *args, models: Iterable[nn.Module] = (), **kwargs):
    """``fn(*args, **kwargs)``, refused when it changes anything in ``models`` (hooks, modes,
    requires_grad, .grad, parameters, buffers), changes a tensor argument in place, or reaches
    code that the assignment puts off limits. A function that lives in the grader's runner
    (``vislib.grading``) reports the same ``Outcome`` from there. ``NotImplementedError`` passes
    through to ``exercise``."""
    models = list(models)
    remote = getattr(fn, "run_reported", None)
    outcome = remote(args, kwargs, models) if remote else run_here(fn, args, kwargs, models, _rule.get())
    if outcome.off_limits:
        raise CheckFailure(_("your {name} calls vislib's own implementation or a library that implements the "
                             "exercise ({function}): the exercise is to write it yourself; off limits in this "
                             "assignment: {rule}", name=name, function=outcome.off_limits[0],
                             rule=_rule.get().names()))
    for changes in outcome.model_changes:
        if changes:
            raise ModelChanged(_("your {name} changed the model: {changes}. {advice}", name=name,
                                 changes=joined(change_in_words(c) for c in changes), advice=_advice(changes)),
                               changes)
    for i in outcome.changed_arguments:
        raise CheckFailure(_("your {name} changed its argument number {number} in place; work on a copy (e.g. "
                             "tensor.clone()) or use out-of-place operations", name=name, number=i + 1))
    for i in outcome.grad_switched_arguments:
        raise CheckFailure(_("your {name} set requires_grad on its argument number {number}, the caller's own "
                             "tensor: differentiate with respect to a copy, x.detach().clone().requires_grad_(True), "
                             "and leave the argument as it was", name=name, number=i + 1))
    return outcome.result


def change_in_words(change: str) -> Message | str:
    """One of ``vislib.hooks.state_changes``' phrases (English, also when it comes from the grader's
    runner) as a message; a phrase it does not know stays as it is."""
    if match := re.fullmatch(r"([+-]\d+) hooks are registered on the model", change):
        return _("{count} hooks are registered on the model", count=match[1])
    if match := re.fullmatch(r"the setting (\S+) changed from (.+) to (.+)", change):
        return _("the setting {setting} changed from {before} to {after}", setting=match[1], before=match[2],
                 after=match[3])
    return {"a module of the model was replaced": _("a module of the model was replaced"),
            "the train/eval mode of a module changed": _("the train/eval mode of a module changed"),
            "requires_grad of a parameter changed": _("requires_grad of a parameter changed"),
            ".grad of a parameter changed": _(".grad of a parameter changed"),
            "a parameter's values changed": _("a parameter's values changed"),
            "a buffer changed (BatchNorm's running statistics, for example)":
                _("a buffer changed (BatchNorm's running statistics, for example)")}.get(change, change)


def _advice(changes: list[str]) -> Message:
    if any("hooks" in c for c in changes):
        return _("Remove every hook you register (handle.remove()), best in a `finally:` block.")
    if any("requires_grad" in c for c in changes):
        return _("Put requires_grad back as you found it, or take gradients with torch.autograd.grad.")
    if any(".grad" in c for c in changes):
        return _("Calling .backward() adds into the parameters' .grad: use torch.autograd.grad(score, x), or freeze "
                 "the parameters while you work and restore them after.")
    if any("train/eval mode" in c for c in changes):
        return _("Leave the model's train/eval mode as it was.")
    if any("setting" in c for c in changes):
        return _("Put back every module setting you change (e.g. module.inplace), best in a `finally:` block, or "
                 "leave it alone.")
    return _("Work on copies and leave the model as you found it.")


# --------------------------------------------------------------------------- comparing results


def returned_tensor(name: str, got, shape, what: Message | None = None, why: Message | str = "") -> torch.Tensor:
    """``got`` if it is a tensor of ``shape``; else an error saying what the learner's ``name`` must
    return (``what``, by default the image; ``why``: what the expected shape means, and the case)."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailure(_("your {name} must return {what} as a torch.Tensor, got {type}", name=name,
                             what=what or _("the image"), type=type(got).__name__))
    if got.shape != tuple(shape):
        raise CheckFailure(_("your {name} returns shape {shape}; expected {expected}{why}", name=name,
                             shape=list(got.shape), expected=list(shape), why=why))
    return got


def expect(name: str, got, expected: torch.Tensor, mistakes: dict | None = None, what: Message | None = None,
           rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """``got`` must equal ``expected``; if it equals one of ``mistakes`` (hint -> what that mistake
    gives, or a list of what several mistakes with that hint give) instead, the hint is the message.
    Shapes are checked first, with the expected shape. ``what`` names the result and the case."""
    what = what or _("result")
    if not isinstance(got, torch.Tensor):
        raise CheckFailure(_("your {name} must return a torch.Tensor ({what}), got {type}", name=name, what=what,
                             type=type(got).__name__))
    got = got.detach().to(expected.device, expected.dtype) if got.is_floating_point() else got.detach()
    for hint, wrong in variants(mistakes or {}):
        if got.shape == wrong.shape and not close(expected, wrong, rtol, atol) and close(got, wrong, rtol, atol):
            raise CheckFailure(_("your {name} gives a different {what}: {hint}", name=name, what=what, hint=hint))
    if got.shape != expected.shape:
        raise CheckFailure(_("your {name} returns shape {shape}; expected {expected} ({what})", name=name,
                             shape=list(got.shape), expected=list(expected.shape), what=what))
    if not torch.isfinite(got).all():
        raise CheckFailure(_("your {name} returns NaN or infinite values; look for a division by zero", name=name))
    if not close(got, expected, rtol, atol):
        raise CheckFailure(_("your {name} gives a different {what}: {hint}", name=name, what=what,
                             hint=_describe(got, expected)))


def variants(mistakes: dict) -> list[tuple]:
    """``mistakes`` (hint -> what the mistake gives, or a list of what several mistakes with that hint
    give) as (hint, what one mistake gives) pairs, in order."""
    return [(hint, one) for hint, wrong in mistakes.items() for one in (wrong if isinstance(wrong, list) else [wrong])]


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Same shape and equal up to ``rtol`` and ``atol`` times the larger of 1 and b's largest value."""
    scale = b.abs().max().item() if b.numel() else 0.0
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol * max(1.0, scale))


def _describe(got: torch.Tensor, expected: torch.Tensor) -> Message:
    """A generic hint: a constant factor, a sign, or where the largest difference is."""
    flat_got, flat_expected = got.double().flatten(), expected.double().flatten()
    denominator = flat_expected.dot(flat_expected)
    if denominator > 0:
        factor = (flat_got.dot(flat_expected) / denominator).item()
        if abs(factor) > 1e-6 and torch.allclose(flat_got, factor * flat_expected, rtol=1e-3,
                                                 atol=1e-6 * flat_expected.abs().max().item()):
            if factor < 0:
                return _("it is {factor:.3g} times the expected one with the opposite sign: check the sign",
                         factor=-factor)
            return _("it is {factor:.3g} times the expected one: check how you scale or normalise", factor=factor)
    worst = (flat_got - flat_expected).abs().argmax().item()
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), expected.shape))
    return _("the largest difference is at index {index}: yours {got:.4g}, expected {expected:.4g}",
             index=list(index), got=flat_got[worst].item(), expected=flat_expected[worst].item())
