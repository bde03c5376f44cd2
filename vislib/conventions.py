"""The input conventions every vislib method follows, checked in one place.

- ``x``: a float tensor [B,C,H,W] already normalised for the model; [C,H,W] is a batch of one.
- ``target``: ``None`` = each sample's predicted class; an ``int`` = that class for every
  sample; a sequence or tensor of length B = one class per sample. Anything else is an error,
  never silently truncated or broadcast.
- ``batch_size=None``: as many images per forward pass as runs fastest (``copies_per_pass``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn


def as_batch(x) -> torch.Tensor:
    """``x`` as a float batch [B,C,H,W]; a single [C,H,W] image becomes a batch of one."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor [B,C,H,W], got {type(x).__name__}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(
            f"expected an image batch [B,C,H,W] (or one image [C,H,W]), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected a float tensor, got dtype {x.dtype}")
    return x


def resolve_target(target, logits: torch.Tensor) -> torch.Tensor:
    """One class index per sample, as a long tensor [B] on the logits' device."""
    batch, num_classes = logits.shape[0], logits.shape[-1]
    if target is None:
        classes = logits.detach().argmax(dim=-1)
    elif isinstance(target, bool):
        raise TypeError("target must be None, an int or a sequence of ints, not a bool")
    elif isinstance(target, int):
        classes = torch.full((batch,), target, dtype=torch.long)
    else:
        classes = torch.as_tensor(target).reshape(-1)
        if classes.is_floating_point() or classes.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {classes.dtype}")
        if len(classes) != batch:
            raise ValueError(
                f"target has {len(classes)} entries but the batch has {batch} samples; "
                "give one class per sample, a single int, or None for the predicted class"
            )
    classes = classes.to(device=logits.device, dtype=torch.long)
    if ((classes < 0) | (classes >= num_classes)).any():
        raise ValueError(f"target classes must lie in [0, {num_classes}), got {classes.tolist()}")
    return classes


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


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's class scores [B, classes]; any other output shape is a clear error."""
    logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return class scores [B, classes]; it returned {shape}")
    return logits


def predicted_or_given(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """``target`` resolved against the model's prediction on ``x`` (one forward pass, no grad)."""
    with torch.no_grad():
        return resolve_target(target, logits_of(model, model_input(x)))


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
        return batch_size
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
