"""Saliency: which input pixels the model's decision for one class depends on.

Two families, both explaining the pre-softmax score (logit) of ``target``:

- perturbation: ``occlusion`` hides one window at a time and measures the drop of the score;
- backpropagation: ``gradient`` (d score / d input), and two variants that change only the
  backward rule of every ``nn.ReLU``: ``deconvnet`` and ``guided_backprop``; ``smoothgrad`` and
  ``integrated_gradients`` average gradients over noisy copies or along a path from a baseline.

For a ReLU ``h_out = max(0, h_in)`` and the gradient ``g`` arriving from above, the backward
rules are (Springenberg et al. 2015, "Striving for simplicity"):

    gradient        g_in = g * [h_in > 0]
    deconvnet       g_in = max(g, 0)
    guided backprop g_in = max(g, 0) * [h_in > 0]

The rules are installed with hooks for the duration of one call only: the user's model is never
changed, also with inplace ReLUs, frozen parameters, or a caller inside ``torch.no_grad()``.
"""

from __future__ import annotations

import numbers
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from vislib.conventions import (
    as_baseline,
    as_batch,
    check_number,
    check_positive_int,
    copies_per_pass,
    fast_layout,
    logits_of,
    model_input,
    predicted_or_given,
    resolve_target,
    reuse_freed_memory,
    selected_scores,
)
from vislib.hooks import uses_model

HEATMAP_REDUCTIONS = ("abs_max", "square_sum", "abs_sum", "sum")
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


# --------------------------------------------------------------------------- shared plumbing


def batch_slices(total: int, batch_size: int, progress: bool = True, desc: str = ""):
    """Slices ``[0, total)`` in chunks of ``batch_size``, with a progress bar over the chunks."""
    batch_size = check_positive_int(batch_size, "batch_size")
    reuse_freed_memory()
    starts = range(0, total, batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False):
        yield slice(start, min(start + batch_size, total))


def logits_of_copies(model: nn.Module, fill, like: torch.Tensor, total: int, batch_size: int,
                     progress: bool = True, desc: str = "") -> torch.Tensor:
    """Class scores [total, classes] of ``total`` inputs shaped like the images ``like``, which
    ``fill(copies, index)`` writes into ``copies`` one batch at a time (``index``: a LongTensor of
    copy numbers), so many perturbed copies share each forward pass and never all sit in memory.

    ``copies`` is one buffer, reused from pass to pass and laid out as ``fast_layout``: fresh
    memory for every batch would cost page faults on a CPU. ``fill`` may keep what it wrote in an
    earlier pass only while the buffer's version (``copies._version``) shows that the model
    did not write into its input."""
    buffer = fast_layout(like.new_empty((min(batch_size, total), *like.shape[1:])))
    chunks = []
    with torch.no_grad():
        for part in batch_slices(total, batch_size, progress, desc):
            copies = buffer[: part.stop - part.start]
            fill(copies, torch.arange(part.start, part.stop, device=like.device))
            chunks.append(logits_of(model, copies))
    return torch.cat(chunks)


class _PositiveGradientToInput(torch.autograd.Function):
    """Deconvnet's ReLU backward. Forward: the ReLU's output as it is. Backward: the positive
    part of the gradient, sent straight to the ReLU's *input*, past the ReLU's own mask."""

    @staticmethod
    def forward(ctx, pre_activation, output):
        return output.clone()  # a fresh tensor, tied to pre_activation in the graph

    @staticmethod
    def backward(ctx, grad):
        return _keep_positive(grad), None


def _keep_positive(grad: torch.Tensor) -> torch.Tensor:
    """The positive part of a gradient: what both ReLU rules let through."""
    return grad.clamp(min=0)


