"""Mutation tests of the optimisation assignment's checks: typical wrong implementations are each
rejected with their own hint; correct implementations written differently are accepted."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vislib import adversarial, checks, optimize
from vislib.hooks import frozen

from .hint_coverage import names_the_mistake

# --------------------------------------------------------------------------- ascent_step


def ascent_autograd(model, image, target, lr, l2):
    x = image.detach().clone().requires_grad_(True)
    objective = model(x).gather(1, target[:, None]).sum() - l2 * x.square().sum()
    (grad,) = torch.autograd.grad(objective, x)
    return (x + lr * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).detach()


def ascent_penalty_by_hand(model, image, target, lr, l2):
    """The logit's gradient from autograd, the penalty's (2 * l2 * I) written out, torch.linalg's norm."""
    x = image.clone().requires_grad_(True)
    (score_grad,) = torch.autograd.grad(model(x)[torch.arange(len(x)), target].sum(), x)
    grad = score_grad - 2 * l2 * image
    return image + lr * grad / torch.linalg.vector_norm(grad, dim=(1, 2, 3), keepdim=True)


def ascent_backward_per_image(model, image, target, lr, l2):
    """One image at a time with .backward(), the parameters frozen meanwhile and restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        steps = []
        for one, cls in zip(image, target.tolist()):
            x = one[None].clone().requires_grad_(True)
            (model(x)[0, cls] - l2 * (x**2).sum()).backward()
            steps.append(lr * x.grad[0] / x.grad.norm())
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return image + torch.stack(steps)


def ascent_eval_mode_kept(model, image, target, lr, l2):
    """Switches the model to eval mode (as the reference computes) and leaves it there."""
    model.eval()
    return ascent_autograd(model, image, target, lr, l2)


def ascent_max_abs(model, image, target, lr, l2):
    x = image.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum() - l2 * x.square().sum(), x)
    return (x + lr * grad / grad.abs().amax(dim=(1, 2, 3), keepdim=True)).detach()


def ascent_mean_penalty(model, image, target, lr, l2):
    x = image.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum() - l2 * x.square().mean(), x)
    return (x + lr * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).detach()


def ascent_norm_penalty(model, image, target, lr, l2):
    x = image.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum() - l2 * x.norm(), x)
    return (x + lr * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).detach()


def ascent_descends(model, image, target, lr, l2):
    return 2 * image - ascent_autograd(model, image, target, lr, l2)


def ascent_adds_penalty(model, image, target, lr, l2):
    x = image.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum() + l2 * x.square().sum(), x)
    return image + lr * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def ascent_penalty_without_2(model, image, target, lr, l2):
    x = image.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    grad = grad - l2 * image
    return image + lr * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def ascent_of_probability(model, image, target, lr, l2):
    x = image.clone().requires_grad_(True)
    objective = model(x).softmax(1).gather(1, target[:, None]).sum() - l2 * x.square().sum()
    (grad,) = torch.autograd.grad(objective, x)
    return image + lr * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def ascent_not_normalised(model, image, target, lr, l2):
    x = image.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum() - l2 * x.square().sum(), x)
    return image + lr * grad


def ascent_batch_norm(model, image, target, lr, l2):
    x = image.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum() - l2 * x.square().sum(), x)
    return image + lr * grad / grad.norm()


def ascent_of_log_probability(model, image, target, lr, l2):
    x = image.clone().requires_grad_(True)
    objective = model(x).log_softmax(1).gather(1, target[:, None]).sum() - l2 * x.square().sum()
    (grad,) = torch.autograd.grad(objective, x)
    return image + lr * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def ascent_mean_abs(model, image, target, lr, l2):
    x = image.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum() - l2 * x.square().sum(), x)
    return image + lr * grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True)


def ascent_normalises_the_logit_only(model, image, target, lr, l2):
    x = image.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return image + lr * (grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) - 2 * l2 * image)


def ascent_returns_the_step(model, image, target, lr, l2):
    return ascent_autograd(model, image, target, lr, l2) - image


def ascent_first_target(model, image, target, lr, l2):
    return ascent_autograd(model, image, target[:1].expand(len(target)), lr, l2)


def ascent_with_backward(model, image, target, lr, l2):
    """Right values, but .backward() fills the parameters' .grad."""
    x = image.clone().requires_grad_(True)
    (model(x).gather(1, target[:, None]).sum() - l2 * x.square().sum()).backward()
    return image + lr * x.grad / x.grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def ascent_in_place(model, image, target, lr, l2):
    return image.add_(ascent_autograd(model, image, target, lr, l2) - image)


