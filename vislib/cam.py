"""Class activation maps: which regions of a convolutional feature map made the model say "class c".

A conv layer's output ``A`` [B,K,h,w] still knows *where* things are. Weighting its K channels
and summing gives a coarse map of evidence for one class:

    map_c(x, y) = ReLU( sum_k  alpha_k^c * A_k(x, y) )

The methods differ only in the channel weights ``alpha``:

- ``cam`` (Zhou et al. 2016): the weights of the final linear layer, ``w_k^c``. Exact when the
  layer feeds global average pooling and then that one linear layer, because then the class score
  is ``S_c = sum_k w_k^c * mean_xy A_k(x, y) + b_c``: the map is the score spread over space.
- ``grad_cam`` (Selvaraju et al. 2017): the spatial mean of the score's gradient,
  ``alpha_k^c = mean_xy dS_c / dA_k(x, y)``. Works for any conv layer of any architecture; on a
  GAP + linear head it equals ``w_k^c / (h*w)``, so Grad-CAM is CAM divided by ``h*w``.
- ``guided_grad_cam``: Grad-CAM's coarse map times guided backpropagation's fine detail.

One shared core runs the model (inside ``hooks.frozen``, through ``hooks.uses_model``, recording the layer with
``hooks.capture``), picks one target class per image, combines channels and upsamples; each
method only supplies its channel weights. Maps are raw (not normalised), one per image with that
image's own target, bilinearly upsampled to the input size unless ``upsample=False``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vislib.conventions import as_batch, logits_of, model_input, resolve_target, selected_scores
from vislib.hooks import capture, get_layer, layer_name, uses_model
from vislib.models import ShapesNet
from vislib.saliency import guided_backprop

SHAPES_NET_LAYER = "features.relu4"
SHAPES_NET_FC = "fc"


def _default(model: nn.Module, value, shapes_net_value: str, what: str):
    """``value``, or ShapesNet's default; other models must say which module to use."""
    if value is not None:
        return value
    if isinstance(model, ShapesNet):
        return shapes_net_value
    raise ValueError(
        f"{what} is required for a {type(model).__name__}: pass a dotted module name or the module "
        "(e.g. layer='layer4' and fc='fc' for a torchvision ResNet, layer='features.28' for VGG-16)"
    )


def _class_map(model: nn.Module, x, target, layer, channel_weights, upsample: bool, relu: bool,
               needs_gradients: bool) -> torch.Tensor:
    """The core every CAM method shares: record ``layer`` (and its gradient), resolve one target
    per image, ask ``channel_weights(activations, gradients, classes, logits)`` for alpha [B,K],
    and return ``ReLU(sum_k alpha_k A_k)`` [B,h,w], upsampled to the input size when asked."""
    x = as_batch(x)
    name = layer_name(model, layer)
    with capture(model, name, grads=needs_gradients) as recording:
        # With frozen parameters and a plain input, capture starts the autograd graph at the
        # layer, so the backward pass runs from the score down to the layer and no further.
        with torch.set_grad_enabled(needs_gradients):
            logits = logits_of(model, model_input(x.detach()))
        if name not in recording.activations:
            raise ValueError(f"layer {name!r} did not run in the model's forward pass")
        classes = resolve_target(target, logits)
        if needs_gradients and logits.requires_grad:
            selected_scores(logits, classes).sum().backward()
    activations = recording.activations[name]
    if activations.ndim != 4:
        raise ValueError(
            f"layer {name!r} outputs shape {tuple(activations.shape)}; class activation maps need a "
            "convolutional feature map [B,K,h,w]: choose a conv, batch-norm, ReLU or block layer"
        )
    gradients = recording.gradients.get(name)
    if needs_gradients and gradients is None:
        raise ValueError(f"layer {name!r} received no gradient: the class score does not depend on it")
    weights = channel_weights(activations, gradients, classes, logits.detach())
    maps = torch.einsum("bk,bkhw->bhw", weights, activations)
    if relu:
        maps = maps.clamp(min=0)
    if upsample:
        maps = F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return maps


