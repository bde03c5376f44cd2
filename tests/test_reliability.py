"""Regression tests for the reliability promises: a model in train mode is explained as in eval
mode and handed back unchanged; structured model outputs follow one rule everywhere; bad input
is a clear error, never a NaN or a silent wrong answer. Each test failed on the code before
these rules were enforced in ``hooks.frozen`` / ``hooks.uses_model`` and ``vislib.conventions``."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn

from vislib import activations, cam, embedding, metrics, optimize, saliency
from vislib.models import ShapesNet, torchvision_model

from .helpers import tiny_cnn, untouched


def train_mode_net(seed: int = 0) -> nn.Module:
    """conv-BN-ReLU-dropout-GAP-linear in train mode with trainable parameters: every forward
    pass in train mode would update BatchNorm's statistics and draw a new dropout mask."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 6, 3, padding=1))
    model.add_module("bn", nn.BatchNorm2d(6))
    model.add_module("relu", nn.ReLU(inplace=True))
    model.add_module("drop", nn.Dropout(0.5))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(6, 4))
    with torch.no_grad():  # statistics that differ from any batch's own
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.train()


PER_IMAGE_METHODS = {
    "gradient": saliency.gradient,
    "guided_backprop": saliency.guided_backprop,
    "smoothgrad": functools.partial(saliency.smoothgrad, samples=3, progress=False),
    "integrated_gradients": functools.partial(saliency.integrated_gradients, steps=4, progress=False),
    "occlusion": functools.partial(saliency.occlusion, window=4, stride=2, progress=False),
    "grad_cam": functools.partial(cam.grad_cam, layer="relu"),
    "cam": functools.partial(cam.cam, layer="relu", fc="fc"),
}


@pytest.mark.parametrize("name", PER_IMAGE_METHODS)
def test_a_train_mode_model_is_explained_in_eval_mode_and_handed_back_unchanged(name):
    method, model = PER_IMAGE_METHODS[name], train_mode_net()
    x = torch.rand(3, 3, 8, 8)
    with untouched(model):
        batch = method(model, x, target=[0, 1, 2])
        alone = method(model, x[:1], target=0)
        again = method(model, x, target=[0, 1, 2])
    assert torch.allclose(alone[0], batch[0], atol=1e-5), "one image alone must get the map it gets in a batch"
    assert torch.equal(batch, again), "dropout must be off: two identical calls agree"
    eval_model = train_mode_net().eval()
    assert torch.allclose(batch, method(eval_model, x, target=[0, 1, 2]), atol=1e-6)


def test_metrics_leave_a_train_mode_model_unchanged():
    model, x = train_mode_net(), torch.rand(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)
    with untouched(model):
        deletion = metrics.deletion_auc(model, x, maps, target=[0, 1], steps=4, progress=False)
        insertion = metrics.insertion_auc(model, x, maps, target=[0, 1], steps=4, progress=False)
        result = metrics.randomization_test(model, x, saliency.gradient, target=[0, 1], progress=False)
    eval_model = train_mode_net().eval()
    assert torch.allclose(deletion, metrics.deletion_auc(eval_model, x, maps, target=[0, 1], steps=4,
                                                         progress=False))
    assert torch.allclose(insertion, metrics.insertion_auc(eval_model, x, maps, target=[0, 1], steps=4,
                                                           progress=False))
    assert torch.isfinite(result.spearman).all()


def test_a_model_stays_unchanged_when_the_call_raises():
    model = train_mode_net()
    with untouched(model):
        with pytest.raises(ValueError, match="target"):
            saliency.occlusion(model, torch.rand(2, 3, 8, 8), target=[0, 1, 2], window=4, stride=2)
        with pytest.raises(ValueError, match="target"):
            saliency.integrated_gradients(model, torch.rand(2, 3, 8, 8), target=[9, 9], steps=2)


# --------------------------------------------------------------------------- structured outputs


class TupleOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x):
        return self.net(x), torch.zeros(len(x), 2)


class DictOutput(TupleOutput):
    def forward(self, x):
        return {"logits": self.net(x), "features": x.mean((2, 3))}


class HuggingFaceOutput(TupleOutput):
    def forward(self, x):
        return type("ImageClassifierOutput", (), {"logits": self.net(x)})()


class UnnamedDictOutput(TupleOutput):
    def forward(self, x):
        return {"out": self.net(x)}


STRUCTURED_CALLS = {
    "gradient": lambda m, x: saliency.gradient(m, x, target=[0, 1]),
    "smoothgrad": lambda m, x: saliency.smoothgrad(m, x, samples=2, progress=False),
    "integrated_gradients": lambda m, x: saliency.integrated_gradients(m, x, steps=3, progress=False),
    "occlusion": lambda m, x: saliency.occlusion(m, x, window=4, stride=4, progress=False),
    "grad_cam": lambda m, x: cam.grad_cam(m, x, layer="net.relu2"),
    "cam": lambda m, x: cam.cam(m, x, layer="net.relu2", fc="net.fc"),
    "guided_grad_cam": lambda m, x: cam.guided_grad_cam(m, x, layer="net.relu2"),
    "deletion_auc": lambda m, x: metrics.deletion_auc(m, x, torch.rand(2, 8, 8), steps=2, progress=False),
    "visualize": lambda m, x: optimize.visualize(m, optimize.class_logit(1), size=8, steps=2, progress=False),
    "extract": lambda m, x: embedding.extract(m, x, progress=False),
}


