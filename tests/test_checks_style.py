"""Mutation tests of the neural-style assignment's checks: typical wrong implementations are each
rejected with their own hint; correct implementations written differently are accepted."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vislib import checks, style

from .hint_coverage import names_the_mistake


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The checks run on tiny tensors: one thread is as fast as several, and it does not stall when
    other programs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- gram_matrix


def gram_bmm(features, normalize=True):
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    gram = torch.bmm(flat, flat.transpose(1, 2))
    return gram / (c * h * w) if normalize else gram


def gram_einsum(features, normalize=True):
    gram = torch.einsum("bihw,bjhw->bij", features, features)
    return gram / features[0].numel() if normalize else gram


def gram_loops(features, normalize=True):
    b, c, h, w = features.shape
    gram = torch.zeros(b, c, c)
    for n in range(b):
        for i in range(c):
            for j in range(c):
                gram[n, i, j] = (features[n, i] * features[n, j]).sum()
    return gram / (c * h * w) if normalize else gram


def gram_positions(features, normalize=True):
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    gram = flat.transpose(1, 2) @ flat
    return gram / (c * h * w) if normalize else gram


def gram_never_divided(features, normalize=True):
    return gram_bmm(features, normalize=False)


def gram_by_positions(features, normalize=True):
    b, c, h, w = features.shape
    return gram_bmm(features, normalize=False) / (h * w) if normalize else gram_bmm(features, normalize=False)


def gram_mixed_reshape(features, normalize=True):
    b, c, h, w = features.shape
    flat = features.reshape(b, h * w, c)
    gram = flat.transpose(1, 2) @ flat
    return gram / (c * h * w) if normalize else gram


def gram_one_for_the_batch(features, normalize=True):
    b, c, h, w = features.shape
    flat = features.reshape(c, -1)
    gram = (flat @ flat.T).expand(b, c, c)
    return gram / (c * h * w) if normalize else gram


def gram_always_divided(features, normalize=True):
    return gram_bmm(features)


def gram_calls_vislib(features, normalize=True):
    return style.gram_matrix(features, normalize=normalize)


def gram_centred(features, normalize=True):
    """The covariance: features minus each channel's mean over the positions."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    flat = flat - flat.mean(dim=2, keepdim=True)
    gram = flat @ flat.transpose(1, 2)
    return gram / (c * h * w) if normalize else gram


def gram_by_channels_squared(features, normalize=True):
    return gram_bmm(features, normalize=False) / features.shape[1] ** 2 if normalize else gram_bmm(features, False)


def gram_by_batch_too(features, normalize=True):
    return gram_bmm(features, normalize) / (len(features) if normalize else 1)


def gram_stub(features, normalize=True):
    raise NotImplementedError()


@pytest.mark.parametrize("fn", [gram_bmm, gram_einsum, gram_loops])
def test_gram_matrix_accepts_correct_implementations(fn, capsys):
    checks.gram_matrix(fn)
    assert "gram_matrix: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (gram_positions, r"F F\^T \(channels x channels\), not F\^T F"),
    (gram_never_divided, r"divide by C\*H\*W when normalize=True"),
    (gram_by_positions, r"not by H\*W only \(yours is C = 3 times too large\)"),
    (gram_mixed_reshape, "mixes channels and positions"),
    (gram_one_for_the_batch, "mixes images and channels"),
    (gram_always_divided, "with normalize=False return the plain sums"),
    (gram_calls_vislib, "calls vislib's own implementation"),
    (gram_centred, "don't subtract the mean.*gives the covariance"),
    (gram_by_channels_squared, r"not by C\*C"),
    (gram_by_batch_too, r"not by B\*C\*H\*W"),
])
def test_gram_matrix_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.gram_matrix(fn)


def test_gram_matrix_stub_is_not_implemented_yet(capsys):
    checks.gram_matrix(gram_stub)
    assert "gram_matrix: not implemented yet" in capsys.readouterr().out
    with pytest.raises(checks.NotImplementedYet):
        checks.gram_matrix(gram_stub, strict=True)


# --------------------------------------------------------------------------- content_loss


def content_sums(features, target):
    return (features - target).square().sum() / target.square().sum()


def content_norms(features, target):
    return torch.linalg.vector_norm(features - target) ** 2 / torch.linalg.vector_norm(target) ** 2


