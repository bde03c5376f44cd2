"""The small models and inputs every check runs a learner's function on: random weights (so no
answer can be memorised), one model with inplace ReLUs and one without, BatchNorm, a model handed
over in train mode, a batch whose images each have their own target class, and a non-square input."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from vislib.checks.language import Message, _

CLASSES = 5
LAYER = "features.relu2"  # the last conv feature map of every case model: Grad-CAM's layer
FC = "fc"


def small_cnn(seed: int, inplace: bool, batchnorm: bool) -> nn.Module:
    """conv-[BN]-ReLU-pool-conv-[BN]-ReLU-GAP-linear with layer names like ShapesNet's, eval mode."""
    torch.manual_seed(seed)
    layers = OrderedDict()
    channels = 3
    for i, width in enumerate((6, 8), start=1):
        layers[f"conv{i}"] = nn.Conv2d(channels, width, 3, padding=1, bias=not batchnorm)
        if batchnorm:
            layers[f"bn{i}"] = nn.BatchNorm2d(width)
        layers[f"relu{i}"] = nn.ReLU(inplace=inplace)
        if i == 1:
            layers["pool1"] = nn.MaxPool2d(2)
        channels = width
    model = nn.Sequential(OrderedDict([("features", nn.Sequential(layers)), ("pool", nn.AdaptiveAvgPool2d(1)),
                                       ("flatten", nn.Flatten()), ("fc", nn.Linear(channels, CLASSES))]))
    if batchnorm:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.1, 0.1)
    return model.eval()


@dataclass
class Case:
    """One model with one batch, one target class per image, and the layer a layer-taking check uses."""

    label: Message  # the case in words, for messages
    model: nn.Module
    x: torch.Tensor
    target: torch.Tensor
    layer: str = LAYER


def cases() -> list[Case]:
    """Three cases: inplace ReLUs with a non-square batch of distinct targets, the model in train mode
    (the notebooks promise one: a function must hand it back in train mode; it has no BatchNorm or
    dropout, so both modes compute the same); BatchNorm without inplace ReLUs on a square batch; one
    image alone."""
    generator = torch.Generator().manual_seed(7)
    return [
        Case(_("inplace ReLUs, model in train mode, 3 images of 12x16, targets [0, 3, 1]"),
             small_cnn(1, inplace=True, batchnorm=False).train(), torch.rand(3, 3, 12, 16, generator=generator),
             torch.tensor([0, 3, 1])),
        Case(_("BatchNorm, 2 images of 10x10, targets [4, 2]"), small_cnn(2, inplace=False, batchnorm=True),
             torch.rand(2, 3, 10, 10, generator=generator), torch.tensor([4, 2])),
        Case(_("one image of 8x8, target [2]"), small_cnn(3, inplace=True, batchnorm=True),
             torch.rand(1, 3, 8, 8, generator=generator), torch.tensor([2])),
    ]