@contextmanager
def relu_rule(model: nn.Module, rule: str):
    """Inside the block every ``nn.ReLU`` of ``model`` backpropagates by ``rule``
    ("guided" or "deconvnet"); the forward pass is unchanged.

    - guided: a hook on each ReLU's output keeps the positive part of the gradient arriving
      there; the ReLU's own backward then applies the forward mask ``[h_in > 0]``. This costs
      one clamp per ReLU and works on inplace ReLUs as they are.
    - deconvnet must skip the ReLU's mask: a forward pre-hook hands the ReLU a clone of its
      input (so an inplace ReLU cannot overwrite the pre-activation), and the forward hook
      returns the output through ``_PositiveGradientToInput``, tied to that pre-activation.

    A module used several times in one forward pass (torchvision's BasicBlock reuses
    ``self.relu``) is handled per call. Functional ``F.relu`` calls inside ``forward`` cannot be
    hooked and keep the plain gradient.
    """
    if rule not in ("guided", "deconvnet"):
        raise ValueError(f"rule must be 'guided' or 'deconvnet', got {rule!r}")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError(f"{rule} needs nn.ReLU modules, and {type(model).__name__} has none "
                         "(functional F.relu calls cannot be hooked)")
    pending: dict[nn.Module, list] = {}

    def clamp_gradient_at_output(module, inputs, output):
        if output.requires_grad:
            output.register_hook(_keep_positive)

    def keep_input(module, inputs):
        pending.setdefault(module, []).append(inputs[0])
        return (inputs[0].clone(),)

    def bypass_mask(module, inputs, output):
        return _PositiveGradientToInput.apply(pending[module].pop(), output.detach())

    handles = []
    try:
        for relu in relus:
            if rule == "guided":
                handles.append(relu.register_forward_hook(clamp_gradient_at_output))
            else:
                handles.append(relu.register_forward_pre_hook(keep_input))
                handles.append(relu.register_forward_hook(bypass_mask))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _input_gradient(model: nn.Module, x, target, rule: str | None = None) -> torch.Tensor:
    """d score(target) / d x for a batch, with the plain ReLU backward or a modified ``rule``."""
    x = as_batch(x)
    with relu_rule(model, rule) if rule is not None else nullcontext():
        inputs = x.detach().requires_grad_(True)  # a new tensor object: the caller's x is not marked
        logits = logits_of(model, model_input(inputs))  # a copy, which a first layer working inplace may overwrite
        scores = selected_scores(logits, resolve_target(target, logits))
        (grad,) = torch.autograd.grad(scores.sum(), inputs)
    return grad.detach()


# --------------------------------------------------------------------------- backpropagation


@uses_model
def gradient(model: nn.Module, x, target=None) -> torch.Tensor:
    """Vanilla gradient (Simonyan et al. 2014): d score / d x, signed, shaped like ``x``."""
    return _input_gradient(model, x, target)


@uses_model
def deconvnet(model: nn.Module, x, target=None) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus 2014): at every ReLU only positive gradient passes back,
    whatever the forward activation was. Signed, shaped like ``x``."""
    return _input_gradient(model, x, target, rule="deconvnet")


@uses_model
def guided_backprop(model: nn.Module, x, target=None) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015): at every ReLU only positive gradient
    passes back, and only where the forward activation was positive. Signed, shaped like ``x``."""
    return _input_gradient(model, x, target, rule="guided")


