"""Checks of the optimisation assignment: ``ascent_step``, ``class_visualization``, ``total_variation``,
``fooling_image``."""

from __future__ import annotations

import numbers

import torch
import torch.nn as nn

from vislib import adversarial
from vislib.checks.cases import CLASSES, cases, small_cnn
from vislib.checks.harness import CheckFailure, ModelChanged, call, close, exercise, expect, returned_tensor, variants
from vislib.checks.language import Message, _
from vislib.checks.offlimits import OffLimits
from vislib.checks.style import check_total_variation
from vislib.hooks import frozen

__all__ = ["ascent_step", "class_visualization", "total_variation", "fooling_image"]

# What the functions of this assignment must not use (see vislib.checks.offlimits).
OFF_LIMITS = OffLimits(modules=("vislib.optimize", "vislib.adversarial"))

LOGIT_NOT_PROBABILITY = _("climb the raw class score (the logit, before the softmax), not the probability or the "
                          "log-probability")
START_SCALE = 0.1  # the start is START_SCALE * N(0, 1) noise drawn from a generator seeded with ``seed``


def _norm(g: torch.Tensor) -> torch.Tensor:
    """Each image's L2 norm, shaped to divide the batch [B,1,1,1]."""
    return g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.ndim - 1))


def _gradient(model: nn.Module, image: torch.Tensor, target: torch.Tensor, l2: float, score=None,
              penalty: float = -1.0) -> torch.Tensor:
    """d/dI of sum_b score(logits)[b, target_b] + penalty * l2 * ||I||^2: the objective's gradient by
    default (logits, penalty subtracted); another ``score`` or ``penalty`` gives a typical mistake's."""
    x = image.detach().clone().requires_grad_(True)
    with frozen(model):
        scores = model(x) if score is None else score(model(x))
        objective = scores.gather(1, target[:, None]).sum() + penalty * l2 * x.square().sum()
        (grad,) = torch.autograd.grad(objective, x)
    return grad


# --------------------------------------------------------------------------- ascent_step

STEP_SETTINGS = ((0.5, 5e-4), (0.3, 1e-3), (0.2, 2e-3))  # (lr, l2) for the three cases


@exercise("ascent_step", _("One normalised ascent step on logit - l2 * ||I||^2, each image with its own target and "
                           "its own gradient norm, on 3 models (inplace ReLUs, BatchNorm, a non-square batch, one "
                           "image)."))
def ascent_step(fn) -> None:
    for case, (lr, l2) in zip(cases(), STEP_SETTINGS):
        _check_step(fn, case, lr, l2)


def _check_step(fn, case, lr: float, l2: float) -> None:
    """One case: the learner's step against the reference step and the steps of typical mistakes."""
    image = case.x
    got = call("ascent_step", fn, case.model, image, case.target, lr, l2, models=[case.model])
    returned_tensor("ascent_step", got, image.shape, _("the new image"),
                    _(", the new image shaped like the image ({case})", case=case.label))
    grad = _gradient(case.model, image, case.target, l2)
    step = lr * grad / _norm(grad)

    def normalised(g):
        return lr * g / _norm(g)

    score_grad = _gradient(case.model, image, case.target, 0.0)
    mistakes = {
        _("gradient ascent climbs: add the step (image + lr * g / ||g||), don't subtract it"): -step,
        _("subtract the penalty: the objective is logit - l2 * ||I||^2, so the penalty pulls the image "
          "towards 0"): normalised(_gradient(case.model, image, case.target, l2, penalty=1.0)),
        _("the gradient of l2 * ||I||^2 is 2 * l2 * I (yours misses the factor 2)"):
            normalised(score_grad - l2 * image),
        LOGIT_NOT_PROBABILITY: [normalised(_gradient(case.model, image, case.target, l2, score=lambda s: s.softmax(1))),
                                normalised(_gradient(case.model, image, case.target, l2,
                                                     score=lambda s: s.log_softmax(1)))],
        _("normalise the step: divide the gradient by its L2 norm, so that each step has length lr"): lr * grad,
        _("divide by the L2 norm (square root of the sum of squares), not by the mean absolute value"):
            lr * grad / grad.abs().flatten(1).mean(1).view(-1, 1, 1, 1),
        _("divide by the L2 norm (square root of the sum of squares), not by the largest absolute value"):
            lr * grad / grad.abs().flatten(1).amax(1).view(-1, 1, 1, 1),
        _("the penalty is l2 * ||I||^2, the SUM of the squared pixels: yours takes their mean"):
            [normalised(score_grad - 2 * l2 * image / image.numel()),
             normalised(score_grad - 2 * l2 * image / image[0].numel())],
        _("square the norm: the penalty is l2 * ||I||^2 (image.square().sum()), not l2 * ||I||"):
            normalised(score_grad - l2 * image / image.norm()),
        _("divide each image's gradient by its own L2 norm, not by the norm of the whole batch's gradient"):
            lr * grad / grad.norm(),
        _("normalise the gradient of the whole objective (logit and penalty together), not the logit's alone"):
            normalised(score_grad) - lr * 2 * l2 * image,
        _("each image must climb its own target class: pick logits[i, target[i]], e.g. with logits.gather"):
            normalised(_gradient(case.model, image, case.target[:1].expand(len(image)), l2)),
        _("return the new image (image + step), not the step alone"): step - image,
    }
    expect("ascent_step", got.detach() - image, step, mistakes,
           what=_("step, new image - image ({case})", case=case.label))


