"""Property-based tests (Hypothesis) of the input conventions every vislib method follows.

For any drawn model (inplace ReLUs or not, BatchNorm, dropout, train or eval mode, frozen or
trainable parameters, an existing ``.grad``, float32 or float64), input (batch size, height,
width, NaN, empty, wrong rank or dtype), target and method options:

- the call either returns a correct-shaped result, or raises ``ValueError`` / ``TypeError``
  whose message names the argument that was wrong; an oracle below says which one it must be;
- a returned map or score never holds NaN or Inf;
- the model is never changed: parameters, buffers, modes, hooks, ``requires_grad``, ``.grad``;
- the input is never changed.

``derandomize=True``: the examples are the same on every run, so these tests cannot fail at random.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vislib import cam, metrics, saliency

from .helpers import untouched

CLASSES = 3
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass(frozen=True)
class ModelSpec:
    inplace: bool
    batchnorm: bool
    dropout: bool
    train: bool
    trainable: bool
    with_grad: bool
    dtype: torch.dtype
    seed: int

    def build(self) -> nn.Module:
        """conv-[BN]-ReLU-[dropout]-conv-ReLU-GAP-linear: CAM's structure, with every option."""
        torch.manual_seed(self.seed)
        model = nn.Sequential()
        model.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
        if self.batchnorm:
            model.add_module("bn", nn.BatchNorm2d(4))
        model.add_module("relu1", nn.ReLU(inplace=self.inplace))
        if self.dropout:
            model.add_module("drop", nn.Dropout(0.5))
        model.add_module("conv2", nn.Conv2d(4, 5, 3, padding=1))
        model.add_module("relu2", nn.ReLU(inplace=self.inplace))
        model.add_module("pool", nn.AdaptiveAvgPool2d(1))
        model.add_module("flatten", nn.Flatten())
        model.add_module("fc", nn.Linear(5, CLASSES))
        model = model.to(self.dtype).train(self.train)
        model.requires_grad_(self.trainable)
        if self.with_grad:
            for p in model.parameters():
                p.grad = torch.ones_like(p)
        return model


models = st.builds(ModelSpec, inplace=st.booleans(), batchnorm=st.booleans(), dropout=st.booleans(),
                   train=st.booleans(), trainable=st.booleans(), with_grad=st.booleans(),
                   dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 3))


@dataclass(frozen=True)
class InputSpec:
    batch: int
    height: int
    width: int
    single_image: bool  # [C,H,W] instead of [B,C,H,W]
    flaw: str  # "none", "nan", "inf", "integer", "flat" (2-D), "empty"

    def build(self, dtype: torch.dtype) -> torch.Tensor:
        x = torch.rand(self.batch, 3, self.height, self.width, dtype=dtype,
                       generator=torch.Generator().manual_seed(self.batch * 100 + self.height))
        if self.flaw in ("nan", "inf"):
            x[0, 0, -1, -1] = float(self.flaw)
        elif self.flaw == "integer":
            x = (x * 255).long()
        elif self.flaw == "flat":
            return x[0, 0]
        elif self.flaw == "empty":
            x = x[:0]
        return x[0] if self.single_image and self.flaw != "empty" else x

    @property
    def images(self) -> int:
        return 1 if self.single_image and self.flaw != "empty" else self.batch

    @property
    def valid(self) -> bool:
        return self.flaw == "none"


inputs = st.builds(InputSpec, batch=st.integers(1, 3), height=st.integers(4, 11), width=st.integers(4, 11),
                   single_image=st.booleans(),
                   flaw=st.sampled_from(["none"] * 6 + ["nan", "inf", "integer", "flat", "empty"]))

targets = st.one_of(
    st.none(),
    st.integers(-2, CLASSES + 1),
    st.integers(0, CLASSES - 1).map(np.int64),
    st.integers(0, CLASSES - 1).map(torch.tensor),
    st.lists(st.integers(0, CLASSES - 1), min_size=1, max_size=4),
    st.sampled_from([True, 1.5, "cat", [0.5]]),
)


def target_error(target, images: int) -> bool:
    """Whether ``target`` is wrong for a batch of ``images`` (the oracle)."""
    if target is None:
        return False
    if isinstance(target, bool) or isinstance(target, (float, str)) or (isinstance(target, list) and any(
            isinstance(t, float) for t in target)):
        return True
    if isinstance(target, list):
        return len(target) != images
    return not 0 <= int(target) < CLASSES


def images_in(x: torch.Tensor) -> int:
    return x.shape[0] if x.ndim == 4 else 1


