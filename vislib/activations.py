"""Seeing a network through its units: first-layer filters, receptive fields, the image patches
that excite a channel most, and what happens to the prediction when channels are switched off.

A unit of a conv layer looks at a square window of the input, its receptive field: which
window follows from the kernel sizes, strides and paddings on the way, so it is computed here
from the modules, not measured. ``top_patches`` reads a whole dataset once and keeps only the
``k`` best (value, image, position) per channel, so its memory does not grow with the dataset.
"""

from __future__ import annotations

from contextlib import closing, contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from vislib.conventions import model_device
from vislib.embedding import stream_layers
from vislib.hooks import capture, frozen, get_layer, layer_name, uses_model

# Modules on a residual block's shortcut: they run beside the main path, so they change
# neither the main path's receptive field nor its stride (torchvision's ResNets call it so).
SHORTCUT_NAMES = ("downsample", "shortcut", "skip")


# --------------------------------------------------------------------------- filters


def filter_grid(weight, ncols: int = 8, padding: int = 1) -> torch.Tensor:
    """First-layer filters as one image [C,H,W] of tiles (C = 3 colour or 1 grey channels).

    Each filter is scaled on its own, symmetrically: grey is a zero weight, brighter is
    positive, darker negative, so a tile shows which colours and orientations the filter
    adds up and which it subtracts. Only filters that read the image itself (1 or 3 input
    channels) can be drawn so; deeper filters read feature maps, not colours.
    """
    if isinstance(weight, nn.Conv2d):
        weight = weight.weight
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise ValueError("expected conv weights [out, in, kh, kw] or an nn.Conv2d")
    out, channels, kh, kw = weight.shape
    if channels not in (1, 3):
        raise ValueError(f"these filters read {channels} feature maps, not an image: only a first layer "
                         "with 1 or 3 input channels can be drawn as pictures")
    if not isinstance(ncols, int) or ncols < 1 or not isinstance(padding, int) or padding < 0:
        raise ValueError("ncols must be a positive int and padding a non-negative int")
    w = weight.detach().float()
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True)
    tiles = 0.5 + 0.5 * torch.where(scale > 0, w / scale.clamp_min(1e-12), torch.zeros_like(w))
    ncols = min(ncols, out)
    nrows = -(-out // ncols)
    grid = torch.ones(channels, nrows * (kh + padding) - padding, ncols * (kw + padding) - padding,
                      device=w.device)
    for i, tile in enumerate(tiles):
        top, left = (i // ncols) * (kh + padding), (i % ncols) * (kw + padding)
        grid[:, top:top + kh, left:left + kw] = tile
    return grid


# --------------------------------------------------------------------------- receptive fields


@dataclass(frozen=True)
class ReceptiveField:
    """Where a unit of a layer looks in the input, per axis (y, x).

    ``size``: the window's side in input pixels; ``stride``: input pixels between neighbouring
    units; ``offset``: the input coordinate where unit 0's window starts (negative when it
    reaches into the padding). Unit ``i`` sees input pixels ``offset + i*stride`` up to
    ``offset + i*stride + size - 1``.
    """

    size: tuple
    stride: tuple
    offset: tuple
    input_size: tuple

    def box(self, y: int, x: int) -> tuple:
        """The input box (top, left, bottom, right) of unit (y, x), clipped to the image; the
        bottom and right ends are exclusive, like slices: ``image[:, top:bottom, left:right]``."""
        box = self.boxes(torch.tensor([[y, x]]))[0]
        return tuple(int(v) for v in box)

    def boxes(self, positions: torch.Tensor) -> torch.Tensor:
        """Boxes [...,4] (top, left, bottom, right) for feature-map positions [...,2] (y, x)."""
        positions = torch.as_tensor(positions)
        if positions.shape[-1] != 2:
            raise ValueError(f"positions must end in (y, x), got shape {tuple(positions.shape)}")
        stride = torch.tensor(self.stride, device=positions.device)
        offset = torch.tensor(self.offset, device=positions.device)
        size = torch.tensor(self.size, device=positions.device)
        limit = torch.tensor(self.input_size, device=positions.device)
        start = offset + positions.long() * stride
        low = start.clamp(min=0)
        high = torch.minimum(start + size, limit)
        return torch.stack([low[..., 0], low[..., 1], high[..., 0], high[..., 1]], dim=-1)


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _path_to(model: nn.Module, name: str) -> list:
    """The leaf modules that run before ``name``'s output exists (the layer's own leaves
    included), in registration order, without residual shortcuts."""
    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    inside = [i for i, (n, _) in enumerate(leaves) if n == name or n.startswith(name + ".")]
    return [(n, m) for n, m in leaves[:inside[-1] + 1]
            if not set(n.split(".")) & set(SHORTCUT_NAMES)]


def receptive_field(model: nn.Module, layer, input_size) -> ReceptiveField:
    """The receptive field of the units of ``layer`` for inputs of ``input_size`` (int or (H, W)).

    Walks the conv and pooling modules up to the layer: each multiplies the stride (the jump
    between neighbouring units, in input pixels) and widens the window by
    ``(kernel - 1) * dilation * stride so far``, while its padding moves the start. Residual
    shortcuts (``downsample``) are skipped: the main path sees the larger window. The result
    is checked against the layer's real output size, so an architecture the walk does not
    understand gives an error instead of a wrong answer.
    """
    name = layer_name(model, layer)
    height, width = _pair(input_size)
    if not all(isinstance(v, int) and v > 0 for v in (height, width)):
        raise ValueError(f"input_size must be a positive int or (H, W), got {input_size!r}")
    size, stride, start, extent = [1, 1], [1, 1], [0, 0], [height, width]
    for path_name, module in _path_to(model, name):
        if isinstance(module, (nn.Linear, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            raise ValueError(f"{name} comes after {path_name} ({type(module).__name__}): its units have no "
                             "position in the image; choose a convolutional layer")
        if not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        kernel, step, pad = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
        dilation = _pair(getattr(module, "dilation", 1))
        ceil = getattr(module, "ceil_mode", False)
        for axis in range(2):
            span = dilation[axis] * (kernel[axis] - 1)
            size[axis] += span * stride[axis]
            start[axis] -= pad[axis] * stride[axis]
            stride[axis] *= step[axis]
            room = extent[axis] + 2 * pad[axis] - span - 1
            extent[axis] = (-(-room // step[axis]) if ceil else room // step[axis]) + 1
    actual = _output_size(model, name, height, width)
    if tuple(extent) != actual:
        raise ValueError(f"cannot follow the geometry of {name}: the conv/pool walk predicts a {tuple(extent)} "
                         f"map, the model gives {actual}")
    return ReceptiveField(tuple(size), tuple(stride), tuple(start), (height, width))


def _output_size(model: nn.Module, name: str, height: int, width: int) -> tuple:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the model has no nn.Conv2d: receptive fields are for convolutional networks")
    probe = torch.zeros(1, convs[0].in_channels, height, width, device=model_device(model), dtype=convs[0].weight.dtype)
    with frozen(model), torch.no_grad(), capture(model, name) as rec:
        model(probe)
    out = rec[name]
    if out.ndim != 4:
        raise ValueError(f"{name} gives a tensor of shape {tuple(out.shape)}, not a feature map [B,C,H,W]")
    return tuple(out.shape[-2:])


# --------------------------------------------------------------------------- top patches


@dataclass
class TopActivations:
    """The ``k`` strongest responses of each chosen channel over a dataset, strongest first.

    ``values`` [C,k]; ``image_index`` [C,k] (position in the dataset); for patches also
    ``positions`` [C,k,2] (y, x in the feature map) and ``boxes`` [C,k,4] (top, left, bottom,
    right in input pixels, clipped, ends exclusive) from the layer's ``receptive_field``.
    """

    layer: str
    channels: torch.Tensor
    values: torch.Tensor
    image_index: torch.Tensor
    positions: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    receptive_field: ReceptiveField | None = None


class _RunningTopK:
    """The ``k`` largest values per row seen so far, with an int64 id for each."""

    def __init__(self, k: int):
        self.k = k
        self.values = self.ids = None

    def update(self, values: torch.Tensor, ids: torch.Tensor) -> None:
        if self.values is not None:
            values, ids = torch.cat([self.values, values], 1), torch.cat([self.ids, ids], 1)
        top, where = values.topk(min(self.k, values.shape[1]), dim=1)
        self.values, self.ids = top, ids.gather(1, where)


def _channel_index(channels, count: int, device) -> torch.Tensor:
    if channels is None:
        return torch.arange(count, device=device)
    index = torch.as_tensor([channels] if isinstance(channels, int) else list(channels), dtype=torch.long)
    if index.ndim != 1 or len(index) == 0 or index.min() < 0 or index.max() >= count:
        raise ValueError(f"channels must be indices in [0, {count}), got {channels!r}")
    return index.to(device)


def _scan(model, data, layer, k, channels, batch_size, progress, score):
    """One streaming pass: ``score(activations [B,C,H,W])`` -> (values [C,n], ids [C,n]) per
    batch, ids relative to the batch's first image; keeps the running top-k. The score runs
    inside the layer's hook, so no batch of activations is ever copied."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    name = layer_name(model, layer)
    state = {}

    def reduce(a):
        if a.ndim != 4:
            raise ValueError(f"{name} gives a tensor of shape {tuple(a.shape)}, not a feature map [B,C,H,W]")
        if "index" not in state:
            state["index"] = _channel_index(channels, a.shape[1], a.device)
        state["shape"] = a.shape
        return score(a if channels is None else a.index_select(1, state["index"]))

    best, seen, input_size = _RunningTopK(k), 0, None
    with closing(stream_layers(model, data, [name], batch_size, progress, f"top-{k} {name}", reduce)) as stream:
        for x, scored in stream:
            values, ids = scored[name]
            shape, input_size = state["shape"], tuple(x.shape[-2:])
            best.update(values, ids + seen * shape[2] * shape[3])
            seen += shape[0]
    if best.values is None or best.values.shape[1] < k:
        raise ValueError(f"asked for the top {k}, but the data holds only "
                         f"{0 if best.values is None else best.values.shape[1]} candidates")
    return name, state["index"], best, state["shape"], input_size


@uses_model
def top_patches(model: nn.Module, data, layer, k: int = 9, channels=None, distinct_images: bool = True,
                batch_size: int | None = None, progress: bool = True) -> TopActivations:
    """The ``k`` input patches that excite each channel of ``layer`` most, in one pass over ``data``
    (a tensor [N,C,H,W], a dataset or an iterable of batches).

    Only the running top ``k`` per channel is kept (memory ~ channels x k, not the dataset).
    With ``distinct_images=True`` each image counts once per channel, at its best position,
    so the ``k`` patches come from ``k`` different images; otherwise neighbouring positions
    of one image may fill several places. The patch of a unit is its receptive field.
    """
    def score(a):
        flat = a.flatten(2)  # [B,C,HW]
        if distinct_images:
            best, where = flat.max(dim=2)  # each image's best unit per channel: [B,C]
            values, images = best.T.topk(min(k, len(a)), dim=1)
            return values, images * flat.shape[2] + where.T.gather(1, images)
        # the batch's top k per channel lie among each image's own top k: no [C, B*HW] copy needed
        values, units = flat.topk(min(k, flat.shape[2]), dim=2)  # [B,C,k']
        ids = units + torch.arange(len(a), device=a.device).view(-1, 1, 1) * flat.shape[2]
        values, ids = values.transpose(0, 1).reshape(a.shape[1], -1), ids.transpose(0, 1).reshape(a.shape[1], -1)
        top, where = values.topk(min(k, values.shape[1]), dim=1)
        return top, ids.gather(1, where)

    name, index, best, shape, input_size = _scan(model, data, layer, k, channels, batch_size, progress, score)
    units = shape[2] * shape[3]
    image, unit = best.ids // units, best.ids % units
    positions = torch.stack([unit // shape[3], unit % shape[3]], dim=-1)
    rf = receptive_field(model, name, input_size)
    return TopActivations(name, index, best.values, image, positions, rf.boxes(positions), rf)


@uses_model
def top_images(model: nn.Module, data, layer, k: int = 9, channels=None, batch_size: int | None = None,
               progress: bool = True) -> TopActivations:
    """The ``k`` whole images with the highest mean activation (over space) of each channel
    of ``layer``, in one streaming pass; ``values`` are those means."""
    def score(a):
        means = a.mean(dim=(2, 3)).T  # [C,B]
        values, images = means.topk(min(k, len(a)), dim=1)
        return values, images * a.shape[2] * a.shape[3]

    name, index, best, shape, _ = _scan(model, data, layer, k, channels, batch_size, progress, score)
    return TopActivations(name, index, best.values, best.ids // (shape[2] * shape[3]))


# --------------------------------------------------------------------------- ablation


@contextmanager
def ablate(model: nn.Module, layer, channels):
    """Inside the block, the chosen channels of ``layer``'s output are zero ("switched off"),
    so the model's predictions show what those channels contributed. The hook is removed on
    exit, also after an exception; the model's weights are never changed.

    >>> with ablate(model, "features.relu4", [3, 17]):
    ...     logits = model(x)
    """
    module = get_layer(model, layer)
    index = torch.as_tensor([channels] if isinstance(channels, int) else list(channels), dtype=torch.long)
    if index.ndim != 1 or (len(index) and index.min() < 0):
        raise ValueError(f"channels must be non-negative channel indices, got {channels!r}")

    def zero_channels(mod, inputs, output):
        if output.ndim < 2 or (len(index) and index.max() >= output.shape[1]):
            raise ValueError(f"cannot zero channels {index.tolist()} of an output shaped {tuple(output.shape)}")
        mask = torch.ones(output.shape[1], device=output.device, dtype=output.dtype)
        mask[index.to(output.device)] = 0
        return output * mask.view(1, -1, *([1] * (output.ndim - 2)))

    handle = module.register_forward_hook(zero_channels)
    try:
        yield model
    finally:
        handle.remove()