# --------------------------------------------------------------------------- class_visualization

EVAL_MODE = _("Optimise with the model in eval mode (model.eval(): BatchNorm then uses its stored statistics and "
              "learns nothing) and give it back in the mode you found it (was_training = model.training; ...; "
              "model.train(was_training)).")


def _visualization(model: nn.Module, target: int, steps: int, lr: float, l2: float, seed: int, size: int, *,
                   start: str = "normal", scale: float = START_SCALE, sign: float = 1.0, accumulate: bool = False,
                   clamp: bool = False) -> torch.Tensor:
    """The reference loop (defaults) and the loops that typical mistakes run instead."""
    generator = torch.Generator().manual_seed(seed)
    draw = torch.randn if start == "normal" else torch.rand
    image = scale * draw(1, 3, size, size, generator=generator)
    targets = torch.tensor([target])
    total = torch.zeros_like(image)
    for _step in range(steps):
        grad = _gradient(model, image, targets, l2)
        total = total + grad if accumulate else grad
        image = image + sign * lr * total / _norm(total)
        if clamp:
            image = image.clamp(0, 1)
    return image


def _visualization_models() -> list[tuple[Message, nn.Module, int, int]]:
    """(label, model, target, size): inplace ReLUs; BatchNorm in train mode; inplace ReLUs with BatchNorm."""
    with torch.random.fork_rng(devices=[]):
        return [(_("inplace ReLUs, 12x12, target 2"), small_cnn(1, inplace=True, batchnorm=False), 2, 12),
                (_("BatchNorm in train mode, 10x10, target 0"), small_cnn(2, inplace=False, batchnorm=True).train(),
                 0, 10),
                (_("inplace ReLUs and BatchNorm, 8x8, target 3"), small_cnn(3, inplace=True, batchnorm=True), 3, 8)]


VIS_STEPS, VIS_LR, VIS_L2, VIS_SEED = 20, 1.0, 1e-3, 3


@exercise("class_visualization", _("{steps} normalised ascent steps from the seeded start raise the target logit "
                                   "above the other classes' mean, are deterministic for a seed, shrink with the L2 "
                                   "penalty and leave the model (also one in train mode) as it was, on 3 models.",
                                   steps=VIS_STEPS))
def class_visualization(fn) -> None:
    for label, model, target, size in _visualization_models():
        _check_visualization(fn, label, model, target, size)


