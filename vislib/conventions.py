"""The input conventions every vislib method follows, checked in one place.

- ``x``: a float tensor [B,C,H,W] of finite values, already normalised for the model; [C,H,W]
  is a batch of one. An empty batch, NaN or Inf is a ``ValueError`` that names the argument.
- ``target``: ``None`` = each sample's predicted class; an int (Python, numpy or a 0-d tensor)
  = that class for every sample; a 1-D sequence or tensor of length B = one class per sample.
  Anything else is an error, never silently truncated or broadcast.
- the model's output: the class scores [B, classes], or a tuple, dict or object holding them
  (``as_logits`` gives the one rule).
- ``batch_size=None``: as many images per forward pass as runs fastest (``copies_per_pass``).

How a method enters the model (eval mode, frozen parameters, everything restored) is
``vislib.hooks.frozen``, applied to every method by ``vislib.hooks.uses_model``."""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np
import torch
import torch.nn as nn


def as_batch(x, name: str = "x") -> torch.Tensor:
    """``x`` as a float batch [B,C,H,W] of finite values; a single [C,H,W] image becomes a batch
    of one. Errors name the argument (``name``) and what was expected."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B,C,H,W], got {type(x).__name__}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(
            f"{name} must be an image batch [B,C,H,W] (or one image [C,H,W]), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got dtype {x.dtype} (convert images with "
                        "vislib.models.preprocess)")
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name} holds no pixels: shape {tuple(x.shape)}")
    if x.is_inference():  # made under torch.inference_mode(): a normal copy can take part in autograd
        with torch.inference_mode(False):
            x = x.clone()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def resolve_target(target, logits: torch.Tensor) -> torch.Tensor:
    """One class index per sample, as a long tensor [B] on the logits' device. A single class
    may be a Python or numpy integer or a 0-d integer tensor."""
    batch, num_classes = logits.shape[0], logits.shape[-1]
    if isinstance(target, bool) or (isinstance(target, torch.Tensor) and target.dtype == torch.bool):
        raise TypeError("target must be None, an int or a sequence of ints, not a bool")
    if target is None:
        if not torch.isfinite(logits).all():
            raise ValueError("the model's class scores contain NaN or infinite values, so it predicts no class")
        classes = logits.detach().argmax(dim=-1)
    elif isinstance(target, numbers.Integral) or (isinstance(target, torch.Tensor) and target.ndim == 0
                                                  and not target.is_floating_point()):
        classes = torch.full((batch,), int(target), dtype=torch.long)
    else:
        try:
            classes = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"target must be None, an int or a sequence of ints, got {target!r}") from error
        if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool \
                or not (classes.dtype.is_signed or classes.dtype == torch.uint8):
            raise TypeError(f"target must hold integer class indices, got dtype {classes.dtype}")
        if classes.ndim != 1:
            raise ValueError(f"target must be a single class or one class per sample, got shape {tuple(classes.shape)}")
        if len(classes) != batch:
            raise ValueError(
                f"target has {len(classes)} entries but the batch has {batch} samples; "
                "give one class per sample, a single int, or None for the predicted class"
            )
    classes = classes.to(device=logits.device, dtype=torch.long)
    if ((classes < 0) | (classes >= num_classes)).any():
        raise ValueError(f"target classes must lie in [0, {num_classes}), got {classes.tolist()}")
    return classes


def as_baseline(baseline, x: torch.Tensor) -> torch.Tensor:
    """``baseline`` (a number or a tensor broadcastable to ``x``) as a finite tensor with
    ``x``'s dtype and device, not expanded."""
    try:
        base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
        fits = torch.broadcast_shapes(base.shape, x.shape) == x.shape
    except (TypeError, ValueError, RuntimeError):
        fits = False
    if not fits:
        raise ValueError(f"baseline must be a number or a tensor broadcastable to x {tuple(x.shape)}, "
                         f"got {baseline!r}")
    if not torch.isfinite(base).all():
        raise ValueError("baseline contains NaN or infinite values")
    return base


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout the device's convolutions read fastest: channels-last on a CPU, which
    oneDNN reads directly (a ResNet-18 forward pass over 8 images of 224 px: 360 ms from the
    usual layout, 283 ms from channels-last); ``x`` itself elsewhere or when already laid out
    so. Same values, same results up to float rounding."""
    if x.device.type == "cpu" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def model_input(x: torch.Tensor) -> torch.Tensor:
    """A fresh copy of the caller's batch ``x`` in ``fast_layout``, for the model to read: a first
    layer working inplace cannot overwrite the caller's tensor."""
    laid_out = fast_layout(x)
    return laid_out.clone() if laid_out is x else laid_out