@uses_model
def cam(model: nn.Module, x, target=None, layer=None, fc=None, upsample: bool = True,
        relu: bool = True) -> torch.Tensor:
    """Class activation map [B,H,W] (Zhou et al. 2016): ``sum_k w_k^c A_k`` with the final
    linear layer's weights, for a model whose ``layer`` feeds global average pooling and then the
    one linear layer ``fc`` (defaults for ShapesNet: ``features.relu4`` and ``fc``).

    ``relu=False`` keeps the negative part (evidence against the class). The model must really
    have that structure: if the maps do not add up to the logits, a ``ValueError`` says so.
    """
    layer = _default(model, layer, SHAPES_NET_LAYER, "layer")
    linear = get_layer(model, _default(model, fc, SHAPES_NET_FC, "fc"))
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"fc must be the nn.Linear after global average pooling, got {type(linear).__name__}")

    def fc_weights(activations, gradients, classes, logits):
        if activations.shape[1] != linear.in_features:
            raise ValueError(
                f"layer has {activations.shape[1]} channels but fc expects {linear.in_features} inputs: "
                "CAM needs layer -> global average pooling -> fc"
            )
        weights = linear.weight.detach()[classes]
        _check_gap_linear_head(activations, weights, linear, classes, logits)
        return weights

    return _class_map(model, x, target, layer, fc_weights, upsample, relu, needs_gradients=False)


def _check_gap_linear_head(activations, weights, linear, classes, logits):
    """CAM is only meaningful if score = mean over space of the map + bias; check that it is."""
    if logits.ndim != 2 or logits.shape[1] != linear.out_features:
        raise ValueError("CAM needs the model's output to be fc's output (the class scores)")
    rebuilt = torch.einsum("bk,bk->b", weights, activations.mean(dim=(2, 3)))
    if linear.bias is not None:
        rebuilt = rebuilt + linear.bias.detach()[classes]
    scores = selected_scores(logits, classes)
    # the model's own rounding: about 1e-6 of the scores in float32, 1e-2 in bfloat16
    tolerance = max(1e-3, 16 * torch.finfo(logits.dtype).eps)
    if not torch.allclose(rebuilt.to(scores.dtype), scores, rtol=tolerance,
                          atol=tolerance * (1 + scores.abs().max().item())):
        raise ValueError(
            "the class scores are not fc(global average of the layer): CAM needs layer -> global average "
            "pooling -> fc with nothing in between; use grad_cam for other architectures"
        )


def _mean_gradient(activations, gradients, classes, logits):
    """Grad-CAM's channel weights: the score's gradient averaged over the feature map."""
    return gradients.mean(dim=(2, 3))


@uses_model
def grad_cam(model: nn.Module, x, target=None, layer=None, upsample: bool = True,
             relu: bool = True) -> torch.Tensor:
    """Grad-CAM map [B,H,W] (Selvaraju et al. 2017): ``ReLU(sum_k alpha_k^c A_k)`` with
    ``alpha_k^c`` the spatially averaged gradient of the class score with respect to ``A_k``,
    the output of ``layer`` (default for ShapesNet: ``features.relu4``; required otherwise).

    ``relu=False`` keeps the negative part (regions whose features lower the score).
    """
    layer = _default(model, layer, SHAPES_NET_LAYER, "layer")
    return _class_map(model, x, target, layer, _mean_gradient, upsample, relu, needs_gradients=True)


@uses_model
def guided_grad_cam(model: nn.Module, x, target=None, layer=None) -> torch.Tensor:
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map, a signed tensor
    shaped like ``x`` [B,C,H,W]: class-discriminative (from Grad-CAM) and sharp (from guided
    backprop). ``vislib.saliency.to_heatmap`` turns it into a [B,H,W] heatmap."""
    x = as_batch(x)
    coarse = grad_cam(model, x, target=target, layer=layer, upsample=True)
    return guided_backprop(model, x, target=target) * coarse[:, None]
