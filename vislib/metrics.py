"""Scoring explanations: against ground-truth masks, against the model, and against chance.

- localisation, with a mask of the object: ``pointing_game`` (does the map's peak land on the
  object?) and ``energy_in_mask`` (what share of the positive evidence lies on it?);
- faithfulness, with the model: ``deletion_auc`` / ``insertion_auc`` (Petsiuk et al. 2018):
  remove or reveal pixels in the map's order and watch the class probability;
- the sanity check (Adebayo et al. 2018), ``randomization_test``: if a map barely changes when the
  model's weights are destroyed, it does not explain the model.

Maps are [B,H,W] (or one [H,W]); masks are bool of the same shape.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import rankdata
from skimage.metrics import structural_similarity
from tqdm.auto import tqdm

from vislib.conventions import (
    as_baseline,
    as_batch,
    check_positive_int,
    copies_per_pass,
    logits_of,
    model_input,
    predicted_or_given,
    selected_scores,
)
from vislib.hooks import layer_name, uses_model
from vislib.plot import normalize_map, to_numpy
from vislib.saliency import logits_of_copies, to_heatmap


def _as_maps(maps) -> torch.Tensor:
    """``maps`` as a finite float tensor [B,H,W]."""
    if not isinstance(maps, torch.Tensor):
        maps = torch.as_tensor(np.asarray(maps))
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"expected maps [B,H,W] (or one [H,W]), got shape {tuple(maps.shape)}")
    maps = maps.detach().float()
    if not torch.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")
    return maps


def _maps_and_masks(maps, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked ``maps`` [B,H,W] (float) and ``masks`` [B,H,W] (bool) of the same shape."""
    maps = _as_maps(maps)
    if not isinstance(masks, torch.Tensor):
        masks = torch.as_tensor(np.asarray(masks))
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape != maps.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have the same shape "
                         "(upsample the maps to the image size first)")
    if masks.dtype != torch.bool:
        if not ((masks == 0) | (masks == 1)).all():
            raise ValueError("masks must be bool (or hold only 0 and 1)")
        masks = masks.bool()
    return maps, masks.to(maps.device)


def pointing_game(maps, masks, tolerance: float = 0) -> torch.Tensor:
    """Hits [B] of the pointing game (Zhang et al. 2016): 1.0 when the map's maximum lies on the
    mask or within ``tolerance`` pixels (Euclidean) of it, else 0.0. When several pixels share
    the maximum (a flat map, say), the score is the share of them that hit, which is what a
    random choice among them would score on average."""
    maps, masks = _maps_and_masks(maps, masks)
    near = _near(masks, tolerance)
    peaks = maps == maps.flatten(1).amax(1)[:, None, None]
    return (peaks & near).flatten(1).sum(1) / peaks.flatten(1).sum(1)


def _near(masks: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The pixels [B,H,W] on each mask or within ``tolerance`` pixels (Euclidean) of it."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    radius = int(tolerance)
    if radius == 0:
        return masks
    offsets = torch.arange(-radius, radius + 1, device=masks.device, dtype=torch.float32)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= tolerance**2).float()
    return F.conv2d(masks[:, None].float(), disk[None, None], padding=radius)[:, 0] > 0.5


def energy_in_mask(maps, masks, tolerance: float = 0) -> torch.Tensor:
    """Share [B] of each map's positive values that lies inside the mask, or within ``tolerance``
    pixels of it (Wang et al. 2020's energy-based pointing game; a tolerance credits maps that
    trace the object's outline, whose edge pixels fall half outside it). Negative values count
    as no evidence; a map without positive values scores 0 (never NaN)."""
    maps, masks = _maps_and_masks(maps, masks)
    masks = _near(masks, tolerance)
    positive = maps.clamp(min=0)
    total = positive.flatten(1).sum(1)
    inside = (positive * masks).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def iou(predicted, masks) -> torch.Tensor:
    """Intersection over union [B] of bool masks [B,H,W] (e.g. a thresholded map) with the
    ground truth; two empty masks score 0."""
    predicted, masks = _maps_and_masks(predicted, masks)
    predicted = predicted > 0
    union = (predicted | masks).flatten(1).sum(1)
    return (predicted & masks).flatten(1).sum(1) / union.clamp(min=1)


