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

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vislib.conventions import as_batch, copies_per_pass, logits_of, model_input, resolve_target, selected_scores
from vislib.hooks import capture, differentiable_output, get_layer, layer_name, uses_model
from vislib.models import ShapesNet
from vislib.saliency import guided_backprop, logits_of_copies

SHAPES_NET_LAYER = "features.relu4"
SHAPES_NET_FC = "fc"


def default_layer(model: nn.Module, layer):
    """``layer``, or ShapesNet's CAM layer (the last convolutional block) when None for a ShapesNet."""
    return _default(model, layer, SHAPES_NET_LAYER, "layer")


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


@dataclass
class LayerRecord:
    """What a method's weighting can use: the layer's activations A [B,K,h,w], the gradient of
    each image's class score with respect to them (None for gradient-free methods), the classes,
    the logits, and (for the perturbation methods) the model, the input and the layer."""

    activations: torch.Tensor
    gradients: torch.Tensor | None
    classes: torch.Tensor
    logits: torch.Tensor
    model: nn.Module
    x: torch.Tensor
    layer: str
    batch_size: int | None = None
    progress: bool = True


def _class_map(model: nn.Module, x, target, layer, weighting, upsample: bool, relu: bool,
               needs_gradients: bool, batch_size: int | None = None, progress: bool = True) -> torch.Tensor:
    """The core every CAM method shares: record ``layer`` (and its gradient), resolve one target
    per image, ask ``weighting(record)`` for the weights W, and return ``ReLU(sum_k W_k A_k)``
    [B,h,w], upsampled to the input size when asked. W is [B,K] (one weight per channel) or
    [B,K,h,w] (one per channel and position: HiResCAM, LayerCAM); a weighting may also return
    ``(W, offset)`` with an offset [B] added to each map (Eigen-CAM's centring)."""
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
    weights = weighting(LayerRecord(activations, gradients, classes, logits.detach(), model, x, name, batch_size,
                                    progress))
    return _weighted_sum(weights, activations, x.shape[-2:] if upsample else None, relu)


def _weighted_sum(weights, activations: torch.Tensor, size, relu: bool) -> torch.Tensor:
    """The map from a weighting's result (W, or (W, offset)) and the activations: ``sum_k W_k A_k``
    (+ offset), its ReLU when ``relu``, bilinearly upsampled to ``size`` unless it is None."""
    weights, offset = weights if isinstance(weights, tuple) else (weights, None)
    if weights.ndim == 2:
        maps = torch.einsum("bk,bkhw->bhw", weights.to(activations.dtype), activations)
    else:
        maps = (weights * activations).sum(dim=1)
    if offset is not None:
        maps = maps + offset.view(-1, 1, 1)
    if relu:
        maps = maps.clamp(min=0)
    if size is not None:
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return maps


def grad_cam_with_graph(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, layer) -> tuple:
    """Grad-CAM maps [B,H,W] (upsampled, after the ReLU) and the logits, both with their autograd
    graph back to ``x``: what an attack on the explanation differentiates
    (``vislib.adversarial.explanation_attack``). The weighting is ``grad_cam``'s, from a gradient
    taken with ``create_graph=True``. For a model already entered through ``hooks.frozen``."""
    name = layer_name(model, layer)
    with differentiable_output(model, name) as kept:
        logits = logits_of(model, model_input(x))
    if "output" not in kept:
        raise ValueError(f"layer {name!r} did not run in the model's forward pass")
    activations = kept["output"]
    (gradients,) = torch.autograd.grad(selected_scores(logits, classes).sum(), activations, create_graph=True)
    record = LayerRecord(activations, gradients, classes, logits, model, x, name)
    return _weighted_sum(_mean_gradient(record), activations, x.shape[-2:], relu=True), logits


@uses_model
def cam(model: nn.Module, x, target=None, layer=None, fc=None, upsample: bool = True,
        relu: bool = True) -> torch.Tensor:
    """Class activation map [B,H,W] (Zhou et al. 2016): ``sum_k w_k^c A_k`` with the final
    linear layer's weights, for a model whose ``layer`` feeds global average pooling and then the
    one linear layer ``fc`` (defaults for ShapesNet: ``features.relu4`` and ``fc``).

    ``relu=False`` keeps the negative part (evidence against the class). The model must really
    have that structure: if the maps do not add up to the logits, a ``ValueError`` says so.
    """
    layer = default_layer(model, layer)
    linear = get_layer(model, _default(model, fc, SHAPES_NET_FC, "fc"))
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"fc must be the nn.Linear after global average pooling, got {type(linear).__name__}")

    def fc_weights(record):
        activations, classes, logits = record.activations, record.classes, record.logits
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


