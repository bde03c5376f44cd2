"""Looking inside a model without changing it: layers by name, recorded activations and
gradients, and the one context through which every vislib method enters a user's model.

The rule, kept here in one place: every method that runs a user's model is decorated with
``uses_model``, so it runs inside ``frozen``: the model is in eval mode (an explanation of a
model in train mode is that of its eval mode; BatchNorm statistics never change, dropout is
off), its parameters are frozen, gradients work even under ``torch.no_grad()`` or
``torch.inference_mode()``, and on exit, also when the call raises, no hook is left and
every ``requires_grad``, ``.grad``, train/eval flag and buffer is as it was."""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn


def layer_name(model: nn.Module, layer) -> str:
    """The dotted name of ``layer`` (a name or a submodule of ``model``)."""
    if isinstance(layer, str):
        get_layer(model, layer)
        return layer
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"{type(layer).__name__} is not a submodule of the given model")


def get_layer(model: nn.Module, name) -> nn.Module:
    """The submodule called ``name`` (dotted, e.g. ``"features.relu4"``); a module is returned
    as it is after checking that it belongs to ``model``. An unknown name is a ``KeyError``
    that lists the closest valid names."""
    if isinstance(name, nn.Module):
        layer_name(model, name)
        return name
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    valid = [n for n in modules if n]
    close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.4) or valid[:5]
    raise KeyError(f"no layer named {name!r}; closest valid names: {', '.join(close)}")


@dataclass
class Recording:
    """What ``capture`` saw: activations and gradients by layer name (detached copies), and how
    many times each layer ran. A module that runs several times (torchvision's BasicBlock reuses
    one ReLU) keeps its last call, and its gradient is that same call's."""

    activations: dict = field(default_factory=dict)
    gradients: dict = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.activations[name]


@contextmanager
def capture(model: nn.Module, layers, grads: bool = False):
    """Record the outputs of one or more layers (and their gradients, with ``grads=True``)
    while the body runs a forward (and backward) pass.

    >>> with capture(model, ["features.relu1", "features.relu4"]) as rec:
    ...     model(x)
    >>> rec["features.relu4"].shape

    Outputs are stored as detached copies, so an inplace ReLU that runs later cannot
    overwrite them. With ``grads=True`` a gradient is recorded when the layer's output takes
    part in a backward pass. If nothing before the layer requires grad (a frozen model and a
    plain input), its output becomes the start of the autograd graph, so a backward pass
    stops there instead of running on to the input: this halves Grad-CAM's cost. On exit,
    also after an exception, every hook is removed and each module's train/eval mode is as it was.
    """
    names = [layers] if isinstance(layers, (str, nn.Module)) else list(layers)
    if not names:
        raise ValueError("capture needs at least one layer")
    named = {layer_name(model, n): get_layer(model, n) for n in names}
    recording = Recording()
    handles = []

    def record(name):
        def hook(module, inputs, output):
            recording.calls[name] += 1
            call = recording.calls[name]

            def save_grad(grad):
                if call == recording.calls[name]:  # only the call whose activation is kept
                    recording.gradients[name] = grad.detach().clone()

            if grads and torch.is_grad_enabled() and output.is_floating_point() and not output.requires_grad:
                # Start the graph here. Later layers get a copy, so the output itself is never
                # modified again and is recorded without copying it.
                recording.activations[name] = output.detach()
                start = output.detach().requires_grad_(True)
                start.register_hook(save_grad)
                return start.clone()  # not the leaf itself: a following inplace ReLU may modify it
            recording.activations[name] = output.detach().clone()
            if grads and output.requires_grad:
                output.register_hook(save_grad)
            return None
        return hook

    modes = {m: m.training for m in model.modules()}
    try:
        for name, module in named.items():
            handles.append(module.register_forward_hook(record(name)))
        yield recording
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training  # this module only: .train() would recurse into children


@contextmanager
def differentiable_output(model: nn.Module, layer):
    """Inside the block, a forward pass of ``model`` keeps ``layer``'s output, with its autograd
    graph, in the returned dict under ``"output"``: for methods that differentiate *through* a
    layer's activations (an attack on a Grad-CAM map). Unlike ``capture``'s detached copies, the
    kept tensor is the one the graph uses; the rest of the network gets a clone, so an inplace
    ReLU that runs later changes the clone, not it. The hook is removed on exit."""
    kept = {}

    def keep(module, inputs, output):
        kept["output"] = output
        return output.clone()

    handle = get_layer(model, layer).register_forward_hook(keep)
    try:
        yield kept
    finally:
        handle.remove()


_frozen_now: set[int] = set()  # id() of each model inside ``frozen`` right now