def _check_visualization(fn, label: Message, model: nn.Module, target: int, size: int) -> None:
    """One model: determinism, the seed, typical mistakes, the claims, then the reference image."""

    def run(seed=VIS_SEED, l2=VIS_L2):
        got = _call_visualization(fn, model, target, VIS_STEPS, VIS_LR, l2, seed, size)
        returned_tensor("class_visualization", got, (1, 3, size, size),
                        why=_(" (one image, size x size) ({case})", case=label))
        if not torch.isfinite(got).all():
            raise CheckFailure(_("your class_visualization returns NaN or infinite values; look for a division by "
                                 "zero ({case})", case=label))
        return got.detach().float()

    def reference(steps=VIS_STEPS, **how):
        return _visualization(model, target, steps, VIS_LR, VIS_L2, VIS_SEED, size, **how)

    got, expected = run(), reference()
    if not torch.allclose(got, run(), rtol=1e-5, atol=1e-6):
        raise CheckFailure(_("your class_visualization gives a different image each time for the same seed: draw "
                             "the start from torch.Generator().manual_seed(seed), passed to torch.randn as "
                             "generator= ({case})", case=label))
    if torch.allclose(got, run(seed=VIS_SEED + 1)):
        raise CheckFailure(_("your class_visualization gives the same image for seeds {seed} and {next_seed}: start "
                             "from {scale} * torch.randn(1, 3, size, size, generator=...) drawn with that seed "
                             "({case})", seed=VIS_SEED, next_seed=VIS_SEED + 1, scale=START_SCALE, case=label))
    mistakes = {
        _("reset the image's gradient at every step (image.grad = None, or torch.autograd.grad): yours adds up "
          "the gradients of all the previous steps"): reference(accumulate=True),
        _("gradient ascent climbs: add the step, don't subtract it"): reference(sign=-1.0),
        _("run exactly `steps` ascent steps (yours runs {steps})", steps=VIS_STEPS - 1): reference(steps=VIS_STEPS - 1),
        _("run exactly `steps` ascent steps (yours runs {steps})", steps=VIS_STEPS + 1): reference(steps=VIS_STEPS + 1),
        _("start from {scale} * torch.randn(1, 3, size, size, generator=...) with the generator seeded by seed",
          scale=START_SCALE): [reference(scale=1.0), reference(start="uniform")],
        _("don't clamp the image: the L2 penalty is what keeps its values small"): reference(clamp=True),
    }
    for hint, wrong in variants(mistakes):
        if close(got, wrong, rtol=1e-4, atol=1e-5) and not close(expected, wrong, rtol=1e-4, atol=1e-5):
            raise CheckFailure(_("your class_visualization gives a different image: {hint} ({case})", hint=hint,
                                 case=label))
    _claims(got, run(l2=0.0), reference(steps=0), model, target, label)
    expect("class_visualization", got, expected, what=_("image ({case})", case=label))


def _claims(got: torch.Tensor, free: torch.Tensor, start: torch.Tensor, model: nn.Module, target: int,
            label: Message) -> None:
    """What any correct result shows: the target logit rose above the others', and the penalty shrank the image."""
    with frozen(model), torch.no_grad():
        before, after = model(start)[0], model(got)[0]
    others = torch.cat([after[:target], after[target + 1:]]).mean()
    if after[target] <= before[target]:
        raise CheckFailure(_("your image lowers the target logit ({before:.3g} -> {after:.3g}): gradient ascent adds "
                             "the step, image + lr * g / ||g|| ({case})", before=before[target].item(),
                             after=after[target].item(), case=label))
    if after[target] <= others:
        raise CheckFailure(_("the target logit of your image ({logit:.3g}) is not above the other {others} classes' "
                             "mean ({mean:.3g}): climb the target's own logit ({case})", logit=after[target].item(),
                             others=CLASSES - 1, mean=others.item(), case=label))
    if torch.allclose(got, free):
        raise CheckFailure(_("pass l2 on to every step: with l2={l2} your image is the unregularised one ({case})",
                             l2=VIS_L2, case=label))
    if got.norm() >= free.norm():
        raise CheckFailure(_("with l2={l2} your image's norm ({norm:.3g}) should be below the unregularised run's "
                             "({free:.3g}): the penalty l2 * ||I||^2 is subtracted from the objective, so it pulls "
                             "the image towards 0 ({case})", l2=VIS_L2, norm=got.norm().item(),
                             free=free.norm().item(), case=label))


def _call_visualization(fn, model: nn.Module, *args):
    """``call``, whose hint about a changed buffer or mode also says how eval mode is entered and left."""
    try:
        return call("class_visualization", fn, model, *args, models=[model])
    except ModelChanged as error:
        if any("buffer changed" in change or "train/eval mode" in change for change in error.changes):
            raise CheckFailure(_("{failure} {advice}", failure=error.message, advice=EVAL_MODE)) from None
        raise


# --------------------------------------------------------------------------- total_variation