def _mean_gradient(record):
    """Grad-CAM's channel weights: the score's gradient averaged over the feature map."""
    return record.gradients.mean(dim=(2, 3))


@uses_model
def grad_cam(model: nn.Module, x, target=None, layer=None, upsample: bool = True,
             relu: bool = True) -> torch.Tensor:
    """Grad-CAM map [B,H,W] (Selvaraju et al. 2017): ``ReLU(sum_k alpha_k^c A_k)`` with
    ``alpha_k^c`` the spatially averaged gradient of the class score with respect to ``A_k``,
    the output of ``layer`` (default for ShapesNet: ``features.relu4``; required otherwise).

    ``relu=False`` keeps the negative part (regions whose features lower the score).
    """
    layer = default_layer(model, layer)
    return _class_map(model, x, target, layer, _mean_gradient, upsample, relu, needs_gradients=True)


@uses_model
def guided_grad_cam(model: nn.Module, x, target=None, layer=None) -> torch.Tensor:
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map, a signed tensor
    shaped like ``x`` [B,C,H,W]: class-discriminative (from Grad-CAM) and sharp (from guided
    backprop). ``vislib.saliency.to_heatmap`` turns it into a [B,H,W] heatmap."""
    x = as_batch(x)
    coarse = grad_cam(model, x, target=target, layer=layer, upsample=True)
    return guided_backprop(model, x, target=target) * coarse[:, None]


# --------------------------------------------------------------------------- the wider CAM family
# Each method below supplies only its weighting; _class_map does the rest. The formulas follow the
# papers and pytorch-grad-cam (1.5); tests/test_cam_family.py compares every method with it and,
# where it has the method, with torchcam (0.5), and explains each difference by design.


def _grad_cam_pp_weights(record):
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19): w_k = sum_ij a_ij ReLU(g_ij) with
    a_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3), and a_ij = 0 where g_ij = 0 (eps 1e-6, as in
    pytorch-grad-cam). For an exponential of the score this is the closed form of the paper."""
    g, a = record.gradients, record.activations
    g2 = g.square()
    alpha = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return (alpha * g.clamp(min=0)).sum(dim=(2, 3))


def _xgrad_cam_weights(record):
    """XGrad-CAM (Fu et al. 2020): w_k = sum_ij g_ij A_ij / (sum_ij A_ij + 1e-7), the
    activation-weighted mean of the gradient."""
    a = record.activations
    return (record.gradients * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + 1e-7)


def _layer_cam_weights(record):
    """LayerCAM (Jiang et al. 2021): one weight per channel and position, ReLU(g_ij)."""
    return record.gradients.clamp(min=0)


def _hires_cam_weights(record):
    """HiResCAM (Draelos & Carin 2020): one weight per channel and position, g_ij itself, so the
    map sums (over positions) to the first-order change of the score."""
    return record.gradients


def _eigen_cam_weights(record):
    """Eigen-CAM (Muhammad & Yeasin 2020): the projection of each position's activation vector,
    centred over positions, on the first principal direction v of the layer (SVD), so the map is
    sum_k v_k A_k - sum_k v_k mean(A_k). The sign of v is arbitrary in an SVD; it is chosen so that
    the map correlates positively with the summed activations (pytorch-grad-cam keeps whatever sign
    NumPy returns, so its map is sometimes the negative of this one)."""
    a = record.activations
    flat = a.flatten(2).transpose(1, 2).double()  # [B, positions, K]
    means = flat.mean(dim=1, keepdim=True)
    centred = flat - means
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[:, 0]  # [B, K]
    projection = (centred @ direction[..., None])[..., 0]  # [B, positions]
    total = flat.sum(dim=2)
    sign = torch.where(((total - total.mean(1, keepdim=True)) * projection).sum(1) < 0, -1.0, 1.0)
    direction = direction * sign[:, None]
    offset = -(means[:, 0] * direction).sum(dim=1)
    return direction.to(a.dtype), offset.to(a.dtype)


def _score_cam_weights(record):
    """Score-CAM (Wang et al. 2020): each channel, scaled to [0, 1] at the layer's resolution and
    upsampled to the input size, masks the image; w = softmax over channels of the masked images'
    class scores. K forward passes per image, ``batch_size`` masked images per pass."""
    a, x = record.activations, record.x
    batch, channels = a.shape[:2]
    low, high = a.amin(dim=(2, 3), keepdim=True), a.amax(dim=(2, 3), keepdim=True)
    masks = (a - low) / (high - low + 1e-8)

    def masked(copies, index):
        owner = index // channels
        upsampled = F.interpolate(masks.flatten(0, 1)[index, None], size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)
        torch.mul(x.index_select(0, owner), upsampled, out=copies)

    logits = logits_of_copies(record.model, masked, x, batch * channels, copies_per_pass(x, record.batch_size),
                              record.progress, "score_cam")
    owners = torch.arange(batch, device=x.device).repeat_interleave(channels)
    scores = selected_scores(logits, record.classes[owners]).view(batch, channels)
    return scores.softmax(dim=1).to(a.dtype)