def centre_maps(n: int, height: int, width: int, sigma: float | None = None) -> torch.Tensor:
    """The "look at the middle" baseline [n,H,W]: a Gaussian bump at the image centre (std
    ``sigma``, default a quarter of the smaller side). A method that cannot beat it has learned
    no more than that objects tend to be central."""
    sigma = min(height, width) / 4 if sigma is None else sigma
    rows = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    bump = torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma**2))
    return bump.expand(n, height, width).clone()


def random_maps(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """The chance baseline [n,H,W]: uniform noise, drawn from ``seed``."""
    return torch.rand(n, height, width, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- faithfulness


@uses_model
def perturbation_curve(model: nn.Module, images, maps, target=None, mode: str = "deletion", steps: int = 32,
                       baseline=0.0, batch_size: int | None = None, progress: bool = True) -> torch.Tensor:
    """The class probability [B, steps+1] as pixels are changed in the map's order, most
    salient first, ``1/steps`` of the image per step (all channels of a pixel together):

    - ``"deletion"``: start from the image and replace pixels by ``baseline``;
    - ``"insertion"``: start from ``baseline`` and put the image's pixels back.

    The score is the softmax probability of ``target`` (default: the prediction on the image).
    Ties in the map are broken by pixel position (row by row)."""
    images = as_batch(images, "images")
    maps = _as_maps(maps).to(images.device)
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps {tuple(maps.shape)} must be [B,H,W] for images {tuple(images.shape)}")
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    steps = check_positive_int(steps, "steps")
    classes = predicted_or_given(model, images, target)
    batch, pixels = images.shape[0], images.shape[-2] * images.shape[-1]
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=images.device).expand(batch, -1))
    rank = rank.view(batch, *images.shape[-2:])
    changed = torch.round(torch.arange(steps + 1, device=images.device) * pixels / steps).long()
    base = as_baseline(baseline, images).expand_as(images)
    start, end = (images, base) if mode == "deletion" else (base, images)

    def perturb(copies, index):
        owner, step = index // (steps + 1), index % (steps + 1)
        switched = rank[owner] < changed[step][:, None, None]
        torch.where(switched[:, None], end[owner], start[owner], out=copies)

    logits = logits_of_copies(model, perturb, images, batch * (steps + 1), copies_per_pass(images, batch_size),
                              progress, mode)
    owners = torch.arange(batch, device=images.device).repeat_interleave(steps + 1)
    return selected_scores(logits.softmax(dim=1), classes[owners]).view(batch, steps + 1)