@exercise("total_variation", _("The sum of squared differences between vertical and horizontal neighbours, one "
                               "value per image, on 3 batches (non-square, square, one image)."))
def total_variation(fn) -> None:
    check_total_variation("total_variation", fn, [case.x for case in cases()])


# --------------------------------------------------------------------------- fooling_image



def _fooling(model: nn.Module, x: torch.Tensor, target: int, step_size: float, max_steps: int, *, score=None,
             norm: str = "l2", sign: float = 1.0, clamp: str = "step", stop: str = "before"
             ) -> tuple[torch.Tensor, int]:
    """The reference loop (the defaults) and the loops of typical mistakes: another ``score`` of the
    logits, another ``norm`` ("none", "max", "l1"), descent (``sign=-1``), ``clamp`` "none" or "end"
    instead of after each step, and another ``stop`` rule: "after" (look at the prediction only after a
    step), "late" (break after the step that follows the fooling prediction), "never" (always
    ``max_steps``) or "extra" (up to ``max_steps + 1`` steps)."""
    image, steps = x.detach().clone(), 0
    targets = torch.tensor([target])
    for i in range(max_steps + (stop == "extra")):
        inputs = image.clone().requires_grad_(True)
        with frozen(model):
            logits = model(inputs)
            fooled = logits.argmax(1).item() == target
            if (fooled and stop in ("before", "extra")) or (fooled and stop == "after" and i > 0):
                break
            scores = logits if score is None else score(logits)
            (grad,) = torch.autograd.grad(scores.gather(1, targets[:, None]).sum(), inputs)
        length = {"l2": grad.norm(), "max": grad.abs().max(), "l1": grad.abs().sum(), "none": 1.0}[norm]
        image = image + sign * step_size * grad / length
        image = image.clamp(0, 1) if clamp == "step" else image
        steps += 1
        if fooled and stop == "late":
            break
    return (image.clamp(0, 1) if clamp == "end" else image).detach(), steps


def _fooling_cases() -> list[tuple[Message, nn.Module, torch.Tensor, int, float, int]]:
    """(label, model, x, target, step_size, max_steps): fooled after 6 and 5 steps; an image the model
    already calls the target (0 steps); and one that ``max_steps`` stops first (it would take 6). The first
    model is handed over in train mode (it has no BatchNorm: both modes compute the same), the others in
    eval mode; each ascent leaves [0, 1] on the way, so clamping matters, and the target's
    logit margin stays at least 0.002 from 0 at every step, so rounding cannot change the step count."""
    with torch.random.fork_rng(devices=[]):
        def image(seed, *size):
            return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))

        return [(_("inplace ReLUs, model in train mode, 8x12, target 3, step_size 1, max_steps 20"),
                 small_cnn(3, inplace=True, batchnorm=False).train(), image(3, 8, 12), 3, 1.0, 20),
                (_("BatchNorm, 8x12, target 2, step_size 2, max_steps 20"),
                 small_cnn(12, inplace=False, batchnorm=True), image(12, 8, 12), 2, 2.0, 20),
                (_("an image the model already calls the target, 8x8, target 2, max_steps 20"),
                 small_cnn(9, inplace=True, batchnorm=False), image(9, 8, 8), 2, 1.0, 20),
                (_("inplace ReLUs and BatchNorm, 8x8, target 4, max_steps 4 (too few to fool it)"),
                 small_cnn(30, inplace=True, batchnorm=True), image(30, 8, 8), 4, 1.0, 4)]


STOP_BEFORE = _("look at the prediction before each step and stop as soon as it is target_class, without stepping: "
                "an image the model already calls target_class takes 0 steps")


@exercise("fooling_image", _("Gradient ascent on the target logit by steps of L2 length step_size, clamped to [0, 1], "
                             "stopping as soon as the model predicts the target or after max_steps steps, on 4 cases "
                             "(inplace ReLUs, BatchNorm, an image fooled already, max_steps too few)."))
def fooling_image(fn) -> None:
    for case in _fooling_cases():
        _check_fooling(fn, *case)