@uses_model
def smoothgrad(model: nn.Module, x, target=None, samples: int = 25, noise: float = 0.15, method=gradient,
               seed: int = 0, batch_size: int | None = None, progress: bool = True) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean of ``method``'s maps over ``samples`` noisy
    copies of each image; the noise's standard deviation is ``noise`` times the image's value
    range (max - min). ``target=None`` uses the prediction on the clean image for every copy.
    ``batch_size`` copies share one pass (default: ``copies_per_pass``).

    Noisy copy number s of every image uses the same noise pattern, drawn from ``seed`` (scaled
    by the image's own range), so an image gets the same map alone as inside any batch."""
    x = as_batch(x)
    samples = check_positive_int(samples, "samples")
    noise = check_number(noise, "noise")
    classes = predicted_or_given(model, x, target)
    patterns = torch.randn((samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed))
    patterns = patterns.to(x.device, x.dtype)
    sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    batch = x.shape[0]
    total = torch.zeros_like(x)
    for part in batch_slices(samples * batch, copies_per_pass(x, batch_size, backward=True), progress, "smoothgrad"):
        index = torch.arange(part.start, part.stop, device=x.device)
        sample, owner = index // batch, index % batch
        noisy = x.index_select(0, owner) + patterns.index_select(0, sample) * sigma[owner].view(-1, 1, 1, 1)
        total.index_add_(0, owner, method(model, noisy, target=classes[owner]))
    return total / samples


def _path_weights(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Points ``alpha`` in [0,1] and weights of the quadrature rule for the path integral: the
    rules of Captum's ``IntegratedGradients``, except that the trapezoid weights sum to 1 here, so
    that a linear model's attributions are exact."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (1 + nodes), 0.5 * weights
    if steps < 2:
        raise ValueError("the Riemann rules need steps >= 2")
    if method == "riemann_trapezoid":  # spacing 1/(steps-1); Captum's weights sum to 1 - 1/steps instead
        weights = np.full(steps, 1 / (steps - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0, 1, steps), weights
    weights = np.full(steps, 1 / steps)
    start = {"riemann_left": 0.0, "riemann_middle": 0.5 / steps, "riemann_right": 1 / steps}[method]
    return np.linspace(start, start + 1 - 1 / steps, steps), weights


@uses_model
def integrated_gradients(model: nn.Module, x, target=None, baseline=0.0, steps: int = 50,
                         method: str = "gausslegendre", batch_size: int | None = None,
                         progress: bool = True) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017): (x - baseline) times the mean gradient
    along the straight path from ``baseline`` (a number or a tensor broadcastable to ``x``) to
    ``x``, by the quadrature ``method`` with ``steps`` points. The attributions sum to about
    score(x) - score(baseline) ("completeness"). ``target=None`` uses the prediction on ``x``.
    ``batch_size`` points of the path share one pass (default: ``copies_per_pass``)."""
    x = as_batch(x)
    if method not in IG_METHODS:
        raise ValueError(f"method must be one of {IG_METHODS}, got {method!r}")
    steps = check_positive_int(steps, "steps")
    classes = predicted_or_given(model, x, target)
    base = as_baseline(baseline, x).expand_as(x)
    alphas, weights = (torch.as_tensor(a, dtype=x.dtype, device=x.device) for a in _path_weights(steps, method))
    batch, difference = x.shape[0], x - base
    # the path's start and direction in the layout the model reads fastest; rows gathered from them keep it
    start, direction = fast_layout(base.detach().contiguous()), fast_layout(difference.detach())
    total = torch.zeros_like(x)
    for part in batch_slices(steps * batch, copies_per_pass(x, batch_size, backward=True), progress,
                             "integrated gradients"):
        index = torch.arange(part.start, part.stop, device=x.device)
        step, owner = index // batch, index % batch
        # The gradient is taken at each point's start: d point / d start = 1, so it is the gradient at
        # the point, and the model reads the point itself, a new tensor, with no copy made for it.
        starts = start[owner].requires_grad_(True)
        points = torch.addcmul(starts, alphas[step].view(-1, 1, 1, 1), direction[owner])
        scores = selected_scores(logits_of(model, points), classes[owner])
        (grads,) = torch.autograd.grad(scores.sum(), starts)
        # index_add_ reads a source in the usual layout 5x faster than a channels-last one
        weighted = grads.mul_(weights[step].view(-1, 1, 1, 1)).contiguous()
        total.index_add_(0, owner, weighted)
    return difference * total


# --------------------------------------------------------------------------- perturbation


def _pair(value, name: str) -> tuple[int, int]:
    """``value`` as (height, width): one positive int for both, or a pair of them."""
    pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
                                 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _window_cover(size: int, window: int, stride: int, device) -> torch.Tensor:
    """[positions, size] bool: which pixels of one axis each window position covers. As in
    Captum, positions start every ``stride`` pixels until the window reaches the border (the
    last one is cut at the border when the stride does not divide the free space)."""
    positions = 1 + -(-(size - window) // stride)
    starts = torch.arange(positions, device=device)[:, None] * stride
    pixels = torch.arange(size, device=device)[None]
    return (pixels >= starts) & (pixels < starts + window)


@uses_model
def occlusion(model: nn.Module, x, target=None, window=8, stride=4, baseline=0.0, batch_size: int | None = None,
              progress: bool = True) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus 2014) as defined by Captum's ``Occlusion``: slide a
    ``window`` (all channels) over the image every ``stride`` pixels, replace it with
    ``baseline`` (a number or a tensor broadcastable to ``x``), and give each pixel the average,
    over the windows that cover it, of score(original) - score(occluded). Positive: hiding
    the pixel lowers the score, so the model relied on it. Returns [B,H,W].

    ``batch_size`` occluded copies (of any of the images) share one forward pass (default:
    ``copies_per_pass``). A copy is made by moving the window: the pixels under the previous
    window are put back and the new window is hidden, so each copy costs a window's worth of
    writes, not an image's."""
    x = as_batch(x)
    height, width = x.shape[-2:]
    (win_h, win_w), (step_h, step_w) = _pair(window, "window"), _pair(stride, "stride")
    if win_h > height or win_w > width:
        raise ValueError(f"window {win_h}x{win_w} is larger than the image {height}x{width}")
    rows = _window_cover(height, win_h, step_h, x.device)
    cols = _window_cover(width, win_w, step_w, x.device)
    if not (rows.any(0).all() and cols.any(0).all()):  # Captum refuses this too
        raise ValueError(f"stride {step_h}x{step_w} is larger than window {win_h}x{win_w}: pixels between "
                         "windows would never be occluded; use a stride <= the window")
    base = as_baseline(baseline, x)
    if base.ndim > 0:
        base = base.expand_as(x)
    batch, positions = x.shape[0], rows.shape[0] * cols.shape[0]

    def window_at(position: int) -> tuple[slice, slice]:
        row, col = divmod(position, cols.shape[0])
        return slice(row * step_h, row * step_h + win_h), slice(col * step_w, col * step_w + win_w)

    per_pass = copies_per_pass(x, batch_size)
    written = [None]  # the buffer's version after the last fill

    def occlude(copies, index):
        # Slot s holds copy number n - per_pass from the pass before, unless the buffer is new or
        # the model wrote into its input (the version moved): then every copy is rebuilt.
        rebuild = copies._version != written[0]
        for slot, number in enumerate(index.tolist()):
            image, position = divmod(number, positions)
            before = number - per_pass
            if rebuild or before // positions != image:
                copies[slot] = x[image]
            else:
                show_rows, show_cols = window_at(before % positions)
                copies[slot, :, show_rows, show_cols] = x[image, :, show_rows, show_cols]
            hide_rows, hide_cols = window_at(position)
            copies[slot, :, hide_rows, hide_cols] = base if base.ndim == 0 else base[image, :, hide_rows, hide_cols]
        written[0] = copies._version

    with torch.no_grad():
        logits = logits_of(model, model_input(x))
    classes = resolve_target(target, logits)
    original = selected_scores(logits, classes)
    logits = logits_of_copies(model, occlude, x, batch * positions, per_pass, progress, "occlusion")
    owners = torch.arange(batch, device=x.device).repeat_interleave(positions)
    drops = (original[owners] - selected_scores(logits, classes[owners])).view(batch, rows.shape[0], cols.shape[0])
    rows_f, cols_f = rows.to(x.dtype), cols.to(x.dtype)
    summed = rows_f.T @ drops @ cols_f  # [B,H,W]: sum over the windows covering each pixel
    covering = rows_f.sum(0)[:, None] * cols_f.sum(0)[None, :]
    return summed / covering


# --------------------------------------------------------------------------- display


def to_heatmap(attr, reduce: str = "abs_max") -> torch.Tensor:
    """One value per pixel from a per-channel attribution [B,C,H,W] (or [C,H,W]) -> [B,H,W]:

    - ``"abs_max"``: the largest absolute value over the channels (Simonyan et al. 2014);
    - ``"square_sum"``: the sum of squares over channels (magnitude, sign ignored);
    - ``"abs_sum"``: the sum of absolute values; ``"sum"``: the signed sum.
    """
    attr = as_batch(attr)
    if reduce == "abs_max":
        return attr.abs().amax(dim=1)
    if reduce == "square_sum":
        return attr.square().sum(dim=1)
    if reduce == "abs_sum":
        return attr.abs().sum(dim=1)
    if reduce == "sum":
        return attr.sum(dim=1)
    raise ValueError(f"reduce must be one of {HEATMAP_REDUCTIONS}, got {reduce!r}")