@contextmanager
def frozen(model: nn.Module):
    """The one context through which vislib enters a user's model: inside the block the model
    is a fixed function, and afterwards it is handed back untouched.

    - every module is in eval mode, so an explanation of a model in train mode is that of its
      eval mode: BatchNorm uses (and never updates) its running statistics, dropout is off, and
      one image gives the same map alone as inside a batch;
    - parameters have ``requires_grad=False``, so a backward pass reaches the input without
      accumulating into any parameter's ``.grad``;
    - gradients are on, even when the caller is inside ``torch.no_grad()`` or
      ``torch.inference_mode()``.

    On exit, also after an exception, each parameter's ``requires_grad`` and ``.grad``, each
    module's train/eval flag and every buffer are as they were. Entering a model that is
    already inside ``frozen`` costs nothing: the outer block restores it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if id(model) in _frozen_now:
        with torch.inference_mode(False), torch.enable_grad():
            yield model
        return
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = {m: m.training for m in model.modules()}
    _frozen_now.add(id(model))
    try:
        for module in modes:
            module.training = False
        for p in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield model
    finally:
        _frozen_now.discard(id(model))
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, training in modes.items():
            module.training = training  # this module only: .train() would recurse into children


def uses_model(method):
    """Decorator for every vislib method that runs a user's model (its first argument): the
    whole call runs inside ``frozen``, and a result that holds NaN or Inf is an error instead
    of a silent wrong answer."""

    @functools.wraps(method)
    def run(model, *args, **kwargs):
        with frozen(model):
            result = method(model, *args, **kwargs)
        _check_finite(result, method.__name__)
        return result

    return run


def _check_finite(result, name: str) -> None:
    tensors = [result] if isinstance(result, torch.Tensor) else (
        [getattr(result, f.name) for f in dataclasses.fields(result)] if dataclasses.is_dataclass(result)
        else list(result) if isinstance(result, tuple) else [])
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{name} computed NaN or infinite values: the model's scores or gradients overflow "
                             "for this input (check the model's weights and dtype, and the input's scale)")


def count_hooks(model: nn.Module) -> int:
    """How many hooks are registered on all modules of ``model`` (tests use it: it must be 0)."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_state_dict_hooks", "_load_state_dict_pre_hooks")
    return sum(len(getattr(m, kind, {})) for m in model.modules() for kind in kinds)


_SIMPLE = (bool, int, float, str, type(None))


def _settings(module: nn.Module) -> dict:
    """A module's own settings: its public attributes of simple types (``ReLU.inplace``, a conv's
    ``stride``, BatchNorm's ``momentum``), i.e. ``vars(module)`` without parameters, buffers,
    submodules, hook dictionaries (all private) and the train/eval flag (compared on its own)."""
    return {key: value for key, value in vars(module).items()
            if not key.startswith("_") and key != "training"
            and (isinstance(value, _SIMPLE)
                 or isinstance(value, tuple) and all(isinstance(v, _SIMPLE) for v in value))}


def model_state(model: nn.Module) -> dict:
    """A copy of everything vislib promises not to change in a model: hooks, modules, modes, module
    settings (such as ``ReLU.inplace``), ``requires_grad``, ``.grad``, parameters and buffers.
    ``state_changes`` compares two."""
    return {
        "hooks": count_hooks(model),
        "modules": [(name, type(m), id(m)) for name, m in model.named_modules()],
        "modes": [m.training for m in model.modules()],
        "settings": {name: _settings(m) for name, m in model.named_modules()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else (id(p.grad), p.grad.detach().clone()) for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.detach().clone() for b in model.buffers()],
    }


def state_changes(before: dict, after: dict) -> list[str]:
    """What differs between two ``model_state`` copies, in words (empty when nothing does)."""
    changes = []
    if after["hooks"] != before["hooks"]:
        changes.append(f"{after['hooks'] - before['hooks']:+d} hooks are registered on the model")
    if after["modules"] != before["modules"]:
        changes.append("a module of the model was replaced")
    if after["modes"] != before["modes"]:
        changes.append("the train/eval mode of a module changed")
    for name, settings in before["settings"].items():
        for key, value in settings.items():
            now = after["settings"].get(name, {}).get(key, value)
            if now != value:
                changes.append(f"the setting {name or 'model'}.{key} changed from {value!r} to {now!r}")
    if after["requires_grad"] != before["requires_grad"]:
        changes.append("requires_grad of a parameter changed")
    for b, a in zip(before["grads"], after["grads"], strict=True):
        if (b is None) != (a is None) or (b is not None and (a[0] != b[0] or not torch.equal(a[1], b[1]))):
            changes.append(".grad of a parameter changed")
            break
    if any(not torch.equal(a, b) for a, b in zip(before["params"], after["params"], strict=True)):
        changes.append("a parameter's values changed")
    if any(not torch.equal(a, b) for a, b in zip(before["buffers"], after["buffers"], strict=True)):
        changes.append("a buffer changed (BatchNorm's running statistics, for example)")
    return changes