def ascent_calls_vislib(model, image, target, lr, l2):
    return optimize.visualize(model, optimize.class_logit(target), size=image.shape[-1], steps=1, lr=lr,
                              batch=len(image), param="pixel", init=image, l2=l2, jitter=0, scale=0.0, rotate=0.0,
                              progress=False)


def stub(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("fn", [ascent_autograd, ascent_penalty_by_hand, ascent_backward_per_image])
def test_ascent_step_accepts_correct_implementations(fn, capsys):
    checks.ascent_step(fn)
    assert "ascent_step: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (ascent_descends, "gradient ascent climbs"),
    (ascent_adds_penalty, "subtract the penalty"),
    (ascent_penalty_without_2, "misses the factor 2"),
    (ascent_of_probability, "not the probability"),
    (ascent_of_log_probability, "not the probability or the log-probability"),
    (ascent_not_normalised, "normalise the step"),
    (ascent_mean_abs, "not by the mean absolute value"),
    (ascent_normalises_the_logit_only, "not the logit's alone"),
    (ascent_returns_the_step, "not the step alone"),
    (ascent_batch_norm, "its own L2 norm"),
    (ascent_first_target, "its own target class"),
    (ascent_with_backward, r"\.grad of a parameter changed.*torch\.autograd\.grad"),
    (ascent_in_place, "changed its argument number 2 in place"),
    (ascent_calls_vislib, "calls vislib's own implementation"),
    (ascent_eval_mode_kept, r"train/eval mode of a module changed.*Leave the model's train/eval mode"),
    (ascent_max_abs, "not by the largest absolute value"),
    (ascent_mean_penalty, "the SUM of the squared pixels: yours takes their mean"),
    (ascent_norm_penalty, r"square the norm: the penalty is l2 \* \|\|I\|\|\^2"),
])
def test_ascent_step_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.ascent_step(fn)


@pytest.mark.parametrize("check", [checks.ascent_step, checks.class_visualization, checks.total_variation,
                                   checks.fooling_image])
def test_an_unimplemented_function_is_not_implemented_yet(check, capsys):
    check(stub)
    assert f"{check.exercise}: not implemented yet" in capsys.readouterr().out
    with pytest.raises(checks.NotImplementedYet, match="not implemented yet"):
        check(stub, strict=True)


# --------------------------------------------------------------------------- class_visualization


def visualization_stepping(model, target, steps, lr, l2, seed, size):
    """Calls a correct ascent step `steps` times, in eval mode, the mode restored after."""
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(seed)
        image = 0.1 * torch.randn(1, 3, size, size, generator=generator)
        for _ in range(steps):
            image = ascent_autograd(model, image, torch.tensor([target]), lr, l2)
    finally:
        model.train(was_training)
    return image


def visualization_leaf(model, target, steps, lr, l2, seed, size, zero_grad=True, sign=1.0, use_seed=True,
                       eval_mode=True):
    """One leaf image updated in place under no_grad, its .grad reset each step, the parameters frozen:
    the global seed instead of a generator (the same numbers)."""
    if use_seed:
        torch.manual_seed(seed)
    image = (0.1 * torch.randn(1, 3, size, size)).requires_grad_(True)
    flags, modes = [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]
    model.requires_grad_(False)
    if eval_mode:
        model.eval()
    try:
        for _ in range(steps):
            if zero_grad:
                image.grad = None
            (model(image)[0, target] - l2 * image.pow(2).sum()).backward()
            with torch.no_grad():
                image += sign * lr * image.grad / image.grad.norm()
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        if eval_mode:
            for m, mode in zip(model.modules(), modes):
                m.training = mode
    return image.detach()


def visualization_gradients_accumulate(model, target, steps, lr, l2, seed, size):
    return visualization_leaf(model, target, steps, lr, l2, seed, size, zero_grad=False)


def visualization_descends(model, target, steps, lr, l2, seed, size):
    return visualization_leaf(model, target, steps, lr, l2, seed, size, sign=-1.0)


def visualization_descends_raw(model, target, steps, lr, l2, seed, size):
    """Descent with unnormalised steps: no typical mistake's image, but the logit falls."""
    image = 0.1 * torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with frozen(model):
        for _ in range(steps):
            image = image.requires_grad_(True)
            (grad,) = torch.autograd.grad(model(image)[0, target] - l2 * image.square().sum(), image)
            image = (image - lr * grad).detach()
    return image


