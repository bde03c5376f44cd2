"""Neural style (Gatys, Ecker & Bethge, 2015-2016): content is *where* features are, style is
*which features occur together*.

A CNN's feature maps at one layer keep the layout of the picture: matching them reproduces
its content. Their Gram matrix G[i, j] = sum over positions of F_i * F_j (how often channels i
and j fire together) forgets all positions: matching it at several layers reproduces a texture,
a style. Optimising a picture for both gives style transfer; for the Grams alone, texture
synthesis.

The feature extractor is VGG19, cut after the deepest layer needed: with its ImageNet weights
when they are in the local torch cache and pass their sha256 check, otherwise with fixed-seed
random weights. Random convolutional features are enough for textures and passable style
transfer (Ustyuzhaninov et al., 2017; He, Wang & Hopcroft, 2016): the Gram matrices of many
random filters are already rich statistics of local structure. Images here are RGB in [0, 1],
[1,3,H,W]; keep them small (at most 128 px) on a CPU.
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import trange

from vislib.conventions import as_batch
from vislib.models import IMAGENET_MEAN, IMAGENET_STD, WeightsError, pretrained_available, torchvision_model

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
CONTENT_LAYER = "relu4_1"


def _vgg19_layer_names() -> list[str]:
    """Names of ``torchvision.models.vgg19().features`` in the papers' style: conv1_1, relu1_1, ..."""
    from torchvision.models.vgg import cfgs

    names, block, index = [], 1, 1
    for item in cfgs["E"]:
        if item == "M":
            names.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
            index += 1
    return names


VGG19_LAYERS = tuple(_vgg19_layer_names())


@functools.lru_cache(maxsize=1)
def _imagenet_vgg19_convs() -> nn.Sequential:
    """VGG19's convolutional part with ImageNet weights, read and checked once (a 550 MB file)
    for all the depths ``vgg19_features`` cuts from it."""
    return torchvision_model("vgg19", pretrained=True).features


@functools.lru_cache(maxsize=4)
def vgg19_features(pretrained: bool, seed: int = 0, last: str = "relu4_1") -> nn.Sequential:
    """VGG19's convolutional part up to layer ``last``, children named conv1_1, relu1_1, ...

    ``pretrained=True``: ImageNet weights from the local torch cache (``WeightsError`` if
    absent); ``False``: random weights drawn from ``seed`` with torchvision's initialisation
    (Kaiming normal). Eval mode, parameters frozen, ReLUs not inplace. Cached: the same
    arguments return the same (shared, read-only) module.
    """
    if last not in VGG19_LAYERS:
        raise KeyError(f"no VGG19 layer named {last!r}; valid names: {', '.join(VGG19_LAYERS)}")
    if pretrained:
        features = _imagenet_vgg19_convs()
    else:
        from torchvision.models.vgg import cfgs, make_layers

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            features = make_layers(cfgs["E"])  # only the conv part: the classifier would cost 140M weights
            for module in features.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(module.bias)
    depth = VGG19_LAYERS.index(last) + 1
    layers = OrderedDict()
    for name, module in zip(VGG19_LAYERS[:depth], features):
        layers[name] = nn.ReLU(inplace=False) if isinstance(module, nn.ReLU) else module
    net = nn.Sequential(layers).eval()
    net.requires_grad_(False)
    return net


def _extractor(pretrained, layers) -> nn.Sequential:
    for name in layers:
        if name not in VGG19_LAYERS:
            raise KeyError(f"no VGG19 layer named {name!r}; valid names: {', '.join(VGG19_LAYERS)}")
    last = max(layers, key=VGG19_LAYERS.index)
    if pretrained is None and pretrained_available("vgg19"):
        try:
            return vgg19_features(True, last=last)
        except WeightsError as error:
            warnings.warn(f"{error} Using fixed-seed random VGG19 weights instead.", stacklevel=4)
    return vgg19_features(bool(pretrained), last=last)


