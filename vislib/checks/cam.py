"""Checks of the CAM assignment: ``class_activation_map``, ``grad_cam``, ``guided_grad_cam``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vislib import cam, hooks, saliency
from vislib.checks.cases import FC, LAYER, Case, cases, small_cnn
from vislib.checks.harness import CheckFailure, call, exercise, expect
from vislib.checks.language import _
from vislib.checks.offlimits import OffLimits
from vislib.checks.saliency import EACH_OWN_TARGET, LOGIT_NOT_PROBABILITY, _log_probability, _probability

__all__ = ["class_activation_map", "grad_cam", "guided_grad_cam"]

# What the functions of this assignment must not use (see vislib.checks.offlimits).
OFF_LIMITS = OffLimits(modules=("vislib.cam", "vislib.saliency"),
                       functions=(hooks.capture, hooks.differentiable_output))

NOT_NORMALISED = _("return the raw map: no normalisation (no division by its maximum, no min-max scaling)")
LAYER_OUTPUT = _("use the layer's output A^k and the gradient with respect to that output (a forward hook's "
                 "`output`), not the layer's input")
OUTPUT_GRADIENT = _("take alpha from the gradient with respect to the layer's output (a full backward hook's "
                    "grad_output), not its input (grad_input)")
ONE_RELU = _("Grad-CAM has one ReLU, after the weighted sum over the channels: a ReLU on the gradient, on alpha or "
             "on each channel's term drops the channels with negative weights, which the sum needs")
# vislib's CAM family and its hook recorder: the exercises are to write these with torch's own hooks.


def _object_case() -> Case:
    """Random weights see little structure in uniform noise, so their maps tend to have one sign
    everywhere; objects on a background give maps of both signs, where a missing or extra ReLU shows."""
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(11))
    x[0, :, :, :6] *= 0.1
    x[0, 0, :, 6:] += 1.5
    x[1, :, 3:9, 3:9] = torch.tensor([1.5, -1.0, 0.5])[:, None, None]
    return Case(_("no BatchNorm, 2 images of 12x12 with objects, targets [1, 4]"),
                small_cnn(9, inplace=False, batchnorm=False), x, torch.tensor([1, 4]))


def _cases() -> list[Case]:
    return [*cases(), _object_case()]


def _layer_cases() -> list[Case]:
    """The cases at the last feature map, where the gradient of the score (read through global average
    pooling) is the same at every position, so several wrong ways to pool it agree with the mean; and a
    case at the layer before the max pool, where it differs between positions."""
    x = torch.rand(2, 3, 10, 12, generator=torch.Generator().manual_seed(19))
    early = Case(_("BatchNorm, the layer before the max pool (features.relu1, its gradient differs between "
                   "positions), 2 images of 10x12, targets [3, 0]"), small_cnn(5, inplace=False, batchnorm=True), x,
                 torch.tensor([3, 0]), layer="features.relu1")
    return [*_cases(), early]


def _tolerance(expected: torch.Tensor) -> float:
    """An absolute tolerance relative to the map's own scale: random-weight maps are small (about 1e-3)."""
    return 1e-4 * max(expected.abs().max().item(), 1e-12)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per image, shaped to broadcast over ``like``'s images ([B,H,W] maps or [B,3,H,W])."""
    return values.view(-1, *[1] * (like.ndim - 1))


