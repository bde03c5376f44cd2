"""vislib.cam against hand-computed maps and the reference implementations (Captum's LayerGradCam
and GuidedGradCam, pytorch-grad-cam's GradCAM), on ShapesNet and random-weight ResNet-18 / VGG-11
with inplace ReLU, batches with a different target per image; and the "nothing left behind" rules."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from tests.helpers import tiny_cnn, untouched
from vislib.cam import cam, grad_cam, guided_grad_cam
from vislib.hooks import get_layer

TOL = 1e-4


def relative_error(actual, expected) -> float:
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    assert actual.shape == expected.shape
    scale = expected.abs().max()
    assert scale > 0, "the reference map is all zero: the comparison would prove nothing"
    return ((actual - expected).abs().max() / scale).item()


# (model fixture, layer, targets) for the `case` fixture: ShapesNet on held-out shapes, torchvision
# models on small noise images. Layers include a conv and a batch-norm whose outputs an inplace ReLU
# overwrites.
CASES = [
    ("shapes_model", "features.relu4", [0, 3, 5, 7, 1]),
    ("shapes_model", "features.bn4", [2, 2, 6, 4, 0]),
    ("shapes_model", "features.conv3", [1, 4, 0, 6, 3]),
    ("resnet18", "layer4", [1, 250, 500, 999, 7]),
    ("resnet18", "layer3", [0, 9, 400, 12, 640]),
    ("vgg11", "features.18", [3, 281, 999, 42]),
]
GUIDED_CASES = [CASES[0], CASES[3], CASES[5]]


def case_id(case):
    return f"{case[0]}-{case[1]}"


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[case_id(c) for c in CASES])
def test_grad_cam_matches_captum_layer_grad_cam(case):
    from captum.attr import LayerAttribution, LayerGradCam

    model, reference, layer, x, targets = case
    captum_cam = LayerGradCam(reference, get_layer(reference, layer))
    with untouched(model):
        signed_coarse = grad_cam(model, x, targets, layer=layer, upsample=False, relu=False)
        default = grad_cam(model, x, targets, layer=layer)
    # Before the ReLU and the upsampling: the weighted sum of channels itself.
    expected = captum_cam.attribute(x, target=targets, relu_attributions=False).detach()
    assert relative_error(signed_coarse, expected[:, 0]) < TOL
    # The default map: ReLU, then bilinear upsampling to the input size.
    expected = captum_cam.attribute(x, target=targets, relu_attributions=True).detach()
    upsampled = LayerAttribution.interpolate(expected, tuple(x.shape[-2:]), "bilinear")
    assert default.shape == (len(x), *x.shape[-2:])
    assert relative_error(default, upsampled[:, 0]) < TOL


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[case_id(c) for c in CASES])
def test_grad_cam_matches_pytorch_grad_cam(case):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, reference, layer, x, targets = case
    method = GradCAM(model=reference, target_layers=[get_layer(reference, layer)])
    try:
        # Its end result: ReLU, then each map min-max normalised at the layer's resolution and
        # resized with OpenCV's bilinear interpolation.
        expected = method(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets])
        # Its raw weighted sum of channels, before ReLU and normalisation.
        recorded = method.activations_and_grads
        raw = method.get_cam_image(x, None, None, recorded.activations[0].numpy(), recorded.gradients[0].numpy())
    finally:
        method.activations_and_grads.release()
    with untouched(model):
        coarse = grad_cam(model, x, targets, layer=layer, upsample=False, relu=False)
        fine = grad_cam(model, x, targets, layer=layer)
    assert relative_error(coarse, raw) < TOL
    # pytorch-grad-cam min-max normalises each map twice: at the layer's resolution, and again
    # after the resize. Normalisation is affine per image, so it commutes with bilinear upsampling:
    # apply the same two steps to vislib's upsampled map.
    assert relative_error(min_max(min_max(fine, reference=coarse.clamp(min=0))), expected) < TOL


def min_max(maps, reference=None):
    """pytorch-grad-cam's scale_cam_image, per image: (m - min) / (1e-7 + max(m - min)), with the
    statistics taken from ``reference`` (default: the maps themselves)."""
    reference = maps if reference is None else reference
    low = reference.amin(dim=(1, 2), keepdim=True)
    return (maps - low) / (1e-7 + (reference - low).amax(dim=(1, 2), keepdim=True))


@pytest.mark.parametrize("case", GUIDED_CASES, indirect=True, ids=[case_id(c) for c in GUIDED_CASES])
def test_guided_grad_cam_matches_captum(case):
    from captum.attr import GuidedGradCam

    model, reference, layer, x, targets = case
    expected = GuidedGradCam(reference, get_layer(reference, layer)).attribute(
        x, target=targets, interpolate_mode="bilinear"
    )
    with untouched(model):
        actual = guided_grad_cam(model, x, targets, layer=layer)
    assert actual.shape == x.shape
    assert relative_error(actual, expected) < TOL


# --------------------------------------------------------------------------- hand-computed


def fixed_model() -> nn.Module:
    """conv1 (identity 1x1 with stride 2: the feature map A is every other pixel of the 2-channel
    4x4 input) -> inplace ReLU -> flatten -> fc (2 classes). Not a GAP head, so the gradient
    varies over space."""
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(2, 2, 1, stride=2))
    model.add_module("relu", nn.ReLU(inplace=True))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(8, 2, bias=False))
    with torch.no_grad():
        model.conv1.weight.copy_(torch.eye(2)[:, :, None, None])
        model.conv1.bias.zero_()
        model.fc.weight.copy_(torch.tensor([
            [1.0, 2.0, 3.0, -1.0, 4.0, 2.0, -2.0, 2.0],    # class 0: channel 0 then channel 1, row by row
            [-1.0, 0.0, 1.0, 1.0, 0.0, -1.0, -1.0, -2.0],  # class 1
        ]))
    return model.eval()


FEATURES = torch.tensor([[[1.0, -1.0], [2.0, 0.5]], [[-3.0, 3.0], [0.5, 2.0]]])  # A: 2 channels, 2x2
FIXED_INPUT = torch.full((2, 4, 4), 9.0)  # the pixels that conv1's stride skips do not matter
FIXED_INPUT[:, ::2, ::2] = FEATURES


def test_grad_cam_by_hand():
    # ReLU passes A > 0: channel 0 at [[1,0],[1,1]], channel 1 at [[0,1],[1,1]].
    # class 0: dS/dA_0 = [[1,0],[3,-1]] -> alpha_0 = 3/4;  dS/dA_1 = [[0,2],[-2,2]] -> alpha_1 = 2/4
    #   0.75 A_0 + 0.5 A_1 = [[-0.75, 0.75], [1.75, 1.375]]
    # class 1: dS/dA_0 = [[-1,0],[1,1]] -> alpha_0 = 1/4;  dS/dA_1 = [[0,-1],[-1,-2]] -> alpha_1 = -1
    #   0.25 A_0 - A_1 = [[3.25, -3.25], [0, -1.875]]
    raw = torch.tensor([[[-0.75, 0.75], [1.75, 1.375]], [[3.25, -3.25], [0.0, -1.875]]])
    model = fixed_model()
    x = torch.stack([FIXED_INPUT, FIXED_INPUT])
    with untouched(model):
        signed = grad_cam(model, x, target=[0, 1], layer="conv1", upsample=False, relu=False)
        maps = grad_cam(model, x, target=[0, 1], layer="conv1", upsample=False)
        upsampled = grad_cam(model, x, target=[0, 1], layer="conv1")
    torch.testing.assert_close(signed, raw)
    torch.testing.assert_close(maps, raw.clamp(min=0))
    # Bilinear 2 -> 4 (half-pixel centres, clamped at the border): each output row/column mixes
    # the two input rows/columns with these weights.
    mix = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    torch.testing.assert_close(upsampled, mix @ raw.clamp(min=0) @ mix.T)


def test_cam_by_hand():
    """GAP + linear head: CAM is sum_k w_k^c A_k, and its spatial mean plus bias is the score."""
    model = nn.Sequential()
    model.add_module("relu", nn.ReLU())
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(2, 2))
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[2.0, -1.0], [0.5, 1.0]]))
        model.fc.bias.copy_(torch.tensor([0.3, -0.2]))
    x = FEATURES[None]
    a = FEATURES.clamp(min=0)
    with untouched(model):
        maps = cam(model, x, target=[1], layer="relu", fc="fc", upsample=False, relu=False)
    torch.testing.assert_close(maps[0], 0.5 * a[0] + 1.0 * a[1])
    torch.testing.assert_close(maps.mean() - 0.2, model(x)[0, 1])


# --------------------------------------------------------------------------- CAM and Grad-CAM


@pytest.mark.parametrize("model_name,layer", [("shapes_model", None), ("resnet18", "layer4")])
def test_cam_is_grad_cam_times_map_area(request, held_out, model_name, layer):
    """Behind global average pooling over h x w, dS_c/dA_k(x,y) = w_k^c / (h*w) everywhere."""
    model = request.getfixturevalue(model_name)
    x = held_out.images[:6] if model_name == "shapes_model" else torch.randn(6, 3, 64, 64)
    targets = [0, 1, 2, 3, 4, 5]
    fc = None if layer is None else "fc"
    with untouched(model):
        class_map = cam(model, x, targets, layer=layer, fc=fc, upsample=False, relu=False)
        gradient_map = grad_cam(model, x, targets, layer=layer, upsample=False, relu=False)
    area = class_map.shape[-2] * class_map.shape[-1]
    assert relative_error(gradient_map * area, class_map) < TOL


def test_cam_adds_up_to_the_scores(shapes_model, held_out):
    x = held_out.images[:8]
    with torch.no_grad():
        logits = shapes_model(x)
    maps = cam(shapes_model, x, target=list(range(8)), upsample=False, relu=False)
    scores = maps.mean(dim=(1, 2)) + shapes_model.fc.bias[:8]
    torch.testing.assert_close(scores, logits.diagonal(), rtol=1e-4, atol=1e-4)


def test_batch_equals_one_by_one(shapes_model, held_out):
    """Every image gets its own target's map, not the first image's."""
    x, targets = held_out.images[:4], [3, 0, 6, 1]
    for method in (cam, grad_cam):
        batch = method(shapes_model, x, targets)
        single = torch.cat([method(shapes_model, x[i], targets[i]) for i in range(4)])
        torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-6)
    assert grad_cam(shapes_model, x[0]).shape == (1, 64, 64)


def test_default_target_is_the_prediction(shapes_model, held_out):
    x = held_out.images[:5]
    predicted = shapes_model(x).argmax(1)
    torch.testing.assert_close(grad_cam(shapes_model, x), grad_cam(shapes_model, x, predicted))
    torch.testing.assert_close(cam(shapes_model, x), cam(shapes_model, x, predicted.tolist()))


def test_frozen_parameters_and_no_grad(resnet18):
    model = copy.deepcopy(resnet18)
    x = torch.randn(3, 3, 64, 64)
    expected = grad_cam(model, x, [1, 2, 3], layer="layer4")
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    with untouched(model), torch.no_grad():
        frozen_maps = grad_cam(model, x, [1, 2, 3], layer="layer4")
        frozen_cam = cam(model, x, [1, 2, 3], layer="layer4", fc="fc")
    torch.testing.assert_close(frozen_maps, expected)
    assert frozen_maps.abs().max() > 0 and frozen_cam.abs().max() > 0
    assert not x.requires_grad


def test_train_mode_is_kept():
    model = tiny_cnn()
    model.train()
    with untouched(model):
        grad_cam(model, torch.randn(2, 3, 8, 8), layer="conv2")
    assert model.training


# --------------------------------------------------------------------------- bad input


def test_wrong_target_raises_and_leaves_nothing(shapes_model, held_out):
    x = held_out.images[:3]
    for method in (cam, grad_cam, guided_grad_cam):
        with untouched(shapes_model):
            with pytest.raises(ValueError, match="target has 2 entries"):
                method(shapes_model, x, target=[1, 2])
            with pytest.raises(ValueError, match="target classes must lie"):
                method(shapes_model, x, target=8)


def test_bad_layers_and_inputs(shapes_model, resnet18, vgg11, held_out):
    x = held_out.images[:2]
    with untouched(shapes_model):
        with pytest.raises(KeyError, match="features.relu4"):
            grad_cam(shapes_model, x, layer="features.relu5")
        with pytest.raises(ValueError, match="convolutional feature map"):
            grad_cam(shapes_model, x, layer="fc")
        with pytest.raises(ValueError, match="must be an image batch"):
            grad_cam(shapes_model, x[0, 0])
        with pytest.raises(ValueError, match="global average"):
            cam(shapes_model, x, layer="features.bn4")  # 128 channels, but relu4 lies in between
        with pytest.raises(ValueError, match="channels but fc expects"):
            cam(shapes_model, x, layer="features.relu3")
        with pytest.raises(ValueError, match="nn.Linear"):
            cam(shapes_model, x, fc="features.conv4")
    images = torch.randn(2, 3, 64, 64)
    with untouched(resnet18):
        with pytest.raises(ValueError, match="layer is required"):
            grad_cam(resnet18, images)
        with pytest.raises(ValueError, match="fc is required"):
            cam(resnet18, images, layer="layer4")
    with untouched(vgg11):
        with pytest.raises(ValueError, match="channels but fc expects"):
            cam(vgg11, images, layer="features.19", fc="classifier.6")


def test_layer_outside_the_forward_pass():
    model = nn.Module()
    model.net, model.unused = tiny_cnn(), nn.Conv2d(3, 3, 1)
    model.forward = model.net.forward
    with untouched(model), pytest.raises(ValueError, match="did not run"):
        grad_cam(model, torch.randn(1, 3, 8, 8), layer="unused")


def test_layer_the_score_does_not_depend_on():
    class SideBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.side = tiny_cnn(), nn.Conv2d(3, 3, 1)

        def forward(self, x):
            self.side(x)  # runs, but its output is thrown away
            return self.net(x)

    model = SideBranch()
    with untouched(model), pytest.raises(ValueError, match="received no gradient"):
        grad_cam(model, torch.randn(1, 3, 8, 8), layer="side")


def test_all_zero_map_stays_finite():
    model = fixed_model()
    x = -torch.ones(2, 2, 4, 4)  # every activation is cut by the ReLU: no evidence anywhere
    with untouched(model):
        maps = grad_cam(model, x, target=[0, 1], layer="conv1")
        guided = guided_grad_cam(model, x, target=[0, 1], layer="conv1")
    assert torch.isfinite(maps).all() and (maps == 0).all()
    assert torch.isfinite(guided).all() and (guided == 0).all()


def test_module_passed_as_layer(shapes_model, held_out):
    x = held_out.images[:2]
    by_module = grad_cam(shapes_model, x, layer=shapes_model.features.relu4)
    torch.testing.assert_close(by_module, grad_cam(shapes_model, x))
    assert (by_module >= 0).all()


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[case_id(c) for c in CASES])
def test_grad_cam_with_graph_is_grad_cam_and_differentiable(case):
    """The differentiable Grad-CAM that attacks use gives grad_cam's maps (also for layers that an
    inplace ReLU overwrites) and its logits, with a graph that reaches the input."""
    from vislib.cam import grad_cam_with_graph
    from vislib.hooks import frozen

    model, _, layer, x, targets = case
    expected = grad_cam(model, x, targets, layer=layer)
    inputs = x.clone().requires_grad_(True)
    with untouched(model), frozen(model):
        maps, logits = grad_cam_with_graph(model, inputs, targets, layer)
        (grad,) = torch.autograd.grad(maps.sum(), inputs)
    assert relative_error(maps.detach(), expected) < TOL
    with torch.no_grad():
        torch.testing.assert_close(logits.detach(), model.eval()(x))
    assert grad.abs().sum() > 0