def _area(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under curves [B, steps+1] sampled evenly on [0, 1]."""
    return ((curve[:, 1:] + curve[:, :-1]) / 2).mean(dim=1)


def deletion_auc(model: nn.Module, images, maps, target=None, steps: int = 32, baseline=0.0,
                 batch_size: int | None = None, progress: bool = True) -> torch.Tensor:
    """Area [B] under the deletion curve (``perturbation_curve``): lower is better, the map
    found the pixels whose removal destroys the class evidence fastest."""
    return _area(perturbation_curve(model, images, maps, target, "deletion", steps, baseline, batch_size, progress))


def insertion_auc(model: nn.Module, images, maps, target=None, steps: int = 32, baseline=0.0,
                  batch_size: int | None = None, progress: bool = True) -> torch.Tensor:
    """Area [B] under the insertion curve (``perturbation_curve``): higher is better, the map
    found the pixels that restore the class evidence fastest."""
    return _area(perturbation_curve(model, images, maps, target, "insertion", steps, baseline, batch_size, progress))


def _confidences(model: nn.Module, images, maps, target):
    """Each image's class probability [B] on the image and on the image times its map. As in
    torchcam, the map is rectified and scaled to [0, 1] at its own resolution (ReLU, minus its
    minimum, over its maximum), then bilinearly upsampled to the image's size if it is smaller
    (a CAM at its layer's resolution, say)."""
    images = as_batch(images, "images")
    maps = _as_maps(maps).to(images.device)
    if len(maps) != len(images):
        raise ValueError(f"{len(maps)} maps for {len(images)} images")
    classes = predicted_or_given(model, images, target)
    maps = maps.clamp(min=0)
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    maps = maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-8)
    if maps.shape[-2:] != images.shape[-2:]:
        maps = F.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    with torch.no_grad():
        both = torch.cat([images, images * maps[:, None].to(images.dtype)])
        probabilities = logits_of(model, model_input(both)).softmax(dim=1)
    scores = selected_scores(probabilities, torch.cat([classes, classes]))
    return scores[: len(images)], scores[len(images):]


@uses_model
def average_drop(model: nn.Module, images, maps, target=None) -> torch.Tensor:
    """The drop in confidence [B] when the model sees only what the map shows (Chattopadhyay et al.
    2018): max(0, Y - O) / Y, with Y the class probability on the image and O on the image times
    its map (scaled to [0, 1]; maps [B,h,w] at a layer's resolution are upsampled). Lower is
    better: the map kept what the decision needs. The paper's "Average Drop %" is 100 times the mean."""
    full, masked = _confidences(model, images, maps, target)
    return (full - masked).clamp(min=0) / (full + 1e-7)


@uses_model
def increase_in_confidence(model: nn.Module, images, maps, target=None) -> torch.Tensor:
    """1.0 for each image [B] whose class probability rises when the model sees only what the map
    shows, else 0.0 (Chattopadhyay et al. 2018): the map removed distractors. The paper's
    "% Increase in Confidence" is 100 times the mean. Higher is better."""
    full, masked = _confidences(model, images, maps, target)
    return (masked > full).to(full.dtype)


ROAD_NEIGHBOURS = (((-1, 0), 1 / 6), ((1, 0), 1 / 6), ((0, -1), 1 / 6), ((0, 1), 1 / 6),
                   ((-1, -1), 1 / 12), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((1, 1), 1 / 12))


def impute_linearly(image: torch.Tensor, keep: torch.Tensor, noise: float = 0.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``image`` [C,H,W] with the pixels where ``keep`` [H,W] is False filled in (ROAD's noisy linear
    imputation, Rong et al. 2022): each filled pixel is the weighted mean of its 8 neighbours
    (1/6 beside, 1/12 diagonal; neighbours outside the image drop out), solved for all filled pixels
    at once as one sparse linear system, plus Gaussian noise of std ``noise``. Filling with a
    neighbourhood average rather than a constant leaks no information through the mask's shape."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    channels, height, width = image.shape
    keep = keep.cpu().numpy().astype(bool)
    missing = np.flatnonzero(~keep.ravel())
    if len(missing) == 0:
        return image.clone()
    values = image.detach().cpu().double().numpy().reshape(channels, -1)
    number = np.full(height * width, -1)
    number[missing] = np.arange(len(missing))
    rows, cols = np.divmod(missing, width)
    diagonal = np.zeros(len(missing))
    right_side = np.zeros((len(missing), channels))
    entries = ([], [], [])
    for (dy, dx), weight in ROAD_NEIGHBOURS:
        y, x = rows + dy, cols + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        diagonal[inside] += weight
        neighbour = y[inside] * width + x[inside]
        known = keep.ravel()[neighbour]
        right_side[np.flatnonzero(inside)[known]] += weight * values[:, neighbour[known]].T
        entries[0].extend(np.flatnonzero(inside)[~known])
        entries[1].extend(number[neighbour[~known]])
        entries[2].extend([-weight] * int((~known).sum()))
    size = len(missing)
    where = (np.concatenate([np.arange(size), entries[0]]), np.concatenate([np.arange(size), entries[1]]))
    system = coo_matrix((np.concatenate([diagonal, entries[2]]), where), shape=(size, size)).tocsc()
    solution = np.asarray(spsolve(system, right_side)).reshape(size, channels)
    filled = torch.from_numpy(values.copy())
    filled[:, missing] = torch.from_numpy(solution.T)
    if noise:
        filled[:, missing] += noise * torch.randn((channels, size), generator=generator, dtype=torch.float64)
    return filled.reshape(channels, height, width).to(image.dtype).to(image.device)


@uses_model
def road(model: nn.Module, images, maps, target=None, percentiles=(10, 20, 30, 40, 50, 60, 70, 80, 90),
         noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """ROAD (Rong et al. 2022), as pytorch-grad-cam combines it: for each percentile p, remove the
    map's (100 - p) % most relevant pixels (MoRF: those at or above its p-th percentile) or its
    (100 - p) % least relevant ones (LeRF), fill them in with ``impute_linearly`` (noise drawn from
    ``seed``), and record the change of the class probability. Returns [B]:
    (mean LeRF change - mean MoRF change) / 2. Higher is better: removing what the map calls
    important hurts more than removing what it calls unimportant."""
    images = as_batch(images, "images")
    maps = _as_maps(maps).to(images.device)
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps {tuple(maps.shape)} must be [B,H,W] for images {tuple(images.shape)}")
    if not percentiles or not all(0 < p < 100 for p in percentiles):
        raise ValueError(f"percentiles must be numbers in (0, 100), got {percentiles!r}")
    classes = predicted_or_given(model, images, target)
    generator = torch.Generator().manual_seed(seed)
    filled = []
    for image, heat in zip(images, maps.cpu().numpy()):
        for p in percentiles:
            filled.append(impute_linearly(image, torch.from_numpy(heat < np.percentile(heat, p)), noise, generator))
            filled.append(impute_linearly(image, torch.from_numpy(-heat < np.percentile(-heat, p)), noise, generator))
    with torch.no_grad():
        probabilities = logits_of(model, model_input(torch.cat([images, torch.stack(filled)]))).softmax(dim=1)
    original = selected_scores(probabilities[: len(images)], classes)
    owners = torch.arange(len(images), device=images.device).repeat_interleave(2 * len(percentiles))
    changes = (selected_scores(probabilities[len(images):], classes[owners]) - original[owners])
    changes = changes.view(len(images), len(percentiles), 2)  # [..., 0]: MoRF, [..., 1]: LeRF
    return (changes[..., 1].mean(1) - changes[..., 0].mean(1)) / 2


# --------------------------------------------------------------------------- sanity check


@dataclass
class RandomizationResult:
    """What ``randomization_test`` measured. ``layers[i]`` is the layer randomised at step i
    (all layers above it are random too); ``spearman[i]`` and ``ssim[i]`` [B] compare the map
    after step i with the original map; ``maps[0]`` is the original, ``maps[i+1]`` after step i."""

    layers: list
    spearman: torch.Tensor
    ssim: torch.Tensor
    maps: torch.Tensor


def parametrised_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters (conv, batch norm, linear, ...) in definition order."""
    return [name for name, m in model.named_modules() if name and next(m.parameters(recurse=False), None) is not None]


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Draw ``module``'s parameters afresh with its own initialiser, on the CPU from ``seed``
    (identical on every device)."""
    if not hasattr(module, "reset_parameters"):
        raise ValueError(f"{type(module).__name__} has no reset_parameters(); pick layers that do")
    fresh = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh.reset_parameters()
    module.load_state_dict(fresh.state_dict())


def _map_of(method, model, x, classes, reduce) -> torch.Tensor:
    result = method(model, x, target=classes)
    return to_heatmap(result, reduce) if result.ndim == 4 else result


def _centred_ranks(maps: torch.Tensor) -> np.ndarray:
    """Each map's pixel ranks [B, H*W] (tied pixels share their mean rank), minus their mean."""
    ranks = rankdata(to_numpy(maps).reshape(len(maps), -1), axis=1)
    return ranks - ranks.mean(axis=1, keepdims=True)


def _rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho per map from centred ranks (the Pearson correlation of the ranks); 0 when
    a map is constant, since it ranks nothing."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), 0.0)


@uses_model
def randomization_test(model: nn.Module, x, method, target=None, layers=None, reduce: str = "abs_max", seed: int = 0,
                       progress: bool = True) -> RandomizationResult:
    """Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity checks for saliency
    maps"), on a deep copy of ``model``: re-initialise ``layers`` one at a time from the top
    (default: every module with parameters, last first), keeping the earlier ones random, and
    after each step compare the new map with the original one by Spearman rank correlation and
    SSIM (of the maps scaled to [0,1]).

    ``method(model, x, target=classes)`` returns [B,C,H,W] (turned into [B,H,W] by
    ``to_heatmap(reduce)``) or [B,H,W]; use ``functools.partial`` for its options. The classes
    are fixed from the original model (``target=None``: its prediction), so every map explains
    the same class. A map that stays similar does not depend on what the model learned."""
    x = as_batch(x)
    classes = predicted_or_given(model, x, target)
    names = list(reversed(parametrised_layers(model))) if layers is None else [layer_name(model, n) for n in layers]
    if not names:
        raise ValueError("no layers to randomise: the model has no parameters")
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    maps = [_map_of(method, work, x, classes, reduce).detach()]
    original, original_ranks = [normalize_map(m) for m in maps[0]], _centred_ranks(maps[0])
    spearman, ssim = [], []
    for step, name in enumerate(tqdm(names, desc="randomising layers", disable=not progress, leave=False)):
        _reinitialise(modules[name], seed + step)
        maps.append(_map_of(method, work, x, classes, reduce).detach())
        spearman.append(_rank_correlations(original_ranks, _centred_ranks(maps[-1])))
        ssim.append([structural_similarity(a, normalize_map(b), data_range=1.0) for a, b in zip(original, maps[-1])])
    return RandomizationResult(layers=names, spearman=torch.tensor(np.array(spearman), dtype=torch.float32),
                               ssim=torch.tensor(ssim, dtype=torch.float32), maps=torch.stack(maps))


# --------------------------------------------------------------------------- all scores at once

SCOREBOARD_COLUMNS = {
    "pointing": "pointing game (higher is better)",
    "pointing_3px": "pointing game within 3 px",
    "energy": "energy in the mask",
    "deletion": "deletion AUC (lower is better)",
    "insertion": "insertion AUC",
    "average_drop": "average drop (lower is better)",
    "increase": "increase in confidence",
    "sanity": "rank correlation after randomising the classifier (lower is better)",
}


@uses_model
def scoreboard(model: nn.Module, images, masks, methods: dict, target=None, baselines: bool = True,
               steps: int = 16, sanity_layer=None, progress: bool = True) -> dict:
    """Every score of this module for each explanation method, side by side: {name: {column: mean}}
    with the columns of ``SCOREBOARD_COLUMNS``, means over the images.

    ``methods`` maps a name to ``method(model, x, target=classes)`` returning maps [B,H,W] (a CAM
    method, ``functools.partial`` for options). Localisation is scored against ``masks``,
    faithfulness with ``deletion_auc``/``insertion_auc`` (``steps``) and ``average_drop`` /
    ``increase_in_confidence``, and the sanity check is the Spearman correlation of each map with
    the map after ``sanity_layer`` (default: the last module with parameters, the classifier) is
    re-initialised. ``baselines`` adds the centre and random maps, which know nothing about the
    model: a method must beat them to show that it does."""
    images = as_batch(images, "images")
    classes = predicted_or_given(model, images, target)
    layer = [sanity_layer] if sanity_layer is not None else [parametrised_layers(model)[-1]]
    height, width = images.shape[-2:]
    entries = dict(methods)
    if baselines:
        entries["centre baseline"] = lambda m, x, target: centre_maps(len(x), height, width).to(x.device)
        entries["random baseline"] = lambda m, x, target: random_maps(len(x), height, width).to(x.device)
    board = {}
    for name, method in tqdm(entries.items(), desc="scoreboard", disable=not progress, leave=False):
        maps = method(model, images, target=classes).detach()
        sanity = randomization_test(model, images, method, target=classes, layers=layer, progress=False)
        board[name] = {
            "pointing": pointing_game(maps, masks).mean().item(),
            "pointing_3px": pointing_game(maps, masks, tolerance=3).mean().item(),
            "energy": energy_in_mask(maps, masks).mean().item(),
            "deletion": deletion_auc(model, images, maps, classes, steps=steps, progress=False).mean().item(),
            "insertion": insertion_auc(model, images, maps, classes, steps=steps, progress=False).mean().item(),
            "average_drop": average_drop(model, images, maps, classes).mean().item(),
            "increase": increase_in_confidence(model, images, maps, classes).mean().item(),
            "sanity": sanity.spearman[0].mean().item(),
        }
    return board
