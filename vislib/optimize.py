"""Optimisation-based visualisation: freeze the network and optimise the image instead.

The lecture's recipe is gradient ascent on the input, I* = argmax_I f(I) - Reg(I): start from
some image, ask "what change makes the score bigger?", take a small step, repeat. Here

- an *objective* says what f is: a class logit, one channel, one neuron or a whole layer, or a
  weighted sum of those (``2 * channel("features.relu3", 5) - class_logit(0)``);
- ``visualize`` runs the ascent, with the regularisers (L2, total variation, periodic blur),
  robustness transforms (jitter, scale, rotation) and image parameterisations (pixels, or
  Lucent's decorrelated Fourier basis) that turn noisy adversarial patterns into pictures;
- ``invert`` reconstructs an image from one layer's features (Mahendran & Vedaldi, 2015);
- ``deep_dream`` amplifies whatever a layer already sees in a photo (Mordvintsev et al., 2015).

Images live in the model's input space. ``normalize=False`` (the default) means the model takes
RGB in [0, 1] (ShapesNet); ``normalize=True`` means it takes ImageNet-normalised input (the
torchvision models); the result is returned in that same space, so ``model(result)`` works,
and ``vislib.models.deprocess`` turns a normalised result back into a picture. Internally the
image is always RGB in [0, 1].
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm, trange

from vislib.conventions import as_batch, as_logits, model_device, model_dtype, resolve_target
from vislib.hooks import capture, get_layer, layer_name, uses_model
from vislib.models import IMAGENET_MEAN, IMAGENET_STD

# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class _Term:
    """One score to maximise: ``reduce`` maps a layer's output (``layer=None``: the model's
    output, the logits) to one value per image, [B]; ``weight`` scales it in the sum."""

    layer: object
    reduce: Callable[[torch.Tensor], torch.Tensor]
    label: str
    weight: float = 1.0


class Objective:
    """A weighted sum of scores, all read from one forward pass; bigger is better.

    Objectives add, subtract and scale by numbers (``a + 0.5 * b - c``). Calling one,
    ``objective(model, x)``, runs the model on ``x`` and returns the value per image, [B],
    with its graph (so it can be maximised); under ``torch.no_grad()`` it is just a measurement.
    """

    def __init__(self, terms):
        self.terms = tuple(terms)

    def __add__(self, other):
        if isinstance(other, numbers.Number) and other == 0:  # lets sum() start from 0
            return self
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(self.terms + other.terms)

    __radd__ = __add__

    def __mul__(self, factor):
        if not isinstance(factor, numbers.Real) or isinstance(factor, bool):
            return NotImplemented
        return Objective(replace(t, weight=t.weight * float(factor)) for t in self.terms)

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1

    def __sub__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-other)

    def __repr__(self):
        return " + ".join(f"{t.weight:g} * {t.label}" for t in self.terms)

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _evaluate(model, as_batch(x), self.terms)


class _EnoughSeen(Exception):
    """Raised by a hook to end the forward pass once every layer the objective reads has run."""


def _evaluate(model: nn.Module, x: torch.Tensor, terms) -> torch.Tensor:
    """The weighted sum of ``terms`` for each image of ``x``, from one forward pass.

    Unlike ``hooks.capture`` (which keeps detached copies for looking at), each layer term is
    reduced inside the layer's forward hook, the moment the output exists: no copy is made,
    the graph back to ``x`` is kept, and an inplace ReLU that runs later cannot change the
    value. When no term needs the logits, the forward pass stops after the last layer needed.
    """
    by_module: dict[nn.Module, list[int]] = {}
    for i, term in enumerate(terms):
        if term.layer is not None:
            by_module.setdefault(get_layer(model, term.layer), []).append(i)
    values: list[torch.Tensor | None] = [None] * len(terms)
    needs_logits = any(term.layer is None for term in terms)

    def hook(module, inputs, output):
        for i in by_module[module]:
            values[i] = terms[i].reduce(output)
        if not needs_logits and all(v is not None for v in values):
            raise _EnoughSeen

    handles = [module.register_forward_hook(hook) for module in by_module]
    try:
        try:
            output = model(x.to(model_dtype(model)))
        except _EnoughSeen:
            output = None
        for i, term in enumerate(terms):
            if term.layer is None:
                values[i] = term.reduce(as_logits(output, len(x)))
    finally:
        for handle in handles:
            handle.remove()
    missing = [terms[i].label for i, v in enumerate(values) if v is None]
    if missing:
        raise RuntimeError(f"these layers never ran in the forward pass: {', '.join(missing)}")
    return sum(term.weight * value for term, value in zip(terms, values))


def _channels(activation: torch.Tensor, c, what: str) -> torch.Tensor:
    """``activation[b, c_b]`` for each image b: c is one channel for all, or one per image."""
    if activation.ndim < 2:
        raise ValueError(f"{what} needs an output with channels [B,C,...], got shape {tuple(activation.shape)}")
    batch, count = activation.shape[:2]
    index = torch.as_tensor(c, device=activation.device).reshape(-1)
    if len(index) == 1:
        index = index.expand(batch)
    if len(index) != batch or ((index < 0) | (index >= count)).any():
        raise ValueError(f"{what}: channel {c} does not fit an output of {count} channels and {batch} images")
    return activation[torch.arange(batch, device=activation.device), index]


def _check_index(c, what: str) -> None:
    values = torch.as_tensor(c) if isinstance(c, (numbers.Integral, list, tuple, torch.Tensor)) else None
    if values is None or values.is_floating_point() or values.dtype == torch.bool or values.ndim > 1:
        raise TypeError(f"a {what} is an int or a sequence of ints (one per image), got {c!r}")


def class_logit(k) -> Objective:
    """The pre-softmax score of class ``k`` (an int, or one class per image in the batch)."""
    _check_index(k, "class")
    return Objective([_Term(None, lambda logits: logits.gather(1, resolve_target(k, logits)[:, None])[:, 0],
                            f"class_logit({k})")])


def channel(layer, c) -> Objective:
    """The mean activation of channel ``c`` of ``layer`` over all positions (a feature map)."""
    _check_index(c, "channel")
    label = f"channel({layer!r}, {c})"
    return Objective([_Term(layer, lambda a: _channels(a, c, label).flatten(1).mean(1), label)])


def neuron(layer, c, y: int | None = None, x: int | None = None) -> Objective:
    """One unit: channel ``c`` of ``layer`` at position (y, x); the centre when not given."""
    _check_index(c, "channel")
    label = f"neuron({layer!r}, {c}, y={y}, x={x})"

    def reduce(a):
        if a.ndim != 4:
            raise ValueError(f"{label} needs a feature map [B,C,H,W], got shape {tuple(a.shape)}")
        h, w = a.shape[-2:]
        row, col = h // 2 if y is None else y, w // 2 if x is None else x
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"{label}: position ({row}, {col}) is outside the {h}x{w} feature map")
        return _channels(a, c, label)[:, row, col]

    return Objective([_Term(layer, reduce, label)])


def layer(layer) -> Objective:
    """The mean squared activation of a whole layer (DeepDream's objective: amplify everything)."""
    # The clone keeps the squared values' saved input safe from a later inplace op (ReLU(inplace=True)).
    return Objective([_Term(layer, lambda a: a.flatten(1).clone().square().mean(1), f"layer({layer!r})")])


_whole_layer = layer  # deep_dream's argument called ``layer`` hides the function there


def _feature_match(layer, target: torch.Tensor) -> Objective:
    """Minus the relative squared distance to ``target`` features: invert's objective."""
    norm = target.flatten(1).square().sum(1).clamp_min(1e-12)
    return Objective([_Term(layer, lambda a: -(a - target).flatten(1).square().sum(1) / norm,
                            f"feature_match({layer!r})")])


# --------------------------------------------------------------------------- input space


class _InputSpace:
    """Converts between RGB in [0, 1] and the model's input (ImageNet-normalised or not)."""

    def __init__(self, normalize: bool, device):
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True (ImageNet-normalised input) or False (RGB in [0, 1]), "
                            f"got {normalize!r}")
        self.normalize = normalize
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def to_input(self, rgb: torch.Tensor) -> torch.Tensor:
        return (rgb - self.mean) / self.std if self.normalize else rgb

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std + self.mean if self.normalize else x).clamp(0, 1)