def _check_fooling(fn, label: Message, model: nn.Module, x: torch.Tensor, target: int, step_size: float,
                   max_steps: int) -> None:
    """One case: the learner's (image, steps) against vislib's and those of typical mistakes."""
    got = call("fooling_image", fn, model, x, target, step_size, max_steps, models=[model])
    image, steps = _fooling_result(got, x, label)
    reference = adversarial.fooling_image(model, x, target, step_size=step_size, max_steps=max_steps)
    expected, expected_steps = reference.image, int(reference.steps[0])

    def wrong(**how):
        return _fooling(model, x, target, step_size, max_steps, **how)

    mistakes = {
        _("normalise the step: divide the gradient by its L2 norm, so that each step has length step_size"):
            wrong(norm="none"),
        _("divide by the L2 norm (square root of the sum of squares), not by its largest absolute value"):
            wrong(norm="max"),
        _("divide by the L2 norm (square root of the sum of squares), not by the sum of absolute values (the L1 "
          "norm)"): wrong(norm="l1"),
        _("gradient ascent climbs: add the step (image + step_size * g / ||g||), don't subtract it"): wrong(sign=-1.0),
        LOGIT_NOT_PROBABILITY: [wrong(score=lambda s: s.softmax(1)), wrong(score=lambda s: s.log_softmax(1))],
        _("clamp the image to [0, 1] after every step (image.clamp(0, 1)): a fooling image must stay an image"):
            wrong(clamp="none"),
        _("clamp after every step, not only at the end: the next gradient must be taken at a valid image"):
            wrong(clamp="end"),
        _("multiply the normalised gradient by step_size (yours takes steps of length 1, not {step_size:g})",
          step_size=step_size): _fooling(model, x, target, 1.0, max_steps),
        _("{stop_before} (yours took 1 step, the reference {steps})", stop_before=STOP_BEFORE, steps=expected_steps):
            wrong(stop="after"),
        _("stop as soon as the model predicts target_class, before stepping again: yours takes one step more than "
          "it needs (look at the prediction of the current image, then step)"): wrong(stop="late"),
        _("stop as soon as the model predicts target_class: yours always takes max_steps ({max_steps}) steps",
          max_steps=max_steps): wrong(stop="never"),
        _("take at most max_steps steps, even when the model is not fooled by then (yours took {steps})",
          steps=max_steps + 1): wrong(stop="extra"),
    }
    for hint, (wrong_image, wrong_steps) in variants(mistakes):
        distinct = wrong_steps != expected_steps or not close(expected, wrong_image)
        if distinct and steps == wrong_steps and close(image, wrong_image):
            raise CheckFailure(_("your fooling_image gives a different result: {hint} ({case})", hint=hint,
                                 case=label))
    if steps != expected_steps:
        rule = (STOP_BEFORE if expected_steps == 0 else
                _("stop after max_steps steps even when the model is not fooled yet") if expected_steps == max_steps
                else _("stop as soon as the model predicts target_class (the argmax of the logits), and no later"))
        raise CheckFailure(_("your fooling_image took {steps} steps; expected {expected}: {rule} ({case})",
                             steps=steps, expected=expected_steps, rule=rule, case=label))
    expect("fooling_image", image, expected, what=_("image ({case})", case=label))


def _fooling_result(got, x: torch.Tensor, label: Message) -> tuple[torch.Tensor, int]:
    """The learner's ``(image, steps)``: a tensor shaped like ``x`` without a graph, and the step count as an int
    (a one-element integer tensor is accepted too)."""
    if not isinstance(got, (tuple, list)):
        raise CheckFailure(_("your fooling_image must return a pair (image, steps), got {type}",
                             type=type(got).__name__))
    if len(got) != 2:
        raise CheckFailure(_("your fooling_image must return a pair (image, steps), got {type} of length {length}",
                             type=type(got).__name__, length=len(got)))
    image, steps = got
    returned_tensor("fooling_image", image, x.shape, why=_(", shaped like x ({case})", case=label))
    if image.requires_grad:
        raise CheckFailure(_("your fooling_image returns an image that is still part of a graph: return "
                             "image.detach()"))
    if isinstance(steps, torch.Tensor) and steps.numel() == 1 and not steps.is_floating_point() \
            and steps.dtype != torch.bool:
        steps = steps.item()
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise CheckFailure(_("your fooling_image must return the number of steps as an int, got {type} {steps!r}",
                             type=type(steps).__name__, steps=steps))
    return image.detach().float(), int(steps)
