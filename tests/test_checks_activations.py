"""Mutation tests of the activations assignment's checks: typical wrong implementations are each
rejected with their own hint; correct implementations written differently are accepted."""

from __future__ import annotations

import pytest
import torch

from vislib import checks
from vislib.hooks import capture

from .hint_coverage import names_the_mistake

# --------------------------------------------------------------------------- layer_activation


def activation_forward_hook(model, x, layer):
    caught = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda module, args, output: caught.append(output.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return caught[0]


class _Caught(Exception):
    """Raised by the hook to end the forward pass once the layer has run."""


def activation_stop_early(model, x, layer):
    """The module found by walking named_modules; the forward pass stops at the layer, so nothing
    after it (no inplace ReLU) ever runs; the copy keeps its graph until the end."""
    module = dict(model.named_modules())[layer]
    caught = {}

    def hook(module, args, output):
        caught["output"] = output.clone()
        raise _Caught

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Caught:
        pass
    finally:
        handle.remove()
    return caught["output"].detach()


def activation_no_clone(model, x, layer):
    caught = []
    handle = model.get_submodule(layer).register_forward_hook(lambda module, args, output: caught.append(output))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return caught[0]


def activation_of_input(model, x, layer):
    caught = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda module, args, output: caught.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return caught[0]


def activation_hook_left(model, x, layer):
    caught = []
    model.get_submodule(layer).register_forward_hook(lambda module, args, output: caught.append(output.clone()))
    with torch.no_grad():
        model(x)
    return caught[-1]


def activation_logits(model, x, layer):
    with torch.no_grad():
        return model(x)


def activation_eval_mode_kept(model, x, layer):
    """Switches the model to eval mode and leaves it there."""
    model.eval()
    return activation_forward_hook(model, x, layer)


def activation_calls_vislib(model, x, layer):
    with torch.no_grad(), capture(model, layer) as rec:
        model(x)
    return rec[layer]


@pytest.mark.parametrize("fn", [activation_forward_hook, activation_stop_early])
def test_layer_activation_accepts_correct_implementations(fn, capsys):
    checks.layer_activation(fn)
    assert "layer_activation: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (activation_no_clone, r"inplace ReLU after this layer overwrote.*\.clone\(\)"),
    (activation_of_input, "you stored the layer's input"),
    (activation_hook_left, r"hooks are registered.*handle\.remove\(\)"),
    (activation_logits, r"not the model's output \(the logits\)"),
    (activation_calls_vislib, "calls vislib's own implementation"),
    (activation_eval_mode_kept, r"train/eval mode of a module changed.*Leave the model's train/eval mode"),
])
def test_layer_activation_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.layer_activation(fn)


# --------------------------------------------------------------------------- filter_tiles


def tiles_vectorised(weight):
    w = weight.detach()
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True)
    tiles = torch.where(scale > 0, 0.5 + 0.5 * w / scale.clamp_min(1e-12), torch.full_like(w, 0.5))
    return tiles.permute(0, 2, 3, 1)


def tiles_loop(weight):
    """Filter by filter, channels moved last with einsum."""
    tiles = []
    for f in weight.detach():
        largest = f.abs().max()
        tile = 0.5 + 0.5 * f / largest if largest > 0 else torch.full_like(f, 0.5)
        tiles.append(torch.einsum("chw->hwc", tile))
    return torch.stack(tiles)


def tiles_global_scale(weight):
    w = weight.detach()
    return (0.5 + 0.5 * w / w.abs().max()).permute(0, 2, 3, 1)


def tiles_min_max(weight):
    w = weight.detach()
    low = w.amin(dim=(1, 2, 3), keepdim=True)
    high = w.amax(dim=(1, 2, 3), keepdim=True)
    return ((w - low) / (high - low).clamp_min(1e-12)).permute(0, 2, 3, 1)


def tiles_min_max_unguarded(weight):
    """Min-max scaling without a guard: 0 / 0 for the filter of zeros."""
    w = weight.detach()
    low, high = w.amin(dim=(1, 2, 3), keepdim=True), w.amax(dim=(1, 2, 3), keepdim=True)
    return ((w - low) / (high - low)).permute(0, 2, 3, 1)


def tiles_signed_max(weight):
    """Divides by the largest weight, not the largest |weight| (a zero filter stays grey)."""
    w = weight.detach()
    largest = w.amax(dim=(1, 2, 3), keepdim=True)
    return (0.5 + 0.5 * w / torch.where(largest == 0, 1.0, largest)).permute(0, 2, 3, 1)


def tiles_channels_first(weight):
    return tiles_vectorised(weight).permute(0, 3, 1, 2)


