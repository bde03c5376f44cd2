"""vislib.saliency: hand-computed maps, Captum as the reference, and nothing left in the model."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.nn as nn
from captum.attr import Deconvolution, GuidedBackprop, IntegratedGradients, Occlusion, Saliency

from tests.helpers import tiny_cnn, untouched
from vislib import saliency
from vislib.models import torchvision_model

SIGNED_METHODS = {
    "gradient": saliency.gradient,
    "deconvnet": saliency.deconvnet,
    "guided_backprop": saliency.guided_backprop,
    "smoothgrad": partial(saliency.smoothgrad, samples=3, progress=False),
    "integrated_gradients": partial(saliency.integrated_gradients, steps=4, progress=False),
}
ALL_METHODS = {**SIGNED_METHODS, "occlusion": partial(saliency.occlusion, window=8, stride=8, progress=False)}


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """max |result - reference| / max |reference|: one number for a whole batch of maps, robust to
    tiny reference values (an elementwise ratio would blow up where the reference is ~0)."""
    assert result.shape == reference.shape
    return ((result - reference).abs().max() / reference.abs().max()).item()


def without_inplace(model: nn.Module) -> nn.Module:
    """A deep copy whose ReLUs are not inplace: Captum's ReLU hooks (GuidedBackprop,
    Deconvolution) do not support inplace ReLU, so the references run on this twin while
    vislib runs on the original, inplace model."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return twin


# --------------------------------------------------------------------------- hand-computed maps


def two_pixel_net() -> nn.Module:
    """x (two pixels) -> conv as W1 (2x2) -> ReLU -> W2 (3x2) -> ReLU -> W3 (2x3), no biases.

    For x = (2, 1): h1 = W1 x = (3, -1), a1 = (3, 0); h2 = W2 a1 = (3, -3, 3), a2 = (3, 0, 3);
    logits = W3 a2 = (6, 3).
    """
    model = nn.Sequential(nn.Conv2d(1, 2, kernel_size=(1, 2), bias=False), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(2, 3, bias=False), nn.ReLU(inplace=True), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -3.0]]).view(2, 1, 1, 2))
        model[3].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 3.0], [1.0, -1.0]]))
        model[5].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, 2.0]]))
    return model.eval()


# Derivations for x = (2, 1), with g the gradient arriving at each ReLU's output:
# class 1: g(a2) = W3[1] = (-1, 1, 2)
#   gradient:  g(h2) = g*[h2>0] = (-1, 0, 2); g(a1) = W2^T g(h2) = (1, -4); g(h1) = (1, 0); x: W1^T (1,0) = (1, 1)
#   guided:    g(h2) = max(g,0)*[h2>0] = (0, 0, 2); g(a1) = (2, -2); g(h1) = (2, 0);      x: (2, 2)
#   deconvnet: g(h2) = max(g,0) = (0, 1, 2); g(a1) = (1, 1); g(h1) = max(.,0) = (1, 1);  x: W1^T (1,1) = (2, -2)
# class 0: g(a2) = (1, 1, 1)
#   gradient and guided: g(h2) = (1, 0, 1); g(a1) = (2, 1); g(h1) = (2, 0);            x: (2, 2)
#   deconvnet: g(h2) = (1, 1, 1); g(a1) = (1, 4); g(h1) = (1, 4);                       x: (1+4, 1-12) = (5, -11)
HAND_MAPS = {
    "gradient": [[1.0, 1.0], [2.0, 2.0]],
    "guided_backprop": [[2.0, 2.0], [2.0, 2.0]],
    "deconvnet": [[2.0, -2.0], [5.0, -11.0]],
}


@pytest.mark.parametrize("name", HAND_MAPS)
def test_hand_computed_maps(name):
    model = two_pixel_net()
    x = torch.tensor([2.0, 1.0]).view(1, 1, 1, 2).repeat(2, 1, 1, 1)
    assert torch.equal(model(x), torch.tensor([[6.0, 3.0], [6.0, 3.0]]))
    with untouched(model):
        result = SIGNED_METHODS[name](model, x, target=[1, 0])
    assert torch.equal(result, torch.tensor(HAND_MAPS[name]).view(2, 1, 1, 2))