def selected_scores(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The pre-softmax score of each sample's class: [B]."""
    return logits.gather(1, classes[:, None])[:, 0]


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def as_logits(output, batch: int) -> torch.Tensor:
    """The class scores [B, classes] in a model's ``output``, by one rule for every method:

    - a tensor is the scores itself;
    - an object with a ``.logits`` attribute (HuggingFace's model outputs), or a dict with the
      key ``"logits"``, gives that;
    - a tuple or list gives its first element (torchvision's Inception and GoogLeNet outputs
      and ``return_dict=False`` outputs put the scores first).

    Anything else, or scores that are not [B, classes], is a ``ValueError`` that says how to
    wrap the model."""
    scores = output
    if isinstance(output, dict) or hasattr(output, "logits"):
        scores = output.get("logits") if isinstance(output, dict) else output.logits
    elif isinstance(output, (tuple, list)) and output:
        scores = output[0]
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or scores.shape[0] != batch:
        what = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(output).__name__
        if isinstance(output, dict):
            what = f"a dict with keys {sorted(map(str, output))}"
        raise ValueError(
            f"the model must return class scores [B, classes] for a batch of {batch}; it returned {what}. "
            "Wrap it so that forward returns the scores, e.g. "
            "nn.Sequential(model, vislib.conventions.Pick('out')) for a dict output"
        )
    return scores


class Pick(nn.Module):
    """Picks one entry of a model's output (a dict key or a tuple index), so that a model with
    a structured output can be wrapped into one that returns class scores."""

    def __init__(self, key):
        super().__init__()
        self.key = key

    def forward(self, output):
        return output[self.key]


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the model computes in (float32 for a model without float parameters)."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return param.dtype if param is not None else torch.float32


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's class scores [B, classes] for ``x`` (see ``as_logits`` for the rule)."""
    return as_logits(model(x), x.shape[0])


def predicted_or_given(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """``target`` resolved against the model's prediction on ``x`` (one forward pass, no grad)."""
    with torch.no_grad():
        return resolve_target(target, logits_of(model, model_input(x)))


def check_positive_int(value, name: str) -> int:
    """``value`` when it is a positive int (numpy integers too, not bools); else a ValueError
    that names the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_number(value, name: str, positive: bool = False) -> float:
    """``value`` as a finite float >= 0 (> 0 with ``positive``); else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return value


PIXELS_PER_PASS = 2**18


def copies_per_pass(x: torch.Tensor, batch_size: int | None = None, backward: bool = False) -> int:
    """How many images like ``x`` (one image or a batch) share one pass through the model:
    ``batch_size`` when given; by default 64, or fewer on a CPU: about ``PIXELS_PER_PASS``
    pixels per forward pass (64 images of 64 px, 6 of 224 px), half that when the pass is
    followed by a ``backward`` pass, which keeps every activation until it runs (32 images of
    64 px, 3 of 224 px). This also bounds peak memory.

    Why not more: the C allocator (glibc) maps every block above 32 MB fresh from the system,
    and each pass then faults it in again page by page (see ``reuse_freed_memory``). Measured
    on ShapesNet's forward and backward pass at 224 px: 10.3-10.8 ms per image in batches of
    2 to 4, 13.8 ms in batches of 8 (2,106 page faults per image); at 64 px, batches of 32 are
    the fastest (0.99 ms per image; 1.02 ms in batches of 16, 1.20 ms in batches of 8). One
    occlusion map at 224 px (forward passes only): 3.5 s in batches of 6, 3.8 s in batches of 3."""
    if batch_size is not None:
        return check_positive_int(batch_size, "batch_size")
    if x.device.type != "cpu":
        return 64
    pixels = PIXELS_PER_PASS // 2 if backward else PIXELS_PER_PASS
    return max(1, min(64, -(-pixels // (x.shape[-2] * x.shape[-1]))))


@functools.cache
def reuse_freed_memory() -> None:
    """Let the C allocator keep freed memory for the next pass (once per process; every
    many-pass loop of vislib calls it first).

    glibc hands a freed block back to the system when its heap has more than twice its "mmap
    threshold" free, and the next pass faults the memory in again. It raises that threshold to
    the size of any mapped block that is freed, up to 32 MB (``man mallopt``, M_MMAP_THRESHOLD):
    freeing one block of 31 MB here does what freeing any large tensor would do later. One
    occlusion map of ShapesNet at 224 px: 6.8 s with 1.1 million page faults per call before,
    4.1 s with none after. With another allocator this is one allocation, freed at once."""
    torch.empty(31 * 2**20, dtype=torch.uint8)  # allocated and freed at once; its pages are never touched
