"""Checks of the activations assignment: ``layer_activation``, ``filter_tiles``, ``top_patches_of_channel``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vislib import activations, hooks
from vislib.checks.cases import cases
from vislib.checks.harness import CheckFailure, call, exercise, expect, layer_input
from vislib.checks.language import Message, _
from vislib.checks.offlimits import OffLimits

__all__ = ["filter_tiles", "layer_activation", "top_patches_of_channel"]

# What the functions of this assignment must not use (see vislib.checks.offlimits).
OFF_LIMITS = OffLimits(modules=("vislib.activations", "vislib.embedding"),
                       functions=(hooks.capture, hooks.differentiable_output), allowed=(activations.receptive_field,))

# --------------------------------------------------------------------------- layer_activation

# Per case (see cases.cases()): layers whose output a later inplace ReLU overwrites (conv1, conv2
# of the first case; bn2 of the third), a layer whose input has the output's shape (bn1, relu2),
# and a pooling layer.
ACTIVATION_LAYERS = (("features.conv1", "features.conv2", "features.pool1"),
                     ("features.bn1", "features.relu2"),
                     ("features.bn2", "features.conv1"))




@exercise("layer_activation", _("The output of a named layer, captured by a hook that is removed afterwards, on 3 "
                                "models and 8 layers (some overwritten later by an inplace ReLU)."))
def layer_activation(fn) -> None:
    for case, layers in zip(cases(), ACTIVATION_LAYERS, strict=True):
        for layer in layers:
            got = call("layer_activation", fn, case.model, case.x, layer, models=[case.model])
            with torch.no_grad(), hooks.capture(case.model, layer) as rec:
                logits = case.model(case.x)
            expected = rec[layer]
            mistakes = {
                _("an inplace ReLU after this layer overwrote the tensor you stored: keep a copy, "
                  "output.detach().clone(), not the output itself"): F.relu(expected),
                _("you stored the layer's input; a forward hook is called as hook(module, inputs, output): "
                  "keep the output"): layer_input(case.model, case.x, layer),
                _("return what the hook caught at the layer, not the model's output (the logits)"): logits,
            }
            expect("layer_activation", got, expected, mistakes,
                   what=_("activation of {layer} ({case})", layer=layer, case=case.label))


# --------------------------------------------------------------------------- filter_tiles


def _filter_weights() -> list[tuple[Message, torch.Tensor]]:
    """Colour filters with very different strengths, one all-positive and one all-zero filter, not
    square (5x4, so a swapped axis shows in the shape); a square 3x3 set; grey filters."""
    generator = torch.Generator().manual_seed(11)
    colour = torch.randn(6, 3, 5, 4, generator=generator) * torch.logspace(-2, 1, 6)[:, None, None, None]
    colour[2] = colour[2].abs() + 0.1
    colour[4] = 0.0
    return [(_("6 colour filters of 5x4, one of them all zeros"), colour),
            (_("8 colour filters of 3x3"), torch.randn(8, 3, 3, 3, generator=generator)),
            (_("4 grey filters of 3x3"), torch.randn(4, 1, 3, 3, generator=generator) * 0.1)]


def _tiles(weight: torch.Tensor) -> torch.Tensor:
    """vislib's filter_grid laid out as one row without padding, cut into [N, kh, kw, C] tiles."""
    out, channels, kh, kw = weight.shape
    grid = activations.filter_grid(weight, ncols=out, padding=0)
    return grid.view(channels, kh, out, kw).permute(2, 1, 3, 0)


@exercise("filter_tiles", _("Each filter a picture [kh, kw, C] scaled on its own, symmetrically around grey (a zero "
                            "weight is 0.5), on colour and grey filters of different strengths."))
def filter_tiles(fn) -> None:
    for label, weight in _filter_weights():
        got = call("filter_tiles", fn, weight)
        expected = _tiles(weight)
        zero = weight.flatten(1).abs().amax(1) == 0
        nan_for_zeros = (isinstance(got, torch.Tensor) and got.shape == expected.shape
                         and not torch.isfinite(got[zero]).all())
        own = weight.flatten(1).abs().amax(1).clamp_min(1e-12)[:, None, None, None]
        low = weight.flatten(1).amin(1)[:, None, None, None]
        span = (weight.flatten(1).amax(1)[:, None, None, None] - low).clamp_min(1e-12)
        per_channel = weight.abs().amax((2, 3), keepdim=True).clamp_min(1e-12)
        signed = weight.flatten(1).amax(1)[:, None, None, None]
        last = (0, 2, 3, 1)
        mistakes = {
            _("scale each filter on its own, by its own largest |weight|, not all filters by one global maximum "
              "(weak filters would look flat grey)"): (0.5 + 0.5 * weight / weight.abs().max()).permute(last),
            _("scale symmetrically around grey, 0.5 + 0.5 * w / max|w|, so that a zero weight is grey in every "
              "tile; min-max scaling moves zero to a different grey in each filter"):
                ((weight - low) / span).permute(last),
            _("scale the whole filter (all its colour channels together) by one number; scaling each colour "
              "channel on its own changes the filter's colour"): (0.5 + 0.5 * weight / per_channel).permute(last),
            _("map the weights to [0, 1] with 0.5 + 0.5 * w / max|w|; yours lie in [-1, 1]"):
                (weight / own).permute(last),
            _("divide by the largest ABSOLUTE weight, max|w|, not the largest weight: a filter's strongest weight may "
              "be negative"): (0.5 + 0.5 * weight / torch.where(signed == 0, 1.0, signed)).permute(last),
            _("put the colour channels last, [N, kh, kw, C] (weight.permute(0, 2, 3, 1)), the layout plt.imshow "
              "expects"): expected.permute(0, 3, 1, 2),
            _("keep rows as rows: [N, kh, kw, C] is weight.permute(0, 2, 3, 1); yours swaps height and width"):
                expected.transpose(1, 2),
        }
        if nan_for_zeros:  # name the scaling from the other filters first: min-max scaling also gives 0 / 0
            expect("filter_tiles", got[~zero], expected[~zero], {hint: wrong[~zero] for hint, wrong in mistakes.items()
                                                                 if wrong.shape == expected.shape},
                   what=_("stack of tiles ({case}, the filters that are not all zeros)", case=label))
            raise CheckFailure(_("your filter_tiles gives NaN for a filter of zeros: guard the division by its "
                                 "largest |weight| so that such a filter becomes plain grey (0.5)"))
        expect("filter_tiles", got, expected, mistakes, what=_("stack of tiles ({case})", case=label))


