"""vislib.metrics against hand-computed cases."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn as nn
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from tests.helpers import tiny_cnn, untouched
from vislib import metrics, saliency
from vislib.plot import normalize_map


def mask_at(*pixels, size=4):
    mask = torch.zeros(size, size, dtype=torch.bool)
    for row, col in pixels:
        mask[row, col] = True
    return mask


# --------------------------------------------------------------------------- pointing game, energy


def test_pointing_game_hits_misses_and_tolerance():
    heat = torch.zeros(4, 4)
    heat[1, 1] = 5.0
    assert metrics.pointing_game(heat, mask_at((1, 1))).tolist() == [1.0]
    far = mask_at((3, 3))  # sqrt(2^2 + 2^2) = 2.83 pixels from the peak
    assert metrics.pointing_game(heat, far).tolist() == [0.0]
    assert metrics.pointing_game(heat, far, tolerance=2).tolist() == [0.0]
    assert metrics.pointing_game(heat, far, tolerance=2.9).tolist() == [1.0]
    assert metrics.pointing_game(heat, mask_at((1, 3)), tolerance=2).tolist() == [1.0]  # exactly 2 away


def test_pointing_game_splits_ties_and_scores_a_batch():
    two_peaks = torch.zeros(4, 4)
    two_peaks[0, 0] = two_peaks[3, 3] = 1.0
    flat = torch.zeros(4, 4)
    maps = torch.stack([two_peaks, flat])
    masks = torch.stack([mask_at((0, 0)), mask_at((0, 0), (0, 1), (0, 2), (0, 3))])
    # two tied peaks, one on the mask: 1/2; a flat map: every pixel is a peak, 4 of 16 hit
    assert metrics.pointing_game(maps, masks).tolist() == [0.5, 0.25]


def test_energy_in_mask():
    heat = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    inside = torch.tensor([[True, True], [False, False]])
    assert metrics.energy_in_mask(heat, inside).tolist() == [0.25]  # 1 of 1 + 3; the -2 counts as no evidence
    maps = torch.stack([heat, torch.zeros(2, 2), -torch.ones(2, 2)])
    result = metrics.energy_in_mask(maps, inside.expand(3, 2, 2))
    assert result.tolist() == [0.25, 0.0, 0.0]  # no positive evidence: 0, never NaN


def test_iou_and_baseline_maps():
    predicted = torch.stack([mask_at((0, 0), (0, 1)), torch.zeros(4, 4, dtype=torch.bool)])
    truth = torch.stack([mask_at((0, 1), (1, 1), (2, 2)), torch.zeros(4, 4, dtype=torch.bool)])
    assert metrics.iou(predicted, truth).tolist() == [0.25, 0.0]  # 1 shared pixel of 4; two empty masks: 0
    centre = metrics.centre_maps(2, 4, 6)
    assert centre.shape == (2, 4, 6) and torch.equal(centre[0], centre[1])
    assert torch.equal(centre[0], centre[0].flip(0)) and torch.equal(centre[0], centre[0].flip(1))  # symmetric
    assert centre[0, 1:3, 2:4].min() == centre.max() and centre[0, 1, 2] == pytest.approx(math.exp(-1 / 4))
    noise = metrics.random_maps(3, 4, 4, seed=1)
    assert torch.equal(noise, metrics.random_maps(3, 4, 4, seed=1))
    assert not torch.equal(noise, metrics.random_maps(3, 4, 4, seed=2))


def test_map_and_mask_checks():
    with pytest.raises(ValueError, match="same shape"):
        metrics.pointing_game(torch.zeros(2, 4, 4), torch.zeros(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="B,H,W"):
        metrics.energy_in_mask(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        metrics.energy_in_mask(torch.full((4, 4), float("nan")), mask_at((0, 0)))
    with pytest.raises(ValueError, match="bool"):
        metrics.pointing_game(torch.zeros(4, 4), torch.full((4, 4), 2))
    with pytest.raises(ValueError, match="tolerance"):
        metrics.pointing_game(torch.zeros(4, 4), mask_at((0, 0)), tolerance=-1)
    assert metrics.pointing_game(torch.zeros(4, 4), mask_at((0, 0)).int()).tolist() == [1 / 16]  # 0/1 masks work


# --------------------------------------------------------------------------- deletion and insertion


def linear_scorer() -> nn.Module:
    """logit 0 = 4 a + 3 b + 2 c + 1 d for the 2x2 image (a b / c d); logit 1 = 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    return model


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def test_deletion_and_insertion_curves_by_hand():
    model = linear_scorer()
    image = torch.ones(1, 1, 2, 2)
    heat = torch.tensor([[4.0, 3.0], [2.0, 1.0]])  # the true order of importance
    # deletion, one pixel per step: logit 0 goes 10, 6, 3, 1, 0; p(class 0) = sigmoid(logit 0 - logit 1)
    deletion = [sigmoid(z) for z in (10, 6, 3, 1, 0)]
    insertion = [sigmoid(z) for z in (0, 4, 7, 9, 10)]
    curve = metrics.perturbation_curve(model, image, heat, target=0, mode="deletion", steps=4, progress=False)
    assert torch.allclose(curve, torch.tensor([deletion]))
    curve = metrics.perturbation_curve(model, image, heat, target=0, mode="insertion", steps=4, progress=False)
    assert torch.allclose(curve, torch.tensor([insertion]))

    def trapezoid(values):
        return sum((a + b) / 2 for a, b in zip(values, values[1:])) / (len(values) - 1)

    with untouched(model):
        assert metrics.deletion_auc(model, image, heat, target=0, steps=4, progress=False).item() == pytest.approx(
            trapezoid(deletion), abs=1e-6)
        assert metrics.insertion_auc(model, image, heat, target=0, steps=4, progress=False).item() == pytest.approx(
            trapezoid(insertion), abs=1e-6)
    # two pixels per step; the reversed map deletes the least important (d, c) first: logits 10, 7, 0
    reverse = metrics.perturbation_curve(model, image, -heat, target=0, steps=2, progress=False)
    assert torch.allclose(reverse, torch.tensor([[sigmoid(10), sigmoid(7), sigmoid(0)]]))
    # a baseline of 2: deleting a pixel adds its weight
    raised = metrics.perturbation_curve(model, image, heat, target=0, steps=2, baseline=2.0, progress=False)
    assert torch.allclose(raised, torch.tensor([[sigmoid(10), sigmoid(17), sigmoid(20)]]))


