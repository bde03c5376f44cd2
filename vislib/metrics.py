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
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    near = masks
    radius = int(tolerance)
    if radius > 0:
        offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float32)
        disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= tolerance**2).float()
        near = F.conv2d(masks[:, None].float(), disk[None, None], padding=radius)[:, 0] > 0.5
    peaks = maps == maps.flatten(1).amax(1)[:, None, None]
    return (peaks & near).flatten(1).sum(1) / peaks.flatten(1).sum(1)


def energy_in_mask(maps, masks) -> torch.Tensor:
    """Share [B] of each map's positive values that lies inside the mask (Wang et al. 2020's
    energy-based pointing game). Negative values count as no evidence; a map without positive
    values scores 0 (never NaN)."""
    maps, masks = _maps_and_masks(maps, masks)
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