@pytest.mark.parametrize("name", ["gradient", "deconvnet", "guided_backprop"])
def test_one_inplace_relu_on_the_input(name):
    """The three rules on one ReLU, which works inplace on the input itself; the linear layer
    after it sends back g = (1, -2, 3, 4) to the ReLU's inputs (-1, 2, 3, -0.5)."""
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 4.0]]))
    x = torch.tensor([-1.0, 2.0, 3.0, -0.5]).view(1, 1, 1, 4)
    expected = {"gradient": [0.0, -2.0, 3.0, 0.0],  # g where the input is positive
                "deconvnet": [1.0, 0.0, 3.0, 4.0],  # g where g is positive
                "guided_backprop": [0.0, 0.0, 3.0, 0.0]}  # both
    assert SIGNED_METHODS[name](model, x, target=0).flatten().tolist() == expected[name]
    assert x.flatten().tolist() == [-1.0, 2.0, 3.0, -0.5]  # the caller's input is not overwritten


@pytest.mark.parametrize("method", [saliency.occlusion, saliency.smoothgrad, saliency.integrated_gradients])
def test_batched_methods_leave_the_input_alone_under_an_inplace_first_layer(method):
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4, 2))
    x = torch.tensor([-1.0, 2.0, 3.0, -0.5]).view(1, 1, 1, 4)
    method(model, x, window=1, stride=1) if method is saliency.occlusion else method(model, x)
    assert x.flatten().tolist() == [-1.0, 2.0, 3.0, -0.5]


def test_hand_computed_occlusion():
    """A linear score sum(x) on one row of pixels (1, 2, 3, 4), baseline 0: hiding a window
    drops the score by the sum of its pixels."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    # windows of 2, stride 1: {0,1} drops 3, {1,2} drops 5, {2,3} drops 7; each pixel averages its windows
    result = saliency.occlusion(model, x, target=0, window=(1, 2), stride=1, progress=False)
    assert torch.equal(result, torch.tensor([[[3.0, 4.0, 6.0, 7.0]]]))
    # windows of 3, stride 2: {0,1,2} drops 6, then {2,3} (cut at the border) drops 7
    result = saliency.occlusion(model, x, target=0, window=(1, 3), stride=2, progress=False)
    assert torch.equal(result, torch.tensor([[[6.0, 6.0, 6.5, 7.0]]]))
    # a baseline of 1 everywhere: hiding pixel i changes the score by x_i - 1
    result = saliency.occlusion(model, x, target=0, window=(1, 1), stride=1, baseline=1.0, progress=False)
    assert torch.equal(result, torch.tensor([[[0.0, 1.0, 2.0, 3.0]]]))


def test_occlusion_with_a_tensor_baseline():
    """A baseline image (here half grey, and a two-level one) instead of a number."""
    model = tiny_cnn()
    x = torch.rand(2, 3, 8, 8)
    half = saliency.occlusion(model, x, target=[0, 1], window=4, stride=2, baseline=0.5, progress=False)
    grey = saliency.occlusion(model, x, target=[0, 1], window=4, stride=2, baseline=torch.full((3, 8, 8), 0.5),
                              progress=False)
    assert torch.allclose(half, grey, atol=1e-6)
    levels = torch.zeros(2, 3, 8, 8)
    levels[1] = 1.0  # image 0 against black, image 1 against white
    both = saliency.occlusion(model, x, target=[0, 1], window=4, stride=2, baseline=levels, progress=False)
    assert torch.allclose(both[0], saliency.occlusion(model, x[0], 0, window=4, stride=2, progress=False)[0], atol=1e-6)
    white = saliency.occlusion(model, x[1], 1, window=4, stride=2, baseline=1.0, progress=False)[0]
    assert torch.allclose(both[1], white, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 50])
def test_occlusion_is_the_same_for_every_batching(batch_size):
    """The copies are made by moving a window in a reused buffer; batches that split the
    positions unevenly and mix two images in one pass give the maps of one copy per pass
    computed from scratch (here: each copy built by hand and scored alone)."""
    model = tiny_cnn()
    x, baseline = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    result = saliency.occlusion(model, x, target=[0, 1], window=4, stride=3, baseline=baseline,
                                batch_size=batch_size, progress=False)
    expected = torch.zeros(2, 8, 8)
    with torch.no_grad():
        for image, target in enumerate([0, 1]):
            original = model(x[image : image + 1])[0, target]
            count = torch.zeros(8, 8)
            for top in (0, 3, 6):  # the window at 6 is cut at the border
                for left in (0, 3, 6):
                    copy_ = x[image].clone()
                    copy_[:, top : top + 4, left : left + 4] = baseline[image, :, top : top + 4, left : left + 4]
                    expected[image, top : top + 4, left : left + 4] += original - model(copy_[None])[0, target]
                    count[top : top + 4, left : left + 4] += 1
            expected[image] /= count
    assert relative_error(result, expected) < 1e-5


class DoublesItsInput(nn.Module):
    """A first layer that works inplace and is not idempotent: x -> 2x, written into x."""

    def forward(self, x):
        return x.mul_(2)


def test_occlusion_rebuilds_its_copies_after_a_model_writes_into_them():
    model = nn.Sequential(DoublesItsInput(), nn.Flatten(), nn.Linear(12, 2))
    twin = nn.Sequential(nn.Identity(), nn.Flatten(), copy.deepcopy(model[2]))
    x = torch.rand(1, 3, 2, 2)
    doubled = saliency.occlusion(model, x, target=0, window=1, stride=1, batch_size=2, progress=False)
    expected = saliency.occlusion(twin, 2 * x, target=0, window=1, stride=1, batch_size=2, progress=False)
    assert torch.allclose(doubled, expected, atol=1e-6)


def test_integrated_gradients_of_a_linear_model_is_exact():
    """For score = w . x the path integral is (x - baseline) * w, for any quadrature."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2)).eval()
    x = torch.randn(2, 1, 2, 3)
    baseline = torch.randn(1, 2, 3)
    expected = (x - baseline) * model[1].weight[1].detach().view(1, 2, 3)
    for method in saliency.IG_METHODS:
        result = saliency.integrated_gradients(model, x, target=1, baseline=baseline, steps=3, method=method,
                                               progress=False)
        assert torch.allclose(result, expected, atol=1e-6), method