def tiles_height_width_swapped(weight):
    return tiles_vectorised(weight).permute(0, 2, 1, 3)


def tiles_per_channel(weight):
    w = weight.detach()
    scale = w.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return (0.5 + 0.5 * w / scale).permute(0, 2, 3, 1)


def tiles_not_shifted(weight):
    w = weight.detach()
    return (w / w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)).permute(0, 2, 3, 1)


def tiles_nan_for_zeros(weight):
    w = weight.detach()
    return (0.5 + 0.5 * w / w.abs().amax(dim=(1, 2, 3), keepdim=True)).permute(0, 2, 3, 1)


def tiles_in_place(weight):
    weight /= weight.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return (0.5 + 0.5 * weight).permute(0, 2, 3, 1)


@pytest.mark.parametrize("fn", [tiles_vectorised, tiles_loop])
def test_filter_tiles_accepts_correct_implementations(fn, capsys):
    checks.filter_tiles(fn)
    assert "filter_tiles: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (tiles_global_scale, "not all filters by one global maximum"),
    (tiles_min_max, "min-max scaling moves zero"),
    (tiles_min_max_unguarded, "min-max scaling moves zero"),
    (tiles_signed_max, "not the largest weight"),
    (tiles_channels_first, r"colour channels last, \[N, kh, kw, C\]"),
    (tiles_height_width_swapped, "swaps height and width"),
    (tiles_per_channel, "scaling each colour channel on its own"),
    (tiles_not_shifted, r"yours lie in \[-1, 1\]"),
    (tiles_nan_for_zeros, r"NaN for a filter of zeros.*plain grey \(0\.5\)"),
    (tiles_in_place, "changed its argument number 1 in place"),
])
def test_filter_tiles_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.filter_tiles(fn)


# --------------------------------------------------------------------------- top_patches_of_channel