# --------------------------------------------------------------------------- parameterisations

# Lucent's square root of ImageNet's colour covariance: optimising in these decorrelated colour
# directions stops one colour channel from drowning the others.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()
_FOURIER_GAIN = 4.0  # Lucent's constant: keeps the initial images' contrast moderate


def _logit(rgb: torch.Tensor) -> torch.Tensor:
    return torch.logit(rgb.clamp(1e-3, 1 - 1e-3))


class _PixelImage:
    """One free value per pixel and channel, squashed into [0, 1] by a sigmoid."""

    def __init__(self, shape, device):
        self.param = torch.zeros(shape, device=device, requires_grad=True)

    def rgb(self) -> torch.Tensor:
        return torch.sigmoid(self.param)

    @torch.no_grad()
    def set_rgb(self, rgb: torch.Tensor) -> None:
        self.param.copy_(_logit(rgb))


class _FourierImage:
    """Lucent's image: a spectrum scaled by 1/frequency (so all frequencies learn at similar
    speed and high-frequency noise cannot take over), in decorrelated colours, then a sigmoid."""

    def __init__(self, shape, device):
        batch, channels, h, w = shape
        fy = torch.fft.fftfreq(h, device=device)[:, None]
        fx = torch.fft.rfftfreq(w, device=device)[None, :]
        self.scale = 1.0 / torch.sqrt(fy**2 + fx**2).clamp_min(1.0 / max(h, w))
        self.size = (h, w)
        self.color = _COLOR_SQRT.to(device)
        self.param = torch.zeros(batch, channels, h, w // 2 + 1, 2, device=device, requires_grad=True)

    def rgb(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.param) * self.scale
        image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / _FOURIER_GAIN
        return torch.sigmoid(torch.einsum("ij,bjhw->bihw", self.color, image))

    @torch.no_grad()
    def set_rgb(self, rgb: torch.Tensor) -> None:
        image = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.color), _logit(rgb)) * _FOURIER_GAIN
        self.param.copy_(torch.view_as_real(torch.fft.rfft2(image, norm="ortho") / self.scale))


