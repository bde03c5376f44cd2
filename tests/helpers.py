"""Shared test tools: the "nothing left behind" check, and tiny models with an inplace twin."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from vislib.hooks import count_hooks


def snapshot(model: nn.Module) -> dict:
    """Everything vislib promises not to change in a user's model."""
    return {
        "hooks": count_hooks(model),
        "modules": [(name, type(m), id(m)) for name, m in model.named_modules()],
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else (id(p.grad), p.grad.clone()) for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.detach().clone() for b in model.buffers()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["hooks"] == before["hooks"], "a hook was left on the model"
    assert after["modules"] == before["modules"], "a module was replaced"
    assert after["modes"] == before["modes"], "train/eval mode changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad changed"
    for b, a in zip(before["grads"], after["grads"], strict=True):
        assert (b is None) == (a is None), ".grad appeared or vanished"
        if b is not None:
            assert a[0] == b[0] and torch.equal(a[1], b[1]), ".grad changed"
    for b, a in zip(before["params"] + before["buffers"], after["params"] + after["buffers"], strict=True):
        assert torch.equal(a, b), "a parameter or buffer changed"


@contextmanager
def untouched(model: nn.Module):
    """Assert that the block leaves ``model`` exactly as it found it, also when the block raises."""
    before = snapshot(model)
    try:
        yield
    finally:
        assert_same_state(before, snapshot(model))


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