def _divided(maps: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
    """Each image's map divided by its own ``by`` value (a flat map stays as it is)."""
    return maps / _per_image(torch.where(by == 0, torch.ones_like(by), by), maps)


def _per_image_max(maps: torch.Tensor) -> torch.Tensor:
    return _divided(maps, maps.flatten(1).amax(1))


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    low = maps.flatten(1).amin(1)
    return _divided(maps - _per_image(low, maps), maps.flatten(1).amax(1) - low)


def _map_shape(name: str, got, expected: torch.Tensor, channels: int) -> None:
    """Hints for the shapes that typical mistakes give: an upsampled map, channels not summed."""
    if not isinstance(got, torch.Tensor) or got.shape == expected.shape:
        return
    b, h, w = expected.shape
    said = _("your {name} returns shape {shape}; expected {expected}", name=name, shape=list(got.shape),
             expected=list(expected.shape))
    if got.ndim == 3 and got.shape[0] == b and got.shape[1] >= h and got.shape[2] >= w:
        raise CheckFailure(_("{said}: return the map at the layer's own resolution {h}x{w}, without upsampling",
                             said=said, h=h, w=w))
    if got.ndim == 4 and got.shape[0] == b and got.shape[2:] == (h, w) and got.shape[1] in (1, channels):
        raise CheckFailure(_("{said}: sum the weighted channels over k, one map [h,w] per image (and no channel "
                             "dimension left)", said=said))


@exercise("class_activation_map", _("sum_k w[target,k] * f_k(x,y) per image, its own target, no ReLU, on 4 models "
                                    "(non-square maps, one image, a batch of distinct targets)."))
def class_activation_map(fn) -> None:
    for case in _cases():
        with hooks.capture(case.model, LAYER) as recording, torch.no_grad():
            case.model(case.x)
        features = recording[LAYER]
        weight = case.model.get_submodule(FC).weight.detach().clone()
        got = call("class_activation_map", fn, features, weight, case.target)
        expected = cam.cam(case.model, case.x, case.target, layer=LAYER, fc=FC, upsample=False, relu=False)
        channels = features.shape[1]
        _map_shape("class_activation_map", got, expected, channels)
        mistakes = {
            _("CAM is the plain weighted sum sum_k w[target,k] f_k(x,y): no ReLU (its negative values are evidence "
              "against the class, and they are part of the score)"): expected.clamp(min=0),
            _("each image must use its own target class: fc_weight[target] gives one row of weights per image"):
                torch.einsum("k,bkhw->bhw", weight[case.target[0]], features),
            _("sum over the K channels, not their mean"): expected / channels,
            _("use the fc weights as they are: dividing by the number of positions h*w gives Grad-CAM's weights, "
              "not CAM's"): expected / (expected.shape[1] * expected.shape[2]),
            NOT_NORMALISED: [_per_image_max(expected), _min_max(expected),
                             _divided(expected, expected.abs().flatten(1).amax(1))],
        }
        expect("class_activation_map", got, expected, mistakes, what=_("map ({case})", case=case.label),
               atol=_tolerance(expected))


def _layer_tensors(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module) -> dict:
    """The layer's input and output for ``x``, and the gradients of each image's target logit with
    respect to both: what a learner's hooks can catch (detached)."""
    saved = {}

    def keep_input(module, args):
        saved["input"] = args[0].detach().clone().requires_grad_(True)
        return (saved["input"].clone(), *args[1:])  # a clone, which an inplace layer may overwrite

    def keep_output(module, args, output):
        saved["output"] = output

    with hooks.frozen(model):
        handles = [layer.register_forward_pre_hook(keep_input), layer.register_forward_hook(keep_output)]
        try:
            score = model(x).gather(1, target[:, None]).sum()
            saved["input_grad"], saved["output_grad"] = torch.autograd.grad(score, [saved["input"], saved["output"]])
        finally:
            for handle in handles:
                handle.remove()
    return {name: tensor.detach() for name, tensor in saved.items()}


def _weighted(alpha: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bk,bkhw->bhw", alpha.expand(len(activations), -1), activations).clamp(min=0)


def _call_with_layer(name: str, fn, case: Case):
    """``call`` for a function that takes the case's model, input, targets and layer name."""
    return call(name, fn, case.model, case.x, case.target, case.layer, models=[case.model])


@exercise("grad_cam", _("ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of d logit / d A_k, at the layer's "
                        "resolution, per image and target, on 5 models (inplace ReLUs, train mode, BatchNorm, "
                        "non-square, a layer before the max pool)."))
def grad_cam(fn) -> None:
    for case in _layer_cases():
        got = _call_with_layer("grad_cam", fn, case)
        layer = case.model.get_submodule(case.layer)

        def grad_cam_of(model, target=case.target, x=case.x, layer=layer, **options):
            return cam.grad_cam(model, x, target, layer=layer, upsample=False, **options)

        expected = grad_cam_of(case.model)
        tensors = _layer_tensors(case.model, case.x, case.target, layer)
        _map_shape("grad_cam", got, expected, tensors["output"].shape[1])
        h, w = expected.shape[-2:]
        gradient, activations = tensors["output_grad"], tensors["output"]
        mistakes = {
            _("weight each channel by one number, alpha_k, the mean of its gradient over the positions: multiplying "
              "gradient and activation position by position is HiResCAM, not Grad-CAM"):
                (gradient * activations).sum(1).clamp(min=0),
            _("alpha_k is the MEAN of the gradient over all positions of channel k (grads.mean(dim=(2, 3))), not its "
              "maximum"): _weighted(gradient.amax(dim=(2, 3)), activations),
            _("alpha_k is the MEAN of the gradient over all positions of channel k (grads.mean(dim=(2, 3))), not its "
              "value at one position"): _weighted(gradient[:, :, 0, 0], activations),
            _("alpha_k is the MEAN of the gradient over all positions of channel k (grads.mean(dim=(2, 3))), not the "
              "mean of its absolute value"): _weighted(gradient.abs().mean(dim=(2, 3)), activations),
            ONE_RELU: [_weighted(gradient.clamp(min=0).mean(dim=(2, 3)), activations),
                       (gradient.mean(dim=(2, 3))[:, :, None, None] * activations).clamp(min=0).sum(1)],
            _("your map is {times}x larger than expected ({h}x{w} positions): did you sum the gradient over "
              "positions instead of averaging it?", times=h * w, h=h, w=w): expected * (h * w),
            _("apply a ReLU to the weighted sum: Grad-CAM keeps only the evidence for the class"):
                grad_cam_of(case.model, relu=False),
            NOT_NORMALISED: [_per_image_max(expected), _min_max(expected)],
            LOGIT_NOT_PROBABILITY: [grad_cam_of(_probability(case.model)), grad_cam_of(_log_probability(case.model))],
            EACH_OWN_TARGET: grad_cam_of(case.model, target=case.target[0].item()),
            _("alpha belongs to one image: average its gradient over the positions only (dims 2 and 3), not over "
              "the batch"): _weighted(tensors["output_grad"].mean(dim=(0, 2, 3)), tensors["output"]),
            LAYER_OUTPUT: _weighted(tensors["input_grad"].mean(dim=(2, 3)), tensors["input"]),
            OUTPUT_GRADIENT: _weighted(tensors["input_grad"].mean(dim=(2, 3)), tensors["output"]),
        }
        expect("grad_cam", got, expected, mistakes, what=_("map ({case})", case=case.label), atol=_tolerance(expected))


@exercise("guided_grad_cam", _("Guided backprop times the bilinearly upsampled Grad-CAM map, [B,3,H,W], per image "
                               "and target, on 5 models (inplace ReLUs, train mode, BatchNorm, non-square, a layer "
                               "before the max pool)."))
def guided_grad_cam(fn) -> None:
    for case in _layer_cases():
        got = _call_with_layer("guided_grad_cam", fn, case)
        layer = case.model.get_submodule(case.layer)
        expected = cam.guided_grad_cam(case.model, case.x, case.target, layer=layer)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape[:1] + expected.shape[2:]:
            raise CheckFailure(_("your guided_grad_cam returns shape {shape}; expected {expected}: keep the colour "
                                 "channels, guided backprop [B,3,H,W] times the map broadcast over them (map[:, None])",
                                 shape=list(got.shape), expected=list(expected.shape)))
        guided = saliency.guided_backprop(case.model, case.x, case.target)
        coarse = cam.grad_cam(case.model, case.x, case.target, layer=layer, upsample=False)
        signed = cam.grad_cam(case.model, case.x, case.target, layer=layer, upsample=False, relu=False)
        tensors = _layer_tensors(case.model, case.x, case.target, layer)

        def upsampled(maps, mode="bilinear", size=case.x.shape[-2:], **options):
            return F.interpolate(maps[:, None], size=size, mode=mode, **options)

        bilinear = upsampled(coarse, align_corners=False)
        plain = saliency.gradient(case.model, case.x, case.target)
        mistakes = {
            _("multiply by guided backpropagation (positive gradients only, and only where the ReLU's input was "
              "positive), not the plain gradient"): plain * bilinear,
            _("guided backpropagation keeps the positive part of the gradient at every ReLU on the way back (a hook "
              "on each ReLU), not once at the input"): plain.clamp(min=0) * bilinear,
            _("{logit_not_probability} (in your guided backpropagation)", logit_not_probability=LOGIT_NOT_PROBABILITY):
                [saliency.guided_backprop(_probability(case.model), case.x, case.target) * bilinear,
                 saliency.guided_backprop(_log_probability(case.model), case.x, case.target) * bilinear],
            NOT_NORMALISED: [_per_image_max(expected), _min_max(expected),
                             _divided(expected, expected.abs().flatten(1).amax(1))],
            _("guided backpropagation also keeps the forward mask [h > 0] at every ReLU: yours looks like deconvnet"):
                saliency.deconvnet(case.model, case.x, case.target) * bilinear,
            _("upsample the Grad-CAM map bilinearly (mode='bilinear', align_corners=False), not to nearest-neighbour "
              "blocks"): guided * upsampled(coarse, mode="nearest"),
            _("upsample with align_corners=False (the convention of this assignment and of vislib)"):
                guided * upsampled(coarse, align_corners=True),
            _("use Grad-CAM after its ReLU (the map your grad_cam returns)"):
                guided * upsampled(signed, align_corners=False),
            _("apply Grad-CAM's ReLU before upsampling (upsample the map your grad_cam returns)"):
                guided * upsampled(signed, align_corners=False).clamp(min=0),
            _("multiply by the raw Grad-CAM map, not a normalised one"):
                guided * upsampled(_per_image_max(coarse), align_corners=False),
            _("compute Grad-CAM's gradient with the ordinary backward pass: switch guided backprop's hooks on only "
              "for the gradient at the input"): guided * upsampled(_weighted(
                tensors["output_grad"].clamp(min=0).mean(dim=(2, 3)), tensors["output"]), align_corners=False),
            EACH_OWN_TARGET: cam.guided_grad_cam(case.model, case.x, case.target[0].item(), layer=layer),
            LOGIT_NOT_PROBABILITY: cam.guided_grad_cam(_probability(case.model), case.x, case.target, layer=layer),
        }
        expect("guided_grad_cam", got, expected, mistakes, what=_("result ({case})", case=case.label),
               atol=_tolerance(expected))
