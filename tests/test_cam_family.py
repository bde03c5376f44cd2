"""The wider CAM family against the peers: each vislib method is compared with pytorch-grad-cam and,
where torchcam has it, with torchcam, on ShapesNet, a random ResNet-18 and a random VGG-11, in
batches whose images each have their own target. Maps are compared as the peers return them:
ReLU, then min-max normalised (pytorch-grad-cam: at the layer's resolution, then resized;
torchcam: at the layer's resolution). Where a peer differs by design, the test says how and
checks exactly that difference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import untouched
from tests.test_cam import min_max, relative_error
from vislib import cam
from vislib.hooks import get_layer

TOL = 1e-4
# Ablation-CAM's weights are (y - y_k) / y: differences of nearly equal logits, and on the random
# torchvision models the logits are about 0.01-0.1, so float32 rounding alone moves the normalised
# maps by about 1e-4 (VGG-11 at features.1: 0.9e-4 at 48 px, 1.3e-4 at 32 px, 2.5e-4 at 56 px; run
# in float64 both sides agree to 2e-6). A wrong weighting moves them by far more than 1e-3.
ABLATION_TOL = 1e-3

# (model fixture, layer, targets). VGG-11's features.19 is a ReLU: Ablation-CAM then zeroes
# channels in pytorch-grad-cam too (it uses min - 1e7 where a layer's output holds no zero).
CASES = [
    ("shapes_model", "features.relu4", [0, 3, 5, 7]),
    ("resnet18", "layer4", [1, 250, 999]),
    ("vgg11", "features.19", [3, 281, 42]),
]
# Score-CAM and Ablation-CAM make one forward pass per channel of the layer: on the torchvision
# models they are compared at an early layer of 64 channels (8x fewer passes than at the last one,
# which took minutes; the mechanism under test is the same at any layer).
# Two images, each with its own target, are enough to show a batch handled image by image.
MASKING_CASES = [CASES[0], ("resnet18", "layer1", [1, 250]), ("vgg11", "features.1", [3, 281])]
GRAD_CAM_PEERS = {"grad_cam_pp": "GradCAMPlusPlus", "xgrad_cam": "XGradCAM", "layer_cam": "LayerCAM",
                  "hires_cam": "HiResCAM", "eigen_cam": "EigenCAM", "ablation_cam": "AblationCAM",
                  "score_cam": "ScoreCAM"}


def run(method, model, x, targets, layer, **options):
    if method in ("score_cam", "ablation_cam"):
        options["progress"] = False
    with untouched(model):
        coarse = getattr(cam, method)(model, x, targets, layer=layer, upsample=False, **options)
        fine = getattr(cam, method)(model, x, targets, layer=layer, **options)
    return coarse, fine


def pytorch_grad_cam(method, reference, layer, x, targets):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    extractor = getattr(pytorch_grad_cam, GRAD_CAM_PEERS[method])(model=reference,
                                                                  target_layers=[get_layer(reference, layer)])
    if method in ("score_cam", "ablation_cam"):
        extractor.batch_size = 64
    try:
        return torch.as_tensor(extractor(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets]))
    finally:
        extractor.activations_and_grads.release()


IDS = [f"{c[0]}-{c[1]}" for c in CASES]
MASKING_IDS = [f"{c[0]}-{c[1]}" for c in MASKING_CASES]


PEER_CASES = [(method, case) for method in ("grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam") for case in CASES]
PEER_CASES += [("ablation_cam", case) for case in MASKING_CASES]


@pytest.mark.parametrize(("method", "case"), PEER_CASES, indirect=["case"],
                         ids=[f"{c[0]}-{c[1]}-{m}" for m, c in PEER_CASES])
def test_matches_pytorch_grad_cam(method, case):
    model, reference, layer, x, targets = case
    coarse, fine = run(method, model, x, targets, layer)
    expected = pytorch_grad_cam(method, reference, layer, x, targets)
    # pytorch-grad-cam: ReLU, min-max at the layer's resolution, resize, min-max again; that
    # normalisation is affine per image, so it commutes with vislib's bilinear upsampling.
    tolerance = ABLATION_TOL if method == "ablation_cam" else TOL
    assert relative_error(min_max(min_max(fine, reference=coarse)), expected) < tolerance


@pytest.mark.parametrize("case", CASES, indirect=True, ids=IDS)
def test_eigen_cam_matches_pytorch_grad_cam_up_to_the_sign_of_the_principal_direction(case):
    """An SVD's direction is defined up to sign; pytorch-grad-cam keeps NumPy's, vislib picks the
    one whose map correlates with the summed activations. Before the ReLU the two maps are equal
    or opposite, image by image."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    model, reference, layer, x, targets = case
    signed, _ = run("eigen_cam", model, x, targets, layer, relu=False)
    with torch.no_grad():
        activations = {}
        handle = get_layer(reference, layer).register_forward_hook(lambda m, i, o: activations.setdefault("a", o))
        reference(x)
        handle.remove()
    theirs = torch.as_tensor(get_2d_projection(activations["a"].numpy()))
    for ours, their in zip(signed, theirs):
        sign = 1.0 if (ours * their).sum() >= 0 else -1.0
        assert relative_error(ours, sign * their) < 1e-3
    summed = activations["a"].sum(1)
    centred = summed - summed.mean(dim=(1, 2), keepdim=True)
    assert ((signed - signed.mean(dim=(1, 2), keepdim=True)) * centred).sum(dim=(1, 2)).ge(0).all()


