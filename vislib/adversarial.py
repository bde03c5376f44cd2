"""Adversarial examples: the gradient that explains a decision also changes it.

A saliency map is d score / d input: how much each pixel would move the score. Read as a
direction instead of a picture, the same gradient says how to *change* the image so that the
score moves, and a step too small to see is enough to flip the decision (Szegedy et al. 2014,
Goodfellow et al. 2015). Three recipes, all in the model's input space:

- ``fgsm``: one step of size ``eps`` along the sign of the loss gradient (Goodfellow et al.
  2015, "Explaining and harnessing adversarial examples");
- ``pgd``: many such steps, each projected back into the ball of radius ``eps`` (L-infinity or
  L2) around the image (Madry et al. 2018, "Towards deep learning models resistant to
  adversarial attacks");
- ``fooling_image``: gradient ascent on one class's logit, by steps of fixed L2 length, until
  the model predicts that class (the "fooling images" exercise of cs231n, assignment 3);
- ``explanation_attack``: the same machinery turned on the explanation: a change within ``eps``
  that keeps the class but moves the Grad-CAM map off the object (Dombrowski et al. 2019).

Two measurements go with them: ``sign_noise``, a random change of exactly an FGSM step's length
(the control that shows whether the attack's *direction* matters), and
``accuracy_under_attack``, a model's accuracy after an attack at each of several radii.

``fgsm`` and ``pgd`` follow Captum's ``captum.robust.FGSM`` and ``PGD`` step for step, so that
both give the same images for the same inputs (with ``random_start=False``):

- the loss is the cross-entropy of the logits (Captum's ``loss_func=F.cross_entropy`` with
  ``reduction="none"``; Captum's own default, ``-log(output)``, is the same loss for a model that
  ends with a softmax), summed over the batch, so each image's gradient is its own;
- ``target`` is the true class for an untargeted attack (the loss is *increased*) and the
  class to reach for a targeted one (the loss is *decreased*); for an untargeted attack
  ``target=None`` takes the model's prediction on ``x``;
- a step moves ``x`` by ``step * sign(gradient)``, and a pixel whose gradient is within
  ``ZERO_GRADIENT`` (1e-6) of zero does not move. This is Captum's ``zero_thresh``: a model that
  is very sure of an image has a tiny loss gradient, and then few pixels move (the gradient
  "saturates", one reason why a confident model can look robust to FGSM without being so);
- ``pgd`` takes that sign step for ``norm="l2"`` too (as Captum does; the L2 ball is enforced by
  the projection, ``torch.renorm``), so ``step_size`` is always a per-pixel step;
- after each step: projection into the ``eps`` ball around ``x``, then clamping to ``bounds``.

Where Captum leaves a choice open, vislib chooses: ``step_size=None`` is 2.5 * eps / steps
(Madry et al.'s rule: the attack can cross the ball and back), divided by sqrt(C*H*W) for the
L2 ball so that one step's L2 length is 2.5 * eps / steps; the random start is drawn from
``seed`` with its own generator (never the global RNG), and the same start pattern is used for
every image, so an image gets the same adversarial example alone as inside a batch (up to float
rounding: a convolution sums in another order for another batch size, which can flip the sign
step of a pixel whose gradient is near zero or near ``ZERO_GRADIENT``).

Like every vislib method, the attacks run through ``vislib.hooks.uses_model``: the model is
attacked in eval mode, its parameters frozen, and handed back untouched; ``x`` is never
modified; results come back on ``x``'s device and dtype.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from vislib.cam import default_layer, grad_cam_with_graph
from vislib.conventions import (
    as_batch,
    check_number,
    check_positive_int,
    logits_of,
    model_input,
    predicted_or_given,
    resolve_target,
    reuse_freed_memory,
    selected_scores,
)
from vislib.hooks import uses_model

NORMS = ("linf", "l2")
ZERO_GRADIENT = 1e-6  # Captum's FGSM.zero_thresh: a gradient entry this small counts as zero


# --------------------------------------------------------------------------- argument checks


def _check_bounds(bounds, x: torch.Tensor) -> tuple[float, float]:
    """``bounds`` as (lo, hi) with lo < hi (either may be infinite: no clamping on that side),
    and ``x`` inside them; else an error naming the argument."""
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise TypeError(f"bounds must be a pair (lo, hi), got {bounds!r}") from None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (lo, hi)):
        raise TypeError(f"bounds must be a pair of numbers (lo, hi), got {bounds!r}")
    lo, hi = float(lo), float(hi)
    if not lo < hi:  # also false for NaN
        raise ValueError(f"bounds must be (lo, hi) with lo < hi, got {bounds!r}")
    if x.min() < lo or x.max() > hi:
        raise ValueError(f"x must lie within bounds=({lo:g}, {hi:g}), but its values span "
                         f"[{x.min().item():g}, {x.max().item():g}]; give the bounds of the model's input space")
    return lo, hi


def _check_norm(norm) -> str:
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm.lower()


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return int(seed)


def _check_target(target, targeted: bool, name: str = "target"):
    """``target`` as given; ``None`` (the prediction on ``x``) only where it makes sense, for an
    untargeted attack."""
    if target is None and targeted:
        raise ValueError(f"{name} must be given for a targeted attack: the class each image should reach")
    return target


# --------------------------------------------------------------------------- the steps


def loss_gradient(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """d loss / d x, with loss the cross-entropy of the logits for ``target`` (resolved by
    vislib's rules on this pass's logits), summed over the batch, so each image's gradient is
    that of its own loss."""
    inputs = x.detach().requires_grad_(True)  # a new tensor object: the caller's x is not marked
    logits = logits_of(model, model_input(inputs))  # a copy, which a first layer working inplace may overwrite
    loss = F.cross_entropy(logits, resolve_target(target, logits), reduction="sum")
    (grad,) = torch.autograd.grad(loss, inputs)
    return grad.detach()


def sign_step(x: torch.Tensor, grad: torch.Tensor, step: float, targeted: bool) -> torch.Tensor:
    """``x`` moved by ``step`` along the sign of ``grad``: up the loss (untargeted) or down it
    (targeted, towards the target class). Pixels whose gradient is within ``ZERO_GRADIENT`` of
    zero stay (Captum's rule)."""
    multiplier = -1 if targeted else 1
    return torch.where(grad.abs() > ZERO_GRADIENT, x + multiplier * step * torch.sign(grad), x)


def project(center: torch.Tensor, point: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The point of the ``norm`` ball of radius ``eps`` around each image of ``center`` that
    Captum's PGD takes for ``point``: clamping each pixel's change (L-infinity) or shrinking the
    whole change to length ``eps`` when longer (L2)."""
    change = point - center
    if norm == "linf":
        return center + torch.clamp(change, -eps, eps)
    return center + torch.renorm(change, 2, 0, eps)


def random_change(x: torch.Tensor, eps: float, norm: str, seed: int) -> torch.Tensor:
    """A change drawn uniformly from the ``norm`` ball of radius ``eps`` (as Captum's
    ``PGD._random_point`` draws it), from ``seed``: one pattern [1,C,H,W] shared by every image."""
    generator = torch.Generator().manual_seed(seed)
    shape = (1, *x.shape[1:])
    if norm == "linf":
        change = torch.rand(shape, generator=generator, dtype=x.dtype) * eps * 2 - eps
    else:
        direction = F.normalize(torch.randn(shape, generator=generator, dtype=x.dtype).flatten(1)).view(shape)
        radius = torch.rand(1, generator=generator, dtype=x.dtype) ** (1.0 / direction.numel()) * eps
        change = radius * direction
    return change.to(x.device)


# --------------------------------------------------------------------------- attacks


@uses_model
def fgsm(model: nn.Module, x, target, eps: float, targeted: bool = False, bounds=(0, 1)) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): ``x`` moved by ``eps`` per pixel along
    the sign of the cross-entropy's gradient, then clamped to ``bounds`` -> [B,C,H,W].

    Untargeted (default): ``target`` is the true class (``None``: the model's prediction), and
    the step raises its loss. Targeted: ``target`` is the class to reach, and the step lowers
    its loss. Equal to ``captum.robust.FGSM(model, loss_func=cross_entropy, lower_bound=lo,
    upper_bound=hi).perturb(x, eps, target, targeted=targeted)``."""
    x = as_batch(x)
    eps = check_number(eps, "eps")
    lo, hi = _check_bounds(bounds, x)
    target = _check_target(target, targeted)
    adversarial = sign_step(x, loss_gradient(model, x, target), eps, targeted)
    return adversarial.clamp(lo, hi).detach()


@uses_model
def pgd(model: nn.Module, x, target, eps: float, steps: int = 10, step_size: float | None = None,
        norm: str = "linf", targeted: bool = False, random_start: bool = True, seed: int = 0,
        bounds=(0, 1)) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018): ``steps`` FGSM steps of ``step_size``,
    each followed by projection into the ``norm`` ball ("linf" or "l2") of radius ``eps``
    around ``x`` and clamping to ``bounds`` -> [B,C,H,W], within ``eps`` of ``x`` (up to float
    rounding) and within ``bounds``.

    ``target``, ``targeted`` and ``bounds`` as in ``fgsm``. ``step_size=None``: 2.5 * eps / steps
    per pixel for "linf", and 2.5 * eps / (steps * sqrt(C*H*W)) for "l2" (a sign step of that
    size has L2 length 2.5 * eps / steps). ``random_start``: begin at a point drawn uniformly
    from the ball (seeded by ``seed``, the same pattern for every image), clamped to ``bounds``.
    With ``random_start=False`` equal to ``captum.robust.PGD(model, loss_func=cross_entropy,
    lower_bound=lo, upper_bound=hi).perturb(x, eps, step_size, steps, target, targeted=targeted,
    norm="Linf" or "L2")``."""
    x = as_batch(x)
    eps = check_number(eps, "eps")
    steps = check_positive_int(steps, "steps")
    norm = _check_norm(norm)
    seed = _check_seed(seed)
    lo, hi = _check_bounds(bounds, x)
    if step_size is None:
        step_size = 2.5 * eps / steps / (math.sqrt(x[0].numel()) if norm == "l2" else 1.0)
    else:
        step_size = check_number(step_size, "step_size", positive=True)
    classes = predicted_or_given(model, x, _check_target(target, targeted))  # None: the prediction on x
    reuse_freed_memory()
    adversarial = (x + random_change(x, eps, norm, seed)).clamp(lo, hi) if random_start else x
    for _ in range(steps):
        adversarial = sign_step(adversarial, loss_gradient(model, adversarial, classes), step_size, targeted)
        adversarial = project(x, adversarial, eps, norm).clamp(lo, hi).detach()
    return adversarial.detach()


class FoolingResult(NamedTuple):
    """What ``fooling_image`` returns: ``image`` [B,C,H,W], the last image of each ascent;
    ``steps`` [B] (long), how many gradient steps each image took (0: the model predicted the
    target class already); ``fooled`` [B] (bool), whether the model predicts the target class for
    ``image`` (False only when ``max_steps`` ran out first)."""

    image: torch.Tensor
    steps: torch.Tensor
    fooled: torch.Tensor


@uses_model
def fooling_image(model: nn.Module, x, target_class, step_size: float = 1.0, max_steps: int = 100,
                  bounds=(0, 1)) -> FoolingResult:
    """A fooling image (cs231n, assignment 3): gradient ascent on the logit of ``target_class``
    (an int, or one class per image), by steps of L2 length ``step_size`` (the gradient divided
    by its L2 norm), until the model predicts ``target_class``; each image stops as soon as it
    is fooled, and none takes more than ``max_steps`` steps. Images are clamped to ``bounds``
    after each step. Returns a ``FoolingResult``, a named tuple ``(image, steps, fooled)`` with
    one entry per image: ``image, steps, fooled = fooling_image(...)``.

    Unlike ``pgd`` there is no ``eps``: the change is as large as it takes, and the point of the
    exercise is how small that is."""
    x = as_batch(x)
    step_size = check_number(step_size, "step_size", positive=True)
    max_steps = check_positive_int(max_steps, "max_steps")
    lo, hi = _check_bounds(bounds, x)
    classes = predicted_or_given(model, x, _check_target(target_class, True, "target_class"))
    reuse_freed_memory()
    image = x.detach().clone()
    steps = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    active = torch.arange(x.shape[0], device=x.device)  # the images not fooled yet
    for step in range(max_steps + 1):
        inputs = image[active].requires_grad_(True)
        logits = logits_of(model, model_input(inputs))
        done = logits.detach().argmax(1) == classes[active]
        fooled[active[done]] = True
        if step == max_steps or done.all():
            break
        (grad,) = torch.autograd.grad(selected_scores(logits, classes[active]).sum(), inputs)
        keep = ~done
        grad = grad[keep]
        length = grad.flatten(1).norm(dim=1).clamp_min(torch.finfo(grad.dtype).tiny).view(-1, 1, 1, 1)
        active = active[keep]
        image[active] = (image[active] + step_size * grad / length).clamp(lo, hi)
        steps[active] += 1
    return FoolingResult(image, steps, fooled)


def sign_noise(x, eps: float, seed: int = 0, bounds=(0, 1)) -> torch.Tensor:
    """``x`` plus ``eps`` times a random sign per pixel, clamped to ``bounds`` -> [B,C,H,W]: a
    random direction of the same L-infinity *and* L2 length as an FGSM step of size ``eps``
    (the control that shows whether adversarial directions are special). Seeded by ``seed``
    (its own generator), a different pattern for each image."""
    x = as_batch(x)
    eps = check_number(eps, "eps")
    lo, hi = _check_bounds(bounds, x)
    generator = torch.Generator().manual_seed(_check_seed(seed))
    signs = torch.randint(0, 2, x.shape, generator=generator).to(x.device, x.dtype).mul_(2).sub_(1)
    return (x + eps * signs).clamp(lo, hi)


ATTACKS = ("fgsm", "pgd", "noise")


@uses_model
def accuracy_under_attack(model: nn.Module, x, labels, eps_values, attack: str = "pgd", progress: bool = True,
                          **options) -> list[float]:
    """Accuracy of ``model`` on ``x`` (true classes ``labels``) after the ``attack`` ("fgsm",
    "pgd" or "noise", i.e. ``sign_noise``) at each radius in ``eps_values``: one float per
    radius, 0.0 at eps 0 means the model was already wrong everywhere. Untargeted attacks aim
    at the true class; ``options`` go to the attack (``steps``, ``norm``, ``seed``, ``bounds``)."""
    x = as_batch(x)
    labels = torch.as_tensor(labels, device=x.device)
    if labels.shape != (len(x),):
        raise ValueError(f"labels must hold one class per image ({len(x)}), got shape {tuple(labels.shape)}")
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    method = {"fgsm": fgsm, "pgd": pgd}.get(attack)
    accuracies = []
    for eps in tqdm(list(eps_values), desc=f"{attack} accuracy", unit="eps", disable=not progress):
        eps = check_number(eps, "eps_values")
        if eps == 0:
            attacked = x  # every attack leaves x as it is at radius 0
        elif method is None:
            attacked = sign_noise(x, eps, **options)
        else:
            attacked = method(model, x, labels, eps, **options)
        with torch.no_grad():
            predicted = logits_of(model, model_input(attacked)).argmax(1)
        accuracies.append((predicted == labels).float().mean().item())
    return accuracies


@uses_model
def explanation_attack(model: nn.Module, x, masks, layer=None, target=None, eps: float = 8 / 255, steps: int = 40,
                       margin: float = 2.0, bounds=(0, 1)) -> torch.Tensor:
    """Fool the explanation, not the prediction (Ghorbani et al. 2019; Dombrowski et al. 2019):
    a change within ``eps`` per pixel (L-infinity) that moves each image's Grad-CAM map (at
    ``layer``; ShapesNet's default for ShapesNet) out of its mask ``masks`` [B,H,W] while a
    penalty holds its class (``target``; None: the prediction) about ``margin`` logits ahead of
    every other class -> [B,C,H,W] within ``bounds``. The penalty is a hinge, not a guarantee:
    check the prediction of the result.

    PGD without a random start on the loss ``share of the map inside the mask +
    ReLU(margin - (class logit - best other logit))``: ``steps`` sign steps of
    2.5 * eps / steps, each projected into the ball and clamped to ``bounds``. The map is
    differentiated through the activations (``cam.grad_cam_with_graph``); with ReLU networks
    the gradient weights themselves are locally constant, so it is the activations that move."""
    x = as_batch(x)
    masks = torch.as_tensor(masks, device=x.device)
    if masks.shape != (len(x), *x.shape[-2:]):
        raise ValueError(f"masks must be [B,H,W] = {(len(x), *x.shape[-2:])}, got shape {tuple(masks.shape)}")
    eps = check_number(eps, "eps")
    steps = check_positive_int(steps, "steps")
    margin = check_number(margin, "margin")
    lo, hi = _check_bounds(bounds, x)
    layer = default_layer(model, layer)
    classes = predicted_or_given(model, x, target)
    inside = masks.to(x.dtype)
    step_size = 2.5 * eps / steps
    adversarial = x.detach()
    for _ in range(steps):
        inputs = adversarial.requires_grad_(True)
        maps, logits = grad_cam_with_graph(model, inputs, classes, layer)
        share = (maps * inside).flatten(1).sum(1) / maps.flatten(1).sum(1).clamp_min(1e-6)
        others = logits.scatter(1, classes[:, None], float("-inf")).amax(1)
        lead = selected_scores(logits, classes) - others
        (grad,) = torch.autograd.grad((share + F.relu(margin - lead)).sum(), inputs)
        adversarial = project(x, inputs.detach() - step_size * grad.sign(), eps, "linf").clamp(lo, hi)
    return adversarial.detach()