def content_means(features, target):
    return F.mse_loss(features, target, reduction="mean") / target.pow(2).mean()


def content_unnormalised(features, target):
    return (features - target).square().sum()


def content_mse(features, target):
    return F.mse_loss(features, target)


def content_not_squared(features, target):
    return (features - target).norm() / target.norm()


def content_own_norm(features, target):
    return (features - target).square().sum() / features.square().sum()


def content_detached(features, target):
    return torch.tensor(((features - target).square().sum() / target.square().sum()).item())


def content_gatys(features, target):
    return 0.5 * (features - target).square().sum()


def content_per_image(features, target):
    return (features - target).square().flatten(1).sum(1) / target.square().flatten(1).sum(1)


@pytest.mark.parametrize("fn", [content_sums, content_norms, content_means])
def test_content_loss_accepts_correct_implementations(fn, capsys):
    checks.content_loss(fn)
    assert "content_loss: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (content_unnormalised, "divide by the target's squared norm"),
    (content_mse, "this is the mean squared error"),
    (content_not_squared, r"square the distance: \|\|F - P\|\|\^2 / \|\|P\|\|\^2"),
    (content_own_norm, "not by the features' own"),
    (content_detached, "autograd cannot differentiate"),
    (content_per_image, r"return one number \(a 0-dim tensor\)"),
    (content_gatys, r"this is Gatys et al.'s 1/2 \* sum \(F - P\)\^2"),
])
def test_content_loss_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.content_loss(fn)


# --------------------------------------------------------------------------- style_loss


def style_loop(features, target_grams):
    total = 0.0
    for name, target in target_grams.items():
        total = total + (gram_bmm(features[name]) - target).square().sum() / target.square().sum()
    return total / len(target_grams)


def style_reusing_content_loss(features, target_grams):
    return torch.stack([content_sums(gram_einsum(features[n]), a) for n, a in target_grams.items()]).mean()


def style_summed(features, target_grams):
    return style_loop(features, target_grams) * len(target_grams)


def style_unnormalised(features, target_grams):
    return sum((gram_bmm(features[n]) - a).square().sum() for n, a in target_grams.items()) / len(target_grams)


def style_own_norm(features, target_grams):
    losses = [(gram_bmm(features[n]) - a).square().sum() / gram_bmm(features[n]).square().sum()
              for n, a in target_grams.items()]
    return sum(losses) / len(losses)


def style_plain_grams(features, target_grams):
    losses = [(gram_bmm(features[n], normalize=False) - a).square().sum() / a.square().sum()
              for n, a in target_grams.items()]
    return sum(losses) / len(losses)


def style_mse(features, target_grams):
    return sum(F.mse_loss(gram_bmm(features[n]), a) for n, a in target_grams.items()) / len(target_grams)


def style_over_features(features, target_grams):
    losses = [(gram_bmm(f) - target_grams[n]).square().sum() / target_grams[n].square().sum()
              for n, f in features.items()]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("fn", [style_loop, style_reusing_content_loss])
def test_style_loss_accepts_correct_implementations(fn, capsys):
    checks.style_loss(fn)
    assert "style_loss: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (style_summed, r"average over the layers \(divide by their number, 3\), not their sum"),
    (style_unnormalised, "the target Gram's squared norm"),
    (style_own_norm, "not by your image's own"),
    (style_plain_grams, "compute the Grams the way the targets were computed"),
    (style_over_features, "loop over the layers of target_grams"),
    (style_mse, r"not by the\s+number of elements \(F\.mse_loss"),
])
def test_style_loss_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.style_loss(fn)


# --------------------------------------------------------------------------- tv_loss


def tv_slices(image):
    dy = (image[:, :, 1:, :] - image[:, :, :-1, :]).pow(2).sum(dim=(1, 2, 3))
    dx = (image[:, :, :, 1:] - image[:, :, :, :-1]).pow(2).sum(dim=(1, 2, 3))
    return dx + dy


def tv_diff(image):
    return image.diff(dim=2).square().flatten(1).sum(1) + image.diff(dim=3).square().flatten(1).sum(1)


def tv_absolute(image):
    return image.diff(dim=2).abs().flatten(1).sum(1) + image.diff(dim=3).abs().flatten(1).sum(1)