def test_smoothgrad_averages_gradients_over_seeded_noise():
    """score = sum(x^2) has gradient 2x, so SmoothGrad is 2 * mean(x + noise); noisy copy s of
    every image uses pattern s drawn from the seed, scaled by noise * (max - min) of the image."""

    class SquareSum(nn.Module):
        def forward(self, x):
            return torch.stack([x.square().flatten(1).sum(1), torch.zeros(len(x))], dim=1)

    x = torch.rand(3, 2, 4, 4)
    sigma = 0.2 * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    patterns = torch.randn((5, 2, 4, 4), generator=torch.Generator().manual_seed(7))
    expected = 2 * (x + patterns.mean(0) * sigma.view(3, 1, 1, 1))
    for batch_size in (4, 64):
        result = saliency.smoothgrad(SquareSum(), x, target=0, samples=5, noise=0.2, seed=7, batch_size=batch_size,
                                     progress=False)
        assert torch.allclose(result, expected, atol=1e-5)
        alone = saliency.smoothgrad(SquareSum(), x[1:2], target=0, samples=5, noise=0.2, seed=7,
                                    batch_size=batch_size, progress=False)
        assert torch.allclose(alone, expected[1:2], atol=1e-5)  # the same map alone as inside the batch
    other_seed = saliency.smoothgrad(SquareSum(), x, target=0, samples=5, noise=0.2, seed=8, progress=False)
    assert not torch.allclose(other_seed, expected, atol=1e-3)


def test_smoothgrad_without_noise_is_the_gradient(shapes_model, held_out):
    x = held_out.images[:3]
    expected = saliency.gradient(shapes_model, x, target=[1, 2, 3])
    result = saliency.smoothgrad(shapes_model, x, target=[1, 2, 3], samples=2, noise=0.0, progress=False)
    assert relative_error(result, expected) < 1e-5
    guided = saliency.smoothgrad(shapes_model, x, target=[1, 2, 3], samples=2, noise=0.0,
                                 method=saliency.guided_backprop, progress=False)
    assert relative_error(guided, saliency.guided_backprop(shapes_model, x, target=[1, 2, 3])) < 1e-5


def test_to_heatmap_reductions():
    attr = torch.tensor([[[1.0, -3.0]], [[-2.0, 2.0]]])  # [C=2, H=1, W=2]
    assert torch.equal(saliency.to_heatmap(attr, "abs_max"), torch.tensor([[[2.0, 3.0]]]))
    assert torch.equal(saliency.to_heatmap(attr, "square_sum"), torch.tensor([[[5.0, 13.0]]]))
    assert torch.equal(saliency.to_heatmap(attr, "abs_sum"), torch.tensor([[[3.0, 5.0]]]))
    assert torch.equal(saliency.to_heatmap(attr, "sum"), torch.tensor([[[-1.0, -1.0]]]))
    with pytest.raises(ValueError, match="reduce"):
        saliency.to_heatmap(attr, "max")
    with pytest.raises(ValueError, match="B,C,H,W"):
        saliency.to_heatmap(torch.zeros(4, 4))


