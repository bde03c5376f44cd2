"""Mutation tests of the optimisation assignment's checks: typical wrong implementations are each
rejected with their own hint; correct implementations written differently are accepted."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vislib import checks, optimize
from vislib.hooks import frozen

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
])
def test_ascent_step_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.ascent_step(fn)


@pytest.mark.parametrize("check", [checks.ascent_step, checks.class_visualization, checks.total_variation])
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
    with pytest.raises(AssertionError, match=hint):
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
    with pytest.raises(AssertionError, match=hint):
        checks.total_variation(fn)


@pytest.mark.parametrize("check,fn", [(checks.ascent_step, ascent_autograd),
                                      (checks.class_visualization, visualization_stepping),
                                      (checks.total_variation, tv_slices)])
def test_a_check_leaves_the_global_random_state_to_the_learner(check, fn):
    """The checks run in the learner's notebook: they build their models without reseeding torch."""
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    check(fn)
    assert torch.equal(torch.rand(3), expected)