def tv_one_direction(image):
    return image.diff(dim=3).square().flatten(1).sum(1)


def tv_means(image):
    return image.diff(dim=2).square().flatten(1).mean(1) + image.diff(dim=3).square().flatten(1).mean(1)


def tv_rolled(image):
    return ((image.roll(1, 2) - image).square() + (image.roll(1, 3) - image).square()).flatten(1).sum(1)


def tv_one_number(image):
    return tv_slices(image).sum()


@pytest.mark.parametrize("fn", [tv_slices, tv_diff])
def test_tv_loss_accepts_correct_implementations(fn, capsys):
    checks.tv_loss(fn)
    assert "tv_loss: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (tv_absolute, "not their absolute values"),
    (tv_one_direction, "add both directions"),
    (tv_means, "don.t average them"),
    (tv_rolled, "torch.roll also pairs"),
    (tv_one_number, r"one value per image"),
])
def test_tv_loss_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.tv_loss(fn)


# --------------------------------------------------------------------------- texture_synthesis


def _target_grams(net, texture, layers):
    with torch.no_grad():
        return {n: gram_bmm(f) for n, f in style.extract(net, texture, layers).items()}


def texture_lbfgs(net, texture, layers, steps):
    targets = _target_grams(net, texture, layers)
    image = torch.rand(texture.shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    optimizer = torch.optim.LBFGS([image], lr=1.0, max_iter=1)

    def closure():
        optimizer.zero_grad()
        loss = style_loop(style.extract(net, image, layers), targets)
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)
        with torch.no_grad():
            image.clamp_(0, 1)
    return image.detach()


def texture_adam(net, texture, layers, steps, sign=1.0, clamp=True, start=None):
    """Adam on the pixels, the features computed by its own loop over the network's layers."""
    targets = _target_grams(net, texture, layers)
    torch.manual_seed(0)
    image = (torch.rand_like(texture) if start is None else start.clone()).requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        features, x = {}, (image - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
            [0.229, 0.224, 0.225])[:, None, None]
        for name, module in net.named_children():
            x = module(x)
            if name in layers:
                features[name] = x
        (sign * style_reusing_content_loss(features, targets)).backward()
        optimizer.step()
        if clamp:
            with torch.no_grad():
                image.clamp_(0, 1)
    return image.detach()


def texture_no_steps(net, texture, layers, steps):
    return torch.rand(texture.shape, generator=torch.Generator().manual_seed(0))


def texture_ascent(net, texture, layers, steps):
    return texture_adam(net, texture, layers, steps, sign=-1.0)


def texture_unclamped(net, texture, layers, steps):
    return texture_adam(net, texture, layers, steps, clamp=False) * 1.5 - 0.2


def texture_from_the_style(net, texture, layers, steps):
    return texture_adam(net, texture, layers, steps, start=texture)


def texture_trains_the_network(net, texture, layers, steps):
    net.requires_grad_(True)
    return texture_lbfgs(net, texture, layers, steps)


def texture_unseeded(net, texture, layers, steps):
    """Adam from noise drawn from the global random state, whatever it is."""
    return texture_adam(net, texture, layers, steps, start=torch.rand(texture.shape))


def texture_attached(net, texture, layers, steps):
    image = texture_lbfgs(net, texture, layers, steps).requires_grad_(True)
    return image * 1.0


def texture_calls_vislib(net, texture, layers, steps):
    return style.texture_synthesis(texture, steps=steps, style_layers=layers, pretrained=False, progress=False).image


@pytest.mark.parametrize("fn", [texture_lbfgs, texture_adam])
def test_texture_synthesis_accepts_correct_implementations(fn, capsys):
    checks.texture_synthesis(fn)
    assert "texture_synthesis: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (texture_no_steps, r"should fall below 25%"),
    (texture_ascent, "don't maximise it"),
    (texture_unclamped, r"clamp them to \[0, 1\]"),
    (texture_from_the_style, "a copy of the style image"),
    (texture_trains_the_network, r"changed the model: requires_grad of a parameter changed"),
    (texture_calls_vislib, "calls vislib's own implementation"),
    (texture_unseeded, "gives a different texture each time: draw the starting noise from a fixed seed"),
    (texture_attached, r"still requires grad: return\s+image\.detach\(\)"),
])
def test_texture_synthesis_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.texture_synthesis(fn)