def _ablation_cam_weights(record):
    """Ablation-CAM (Desai & Ramaswamy 2020): w_k = (y - y_k) / y, the relative drop of the class
    score y when channel k of the layer is set to 0. K forward passes per image, ``batch_size``
    per pass; a hook on the layer zeroes one channel in each copy. (pytorch-grad-cam sets a
    channel to min - 1e7 instead of 0 when the layer's output has no zeros, e.g. before a ReLU.)
    Where y = 0 the weights are the plain drops y - y_k."""
    a, x = record.activations, record.x
    batch, channels = a.shape[:2]
    ablated = {}

    def copies_of_images(copies, index):
        copies.copy_(x.index_select(0, index // channels))
        ablated["channels"] = index % channels

    def zero_one_channel(module, inputs, output):
        output = output.clone()
        output[torch.arange(len(output), device=output.device), ablated["channels"].to(output.device)] = 0
        return output

    handle = get_layer(record.model, record.layer).register_forward_hook(zero_one_channel)
    try:
        logits = logits_of_copies(record.model, copies_of_images, x, batch * channels,
                                  copies_per_pass(x, record.batch_size), record.progress, "ablation_cam")
    finally:
        handle.remove()
    owners = torch.arange(batch, device=x.device).repeat_interleave(channels)
    scores = selected_scores(logits, record.classes[owners]).view(batch, channels)
    original = selected_scores(record.logits, record.classes)[:, None]
    drop = original - scores
    return torch.where(original != 0, drop / torch.where(original != 0, original, 1), drop).to(a.dtype)


def _family_method(name: str, weighting, needs_gradients: bool, perturbation: bool, summary: str):
    """A public CAM method with ``grad_cam``'s signature (perturbation methods also take
    ``batch_size`` and ``progress``) that supplies ``weighting`` to the shared core."""
    if perturbation:
        def method(model: nn.Module, x, target=None, layer=None, upsample: bool = True, relu: bool = True,
                   batch_size: int | None = None, progress: bool = True) -> torch.Tensor:
            layer = default_layer(model, layer)
            return _class_map(model, x, target, layer, weighting, upsample, relu, needs_gradients, batch_size,
                              progress)
    else:
        def method(model: nn.Module, x, target=None, layer=None, upsample: bool = True,
                   relu: bool = True) -> torch.Tensor:
            layer = default_layer(model, layer)
            return _class_map(model, x, target, layer, weighting, upsample, relu, needs_gradients)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = (f"{summary} A map [B,H,W] with ``grad_cam``'s conventions (target, layer, ``upsample``, "
                      f"``relu``).\n\n    {weighting.__doc__}")
    return uses_model(method)


grad_cam_pp = _family_method("grad_cam_pp", _grad_cam_pp_weights, True, False,
                             "Grad-CAM++: positive gradients weighted to favour every instance of the class.")
xgrad_cam = _family_method("xgrad_cam", _xgrad_cam_weights, True, False,
                           "XGrad-CAM: channel weights that make the map an axiom-respecting linearisation.")
layer_cam = _family_method("layer_cam", _layer_cam_weights, True, False,
                           "LayerCAM: positive gradients weight each position, which suits shallow layers too.")
hires_cam = _family_method("hires_cam", _hires_cam_weights, True, False,
                           "HiResCAM: gradient times activation, element by element (no spatial averaging).")
eigen_cam = _family_method("eigen_cam", _eigen_cam_weights, False, False,
                           "Eigen-CAM: the first principal component of the layer; class-agnostic, the target "
                           "does not change it.")
score_cam = _family_method("score_cam", _score_cam_weights, False, True,
                           "Score-CAM: channels weighted by the score of the image they mask; gradient-free.")
ablation_cam = _family_method("ablation_cam", _ablation_cam_weights, False, True,
                              "Ablation-CAM: channels weighted by the score drop when each is removed; "
                              "gradient-free.")

PERTURBATION_METHODS = (score_cam, ablation_cam)  # K forward passes per image; they take batch_size and progress
CAM_METHODS = {"CAM": cam, "Grad-CAM": grad_cam, "Grad-CAM++": grad_cam_pp, "XGrad-CAM": xgrad_cam,
               "LayerCAM": layer_cam, "HiResCAM": hires_cam, "Score-CAM": score_cam, "Ablation-CAM": ablation_cam,
               "Eigen-CAM": eigen_cam}
