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