def visualization_unseeded(model, target, steps, lr, l2, seed, size):
    return visualization_leaf(model, target, steps, lr, l2, seed, size, use_seed=False)


def visualization_fixed_seed(model, target, steps, lr, l2, seed, size):
    return visualization_stepping(model, target, steps, lr, l2, 0, size)


def visualization_train_mode(model, target, steps, lr, l2, seed, size):
    return visualization_leaf(model, target, steps, lr, l2, seed, size, eval_mode=False)


def visualization_mode_not_restored(model, target, steps, lr, l2, seed, size):
    image = visualization_stepping(model, target, steps, lr, l2, seed, size)
    model.eval()
    return image


def visualization_ignores_l2(model, target, steps, lr, l2, seed, size):
    return visualization_stepping(model, target, steps, lr, 0.0, seed, size)


def visualization_adds_penalty(model, target, steps, lr, l2, seed, size):
    return visualization_stepping(model, target, steps, lr, -l2, seed, size)


def visualization_one_step_short(model, target, steps, lr, l2, seed, size):
    return visualization_stepping(model, target, steps - 1, lr, l2, seed, size)


def visualization_one_step_long(model, target, steps, lr, l2, seed, size):
    return visualization_stepping(model, target, steps + 1, lr, l2, seed, size)


def visualization_unit_noise(model, target, steps, lr, l2, seed, size):
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with frozen(model):
        for _ in range(steps):
            image = ascent_autograd(model, image, torch.tensor([target]), lr, l2)
    return image


def visualization_clamped(model, target, steps, lr, l2, seed, size):
    model_was_training = model.training
    model.eval()
    image = 0.1 * torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        image = ascent_autograd(model, image, torch.tensor([target]), lr, l2).clamp(0, 1)
    model.train(model_was_training)
    return image


def visualization_calls_vislib(model, target, steps, lr, l2, seed, size):
    return optimize.visualize(model, optimize.class_logit(target), size=size, steps=steps, lr=lr, seed=seed,
                              param="pixel", l2=l2, jitter=0, scale=0.0, rotate=0.0, progress=False)


@pytest.mark.parametrize("fn", [visualization_stepping, visualization_leaf])
def test_class_visualization_accepts_correct_implementations(fn, capsys):
    checks.class_visualization(fn)
    assert "class_visualization: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (visualization_gradients_accumulate, "reset the image's gradient at every step"),
    (visualization_descends, "gradient ascent climbs"),
    (visualization_descends_raw, "lowers the target logit"),
    (visualization_unseeded, "different image each time for the same seed"),
    (visualization_fixed_seed, "the same image for seeds 3 and 4"),
    (visualization_train_mode, r"a buffer changed.*model\.eval\(\)"),
    (visualization_mode_not_restored, r"train/eval mode of a module changed.*model\.train\(was_training\)"),
    (visualization_ignores_l2, "pass l2 on to every step"),
    (visualization_adds_penalty, "should be below the unregularised run.s"),
    (visualization_one_step_short, "run exactly `steps` ascent steps"),
    (visualization_one_step_long, r"yours runs 21"),
    (visualization_unit_noise, r"start from 0\.1 \* torch\.randn"),
    (visualization_clamped, "don't clamp the image"),
    (visualization_calls_vislib, "calls vislib's own implementation"),
])
def test_class_visualization_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.class_visualization(fn)


# --------------------------------------------------------------------------- total_variation


def tv_slices(image):
    dy = image[:, :, 1:, :] - image[:, :, :-1, :]
    dx = image[:, :, :, 1:] - image[:, :, :, :-1]
    return (dy**2).sum(dim=(1, 2, 3)) + (dx**2).sum(dim=(1, 2, 3))


def tv_diff(image):
    return sum(torch.diff(image, dim=d).square().flatten(1).sum(1) for d in (-2, -1))


def tv_convolution(image):
    """Neighbour differences as a convolution with [-1, 1] kernels, one group per channel."""
    channels = image.shape[1]
    down = torch.tensor([[-1.0], [1.0]]).expand(channels, 1, 2, 1)
    right = torch.tensor([[-1.0, 1.0]]).expand(channels, 1, 1, 2)
    return sum(F.conv2d(image, kernel, groups=channels).square().flatten(1).sum(1) for kernel in (down, right))


def tv_abs(image):
    return sum(torch.diff(image, dim=d).abs().flatten(1).sum(1) for d in (-2, -1))