def test_ties_are_taken_row_by_row_and_batches_are_independent():
    model = linear_scorer()
    images = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    flat = torch.zeros(2, 2, 2)
    curve = metrics.perturbation_curve(model, images, flat, target=[0, 1], steps=4, batch_size=3, progress=False)
    assert torch.allclose(curve[0], torch.tensor([sigmoid(z) for z in (10, 6, 3, 1, 0)]))
    assert torch.allclose(curve[1], torch.tensor([sigmoid(-z) for z in (20, 12, 6, 2, 0)]))


def test_a_good_map_beats_a_bad_one_on_a_real_model(shapes_model, held_out):
    x, masks = held_out.images[:8], held_out.masks[:8]
    good = masks.float() + 0.01 * torch.rand(masks.shape)
    bad = (~masks).float() + 0.01 * torch.rand(masks.shape)
    with untouched(shapes_model):
        deletion_good = metrics.deletion_auc(shapes_model, x, good, steps=8, progress=False)
        deletion_bad = metrics.deletion_auc(shapes_model, x, bad, steps=8, progress=False)
    assert deletion_good.mean() < deletion_bad.mean()
    assert ((deletion_good >= 0) & (deletion_good <= 1)).all()


def test_curve_input_checks():
    model = linear_scorer()
    image = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match="mode"):
        metrics.perturbation_curve(model, image, torch.zeros(2, 2), mode="erase")
    with pytest.raises(ValueError, match="must be"):
        metrics.perturbation_curve(model, image, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="steps"):
        metrics.deletion_auc(model, image, torch.zeros(2, 2), steps=0)
    with untouched(model), pytest.raises(ValueError, match="target has 2 entries"):
        metrics.insertion_auc(model, image, torch.zeros(2, 2), target=[0, 1])