_PARAMETERISATIONS = {"pixel": _PixelImage, "fourier": _FourierImage}


def _initial_rgb(init, shape, space: _InputSpace, gen: torch.Generator, device) -> torch.Tensor:
    """The starting picture in [0, 1]: "zeros" is mid-grey (all parameters zero: for a
    normalised model about the mean image, Simonyan's "zero image"); "noise" is grey plus
    Gaussian pixel noise (sd 0.1); a tensor is an image in the model's input space."""
    if isinstance(init, torch.Tensor):
        image = space.to_rgb(as_batch(init).detach().to(device=device, dtype=torch.float32))
        if image.shape[1] != 3:
            raise ValueError(f"init must be an RGB image [B,3,H,W], got shape {tuple(init.shape)}")
        if image.shape[0] not in (1, shape[0]):
            raise ValueError(f"init has {image.shape[0]} images for a batch of {shape[0]}")
        image = F.interpolate(image, size=shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        return image.expand(shape).clamp(0, 1)
    if init == "zeros":
        return torch.full(shape, 0.5, device=device)
    if init == "noise":
        return (0.5 + 0.1 * torch.randn(shape, generator=gen)).clamp(0, 1).to(device)
    raise ValueError(f"init must be 'zeros', 'noise' or an image tensor, got {init!r}")


# --------------------------------------------------------------------------- regularisers, transforms


def total_variation(rgb: torch.Tensor) -> torch.Tensor:
    """The sum of squared differences between neighbouring pixels, per image [B] (the beta = 2
    total variation of Mahendran & Vedaldi): small for smooth images, large for pixel noise."""
    dy = (rgb[..., 1:, :] - rgb[..., :-1, :]).square().flatten(1).sum(1)
    dx = (rgb[..., :, 1:] - rgb[..., :, :-1]).square().flatten(1).sum(1)
    return dx + dy


def _random_transform(rgb, gen, jitter: int, scale: float, rotate: float) -> torch.Tensor:
    """Shift by up to ``jitter`` pixels, zoom by up to ``scale`` and turn by up to ``rotate``
    degrees (one random draw per call, the same for the whole batch), reflecting at the border.
    A pattern must survive all of these to score, so fragile pixel-level tricks do not pay."""
    if not (jitter or scale or rotate):
        return rgb

    def uniform(low, high):
        return low + (high - low) * torch.rand((), generator=gen).item()

    h, w = rgb.shape[-2:]
    angle = math.radians(uniform(-rotate, rotate))
    zoom = uniform(1 - scale, 1 + scale)
    shift = [2 * round(uniform(-jitter, jitter)) / w, 2 * round(uniform(-jitter, jitter)) / h]
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[cos, -sin, shift[0]], [sin, cos, shift[1]]], device=rgb.device, dtype=rgb.dtype)
    grid = F.affine_grid(theta.expand(len(rgb), 2, 3), list(rgb.shape), align_corners=False)
    return F.grid_sample(rgb, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _check_number(name, value, low=0.0, integer=False):
    kind = numbers.Integral if integer else numbers.Real
    if not isinstance(value, kind) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be {'an int' if integer else 'a number'} >= {low}, got {value!r}")


# --------------------------------------------------------------------------- visualize


@uses_model
def visualize(model: nn.Module, objective: Objective, size: int = 64, steps: int = 256, lr: float = 0.05,
              seed: int = 0, batch: int = 1, param: str = "fourier", init="noise", l2: float = 0.0,
              tv: float = 0.0, blur_every: int = 0, blur_sigma: float = 0.5, jitter: int = 2, scale: float = 0.05,
              rotate: float = 5.0, normalize: bool = False, progress: bool = True) -> torch.Tensor:
    """An image that maximises ``objective``: Adam ascent on objective - l2 * ||I - 0.5||^2 -
    tv * TV(I) (sums over pixels, as in the lecture's lambda * ||I||^2; I is RGB in [0, 1],
    centred at mid-grey), for ``steps`` steps, on a frozen model in eval mode.

    - ``param``: "pixel" (one value per pixel) or "fourier" (decorrelated 1/f spectrum, Lucent).
    - ``init``: "zeros" (mid-grey), "noise" (grey plus noise) or an image in the input space.
    - ``l2``, ``tv``: penalty weights; ``blur_every``: every that many steps the image is
      replaced by a Gaussian blur of itself (sigma ``blur_sigma``), cutting high frequencies.
    - ``jitter`` (pixels), ``scale`` (relative zoom), ``rotate`` (degrees): random transforms
      applied before each forward pass; set all three to 0 for plain gradient ascent.
    - ``batch`` images are optimised at once (an objective may give one class or channel per image).
    - ``normalize``: False when the model takes RGB in [0, 1], True when it takes
      ImageNet-normalised input. The result is in that space: [batch,3,size,size].

    Randomness (noise, transforms) comes from ``seed`` only: the same call gives the same image.
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an Objective (class_logit, channel, neuron, layer), got "
                        f"{type(objective).__name__}")
    _check_number("size", size, 8, integer=True)
    _check_number("steps", steps, 0, integer=True)
    _check_number("batch", batch, 1, integer=True)
    _check_number("jitter", jitter, 0, integer=True)
    _check_number("blur_every", blur_every, 0, integer=True)
    for name, value in (("lr", lr), ("l2", l2), ("tv", tv), ("blur_sigma", blur_sigma), ("scale", scale),
                        ("rotate", rotate)):
        _check_number(name, value)
    if lr <= 0 or scale >= 1:
        raise ValueError(f"need lr > 0 and scale < 1, got lr={lr}, scale={scale}")
    if param not in _PARAMETERISATIONS:
        raise ValueError(f"param must be one of {', '.join(_PARAMETERISATIONS)}, got {param!r}")
    device = model_device(model)
    space = _InputSpace(normalize, device)
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 3, size, size)
    image = _PARAMETERISATIONS[param](shape, device)
    image.set_rgb(_initial_rgb(init, shape, space, gen, device))
    optimizer = torch.optim.Adam([image.param], lr=lr)
    blur_kernel = 2 * math.ceil(3 * blur_sigma) + 1

    for step in trange(steps, desc="visualize", disable=not progress, leave=False):
        if blur_every and step > 0 and step % blur_every == 0:
            from torchvision.transforms.functional import gaussian_blur  # here: torchvision takes 2 s to import

            image.set_rgb(gaussian_blur(image.rgb().detach(), blur_kernel, blur_sigma))
        rgb = image.rgb()
        score = _evaluate(model, space.to_input(_random_transform(rgb, gen, jitter, scale, rotate)),
                          objective.terms)
        penalty = l2 * (rgb - 0.5).square().flatten(1).sum(1) + tv * total_variation(rgb)
        optimizer.zero_grad()
        (penalty - score).sum().backward()
        optimizer.step()
    return space.to_input(image.rgb()).detach().to(model_dtype(model))


@uses_model
def invert(model: nn.Module, image: torch.Tensor, layer, steps: int = 200, lr: float = 0.05, tv: float = 1e-3,
           l2: float = 0.0, param: str = "pixel", init="noise", seed: int = 0, normalize: bool = False,
           progress: bool = True) -> torch.Tensor:
    """Reconstruct ``image`` from its features at ``layer`` alone (Mahendran & Vedaldi, 2015):
    starting from noise, minimise ||phi(I) - phi(image)||^2 / ||phi(image)||^2 + tv * TV(I) +
    l2 * ||I - 0.5||^2. What survives is what the layer keeps; what blurs away, it discarded.

    ``image`` [B,3,H,W] is in the model's input space (see ``normalize``); so is the result.
    """
    image = as_batch(image)
    if image.shape[-1] != image.shape[-2]:
        raise ValueError(f"invert needs square images, got {tuple(image.shape[-2:])}")
    with capture(model, layer) as recording:
        model(image.to(model_device(model), model_dtype(model)))
    target = recording[layer_name(model, layer)]
    result = visualize(model, _feature_match(layer, target), size=image.shape[-1], steps=steps, lr=lr, seed=seed,
                       batch=len(image), param=param, init=init, l2=l2, tv=tv, jitter=0, scale=0.0, rotate=0.0,
                       normalize=normalize, progress=progress)
    return result.to(image.device)


# --------------------------------------------------------------------------- DeepDream


@uses_model
def deep_dream(model: nn.Module, image: torch.Tensor, layer, octaves: int = 3, octave_scale: float = 1.4,
               steps: int = 10, lr: float = 0.02, jitter: int = 4, seed: int = 0, normalize: bool = False,
               progress: bool = True) -> torch.Tensor:
    """DeepDream: gradient ascent on the mean squared activation of ``layer``, starting from a
    photo, over an image pyramid (``octaves`` sizes, each ``octave_scale`` times the previous).

    Each step moves the image by ``lr`` times the gradient divided by its mean absolute value
    (a normalised step: the same size whatever the layer's scale), after a random shift of up
    to ``jitter`` pixels. The detail added at a coarse octave is carried up to the next one, so
    patterns grow at several scales. ``image`` and the result are in the model's input space.
    """
    image = as_batch(image)
    _check_number("octaves", octaves, 1, integer=True)
    _check_number("steps", steps, 0, integer=True)
    _check_number("jitter", jitter, 0, integer=True)
    _check_number("lr", lr)
    if not isinstance(octave_scale, numbers.Real) or octave_scale < 1:
        raise ValueError(f"octave_scale must be a number >= 1, got {octave_scale!r}")
    objective = _whole_layer(layer)
    device = image.device
    space = _InputSpace(normalize, device)
    gen = torch.Generator().manual_seed(seed)
    base = space.to_rgb(image.detach().float())
    h, w = base.shape[-2:]
    sizes = [(max(8, round(h / octave_scale**i)), max(8, round(w / octave_scale**i))) for i in range(octaves)][::-1]
    detail = torch.zeros_like(base)
    with tqdm(total=octaves * steps, desc="deep_dream", disable=not progress, leave=False) as bar:
        for size in sizes:
            octave_base = F.interpolate(base, size=size, mode="bilinear", align_corners=False, antialias=True)
            detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
            dream = (octave_base + detail).clamp(0, 1)
            for _ in range(steps):
                dy, dx = (int(torch.randint(-jitter, jitter + 1, (), generator=gen)) for _ in range(2))
                shifted = dream.roll((dy, dx), dims=(-2, -1)).requires_grad_(True)
                objective(model, space.to_input(shifted)).sum().backward()
                grad = shifted.grad.roll((-dy, -dx), dims=(-2, -1))
                step = grad / grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                dream = (dream + lr * step).clamp(0, 1)
                bar.update()
            detail = dream - octave_base
    return space.to_input(dream).detach().to(image.dtype)