def tv_columns_only(image):
    return torch.diff(image, dim=-1).square().flatten(1).sum(1)


def tv_rows_only(image):
    return torch.diff(image, dim=-2).square().flatten(1).sum(1)


def tv_mean(image):
    return sum(torch.diff(image, dim=d).square().flatten(1).mean(1) for d in (-2, -1))


def tv_rolled(image):
    return sum((image - image.roll(1, d)).square().flatten(1).sum(1) for d in (-2, -1))


def tv_isotropic(image):
    dy, dx = torch.diff(image, dim=-2)[..., :, :-1], torch.diff(image, dim=-1)[..., :-1, :]
    return (dy**2 + dx**2).sqrt().flatten(1).sum(1)


def tv_whole_batch(image):
    return tv_slices(image).sum()


def tv_calls_vislib(image):
    return optimize.total_variation(image)


@pytest.mark.parametrize("fn", [tv_slices, tv_diff, tv_convolution])
def test_total_variation_accepts_correct_implementations(fn, capsys):
    checks.total_variation(fn)
    assert "total_variation: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (tv_abs, "not their absolute value"),
    (tv_columns_only, "add both directions"),
    (tv_rows_only, "add both directions"),
    (tv_mean, "don't average them"),
    (tv_rolled, "torch.roll also pairs"),
    (tv_isotropic, "no square root"),
    (tv_whole_batch, "one value per image"),
    (tv_calls_vislib, "calls vislib's own implementation"),
])
def test_total_variation_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.total_variation(fn)


# --------------------------------------------------------------------------- fooling_image


def fooling_autograd(model, x, target_class, step_size=1.0, max_steps=100, norm="l2", sign=1.0, score=None,
                     clamp=True, stop="before", use_step_size=True):
    """A loop with torch.autograd.grad, the prediction looked at before each step; the keywords make the
    typical mistakes."""
    image, steps = x.detach().clone(), 0
    for i in range(max_steps + (stop == "extra")):
        image.requires_grad_(True)
        logits = model(image)
        fooled = logits.argmax(1).item() == target_class
        if fooled and (stop in ("before", "extra") or (stop == "after" and i > 0)):
            break
        scores = logits if score is None else score(logits)
        (grad,) = torch.autograd.grad(scores[0, target_class], image)
        length = {"l2": grad.norm(), "max": grad.abs().max(), "l1": grad.abs().sum(), "none": 1}[norm]
        image = image.detach() + sign * (step_size if use_step_size else 1.0) * grad / length
        image = image.clamp(0, 1) if clamp else image
        steps += 1
        if fooled and stop == "late":
            break
    return image.detach(), steps


def fooling_while_loop(model, x, target_class, step_size=1.0, max_steps=100):
    """A while loop, the parameters frozen meanwhile (and restored) so that .backward() fills only the image's
    .grad; torch.linalg's norm; the count returned as a one-element tensor."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        image, steps = x.clone(), torch.tensor([0])
        while steps.item() < max_steps:
            image = image.detach().requires_grad_(True)
            logits = model(image)
            if logits[0].argmax() == target_class:
                break
            logits[0, target_class].backward()
            with torch.no_grad():
                image = torch.clamp(image + step_size * image.grad / torch.linalg.vector_norm(image.grad), 0.0, 1.0)
            steps += 1
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return image.detach(), steps


def fooling_recursive(model, x, target_class, step_size=1.0, max_steps=100):
    """Recursion instead of a loop; the gradient's norm from its square root by hand."""
    with torch.no_grad():
        if model(x).argmax(1).item() == target_class or max_steps == 0:
            return x.detach().clone(), 0
    image = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(image).gather(1, torch.tensor([[target_class]])).sum(), image)
    stepped = (x + step_size * grad / grad.square().sum().sqrt()).clamp(0, 1)
    image, steps = fooling_recursive(model, stepped, target_class, step_size, max_steps - 1)
    return image, steps + 1


def fooling_not_normalised(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, norm="none")


def fooling_max_norm(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, norm="max")


def fooling_l1_norm(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, norm="l1")


def fooling_descends(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, sign=-1.0)


def fooling_probability(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, score=lambda s: s.softmax(1))


def fooling_log_probability(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, score=lambda s: F.log_softmax(s, 1))


def fooling_unclamped(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, clamp=False)


def fooling_clamped_at_the_end(model, x, target_class, step_size=1.0, max_steps=100):
    image, steps = fooling_autograd(model, x, target_class, step_size, max_steps, clamp=False)
    return image.clamp(0, 1), steps