# --------------------------------------------------------------------------- top_patches_of_channel

PATCH_LAYER = "features.relu2"
# Per case: how many images (normal noise) of which size, which channel, and how many patches; chosen so
# that each image's best value is distinct and an image holds several of the channel's strongest units.
PATCH_SETS = ((9, (12, 16), 4, 4), (8, (10, 10), 1, 3), (7, (11, 9), 4, 5))


def _boxes(start: torch.Tensor, size: tuple, limit: tuple, clip: bool = True, inclusive: bool = False):
    """Boxes [k,4] (top, left, bottom, right) from window starts [k,2] (y, x): the mistakes' variants."""
    end = start + torch.tensor(size) - int(inclusive)
    if clip:
        start, end = start.clamp(min=0), torch.minimum(end, torch.tensor(limit) - int(inclusive))
    return torch.stack([start[:, 0], start[:, 1], end[:, 0], end[:, 1]], dim=1)


@exercise("top_patches_of_channel", _("The k strongest units of a channel, one per image, strongest first, with "
                                      "their receptive-field boxes (clipped, ends exclusive), on 3 models and image "
                                      "sizes."))
def top_patches_of_channel(fn) -> None:
    generator = torch.Generator().manual_seed(5)
    for case, (count, size, channel, k) in zip(cases(), PATCH_SETS, strict=True):
        images = torch.randn(count, 3, *size, generator=generator)
        with torch.no_grad(), hooks.capture(case.model, PATCH_LAYER) as rec:
            case.model(images)
        acts = rec[PATCH_LAYER]
        rf = activations.receptive_field(case.model, PATCH_LAYER, size)
        what = _("{count} images of {height}x{width}, channel {channel}, k={k}", count=count, height=size[0],
                 width=size[1], channel=channel, k=k)
        got = call("top_patches_of_channel", fn, acts, channel, k, rf)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise CheckFailure(_("your top_patches_of_channel must return three tensors: (values [k], "
                                 "image_index [k], boxes [k, 4])"))
        top = activations.top_patches(case.model, images, PATCH_LAYER, k=k, channels=[channel], progress=False)
        _compare_patches(got, (top.values[0], top.image_index[0], top.boxes[0]), acts[:, channel], k, rf, what)


def _compare_patches(got, expected, maps: torch.Tensor, k: int, rf, what: Message) -> None:
    """Values, then images, then boxes, each against the outputs of typical mistakes."""
    height, width = maps.shape[-2:]
    flat = maps.flatten(1)
    best, where = flat.max(1)
    # all units of all images ranked together: an image may come back several times
    units_values, units = flat.flatten().topk(k)
    # images ranked by their mean activation, each at its best unit
    mean_values, mean_images = flat.mean(1).topk(k)
    images = best.topk(k).indices
    unit = where[images]
    position = torch.stack([unit // width, unit % width], 1)
    offset, stride = torch.tensor(rf.offset), torch.tensor(rf.stride)
    start = offset + position * stride
    swapped = offset + torch.stack([unit % width, unit // width], 1) * stride
    by_height = offset + torch.stack([unit // height, unit % height], 1) * stride
    exclusive = _("box ends are exclusive, like slices: bottom = top + size (then clipped), so that "
                  "image[:, top:bottom, left:right] is the whole window")
    unravel = _("unravel the flat position with the map's width w: y = index // w, x = index % w")
    repeated = _("each patch must come from a different image: take each image's best position (max over positions) "
                 "first, then the k best images")
    by_mean = _("rank the images by their strongest unit (the maximum over positions), not by the mean activation")
    first = _("give the patches strongest first (topk's order), not weakest first")
    expect("top_patches_of_channel", got[0], expected[0],
           {repeated: units_values, by_mean: mean_values, first: expected[0].flip(0)},
           what=_("list of values ({case})", case=what))
    expect("top_patches_of_channel", got[1], expected[1],
           {repeated: units // (height * width), by_mean: mean_images, first: expected[1].flip(0)},
           what=_("list of images ({case})", case=what))
    mistakes = {
        _("clip the boxes to the image: top and left at least 0, bottom and right at most its height and width"):
            _boxes(start, rf.size, rf.input_size, clip=False),
        exclusive: [_boxes(start, rf.size, rf.input_size, inclusive=True),
                    _boxes(start, tuple(s - 1 for s in rf.size), rf.input_size)],
        _("a unit's window starts at offset + position * stride: multiply the position by the receptive field's "
          "stride (the distance in pixels between neighbouring units' windows)"): _boxes(offset + position, rf.size,
                                                                                         rf.input_size),
        _("a unit's window starts at offset + position * stride: add the receptive field's offset (negative where "
          "the window reaches into the padding)"): _boxes(position * stride, rf.size, rf.input_size),
        unravel: [_boxes(swapped, rf.size, rf.input_size), _boxes(by_height, rf.size, rf.input_size)],
    }
    expect("top_patches_of_channel", got[2], expected[2], mistakes, what=_("list of boxes ({case})", case=what))