# --------------------------------------------------------------------------- Captum as the reference


@pytest.fixture(scope="module")
def reference_models(shapes_model):
    """name -> (model with inplace ReLUs, its non-inplace twin for Captum, input batch, targets):
    ShapesNet (trained) at 64 px; random-weight ResNet-18 and VGG-11 at 32 px (the smallest size
    their five poolings allow, to keep the CPU time low). Three images, three different targets."""
    generator = torch.Generator().manual_seed(3)
    models = {
        "shapes_net": (shapes_model, torch.rand(3, 3, 64, 64, generator=generator), [0, 5, 2]),
        "resnet18": (torchvision_model("resnet18", pretrained=False), torch.randn(3, 3, 32, 32, generator=generator),
                     [3, 999, 10]),
        "vgg11": (torchvision_model("vgg11", pretrained=False), torch.randn(3, 3, 32, 32, generator=generator),
                  [7, 1, 500]),
    }
    return {name: (model, without_inplace(model), x, target) for name, (model, x, target) in models.items()}


MODELS = ["shapes_net", "resnet18", "vgg11"]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Captum: "backward hooks on ReLU", "input did not require grad"
def test_backprop_methods_match_captum(reference_models, model_name):
    model, twin, x, target = reference_models[model_name]
    references = {
        "gradient": Saliency(twin).attribute(x.clone(), target=target, abs=False),
        "deconvnet": Deconvolution(twin).attribute(x.clone(), target=target),
        "guided_backprop": GuidedBackprop(twin).attribute(x.clone(), target=target),
    }
    with untouched(model):
        results = {name: SIGNED_METHODS[name](model, x, target=target) for name in references}
    for name, expected in references.items():
        assert expected.abs().max() > 0, name
        assert relative_error(results[name], expected) < 1e-4, name
    assert relative_error(results["guided_backprop"], results["gradient"]) > 0.1  # the rules did act


@pytest.mark.parametrize("model_name, method", [
    ("shapes_net", "gausslegendre"), ("shapes_net", "riemann_middle"), ("shapes_net", "riemann_trapezoid"),
    ("resnet18", "gausslegendre"), ("vgg11", "gausslegendre"),
])
def test_integrated_gradients_matches_captum(reference_models, model_name, method):
    model, twin, x, target = reference_models[model_name]
    baseline = 0.1 * torch.ones_like(x[:1])
    steps = 4
    with untouched(model):
        result = saliency.integrated_gradients(model, x, target=target, baseline=baseline, steps=steps,
                                               method=method, batch_size=8, progress=False)
    expected = IntegratedGradients(twin).attribute(
        x, baselines=baseline.expand_as(x), target=target, n_steps=steps, method=method, internal_batch_size=8)
    if method == "riemann_trapezoid":  # Captum's trapezoid weights sum to 1 - 1/steps, ours to 1
        expected = expected * steps / (steps - 1)
    assert relative_error(result, expected) < 1e-4


@pytest.mark.parametrize("model_name, window, stride", [
    ("shapes_net", 8, 4),  # the defaults: 15 x 15 windows
    ("resnet18", 12, 8),  # the last window is cut at the border, as in Captum
    ("vgg11", (16, 12), (16, 10)),
])
def test_occlusion_matches_captum(reference_models, model_name, window, stride):
    model, twin, x, target = reference_models[model_name]
    with untouched(model):
        result = saliency.occlusion(model, x, target=target, window=window, stride=stride, batch_size=64,
                                    progress=False)
    window, stride = saliency._pair(window, "window"), saliency._pair(stride, "stride")
    expected = Occlusion(twin).attribute(x, target=target, sliding_window_shapes=(3, *window),
                                         strides=(3, *stride), baselines=0.0, perturbations_per_eval=64)
    assert torch.equal(expected, expected[:, :1].expand_as(expected))  # the window spans all channels
    assert relative_error(result, expected[:, 0]) < 1e-4


# --------------------------------------------------------------------------- conventions and safety


@pytest.mark.parametrize("name", [name for name in ALL_METHODS if name != "smoothgrad"])
def test_batched_equals_one_image_at_a_time(shapes_model, held_out, name):
    """(SmoothGrad is left out: a batch draws other noise than one image alone, by design.)"""
    method = ALL_METHODS[name]
    x, target = held_out.images[:3], [4, 0, 6]
    batched = method(shapes_model, x, target=target)
    single = torch.cat([method(shapes_model, x[i], target=target[i]) for i in range(3)])
    assert batched.shape == (x.shape if name != "occlusion" else (3, 64, 64))
    assert relative_error(batched, single) < 1e-4  # convolutions sum in another order for another batch size