def fooling_unit_steps(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, use_step_size=False)


def fooling_checks_after_the_step(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, stop="after")


def fooling_one_step_late(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, stop="late")


def fooling_never_stops(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, stop="never")


def fooling_one_step_too_many(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps, stop="extra")


def fooling_image_only(model, x, target_class, step_size=1.0, max_steps=100):
    return fooling_autograd(model, x, target_class, step_size, max_steps)[0]


def fooling_attached(model, x, target_class, step_size=1.0, max_steps=100):
    image, steps = fooling_autograd(model, x, target_class, step_size, max_steps)
    return image.requires_grad_(True) * 1.0, steps


def fooling_with_backward(model, x, target_class, step_size=1.0, max_steps=100):
    """Right values, but .backward() fills the parameters' .grad."""
    image, steps = x.clone(), 0
    for _ in range(max_steps):
        image = image.detach().requires_grad_(True)
        logits = model(image)
        if logits.argmax(1).item() == target_class:
            break
        logits[0, target_class].backward()
        image = (image + step_size * image.grad / image.grad.norm()).clamp(0, 1)
        steps += 1
    return image.detach(), steps


def fooling_in_place(model, x, target_class, step_size=1.0, max_steps=100):
    image, steps = fooling_autograd(model, x, target_class, step_size, max_steps)
    return x.copy_(image), steps


def fooling_eval_mode_kept(model, x, target_class, step_size=1.0, max_steps=100):
    model.eval()
    return fooling_autograd(model, x, target_class, step_size, max_steps)


def fooling_calls_vislib(model, x, target_class, step_size=1.0, max_steps=100):
    image, steps, _ = adversarial.fooling_image(model, x, target_class, step_size=step_size, max_steps=max_steps)
    return image, int(steps[0])


@pytest.mark.parametrize("fn", [fooling_autograd, fooling_while_loop, fooling_recursive])
def test_fooling_image_accepts_correct_implementations(fn, capsys):
    checks.fooling_image(fn)
    assert "fooling_image: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (fooling_not_normalised, "normalise the step: divide the gradient by its L2 norm"),
    (fooling_max_norm, "not by its largest absolute value"),
    (fooling_l1_norm, r"not by the sum of absolute values \(the L1 norm\)"),
    (fooling_descends, "gradient ascent climbs"),
    (fooling_probability, "not the probability"),
    (fooling_log_probability, "not the probability or the log-probability"),
    (fooling_unclamped, r"clamp the image to \[0, 1\] after every step"),
    (fooling_clamped_at_the_end, "not only at the end"),
    (fooling_unit_steps, "yours takes steps of length 1, not 2"),
    (fooling_checks_after_the_step, r"look at the prediction before each step.*yours took 1 step"),
    (fooling_one_step_late, "yours takes one step more than it needs"),
    (fooling_never_stops, r"yours always takes max_steps \(20\) steps"),
    (fooling_one_step_too_many, r"take at most max_steps steps.*yours took 5"),
    (fooling_image_only, r"return a pair \(image, steps\)"),
    (lambda *args: (fooling_autograd(*args)[0][0], fooling_autograd(*args)[1]),
     r"returns shape \[3, 8, 12\]; expected \[1, 3, 8, 12\], shaped like x"),
    (lambda *args: (fooling_autograd(*args)[0].numpy(), fooling_autograd(*args)[1]),
     "must return the image as a torch.Tensor, got ndarray"),
    (fooling_attached, r"still part of a graph"),
    (fooling_with_backward, r"\.grad of a parameter changed.*torch\.autograd\.grad"),
    (fooling_in_place, "changed its argument number 2 in place"),
    (fooling_calls_vislib, "calls vislib's own implementation"),
    (fooling_eval_mode_kept, r"train/eval mode of a module changed.*Leave the model's train/eval mode"),
])
def test_fooling_image_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.fooling_image(fn)


@pytest.mark.parametrize("check,fn", [(checks.ascent_step, ascent_autograd),
                                      (checks.class_visualization, visualization_stepping),
                                      (checks.total_variation, tv_slices),
                                      (checks.fooling_image, fooling_autograd)])
def test_a_check_leaves_the_global_random_state_to_the_learner(check, fn):
    """The checks run in the learner's notebook: they build their models without reseeding torch."""
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    check(fn)
    assert torch.equal(torch.rand(3), expected)