# --------------------------------------------------------------------------- randomisation test


def test_randomisation_of_a_linear_model_by_hand():
    """The gradient of a linear model is its weight row, so after re-initialising the layer the
    new map is the new weight row: reproduce it and compare with scipy and skimage directly."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).eval()
    x = torch.rand(2, 3, 8, 8)
    with untouched(model):
        result = metrics.randomization_test(model, x, saliency.gradient, target=[0, 1], seed=5, progress=False)
    assert result.layers == ["1"]
    fresh = nn.Linear(3 * 8 * 8, 2)
    torch.manual_seed(5)
    fresh.reset_parameters()
    for i, row in enumerate([0, 1]):
        before = model[1].weight[row].detach().view(3, 8, 8).abs().amax(0).numpy()
        after = fresh.weight[row].detach().view(3, 8, 8).abs().amax(0).numpy()
        assert torch.allclose(result.maps[0, i], torch.from_numpy(before))
        assert torch.allclose(result.maps[1, i], torch.from_numpy(after))
        assert result.spearman[0, i].item() == pytest.approx(spearmanr(before.ravel(), after.ravel()).statistic,
                                                             abs=1e-6)
        expected_ssim = structural_similarity(normalize_map(before), normalize_map(after), data_range=1.0)
        assert result.ssim[0, i].item() == pytest.approx(expected_ssim, abs=1e-6)


def test_rank_correlation_with_ties_matches_scipy():
    """Saliency maps tie a lot (guided backprop is exactly 0 on most pixels): tied pixels share
    their mean rank, as in scipy's spearmanr."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 3, (3, 5, 5), generator=generator).float()
    b = torch.randint(0, 4, (3, 5, 5), generator=generator).float()
    rho = metrics._rank_correlations(metrics._centred_ranks(a), metrics._centred_ranks(b))
    for i in range(3):
        assert rho[i] == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten()).statistic, abs=1e-6)


def test_a_map_that_ignores_the_model_passes_unchanged():
    """An 'explanation' that is just the image (an edge detector would do the same) does not
    change at all when the weights are destroyed: correlation and SSIM stay 1."""
    model = tiny_cnn()
    x = torch.rand(2, 3, 8, 8)

    def image_itself(model, x, target=None):
        return x.clone()

    result = metrics.randomization_test(model, x, image_itself, progress=False)
    assert result.layers == ["fc", "conv2", "conv1"]  # from the top down
    assert torch.allclose(result.spearman, torch.ones(3, 2)) and torch.allclose(result.ssim, torch.ones(3, 2))


def test_cascade_randomises_more_and_more_and_leaves_the_model_alone(shapes_model, held_out):
    x = held_out.images[:3]
    layers = ["fc", "features.conv4", "features.conv3", "features.conv1"]
    with untouched(shapes_model), torch.no_grad():
        result = metrics.randomization_test(shapes_model, x, saliency.gradient, layers=layers, progress=False)
    assert result.layers == layers and result.maps.shape == (5, 3, 64, 64)
    assert torch.allclose(result.maps[0], saliency.to_heatmap(saliency.gradient(shapes_model, x)))
    assert result.spearman.shape == result.ssim.shape == (4, 3)
    assert torch.isfinite(result.spearman).all() and torch.isfinite(result.ssim).all()
    # the gradient depends on the weights: once conv1 too is random, the map has little left in common
    assert result.spearman[-1].mean() < 0.5
    again = metrics.randomization_test(shapes_model, x, saliency.gradient, layers=layers, progress=False)
    assert torch.equal(again.spearman, result.spearman)  # deterministic for a seed
    other = metrics.randomization_test(shapes_model, x, saliency.gradient, layers=layers, seed=1, progress=False)
    assert not torch.equal(other.spearman, result.spearman)