@pytest.mark.parametrize("wrapper", [TupleOutput, DictOutput, HuggingFaceOutput])
@pytest.mark.parametrize("call", STRUCTURED_CALLS)
def test_tuple_dict_and_logits_outputs_give_the_scores_maps(wrapper, call):
    structured, x = wrapper(), torch.rand(2, 3, 8, 8)
    plain = nn.Sequential()
    plain.add_module("net", structured.net)
    with untouched(structured):
        torch.manual_seed(0)
        got = STRUCTURED_CALLS[call](structured, x)
    torch.manual_seed(0)
    assert torch.allclose(got, STRUCTURED_CALLS[call](plain, x), atol=1e-6)


@pytest.mark.parametrize("call", [c for c in STRUCTURED_CALLS if c != "extract"])  # extract reads a layer only
def test_an_output_without_scores_is_a_clear_error_that_says_how_to_wrap(call):
    model = UnnamedDictOutput()
    with untouched(model), pytest.raises(ValueError, match=r"class scores.*keys \['out'\].*Pick"):
        STRUCTURED_CALLS[call](model, torch.rand(2, 3, 8, 8))


# --------------------------------------------------------------------------- bad input


def test_occlusion_refuses_a_stride_that_leaves_pixels_uncovered():
    model = tiny_cnn()
    with pytest.raises(ValueError, match="stride 12x12 is larger than window 8x8"):
        saliency.occlusion(model, torch.rand(1, 3, 32, 32), window=8, stride=12)
    result = saliency.occlusion(model, torch.rand(1, 3, 32, 32), window=8, stride=8, progress=False)
    assert torch.isfinite(result).all()


@pytest.mark.parametrize("kwargs,message", [({"window": 8.0}, "window must be a positive int"),
                                            ({"stride": (2, 0)}, "stride must be a positive int"),
                                            ({"window": "8"}, "window must be a positive int"),
                                            ({"batch_size": 2.5}, "batch_size must be a positive int"),
                                            ({"baseline": float("nan")}, "baseline contains NaN")])
def test_occlusion_names_the_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        saliency.occlusion(tiny_cnn(), torch.rand(1, 3, 16, 16), **kwargs)


@pytest.mark.parametrize("method", [saliency.gradient, saliency.occlusion, cam.grad_cam, saliency.smoothgrad])
def test_nan_or_empty_input_is_an_error_not_a_map(method):
    model = ShapesNet().eval()
    x = torch.rand(2, 3, 16, 16)
    x[1, 0, 3, 3] = float("nan")
    with untouched(model):
        with pytest.raises(ValueError, match="x contains NaN"):
            method(model, x)
        with pytest.raises(ValueError, match="x holds no pixels"):
            method(model, torch.zeros(0, 3, 16, 16))


def test_a_model_whose_scores_are_nan_gets_no_predicted_class():
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        saliency.gradient(model, torch.rand(1, 3, 8, 8))
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="gradient computed NaN or infinite values"):
        saliency.gradient(model, torch.rand(1, 3, 8, 8), target=0)  # the map itself would be NaN


def test_a_layer_that_never_runs_is_named_in_extract_and_top_patches():
    model = TupleOutput()
    model.add_module("unused", nn.Conv2d(6, 6, 1))  # an attribute that forward never calls
    data = torch.rand(4, 3, 8, 8)
    with untouched(model):
        with pytest.raises(ValueError, match="'unused' did not run"):
            embedding.extract(model, data, layer="unused", progress=False)
        with pytest.raises(ValueError, match="'unused' did not run"):
            activations.top_patches(model, data, "unused", k=2, progress=False)


@pytest.mark.parametrize("call", [
    lambda m, x: saliency.gradient(m, x),
    lambda m, x: saliency.integrated_gradients(m, x, steps=2, progress=False),
    lambda m, x: cam.grad_cam(m, x, layer="relu2"),
    lambda m, x: metrics.deletion_auc(m, x, torch.arange(64.0).view(1, 8, 8), steps=2, progress=False),
])
def test_methods_work_inside_inference_mode(call):
    model, x = tiny_cnn(), torch.rand(1, 3, 8, 8)
    expected = call(model, x)
    with torch.inference_mode():
        inside = call(model, torch.as_tensor(x))
    assert torch.allclose(inside, expected, atol=1e-5)


def test_float64_models_work_in_the_optimisation_methods():
    model = ShapesNet().double().eval()
    image = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with untouched(model):
        picture = optimize.visualize(model, optimize.class_logit(2), size=16, steps=2, progress=False)
        inverted = optimize.invert(model, image, "features.relu2", steps=2, progress=False)
        dream = optimize.deep_dream(model, image, "features.relu2", octaves=1, steps=2, progress=False)
    assert picture.dtype == inverted.dtype == dream.dtype == torch.float64
    assert all(torch.isfinite(t).all() for t in (picture, inverted, dream))


@pytest.mark.parametrize("name", ["shapes_net", "resnet18"])
def test_cam_accepts_a_bfloat16_model(name, shapes_model, held_out):
    """bfloat16 keeps 8 bits of mantissa: the check that the head is GAP + fc must allow its rounding."""
    if name == "shapes_net":
        model, x, layers = shapes_model, held_out.images[:16], {}
    else:
        model, x, layers = torchvision_model("resnet18", pretrained=False), torch.randn(2, 3, 224, 224), \
            {"layer": "layer4", "fc": "fc"}
    expected = cam.cam(model, x, target=1, **layers)
    low = copy.deepcopy(model).to(torch.bfloat16)
    maps = cam.cam(low, x.to(torch.bfloat16), target=1, **layers)
    assert torch.allclose(maps.float(), expected, rtol=0.1, atol=0.05 * expected.abs().max().item())
