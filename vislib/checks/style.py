"""Checks of the neural-style assignment: ``gram_matrix``, ``content_loss``, ``style_loss``, ``tv_loss``
and ``texture_synthesis``."""

from __future__ import annotations

import math

import torch

from vislib import optimize, style
from vislib.checks.harness import CheckFailure, call, exercise, expect, returned_tensor
from vislib.checks.language import _
from vislib.checks.offlimits import OffLimits

__all__ = ["content_loss", "gram_matrix", "style_loss", "texture_synthesis", "tv_loss"]

# What the functions of this assignment must not use (see vislib.checks.offlimits).
OFF_LIMITS = OffLimits(modules=("vislib.style",), functions=(optimize.total_variation,),
                       allowed=(style.extract, style.vgg19_features))

TEXTURE_STEPS = 30
TEXTURE_LAYERS = ("relu1_1", "relu2_1")
ENOUGH = 0.25  # the synthesised texture's style loss must fall below this share of random noise's


def _features(seed: int, *shape: int) -> torch.Tensor:
    """Random features, half of them zero like ReLU outputs, so signs and zeros both occur."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).clamp(min=0) + 0.1 * torch.randn(*shape, generator=generator)


def _differentiable(name: str, fn, *args) -> None:
    """The loss must let autograd reach its input: the texture loop needs its gradient."""
    inputs = [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
    value = fn(*inputs)
    if isinstance(value, torch.Tensor) and not value.requires_grad:
        raise CheckFailure(_("your {name} returns a value autograd cannot differentiate: compute it with torch "
                             "operations only (no .item(), no numpy, no torch.no_grad())", name=name))


def _scalar(name: str, got) -> None:
    if isinstance(got, torch.Tensor) and got.ndim != 0:
        raise CheckFailure(_("your {name} returns shape {shape}: return one number (a 0-dim tensor), summed over "
                             "every element including the batch", name=name, shape=list(got.shape)))


# --------------------------------------------------------------------------- gram_matrix

_GRAM_SHAPES = ((2, 3, 4, 5), (1, 6, 3, 3), (3, 4, 2, 7))


def _gram_shape(got, features: torch.Tensor) -> None:
    if not isinstance(got, torch.Tensor):
        return
    b, c, h, w = features.shape
    said = _("your {name} returns shape {shape}; expected {expected}", name="gram_matrix", shape=list(got.shape),
             expected=[b, c, c])
    if tuple(got.shape) == (b, h * w, h * w):
        raise CheckFailure(_("{said}: the Gram matrix is F F^T (channels x channels), not F^T F (positions x "
                             "positions): multiply flat by flat.transpose(1, 2)", said=said))
    if tuple(got.shape) in ((c, c), (1, c, c)) and b > 1:
        raise CheckFailure(_("{said}: one Gram matrix per image; keep the batch dimension "
                             "(features.reshape(B, C, H * W))", said=said))
    if tuple(got.shape) == (b * c, b * c):
        raise CheckFailure(_("{said}: reshape to [B, C, H*W], not [B*C, H*W]: each image gets its own Gram matrix",
                             said=said))


@exercise("gram_matrix", _("F F^T per image, divided by C*H*W when normalize, on batches of non-square feature "
                           "maps, with normalize=True (the default) and False."))
def gram_matrix(fn) -> None:
    for seed, shape in enumerate(_GRAM_SHAPES):
        features = _features(seed, *shape)
        b, c, h, w = shape
        plain = style.gram_matrix(features, normalize=False)
        scale = c * h * w
        mixed = features.reshape(b, h * w, c)
        pooled = features.transpose(0, 1).reshape(c, -1)
        one_for_all = (pooled @ pooled.T).expand(b, c, c)
        scrambled = features.reshape(c, -1)
        scrambled_for_all = (scrambled @ scrambled.T).expand(b, c, c)
        mistakes = {
            _("divide by C*H*W when normalize=True"): plain,
            _("divide by C*H*W, not by H*W only (yours is C = {c} times too large)", c=c): plain / (h * w),
            _("divide by C*H*W, not by C only"): plain / c,
            _("divide by C*H*W, not by C*C"): plain / (c * c),
            _("divide each image's Gram by C*H*W, not by B*C*H*W: the batch size plays no part"): plain / (b * scale),
            _("reshape to [B, C, H*W] (features.reshape(B, C, -1)); a reshape to [B, H*W, C] does not move the "
              "channels last, it mixes channels and positions"): mixed.transpose(1, 2) @ mixed / scale,
            _("reshape each image on its own, features.reshape(B, C, H*W): one Gram for the whole batch mixes the "
              "images"): one_for_all / scale,
            _("reshape each image on its own, features.reshape(B, C, H*W): a reshape to [C, B*H*W] mixes images and "
              "channels"): scrambled_for_all / scale,
            _("don't subtract the mean: the Gram matrix is F F^T of the features themselves; centring them first "
              "gives the covariance"): style.gram_matrix(features - features.mean(dim=(2, 3), keepdim=True)),
        }
        got = call("gram_matrix", fn, features)
        _gram_shape(got, features)
        expect("gram_matrix", got, plain / scale, mistakes,
               what=_("Gram matrix (features of shape {shape})", shape=list(shape)))
        got = call("gram_matrix", lambda f: fn(f, normalize=False), features)
        _gram_shape(got, features)
        expect("gram_matrix", got, plain, {_("with normalize=False return the plain sums F F^T, without dividing"):
                                           plain / scale},
               what=_("Gram matrix with normalize=False (features of shape {shape})", shape=list(shape)))


# --------------------------------------------------------------------------- content_loss

NOT_ABSOLUTE = _("square the differences, not their absolute values")


@exercise("content_loss", _("||F - P||^2 / ||P||^2, one differentiable number, on feature maps of 3 shapes."))
def content_loss(fn) -> None:
    for seed, shape in enumerate(((1, 4, 5, 6), (2, 3, 4, 4), (1, 8, 2, 3))):
        features, target = _features(2 * seed, *shape), _features(2 * seed + 1, *shape)
        got = call("content_loss", fn, features, target)
        _scalar("content_loss", got)
        expected = style.content_loss(features, target)
        difference = features - target
        mistakes = {
            _("divide by the target's squared norm ||P||^2 (so that 1 means \"as far as from zero\")"):
                difference.square().sum(),
            _("this is the mean squared error: divide the summed squared difference by the target's squared norm "
              "||P||^2 instead"): difference.square().mean(),
            _("divide by the target's ||P||^2, not by the features' own ||F||^2"):
                difference.square().sum() / features.square().sum(),
            _("square the distance: ||F - P||^2 / ||P||^2, not ||F - P|| / ||P||"): difference.norm() / target.norm(),
            NOT_ABSOLUTE: difference.abs().sum() / target.abs().sum(),
            _("numerator and denominator must both be sums (or both means): yours mixes a mean with a sum"):
                difference.square().mean() / target.square().sum(),
            _("this is Gatys et al.'s 1/2 * sum (F - P)^2: this assignment's content loss divides the summed squared "
              "difference by the target's squared norm ||P||^2, and has no 1/2"): difference.square().sum() / 2,
        }
        expect("content_loss", got, expected, mistakes, what=_("loss (feature maps {shape})", shape=list(shape)))
        _differentiable("content_loss", fn, features, target)


# --------------------------------------------------------------------------- style_loss


def _style_inputs() -> tuple[dict, dict]:
    """Features of three layers of different sizes plus an extra (content) layer that has no target
    Gram, and target Grams from other features."""
    shapes = {"relu1_1": (1, 4, 6, 5), "relu2_1": (1, 8, 3, 3), "relu3_1": (1, 3, 4, 4)}
    features = {name: _features(seed, *shape) for seed, (name, shape) in enumerate(shapes.items())}
    features["relu4_1"] = _features(9, 1, 5, 2, 2)
    grams = {name: style.gram_matrix(_features(10 + seed, *shape)) for seed, (name, shape) in enumerate(shapes.items())}
    return features, grams


@exercise("style_loss", _("the mean over the target's layers of ||G(F_l) - A_l||^2 / ||A_l||^2, one differentiable "
                          "number, on 3 layers of different sizes (and one more layer without a target)."))
def style_loss(fn) -> None:
    features, grams = _style_inputs()
    try:
        got = call("style_loss", fn, features, grams)
    except KeyError as error:
        raise CheckFailure(_("your style_loss looks for a layer that has no target Gram ({error}): loop over the "
                             "layers of target_grams; features may hold more layers (the content layer, say)",
                             error=str(error))) from error
    _scalar("style_loss", got)
    expected = style.style_loss(features, grams)

    def per_layer(measure):
        return [measure(style.gram_matrix(features[name]), target) for name, target in grams.items()]

    def mean(values):
        return sum(values) / len(values)

    squared = per_layer(lambda g, a: (g - a).square().sum())
    mistakes = {
        _("divide each layer's summed squared difference by ||A_l||^2, the target Gram's squared norm, not by the "
          "number of elements (F.mse_loss is the mean squared error)"):
            [mean(per_layer(lambda g, a: (g - a).square().mean())),
             sum(per_layer(lambda g, a: (g - a).square().mean()))],
        _("average over the layers (divide by their number, {count}), not their sum", count=len(grams)):
            expected * len(grams),
        _("divide each layer's squared difference by ||A_l||^2, the target Gram's squared norm"): mean(squared),
        _("divide by the target Gram's ||A_l||^2, not by your image's own ||G_l||^2"):
            mean(per_layer(lambda g, a: (g - a).square().sum() / g.square().sum())),
        _("square the distance: ||G - A||^2 / ||A||^2, not ||G - A|| / ||A||"):
            mean(per_layer(lambda g, a: (g - a).norm() / a.norm())),
        _("compute the Grams the way the targets were computed, gram_matrix(features) with normalize=True"):
            mean([(style.gram_matrix(features[n], normalize=False) - a).square().sum() / a.square().sum()
                  for n, a in grams.items()]),
    }
    expect("style_loss", got, expected, mistakes, what=_("loss (3 layers)"))
    _differentiable("style_loss", lambda *tensors: fn(dict(zip(features, tensors)), grams), *features.values())


# --------------------------------------------------------------------------- tv_loss


def check_total_variation(name: str, fn, images) -> None:
    """The total variation check that the style (``tv_loss``) and the optimisation
    (``total_variation``) assignments share: vislib.optimize.total_variation's convention, the
    sum of squared differences between vertical and horizontal neighbours, one value per image."""
    for image in images:
        got = call(name, fn, image)
        expected = optimize.total_variation(image)
        dy, dx = image[..., 1:, :] - image[..., :-1, :], image[..., :, 1:] - image[..., :, :-1]
        wrap_dy, wrap_dx = image - image.roll(1, -2), image - image.roll(1, -1)

        def per_image(t):
            return t.flatten(1).sum(1)

        mistakes = {
            _("square the differences between neighbours (beta = 2), not their absolute values"):
                per_image(dy.abs()) + per_image(dx.abs()),
            _("add both directions: differences between vertical neighbours (rows) and horizontal ones (columns)"):
                [per_image(dx.square()), per_image(dy.square())],
            _("sum the squared differences over channels and pixels, don't average them"):
                dy.square().flatten(1).mean(1) + dx.square().flatten(1).mean(1),
            _("compare each pixel with its neighbours inside the image: torch.roll also pairs the last row (column) "
              "with the first"): per_image(wrap_dy.square()) + per_image(wrap_dx.square()),
            _("differences between neighbouring pixels only (rows and columns), not between colour channels"):
                expected + per_image((image[:, 1:] - image[:, :-1]).square()),
            _("no square root: this total variation adds up the squared differences themselves"):
                per_image((dy[..., :, :-1].square() + dx[..., :-1, :].square()).sqrt()),
            _("return one value per image, shape [B]: sum over channels, rows and columns, not over the batch"):
                expected.sum(),
        }
        expect(name, got, expected, mistakes, what=_("total variation (images {shape})", shape=list(image.shape)))
        _differentiable(name, lambda x: fn(x).sum(), image)


@exercise("tv_loss", _("the sum of squared differences between vertical and horizontal neighbours, one value per "
                       "image, on non-square batches."))
def tv_loss(fn) -> None:
    check_total_variation("tv_loss", fn, [torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
                                          for seed, shape in enumerate(((2, 3, 5, 7), (1, 3, 6, 4)))])


# --------------------------------------------------------------------------- texture_synthesis


def _same_texture_again(fn, net, texture: torch.Tensor, got: torch.Tensor) -> None:
    """The notebook asks for noise from a fixed seed: a second run, with the global random state moved
    on (the check's own, restored afterwards), must give the same texture."""
    torch.manual_seed(torch.initial_seed() + 1)
    again = call("texture_synthesis", fn, net, texture, TEXTURE_LAYERS, TEXTURE_STEPS, models=[net])
    if not isinstance(again, torch.Tensor) or not torch.allclose(again.detach(), got, rtol=1e-4, atol=1e-5):
        raise CheckFailure(_("your texture_synthesis gives a different texture each time: draw the starting noise "
                             "from a fixed seed, torch.rand(style_image.shape, "
                             "generator=torch.Generator().manual_seed(0))"))


def _stripes(size: int = 32) -> torch.Tensor:
    """A small texture [1,3,S,S] in [0, 1]: coloured diagonal stripes with a little noise."""
    rows, cols = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    waves = torch.stack([0.5 + 0.4 * torch.sin((rows + cols) * 2 * math.pi / 8 + phase) for phase in (0, 2, 4)])
    noise = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return (waves[None] + 0.1 * noise).clamp(0, 1)


@exercise("texture_synthesis", _("from noise, {steps} steps lower the style loss of a 32x32 texture below "
                                 "{enough:.0%} of random noise's, without copying it or changing the network, and "
                                 "give the same texture again.", steps=TEXTURE_STEPS, enough=ENOUGH))
def texture_synthesis(fn) -> None:
    net = style.vgg19_features.__wrapped__(False, seed=0, last=TEXTURE_LAYERS[-1])  # a fresh copy, not the cached one
    texture = _stripes()
    got = call("texture_synthesis", fn, net, texture, TEXTURE_LAYERS, TEXTURE_STEPS, models=[net])
    returned_tensor("texture_synthesis", got, texture.shape, why=_(", an image the size of the style image"))
    if got.requires_grad:
        raise CheckFailure(_("your texture_synthesis returns an image that still requires grad: return "
                             "image.detach(), the pixels without their optimiser's graph"))
    got = got.detach()
    if not torch.isfinite(got).all():
        raise CheckFailure(_("your texture_synthesis returns NaN or infinite pixels: lower the learning rate"))
    if got.min() < 0 or got.max() > 1:
        raise CheckFailure(_("your texture_synthesis returns pixels in [{low:.2f}, {high:.2f}]: clamp them to [0, 1] "
                             "after each step (inside torch.no_grad(), image.clamp_(0, 1))", low=got.min().item(),
                             high=got.max().item()))
    _same_texture_again(fn, net, texture, got)
    correlation = torch.corrcoef(torch.stack([got.flatten(), texture.flatten()]))[0, 1].item()
    if correlation > 0.9:
        raise CheckFailure(_("your texture is a copy of the style image (pixel correlation {correlation:.2f}): start "
                             "from noise and match only the Gram matrices (style_loss), not the feature maps",
                             correlation=correlation))

    with torch.no_grad():
        targets = {n: style.gram_matrix(f) for n, f in style.extract(net, texture, TEXTURE_LAYERS).items()}

        def loss(image):
            return style.style_loss(style.extract(net, image, TEXTURE_LAYERS), targets).item()

        noise = loss(torch.rand(texture.shape, generator=torch.Generator().manual_seed(1)))
        reached = loss(got)
    if reached > noise:
        raise CheckFailure(_("your texture's style loss {reached:.3g} is higher than random noise's ({noise:.3g}): "
                             "minimise the loss (loss.backward(), then optimizer.step()), don't maximise it",
                             reached=reached, noise=noise))
    if reached > ENOUGH * noise:
        raise CheckFailure(_("your texture's style loss {reached:.3g} is {share:.0%} of random noise's ({noise:.3g}) "
                             "after {steps} steps; it should fall below {enough:.0%}: optimise the image's pixels "
                             "(requires_grad=True), zero the gradient and call optimizer.step() at every step (L-BFGS "
                             "with lr=1, or Adam with lr=0.05)", reached=reached, share=reached / noise, noise=noise,
                             steps=TEXTURE_STEPS, enough=ENOUGH))