def test_randomisation_with_maps_per_pixel_and_constant_maps():
    model = tiny_cnn()
    x = torch.rand(2, 3, 8, 8)
    occlusion = partial(saliency.occlusion, window=4, stride=2, progress=False)
    result = metrics.randomization_test(model, x, occlusion, layers=["fc"], progress=False)
    assert result.maps.shape == (2, 2, 8, 8)

    def constant(model, x, target=None):
        return torch.zeros(len(x), 8, 8)

    flat = metrics.randomization_test(model, x, constant, layers=["fc"], progress=False)
    assert flat.spearman.tolist() == [[0.0, 0.0]]  # no ranking to compare: 0, never NaN
    assert torch.isfinite(flat.ssim).all()
    with pytest.raises(KeyError, match="closest valid names"):
        metrics.randomization_test(model, x, saliency.gradient, layers=["fc2"])
    with pytest.raises(ValueError, match="reset_parameters"):
        metrics.randomization_test(model, x, saliency.gradient, layers=["relu1"], progress=False)


# --------------------------------------------------------------------------- average drop, increase, ROAD


class SumScore(torch.nn.Module):
    """Two classes with logits [sum of pixels, 0]: class 0's probability is sigmoid(sum)."""

    def forward(self, x):
        total = x.flatten(1).sum(1)
        return torch.stack([total, torch.zeros_like(total)], dim=1)


def test_average_drop_and_increase_in_confidence_by_hand():
    images = torch.tensor([[[[1.0, 2.0], [-3.0, 0.5]]], [[[1.0, 2.0], [-3.0, 0.5]]]])  # sum 0.5
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]],    # keeps pixel 1.0: logit 1
                         [[4.0, 4.0], [0.0, 2.0]]])   # scaled to [1, 1, 0, .5]: logit 1 + 2 + 0.25 = 3.25
    full = torch.sigmoid(torch.tensor(0.5))
    masked = torch.sigmoid(torch.tensor([1.0, 3.25]))
    model = SumScore()
    assert torch.allclose(metrics.average_drop(model, images, maps, target=0), torch.zeros(2))  # both rose
    assert metrics.increase_in_confidence(model, images, maps, target=0).tolist() == [1.0, 1.0]
    drop = metrics.average_drop(model, images, maps, target=1)  # class 1's probability falls
    assert torch.allclose(drop, ((1 - full) - (1 - masked)) / (1 - full), atol=1e-6)
    assert metrics.increase_in_confidence(model, images, maps, target=1).tolist() == [0.0, 0.0]
    flat = metrics.average_drop(model, images, torch.zeros(2, 2, 2), target=0)  # a flat map hides everything
    assert torch.allclose(flat, (full - 0.5) / full * torch.ones(2), atol=1e-6) and torch.isfinite(flat).all()


def test_average_drop_and_increase_match_torchcam(shapes_model, held_out):
    from functools import partial

    from torchcam.methods import GradCAM
    from torchcam.metrics import ClassificationMetric

    from vislib.cam import grad_cam

    x, targets = held_out.images[:16], held_out.labels[:16]
    # torchcam's metric explains the scores it is given, here the softmax probabilities, so its maps
    # are Grad-CAM of the probability: the same maps from vislib come from the model with a softmax on top
    probabilities = nn.Sequential(shapes_model, nn.Softmax(dim=1))
    maps = grad_cam(probabilities, x, targets, layer="0.features.relu4", upsample=False)
    with GradCAM(shapes_model, target_layer="features.relu4", input_shape=(3, 64, 64)) as extractor:
        metric = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        metric.update(x, class_idx=targets.tolist())
        expected = metric.summary()
    assert abs(metrics.average_drop(shapes_model, x, maps, targets).mean().item() - expected["avg_drop"]) < 1e-5
    assert metrics.increase_in_confidence(shapes_model, x, maps, targets).mean().item() == expected["conf_increase"]