def top_vectorised(acts, channel, k, rf):
    maps = acts[:, channel]
    width = maps.shape[-1]
    best, where = maps.flatten(1).max(dim=1)
    values, images = best.topk(k)
    unit = where[images]
    position = torch.stack([unit // width, unit % width], dim=1)
    start = torch.tensor(rf.offset) + position * torch.tensor(rf.stride)
    end = torch.minimum(start + torch.tensor(rf.size), torch.tensor(rf.input_size))
    start = start.clamp(min=0)
    return values, images, torch.stack([start[:, 0], start[:, 1], end[:, 0], end[:, 1]], dim=1)


def top_loops(acts, channel, k, rf):
    """Plain Python: each image's best unit by scanning, then a sort, then boxes with min/max."""
    best = []
    for n, fmap in enumerate(acts[:, channel].tolist()):
        value, y, x = max((v, y, x) for y, row in enumerate(fmap) for x, v in enumerate(row))
        best.append((value, n, y, x))
    best.sort(reverse=True)
    boxes = []
    for _, _, y, x in best[:k]:
        top, left = rf.offset[0] + y * rf.stride[0], rf.offset[1] + x * rf.stride[1]
        boxes.append([max(top, 0), max(left, 0), min(top + rf.size[0], rf.input_size[0]),
                      min(left + rf.size[1], rf.input_size[1])])
    return (torch.tensor([b[0] for b in best[:k]]), torch.tensor([b[1] for b in best[:k]]), torch.tensor(boxes))


def top_units_may_repeat(acts, channel, k, rf):
    maps = acts[:, channel]
    height, width = maps.shape[-2:]
    values, units = maps.flatten().topk(k)
    images, unit = units // (height * width), units % (height * width)
    start = torch.tensor(rf.offset) + torch.stack([unit // width, unit % width], 1) * torch.tensor(rf.stride)
    end = torch.minimum(start + torch.tensor(rf.size), torch.tensor(rf.input_size))
    start = start.clamp(min=0)
    return values, images, torch.stack([start[:, 0], start[:, 1], end[:, 0], end[:, 1]], dim=1)


def top_weakest_first(acts, channel, k, rf):
    values, images, boxes = top_vectorised(acts, channel, k, rf)
    return values.flip(0), images.flip(0), boxes.flip(0)


def top_by_mean(acts, channel, k, rf):
    maps = acts[:, channel].flatten(1)
    values, images = maps.mean(1).topk(k)
    _, all_images, all_boxes = top_vectorised(acts, channel, acts.shape[0], rf)
    boxes = torch.stack([all_boxes[(all_images == i).nonzero()[0, 0]] for i in images])
    return values, images, boxes


def _with_boxes(make_boxes):
    def fn(acts, channel, k, rf):
        values, images, _ = top_vectorised(acts, channel, k, rf)
        unit = acts[images, channel].flatten(1).argmax(1)
        width = acts.shape[-1]
        return values, images, make_boxes(unit // width, unit % width, rf)
    return fn


def _stack(top, left, bottom, right):
    return torch.stack([top, left, bottom, right], dim=1)


top_unclipped = _with_boxes(lambda y, x, rf: _stack(
    rf.offset[0] + y * rf.stride[0], rf.offset[1] + x * rf.stride[1],
    rf.offset[0] + y * rf.stride[0] + rf.size[0], rf.offset[1] + x * rf.stride[1] + rf.size[1]))
top_inclusive_ends = _with_boxes(lambda y, x, rf: _stack(
    (rf.offset[0] + y * rf.stride[0]).clamp(min=0), (rf.offset[1] + x * rf.stride[1]).clamp(min=0),
    (rf.offset[0] + y * rf.stride[0] + rf.size[0] - 1).clamp(max=rf.input_size[0] - 1),
    (rf.offset[1] + x * rf.stride[1] + rf.size[1] - 1).clamp(max=rf.input_size[1] - 1)))
top_inclusive_ends_clipped_to_size = _with_boxes(lambda y, x, rf: _stack(
    (rf.offset[0] + y * rf.stride[0]).clamp(min=0), (rf.offset[1] + x * rf.stride[1]).clamp(min=0),
    (rf.offset[0] + y * rf.stride[0] + rf.size[0] - 1).clamp(max=rf.input_size[0]),
    (rf.offset[1] + x * rf.stride[1] + rf.size[1] - 1).clamp(max=rf.input_size[1])))
top_without_stride = _with_boxes(lambda y, x, rf: _stack(
    (rf.offset[0] + y).clamp(min=0), (rf.offset[1] + x).clamp(min=0),
    (rf.offset[0] + y + rf.size[0]).clamp(max=rf.input_size[0]),
    (rf.offset[1] + x + rf.size[1]).clamp(max=rf.input_size[1])))
top_without_offset = _with_boxes(lambda y, x, rf: _stack(
    y * rf.stride[0], x * rf.stride[1], (y * rf.stride[0] + rf.size[0]).clamp(max=rf.input_size[0]),
    (x * rf.stride[1] + rf.size[1]).clamp(max=rf.input_size[1])))


def top_with_rf_boxes(acts, channel, k, rf):
    values, images, _ = top_vectorised(acts, channel, k, rf)
    unit = acts[images, channel].flatten(1).argmax(1)
    return values, images, rf.boxes(torch.stack([unit // acts.shape[-1], unit % acts.shape[-1]], 1))


def top_swapped_unravel(acts, channel, k, rf):
    values, images, _ = top_vectorised(acts, channel, k, rf)
    unit = acts[images, channel].flatten(1).argmax(1)
    x, y = unit // acts.shape[-1], unit % acts.shape[-1]
    top, left = rf.offset[0] + y * rf.stride[0], rf.offset[1] + x * rf.stride[1]
    return values, images, _stack(top.clamp(min=0), left.clamp(min=0), (top + rf.size[0]).clamp(max=rf.input_size[0]),
                                  (left + rf.size[1]).clamp(max=rf.input_size[1]))


@pytest.mark.parametrize("fn", [top_vectorised, top_loops])
def test_top_patches_accepts_correct_implementations(fn, capsys):
    checks.top_patches_of_channel(fn)
    assert "top_patches_of_channel: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (top_units_may_repeat, "each patch must come from a different image"),
    (top_by_mean, "not by the mean activation"),
    (top_weakest_first, "strongest first"),
    (top_unclipped, "clip the boxes to the image"),
    (top_inclusive_ends, "box ends are exclusive"),
    (top_inclusive_ends_clipped_to_size, "box ends are exclusive"),
    (top_without_stride, "multiply the position by the receptive field's stride"),
    (top_without_offset, "add the receptive field's offset"),
    (top_swapped_unravel, "unravel the flat position"),
    (top_with_rf_boxes, "calls vislib's own implementation"),
])
def test_top_patches_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.top_patches_of_channel(fn)


def stub(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("check", [checks.layer_activation, checks.filter_tiles, checks.top_patches_of_channel])
def test_an_unimplemented_function_is_not_implemented_yet(check, capsys):
    check(stub)
    assert f"{check.exercise}: not implemented yet" in capsys.readouterr().out
    with pytest.raises(checks.NotImplementedYet, match="not implemented yet"):
        check(stub, strict=True)