METHODS = {
    "gradient": (lambda m, x, t, o: saliency.gradient(m, x, t), "input"),
    "deconvnet": (lambda m, x, t, o: saliency.deconvnet(m, x, t), "input"),
    "guided_backprop": (lambda m, x, t, o: saliency.guided_backprop(m, x, t), "input"),
    "smoothgrad": (lambda m, x, t, o: saliency.smoothgrad(m, x, t, samples=o["count"], batch_size=o["batch_size"],
                                                          progress=False), "input"),
    "integrated_gradients": (lambda m, x, t, o: saliency.integrated_gradients(
        m, x, t, steps=o["count"], batch_size=o["batch_size"], progress=False), "input"),
    "occlusion": (lambda m, x, t, o: saliency.occlusion(m, x, t, window=o["window"], stride=o["stride"],
                                                        batch_size=o["batch_size"], progress=False), "map"),
    "grad_cam": (lambda m, x, t, o: cam.grad_cam(m, x, t, layer="relu2"), "map"),
    "cam": (lambda m, x, t, o: cam.cam(m, x, t, layer="relu2", fc="fc"), "map"),
    "guided_grad_cam": (lambda m, x, t, o: cam.guided_grad_cam(m, x, t, layer="relu2"), "input"),
    "deletion_auc": (lambda m, x, t, o: metrics.deletion_auc(m, x, torch.rand(images_in(x), *x.shape[-2:]), t,
                                                             steps=o["count"], batch_size=o["batch_size"],
                                                             progress=False), "score"),
    "insertion_auc": (lambda m, x, t, o: metrics.insertion_auc(m, x, torch.rand(images_in(x), *x.shape[-2:]), t,
                                                               steps=o["count"], batch_size=o["batch_size"],
                                                               progress=False), "score"),
}

options = st.fixed_dictionaries({
    "count": st.integers(1, 3),
    "batch_size": st.one_of(st.none(), st.integers(1, 4), st.sampled_from([0, 2.5, True])),
    "window": st.one_of(st.integers(1, 6), st.tuples(st.integers(1, 6), st.integers(1, 6)), st.just(2.0)),
    "stride": st.one_of(st.integers(1, 6), st.just(0)),
})


def wrong_arguments(method: str, spec: InputSpec, target, opts) -> list[str]:
    """The arguments that are wrong for this call (the oracle): the error must name one of them,
    and when there are none the call must succeed."""
    wrong = []
    if not spec.valid:
        wrong.append("images" if method.endswith("_auc") else "x")
    if method == "occlusion":
        window = opts["window"] if isinstance(opts["window"], tuple) else (opts["window"],) * 2
        if any(isinstance(w, float) for w in window) or window[0] > spec.height or window[1] > spec.width:
            wrong.append("window")
        elif opts["stride"] == 0 or any(size > w and opts["stride"] > w
                                        for size, w in zip((spec.height, spec.width), window)):
            wrong.append("stride")  # zero, or pixels between windows never hidden
    batch_size = opts["batch_size"]
    if method in ("smoothgrad", "integrated_gradients", "occlusion", "deletion_auc", "insertion_auc") and \
            batch_size is not None and (isinstance(batch_size, (bool, float)) or batch_size < 1):
        wrong.append("batch_size")
    if target_error(target, spec.images):
        wrong.append("target")
    return wrong


def check_result(result: torch.Tensor, kind: str, x: torch.Tensor, images: int) -> None:
    assert torch.isfinite(result).all(), "a returned map or score holds NaN or Inf"
    height, width = x.shape[-2:]
    expected = {"input": (images, 3, height, width), "map": (images, height, width), "score": (images,)}[kind]
    assert tuple(result.shape) == expected


@PROPERTY_SETTINGS
@given(method=st.sampled_from(sorted(METHODS)), model_spec=models, input_spec=inputs, target=targets,
       opts=options)
def test_every_method_gives_a_correct_result_or_names_the_bad_argument(method, model_spec, input_spec, target,
                                                                       opts):
    model = model_spec.build()
    x = input_spec.build(model_spec.dtype)
    original = x.clone()
    call, kind = METHODS[method]
    wrong = wrong_arguments(method, input_spec, target, opts)
    with untouched(model):
        if not wrong:
            check_result(call(model, x, target, opts), kind, x, input_spec.images)
        else:
            with pytest.raises((ValueError, TypeError), match=rf"\b({'|'.join(wrong)})\b"):
                call(model, x, target, opts)
    assert torch.equal(x, original) or (torch.isnan(x) == torch.isnan(original)).all(), "the input was changed"


maps_and_masks = st.integers(1, 3).flatmap(lambda b: st.tuples(
    st.just(b), st.integers(2, 9), st.integers(2, 9), st.integers(0, 1000),
    st.sampled_from(["random", "flat", "negative", "nan"])))


@PROPERTY_SETTINGS
@given(case=maps_and_masks, tolerance=st.sampled_from([0, 1, 2.5, -1]))
def test_localisation_scores_are_finite_shares_or_name_the_bad_argument(case, tolerance):
    batch, height, width, seed, kind = case
    generator = torch.Generator().manual_seed(seed)
    maps = {"random": torch.rand(batch, height, width, generator=generator),
            "flat": torch.zeros(batch, height, width),
            "negative": -torch.rand(batch, height, width, generator=generator),
            "nan": torch.full((batch, height, width), float("nan"))}[kind]
    masks = torch.rand(batch, height, width, generator=generator) > 0.5
    if kind == "nan":
        with pytest.raises(ValueError, match="maps contain NaN"):
            metrics.pointing_game(maps, masks)
        return
    if tolerance < 0:
        with pytest.raises(ValueError, match="tolerance"):
            metrics.pointing_game(maps, masks, tolerance=tolerance)
        return
    for score in (metrics.pointing_game(maps, masks, tolerance=tolerance), metrics.energy_in_mask(maps, masks)):
        assert score.shape == (batch,) and torch.isfinite(score).all()
        assert ((score >= 0) & (score <= 1)).all()