@pytest.mark.parametrize("name", ALL_METHODS)
def test_default_target_is_the_prediction(shapes_model, held_out, name):
    x = held_out.images[:2]
    predicted = shapes_model(x).argmax(1)
    method = ALL_METHODS[name]
    assert torch.equal(method(shapes_model, x), method(shapes_model, x, target=predicted))


@pytest.mark.parametrize("name", ALL_METHODS)
def test_nothing_left_behind_even_when_frozen_under_no_grad_or_raising(name):
    """The model has inplace ReLUs, some frozen parameters, an existing .grad; the calls run
    inside torch.no_grad(); one call raises (a wrong-length target) after the forward pass."""
    model = tiny_cnn(inplace=True)
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    x = torch.rand(2, 3, 8, 8)
    method = ALL_METHODS[name]
    with untouched(model), torch.no_grad():
        result = method(model, x, target=[0, 2])
    assert torch.isfinite(result).all() and result.abs().max() > 0
    assert not result.requires_grad
    with untouched(model), pytest.raises(ValueError, match="target has 3 entries"):
        method(model, x, target=[0, 1, 2])


@pytest.mark.parametrize("name", ["deconvnet", "guided_backprop"])
def test_hooks_removed_when_the_forward_pass_raises(name):
    model = tiny_cnn(inplace=True)
    with untouched(model), pytest.raises(RuntimeError):
        SIGNED_METHODS[name](model, torch.rand(1, 5, 8, 8))  # 5 channels where conv1 expects 3


def test_a_relu_used_twice_gets_its_rule_at_both_calls():
    """torchvision's BasicBlock calls one ReLU module twice; it must act like two ReLUs."""

    class Shared(nn.Module):
        def __init__(self, relus):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.relus = nn.ModuleList(relus)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = self.relus[0](self.conv1(x))
            x = self.relus[-1](self.conv2(x))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(1)
    one = Shared([nn.ReLU(inplace=True)]).eval()
    two = Shared([nn.ReLU(inplace=True), nn.ReLU(inplace=True)]).eval()
    two.load_state_dict(one.state_dict())
    x = torch.rand(2, 3, 8, 8)
    for method in (saliency.guided_backprop, saliency.deconvnet):
        assert torch.equal(method(one, x, target=[0, 1]), method(two, x, target=[0, 1]))


def test_all_zero_maps_stay_finite():
    """Where every ReLU is off, the backprop maps are exactly zero: no NaN, and so are their heatmaps."""
    model = tiny_cnn(inplace=True)
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.bias.fill_(-1.0)
    x = torch.rand(2, 3, 8, 8)
    for name, method in ALL_METHODS.items():
        result = method(model, x, target=1)
        assert torch.equal(result, torch.zeros_like(result)), name
        heat = saliency.to_heatmap(result) if result.ndim == 4 else result
        assert torch.isfinite(heat).all() and heat.abs().max() == 0


def test_bad_inputs_are_clear_errors():
    model = tiny_cnn()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="B,C,H,W"):
        saliency.gradient(model, torch.rand(8, 8))
    with pytest.raises(TypeError):
        saliency.gradient(model, [[0.0]])
    with pytest.raises(ValueError, match="must lie in"):
        saliency.guided_backprop(model, x, target=3)
    with pytest.raises(ValueError, match="larger than the image"):
        saliency.occlusion(model, x, window=9)
    with pytest.raises(ValueError, match="stride"):
        saliency.occlusion(model, x, stride=0)
    with pytest.raises(ValueError, match="method"):
        saliency.integrated_gradients(model, x, method="simpson")
    with pytest.raises(ValueError, match="steps"):
        saliency.integrated_gradients(model, x, steps=0)
    with pytest.raises(ValueError, match="samples"):
        saliency.smoothgrad(model, x, samples=0)
    with pytest.raises(ValueError, match="noise"):
        saliency.smoothgrad(model, x, noise=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        saliency.occlusion(model, x, batch_size=0)
    no_relu = nn.Sequential(nn.Flatten(), nn.Linear(192, 2))
    with untouched(no_relu), pytest.raises(ValueError, match="nn.ReLU"):
        saliency.guided_backprop(no_relu, x)
    with pytest.raises(ValueError, match="class scores"):
        saliency.gradient(nn.Conv2d(3, 2, 3), x)