def test_impute_linearly_by_hand_and_like_pytorch_grad_cam():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    image = torch.arange(9.0).view(1, 3, 3)
    keep = torch.ones(3, 3, dtype=torch.bool)
    keep[1, 1] = False
    centre = (1 + 3 + 5 + 7) / 6 + (0 + 2 + 6 + 8) / 12  # its 8 neighbours, 1/6 beside and 1/12 diagonal
    assert torch.allclose(metrics.impute_linearly(image, keep)[0, 1, 1], torch.tensor(centre))
    generator = torch.Generator().manual_seed(3)
    picture = torch.rand(3, 9, 7, generator=generator)
    keep = torch.rand(9, 7, generator=generator) > 0.6  # most pixels missing, corners and borders too
    theirs = NoisyLinearImputer(noise=0.0)(picture, keep.float())
    ours = metrics.impute_linearly(picture, keep)
    assert torch.allclose(ours, theirs, atol=1e-5) and torch.equal(ours[:, keep], picture[:, keep])


def test_road_matches_pytorch_grad_cam(shapes_model, held_out, monkeypatch):
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from vislib.cam import grad_cam

    x, targets = held_out.images[:4], held_out.labels[:4]
    maps = grad_cam(shapes_model, x, targets)
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)  # its imputer's noise, off for the comparison
    expected = ROADCombined(percentiles=[20, 50, 80])(x, maps.numpy(), [ClassifierOutputSoftmaxTarget(int(t))
                                                                         for t in targets], shapes_model)
    monkeypatch.undo()
    with untouched(shapes_model):
        ours = metrics.road(shapes_model, x, maps, targets, percentiles=(20, 50, 80), noise=0.0)
    assert torch.allclose(ours, torch.as_tensor(expected), atol=1e-5)


def test_road_by_hand_and_its_arguments():
    """One pixel carries the class: a map that points at it scores higher than one that points away."""
    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, 1, 2] = 3.0
    good = torch.zeros(1, 4, 4)
    good[0, 1, 2] = 1.0
    bad = 1.0 - good
    model = SumScore()
    assert metrics.road(model, image, good, target=0, noise=0.0) > metrics.road(model, image, bad, target=0, noise=0.0)
    same_seed = metrics.road(model, image, good + torch.rand(1, 4, 4) * 0.1, target=0, seed=5)
    assert torch.isfinite(same_seed).all()
    with pytest.raises(ValueError, match="percentiles"):
        metrics.road(model, image, good, target=0, percentiles=(0, 50))
    with pytest.raises(ValueError, match="maps"):
        metrics.road(model, image, torch.zeros(1, 3, 3), target=0)


def test_scoreboard_scores_every_method_and_the_baselines(shapes_model, held_out):
    from vislib import cam

    x, masks, targets = held_out.images[:4], held_out.masks[:4], held_out.labels[:4]
    with untouched(shapes_model):
        board = metrics.scoreboard(shapes_model, x, masks, {"Grad-CAM": cam.grad_cam, "Eigen-CAM": cam.eigen_cam},
                                   target=targets, steps=4, progress=False)
    assert list(board) == ["Grad-CAM", "Eigen-CAM", "centre baseline", "random baseline"]
    for row in board.values():
        assert list(row) == list(metrics.SCOREBOARD_COLUMNS) and all(math.isfinite(v) for v in row.values())
    maps = cam.grad_cam(shapes_model, x, targets)
    assert board["Grad-CAM"]["pointing"] == metrics.pointing_game(maps, masks).mean().item()
    assert board["Grad-CAM"]["insertion"] == metrics.insertion_auc(shapes_model, x, maps, targets, steps=4,
                                                                   progress=False).mean().item()
    # Eigen-CAM never reads the classifier and the baselines never read the model: randomising fc changes nothing
    assert board["Eigen-CAM"]["sanity"] > 0.999 and board["random baseline"]["sanity"] > 0.999
    assert board["Grad-CAM"]["sanity"] < 0.9