def extract(net: nn.Sequential, rgb: torch.Tensor, layers) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` (VGG19 names) for images ``rgb`` in [0, 1] (ImageNet-normalised
    inside, as VGG was trained)."""
    mean = torch.tensor(IMAGENET_MEAN, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=rgb.device).view(1, 3, 1, 1)
    x, wanted, outputs = (rgb - mean) / std, set(layers), {}
    for name, module in net.named_children():
        x = module(x)
        if name in wanted:
            outputs[name] = x
            if len(outputs) == len(wanted):
                break
    return outputs


# --------------------------------------------------------------------------- losses


def gram_matrix(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """G[b, i, j] = sum over positions of F[b, i] * F[b, j], divided by C*H*W: [B,C,C].

    The division makes Grams of different layers and image sizes comparable (an average
    co-activation rather than a sum that grows with the image). ``normalize=False`` returns the
    plain sums F F^T, the Gram matrix of Gatys et al.'s formulas.
    """
    features = as_batch(features)
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    gram = flat @ flat.transpose(1, 2)
    return gram / (c * h * w) if normalize else gram


def _relative_error(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (value - target).square().sum() / target.square().sum().clamp_min(1e-12)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||F - P||^2 / ||P||^2: the squared distance of feature maps, relative to the target's
    size, so that 1 means "as far as from zero" for any layer and any extractor."""
    return _relative_error(features, target)


def style_loss(features: dict, target_grams: dict) -> torch.Tensor:
    """The mean over layers of ||G(F_l) - A_l||^2 / ||A_l||^2: Gram matrices compared
    relative to the target's, every layer weighted equally (Gatys et al. weight them equally too)."""
    if not target_grams:
        raise ValueError("style_loss needs at least one layer")
    return sum(_relative_error(gram_matrix(features[n]), a) for n, a in target_grams.items()) / len(target_grams)


# --------------------------------------------------------------------------- optimisation


@dataclass
class StyleResult:
    """The synthesised image [1,3,H,W] in [0, 1] and the losses at each step [steps]
    (``losses`` = content_weight * content_losses + style_weight * style_losses)."""

    image: torch.Tensor
    losses: torch.Tensor
    content_losses: torch.Tensor
    style_losses: torch.Tensor


def _rgb_image(image, what: str) -> torch.Tensor:
    image = as_batch(image)
    if image.shape[:2] != (1, 3):
        raise ValueError(f"{what} must be one RGB image [1,3,H,W] in [0, 1], got shape {tuple(image.shape)}")
    if image.min() < 0 or image.max() > 1:
        raise ValueError(f"{what} must lie in [0, 1] (use vislib.models.preprocess(img, normalize=False))")
    return image.detach().float()


def style_transfer(content: torch.Tensor, style: torch.Tensor, steps: int = 100, content_weight: float = 1.0,
                   style_weight: float = 10.0, content_layer: str = CONTENT_LAYER, style_layers=STYLE_LAYERS,
                   optimizer: str = "lbfgs", lr: float | None = None, init="content", seed: int = 0,
                   pretrained: bool | None = None, progress: bool = True) -> StyleResult:
    """Paint ``content`` in the style of ``style`` (Gatys et al.): minimise
    content_weight * content_loss + style_weight * style_loss over the pixels.

    ``content`` and ``style`` are RGB images [1,3,H,W] in [0, 1] (any sizes; the result has the
    content's). ``optimizer``: "lbfgs" (default lr 1, one iteration per step, converges in
    far fewer steps) or "adam" (default lr 0.02). ``init``: "content", "noise" or an image.
    ``pretrained``: None uses VGG19's ImageNet weights when present and valid (a file that fails
    its check is a warning), else random weights; True requires them (``WeightsError``).
    With ``style_weight=0`` and ``init="noise"`` this reconstructs the content from one layer.
    """
    content = _rgb_image(content, "content")
    return _synthesise(content, _rgb_image(style, "style"), content.shape[-2:], steps, content_weight,
                       style_weight, content_layer, style_layers, optimizer, lr, init, seed, pretrained, progress)


def texture_synthesis(style: torch.Tensor, size: int | None = None, steps: int = 100, style_layers=STYLE_LAYERS,
                      optimizer: str = "lbfgs", lr: float | None = None, seed: int = 0,
                      pretrained: bool | None = None, progress: bool = True) -> StyleResult:
    """A new image of the texture ``style`` (RGB [1,3,H,W] in [0, 1]): from noise, match its Gram
    matrices at ``style_layers`` only, so the local statistics are kept and the layout is not.
    The result is ``size`` x ``size`` (default: the style image's size)."""
    style = _rgb_image(style, "style")
    shape = style.shape[-2:] if size is None else (size, size)
    return _synthesise(None, style, shape, steps, 0.0, 1.0, None, style_layers, optimizer, lr, "noise", seed,
                       pretrained, progress)


def _synthesise(content, style, shape, steps, content_weight, style_weight, content_layer, style_layers, optimizer,
                lr, init, seed, pretrained, progress) -> StyleResult:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if content_weight < 0 or style_weight < 0:
        raise ValueError(f"weights must be >= 0, got content {content_weight}, style {style_weight}")
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    style_layers = (style_layers,) if isinstance(style_layers, str) else tuple(style_layers)
    if style_weight == 0:  # a pure content reconstruction: no Gram matrices to compute
        style_layers = ()
    layers = style_layers + ((content_layer,) if content is not None else ())
    if not layers:
        raise ValueError("nothing to match: give at least one style layer (or a content layer and image)")
    net = _extractor(pretrained, layers)
    device = style.device
    net = net.to(device)
    with torch.no_grad():
        style_targets = {n: gram_matrix(f) for n, f in extract(net, style, style_layers).items()}
        content_target = extract(net, content, [content_layer])[content_layer] if content is not None else None

    gen = torch.Generator().manual_seed(seed)
    if isinstance(init, torch.Tensor):
        start = _rgb_image(init, "init").to(device)
        if start.shape[-2:] != tuple(shape):
            raise ValueError(f"init must be {tuple(shape)} pixels, got {tuple(start.shape[-2:])}")
    elif init == "content" and content is not None:
        start = content
    elif init == "noise":
        start = torch.rand(1, 3, *shape, generator=gen).to(device)
    else:
        raise ValueError(f"init must be 'content' (style transfer only), 'noise' or an image, got {init!r}")
    pixels = start.clone().requires_grad_(True)
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS([pixels], lr=lr or 1.0, max_iter=1, history_size=50)
    else:
        opt = torch.optim.Adam([pixels], lr=lr or 0.02)

    history = []

    def closure():
        opt.zero_grad()
        with torch.enable_grad():
            features = extract(net, pixels, layers)
            style_part = style_loss(features, style_targets) if style_layers else torch.zeros((), device=device)
            content_part = content_loss(features[content_layer], content_target) if content is not None \
                else torch.zeros((), device=device)
            loss = content_weight * content_part + style_weight * style_part
            loss.backward()
        history.append((loss.item(), content_part.item(), style_part.item()))
        return loss

    for _ in trange(steps, desc="style", disable=not progress, leave=False):
        opt.step(closure)
        with torch.no_grad():
            pixels.clamp_(0, 1)
    total, content_losses, style_losses = torch.tensor(history).T
    return StyleResult(image=pixels.detach(), losses=total, content_losses=content_losses, style_losses=style_losses)
