"""Shared test tools: the "nothing left behind" check, and tiny models with an inplace twin."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from vislib.hooks import model_state, state_changes


@contextmanager
def untouched(model: nn.Module):
    """Assert that the block leaves ``model`` exactly as it found it, also when the block raises."""
    before = model_state(model)
    try:
        yield
    finally:
        changes = state_changes(before, model_state(model))
        assert not changes, "; ".join(changes)


def tiny_cnn(inplace: bool = True, num_classes: int = 3, seed: int = 0) -> nn.Module:
    """A conv-ReLU-conv-ReLU-GAP-linear net on 3x8x8 inputs, eval mode, fixed seeded weights."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("relu1", nn.ReLU(inplace=inplace))
    model.add_module("conv2", nn.Conv2d(4, 6, 3, padding=1))
    model.add_module("relu2", nn.ReLU(inplace=inplace))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(6, num_classes))
    return model.eval()