@pytest.mark.parametrize("case", MASKING_CASES, indirect=True, ids=MASKING_IDS)
def test_score_cam_matches_torchcam_and_differs_from_pytorch_grad_cam_only_by_its_masks(case):
    """torchcam scales each channel to [0, 1] at the layer's resolution and then upsamples, as vislib
    does. pytorch-grad-cam upsamples first, with align_corners=True (nn.UpsamplingBilinear2d), and
    then scales: slightly different masks, and the softmax over the channels' scores magnifies the
    difference. Built with its masks, the same weighting gives its maps."""
    from torchcam.methods import ScoreCAM

    model, reference, layer, x, targets = case
    with untouched(model):
        coarse = cam.score_cam(model, x, targets, layer=layer, upsample=False, progress=False)
    with ScoreCAM(reference, target_layer=layer, batch_size=64, input_shape=tuple(x.shape[1:])) as extractor:
        with torch.no_grad():
            reference(x)
        (expected,) = extractor(class_idx=targets.tolist())
    assert relative_error(min_max(coarse, reference=coarse).clamp(min=0), expected) < TOL

    with torch.no_grad():
        activations = {}
        handle = get_layer(reference, layer).register_forward_hook(lambda m, i, o: activations.setdefault("a", o))
        reference(x)
        handle.remove()
        a = activations["a"]
        upsampled = torch.nn.UpsamplingBilinear2d(size=x.shape[-2:])(a)
        low, high = upsampled.amin(dim=(2, 3), keepdim=True), upsampled.amax(dim=(2, 3), keepdim=True)
        masks = (upsampled - low) / (high - low + 1e-8)
        scores = torch.stack([reference(x[i] * masks[i][:, None])[:, targets[i]] for i in range(len(x))])
        their_way = torch.einsum("bk,bkhw->bhw", scores.softmax(dim=1), a).clamp(min=0)
    theirs = pytorch_grad_cam("score_cam", reference, layer, x, targets)
    upsampled_theirs = F.interpolate(their_way[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    assert relative_error(min_max(min_max(upsampled_theirs, reference=their_way)), theirs) < TOL


@pytest.mark.parametrize("method,peer", [("xgrad_cam", "XGradCAM"), ("layer_cam", "LayerCAM"),
                                         ("grad_cam", "GradCAM")])
@pytest.mark.parametrize("case", CASES, indirect=True, ids=IDS)
def test_matches_torchcam(method, peer, case):
    import torchcam.methods

    model, reference, layer, x, targets = case
    coarse, _ = run(method, model, x, targets, layer)
    with getattr(torchcam.methods, peer)(reference, target_layer=layer, input_shape=tuple(x.shape[1:])) as extractor:
        scores = reference(x)
        (expected,) = extractor(class_idx=targets.tolist(), scores=scores)
    low = coarse.amin(dim=(1, 2), keepdim=True)
    assert relative_error((coarse - low) / ((coarse - low).amax(dim=(1, 2), keepdim=True) + 1e-8), expected) < TOL


@pytest.mark.parametrize("case", CASES[:2], indirect=True, ids=IDS[:2])
def test_grad_cam_pp_differs_from_torchcam_by_its_alpha(case):
    """torchcam 0.5's Grad-CAM++ divides alpha in place on a copy (``alpha[i][mask].div_``), so its
    alpha stays g^2 and its weights are sum_ij g_ij^2 ReLU(g_ij). vislib follows the paper (eq. 19)
    and pytorch-grad-cam; this test pins down torchcam's formula, so the difference is explained."""
    from torchcam.methods import GradCAMpp

    model, reference, layer, x, targets = case
    with GradCAMpp(reference, target_layer=layer, input_shape=tuple(x.shape[1:])) as extractor:
        scores = reference(x)
        (expected,) = extractor(class_idx=targets.tolist(), scores=scores)
        activations, gradients = extractor.hook_a[0], extractor.hook_g[0]
    weights = (gradients.square() * gradients.clamp(min=0)).sum(dim=(2, 3))
    theirs = torch.einsum("bk,bkhw->bhw", weights, activations).clamp(min=0)
    low = theirs.amin(dim=(1, 2), keepdim=True)
    assert relative_error((theirs - low) / ((theirs - low).amax(dim=(1, 2), keepdim=True) + 1e-8), expected) < TOL
    ours, _ = run("grad_cam_pp", model, x, targets, layer)
    assert relative_error(min_max(ours), min_max(theirs)) > 1e-3  # a real difference, not a rounding one


# --------------------------------------------------------------------------- by hand


def test_methods_on_a_gap_linear_head_reduce_to_grad_cam(shapes_model, held_out):
    """With global average pooling and one linear layer the gradient is the same at every position,
    w_k / (h w): HiResCAM and XGrad-CAM then equal Grad-CAM, and LayerCAM is Grad-CAM over the
    channels with positive weights."""
    x, targets = held_out.images[:4], torch.tensor([1, 2, 3, 4])
    reference = cam.grad_cam(shapes_model, x, targets, upsample=False, relu=False)
    for method in (cam.hires_cam, cam.xgrad_cam):
        assert relative_error(method(shapes_model, x, targets, upsample=False, relu=False), reference) < 1e-5
    weights = shapes_model.fc.weight.detach()[targets] / 64
    activations = {}
    handle = shapes_model.features.relu4.register_forward_hook(lambda m, i, o: activations.setdefault("a", o.clone()))
    with torch.no_grad():
        shapes_model(x)
    handle.remove()
    positive = torch.einsum("bk,bkhw->bhw", weights.clamp(min=0), activations["a"])
    assert relative_error(cam.layer_cam(shapes_model, x, targets, upsample=False, relu=False), positive) < 1e-5


def one_channel_model():
    """x -> conv 1x1 (2 channels, weights 1 and -1) -> ReLU -> GAP -> fc [[2, 1]]: score = 2 mean(relu(x))
    + mean(relu(-x)) for a one-channel image x."""
    model = torch.nn.Sequential()
    model.add_module("conv", torch.nn.Conv2d(1, 2, 1, bias=False))
    model.add_module("relu", torch.nn.ReLU())
    model.add_module("pool", torch.nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", torch.nn.Flatten())
    model.add_module("fc", torch.nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        model.fc.weight.copy_(torch.tensor([[2.0, 1.0]]))
    return model.eval()


def test_ablation_and_score_cam_by_hand():
    x = torch.tensor([[[[1.0, -1.0], [3.0, 0.0]]]])  # A_0 = relu(x) = [[1,0],[3,0]], A_1 = relu(-x) = [[0,1],[0,0]]
    model = one_channel_model()
    score = 2 * 1.0 + 0.25  # 2 * mean(A_0) + mean(A_1)
    # Ablation: removing A_0 leaves 0.25, removing A_1 leaves 2: weights (score - rest) / score
    expected = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]]) * (2.0 / score) + torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]) * (
        0.25 / score)
    ablation = cam.ablation_cam(model, x, 0, layer="relu", upsample=False, progress=False)
    assert torch.allclose(ablation, expected, atol=1e-6)
    # Score-CAM: mask 0 = A_0 / 3 keeps x * [[1/3,0],[1,0]] -> score 2 * (1/3 + 3) / 4 = 5/3; mask 1 = A_1 keeps
    # x * [[0,1],[0,0]] = [[0,-1],[0,0]] -> A = ([[0,0],[0,0]], [[0,1],[0,0]]) -> score 1/4
    weights = torch.tensor([5 / 3, 0.25]).softmax(0)
    expected = weights[0] * torch.tensor([[1.0, 0.0], [3.0, 0.0]]) + weights[1] * torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    score_map = cam.score_cam(model, x, 0, layer="relu", upsample=False, progress=False)
    assert torch.allclose(score_map[0], expected, atol=1e-6)


@pytest.mark.parametrize("method", ["grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam", "eigen_cam", "score_cam",
                                    "ablation_cam"])
def test_batch_with_own_targets_equals_one_by_one_and_leaves_nothing(method, shapes_model, held_out):
    x, targets = held_out.images[:3], torch.tensor([5, 0, 2])
    options = {"progress": False, "batch_size": 7} if method in ("score_cam", "ablation_cam") else {}
    with untouched(shapes_model):
        batch = getattr(cam, method)(shapes_model, x, targets, **options)
        alone = torch.cat([getattr(cam, method)(shapes_model, x[i:i + 1], int(targets[i]), **options)
                           for i in range(3)])
    assert batch.shape == (3, 64, 64) and torch.isfinite(batch).all() and (batch >= 0).all()
    assert relative_error(batch, alone) < 1e-4


def test_perturbation_methods_show_a_progress_bar_and_take_a_batch_size(shapes_model, held_out, capsys):
    x = held_out.images[:2]
    small = cam.score_cam(shapes_model, x, 0, batch_size=5, progress=True)
    assert "score_cam" in capsys.readouterr().err
    assert relative_error(small, cam.score_cam(shapes_model, x, 0, progress=False)) < 1e-5
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        cam.ablation_cam(shapes_model, x, 0, batch_size=0)


def test_upsampling_is_bilinear_from_the_layer(shapes_model, held_out):
    x = held_out.images[:2]
    coarse = cam.layer_cam(shapes_model, x, [1, 2], upsample=False)
    fine = cam.layer_cam(shapes_model, x, [1, 2])
    assert torch.allclose(fine, F.interpolate(coarse[:, None], size=(64, 64), mode="bilinear",
                                              align_corners=False)[:, 0], atol=1e-6)
