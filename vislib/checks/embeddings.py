"""Checks of the embeddings assignment: ``embed``, ``cosine_knn``, ``precision_at_k``, ``tsne_2d``."""

from __future__ import annotations

import functools
from numbers import Real

import numpy as np
import torch
import torch.nn as nn

from vislib import embedding, hooks
from vislib.checks.cases import CLASSES, cases, small_cnn
from vislib.checks.harness import CheckFailure, ModelChanged, call, exercise, expect, layer_input
from vislib.checks.language import Message, _
from vislib.checks.offlimits import OffLimits

__all__ = ["cosine_knn", "embed", "precision_at_k", "tsne_2d"]

# What the functions of this assignment must not use (see vislib.checks.offlimits).
OFF_LIMITS = OffLimits(modules=("vislib.embedding",), functions=(hooks.capture, hooks.differentiable_output))

# --------------------------------------------------------------------------- embed


class _TwoLayerHead(nn.Module):
    """Not an nn.Sequential: a global max pool written in ``forward`` (no module to hook), then a
    two-layer head whose last nn.Linear is called ``head.2``, not ``fc``."""

    def __init__(self):
        super().__init__()
        self.features = small_cnn(4, inplace=True, batchnorm=False).features  # seeds torch for the head too
        self.head = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, CLASSES))

    def forward(self, x):
        return self.head(self.features(x).amax(dim=(2, 3)))


def _embed_cases() -> list[tuple[Message, nn.Module, torch.Tensor]]:
    """A model with inplace ReLUs (in train mode, without BatchNorm); a BatchNorm model left in train mode;
    the two-layer head in eval mode."""
    inplace, batchnorm = cases()[:2]
    x = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(17))
    return [(_("inplace ReLUs, 3 images of 12x16"), inplace.model, inplace.x),
            (_("BatchNorm, model in train mode, 2 images of 10x10"), batchnorm.model.train(), batchnorm.x),
            (_("not an nn.Sequential, max pool written in forward, last linear layer head.2, 2 images of 9x11"),
             _TwoLayerHead().eval(), x)]


TRAIN_MODE = _("In train mode BatchNorm normalises with the batch's statistics and updates its running ones: "
               "embed in eval mode (model.eval()) and put the model's mode back afterwards "
               "(was = model.training ... model.train(was))")


@exercise("embed", _("The input of the last nn.Linear, in eval mode with the model handed back as it was, on 3 "
                     "models (inplace ReLUs, BatchNorm in train mode, a two-layer head in a custom forward)."))
def embed(fn) -> None:
    for label, model, x in _embed_cases():
        try:
            got = call("embed", fn, model, x, models=[model])
        except ModelChanged as error:
            if model.training and any("buffer changed" in change for change in error.changes):
                raise CheckFailure(_("{failure} {advice}", failure=error.message, advice=TRAIN_MODE)) from None
            raise
        except (AttributeError, TypeError, IndexError) as error:
            if isinstance(model, nn.Sequential):
                raise
            raise CheckFailure(_("your embed fails on a model that is not an nn.Sequential and whose last nn.Linear "
                                 "is called head.2 ({error_type}: {error}): don't rely on a layer's name or on "
                                 "slicing an nn.Sequential; find the last nn.Linear among model.modules() and hook it",
                                 error_type=type(error).__name__, error=str(error))) from None
        expected = embedding.extract(model, x, progress=False)
        first = next(name for name, module in model.named_modules() if isinstance(module, nn.Linear))
        with hooks.frozen(model), torch.no_grad():
            with hooks.capture(model, "features") as rec:
                logits = model(x)
            first_linear = layer_input(model, x, first)
        mistakes = {
            _("return the embedding, the input of the last nn.Linear (a forward pre-hook's args[0]), not the model's "
              "output (the logits)"): logits,
            _("the embedding is the vector the classifier reads, after global pooling ([N, D]); yours is the last "
              "feature map flattened"): rec["features"].flatten(1),
            _("the embedding is the input of the LAST nn.Linear (the classifier), not of the first one"): first_linear,
        }
        expect("embed", got, expected, mistakes, what=_("embedding ({case})", case=label))


# --------------------------------------------------------------------------- cosine_knn


def _feature_sets() -> list[tuple[Message, torch.Tensor, int]]:
    """Rows whose norms differ a lot (0.1 to 10), so cosine and euclidean neighbours differ; and rows
    with a pair that points the same way (cosine exactly 1, the rows' own cosine), where dropping the
    first column of topk(k + 1) can drop the twin instead of the row itself. Every other row points
    away from the pair, so the twins, which tie for every row, come last in its list of neighbours."""
    generator = torch.Generator().manual_seed(13)
    norms = torch.logspace(-1, 1, 12)[torch.randperm(12, generator=generator)]
    first = torch.randn(12, 5, generator=generator) * norms[:, None]
    second = torch.randn(9, 16, generator=generator) * (0.2 + 5 * torch.rand(9, 1, generator=generator))
    twins = _twins(torch.randn(10, 5, generator=generator))[0]
    return [(_("12 rows of 5 features, norms 0.1 to 10, k=3"), first, 3), (_("9 rows of 16 features, k=4"), second, 4),
            (_("10 rows of 5 features, rows 2 and 6 pointing the same way, k=3"), twins, 3)]


def _twins(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` with rows 2 and 6 made to point the same way (along the last axis, with lengths 1 and
    0.25, so that their unit vectors and cosine 1 are exact) and every other row pointing away from
    them; and labels that put rows 2 and 6 in different classes (the first and second half)."""
    rows = rows.clone()
    rows[:, -1] = -3 - rows[:, -1].abs()
    rows[2], rows[6] = 0.0, 0.0
    rows[2, -1], rows[6, -1] = 1.0, 0.25
    return rows, (torch.arange(len(rows)) >= len(rows) // 2).long()


def _similarities(features: torch.Tensor, normalise: bool, diagonal: float) -> torch.Tensor:
    f = nn.functional.normalize(features, dim=1) if normalise else features
    s = f @ f.T
    return s.fill_diagonal_(diagonal)


@exercise("cosine_knn", _("The k nearest other rows by cosine similarity, closest first, on rows of very different "
                          "norms and rows that point the same way."))
def cosine_knn(fn) -> None:
    for label, features, k in _feature_sets():
        got = call("cosine_knn", fn, features, k)
        expected = embedding.nearest(features, torch.arange(len(features)), k=k)[0]
        if isinstance(got, torch.Tensor) and got.shape == expected.shape \
                and (got == torch.arange(len(features))[:, None]).any():
            raise CheckFailure(_("your cosine_knn lists a row among its own neighbours ({case}): leave each row "
                                 "itself out. Its most similar row is always itself (cosine 1): set the diagonal of "
                                 "the similarity matrix to -inf before topk. Dropping the first column of "
                                 "topk(k + 1) is not enough: a row pointing the same way ties with the row itself "
                                 "and may come first", case=label))
        mistakes = {
            _("use the cosine similarity, not the euclidean distance: rows pointing the same way are near whatever "
              "their lengths"): embedding.nearest(features, torch.arange(len(features)), k=k, metric="euclidean")[0],
            _("divide by the norms: the cosine similarity is the dot product of rows scaled to length 1 "
              "(F.normalize(features, dim=1))"): _similarities(features, False, -float("inf")).topk(k).indices,
            _("the nearest rows have the LARGEST cosine similarity: topk(k) of the similarities (largest=True)"):
                _similarities(features, True, float("inf")).topk(k, largest=False).indices,
            _("give the neighbours closest first (topk sorts them so)"): expected.sort(dim=1).values,
        }
        expect("cosine_knn", got, expected, mistakes, what=_("list of neighbours ({case})", case=label))


# --------------------------------------------------------------------------- precision_at_k


def _labelled_sets() -> list[tuple[Message, torch.Tensor, torch.Tensor, int]]:
    """Noisy classes of unequal size (so per-class and per-item averages differ), rows of unequal norms."""
    generator = torch.Generator().manual_seed(21)
    sets = []
    for sizes, dim, k in (((8, 5, 2), 6, 3), ((4, 6), 4, 2)):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
        centres = torch.randn(len(sizes), dim, generator=generator)
        features = (centres[labels] + 0.8 * torch.randn(len(labels), dim, generator=generator)) \
            * (0.2 + 5 * torch.rand(len(labels), 1, generator=generator))
        label = _("{count} items in classes of {sizes}, k={k}", count=len(labels), sizes=", ".join(map(str, sizes)),
                  k=k)
        sets.append((label, features, labels, k))
    features, labels = _twins(torch.randn(8, 4, generator=generator))
    return [*sets, (_("8 items in classes of 4 and 4, items 2 and 6 (of different classes) pointing the same way, "
                      "k=2"), features, labels, 2)]


def _one_number(value, items: int) -> torch.Tensor:
    """The learner's precision (a float, or a tensor or array of one element) as a float64 tensor."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        size = value.numel() if isinstance(value, torch.Tensor) else value.size
        if size == items:
            raise CheckFailure(_("your precision_at_k returns one value per item: return one number, their mean"))
        if size != 1:
            raise CheckFailure(_("your precision_at_k must return one number, got shape {shape}",
                                 shape=list(value.shape)))
        return torch.tensor(float(value.reshape(-1)[0]), dtype=torch.float64)
    if isinstance(value, Real):
        return torch.tensor(float(value), dtype=torch.float64)
    raise CheckFailure(_("your precision_at_k must return one number (a float), got {type}", type=type(value).__name__))


@exercise("precision_at_k", _("The mean over all items of the fraction of their k nearest other items (cosine) that "
                              "share their label, on classes of unequal size."))
def precision_at_k(fn) -> None:
    for label, features, labels, k in _labelled_sets():
        got = call("precision_at_k", fn, features, labels, k)
        got = _one_number(got, len(labels))
        own = embedding.nearest(features, features.clone(), k=k)[0]
        others = embedding.nearest(features, torch.arange(len(labels)), k=k)[0]
        hits = (labels[others] == labels[:, None]).double()
        per_class = torch.stack([hits[labels == c].mean() for c in labels.unique()]).mean()
        mistakes = {
            _("leave each item itself out of its k neighbours: it always shares its own label"):
                (labels[own] == labels[:, None]).double().mean(),
            _("divide by k: precision@k is the fraction of the k neighbours that share the label"):
                hits.sum(1).mean(),
            _("average over all items alike, not first within each class"): per_class,
            _("count how many of the k neighbours share the label, not whether any of them does"):
                hits.amax(1).mean(),
            _("use the cosine similarity, not the euclidean distance"):
                torch.tensor(embedding.precision_at_k(features, labels, k=k, metric="euclidean"), dtype=torch.float64),
            _("leave each item itself out by setting the diagonal of the similarity matrix to -inf: dropping the first "
              "of topk(k + 1) fails for items that point the same way (items 2 and 6 here), as the item itself may "
              "not come first"): (labels[_similarities(features, True, 1.0).topk(k + 1).indices[:, 1:]]
                                  == labels[:, None]).double().mean(),
        }
        expected = torch.tensor(embedding.precision_at_k(features, labels, k=k), dtype=torch.float64)
        expect("precision_at_k", got, expected, mistakes, what=_("precision ({case})", case=label))


# --------------------------------------------------------------------------- tsne_2d

TRUST_MARGIN = 0.02


@functools.cache
def _tsne_data() -> tuple[torch.Tensor, float]:
    """72 points in 12 clusters in 32-D: t-SNE keeps every neighbourhood (trustworthiness 1.0), a
    linear projection to 2-D cannot (PCA: about 0.94). Returns the points and the reference's score."""
    from sklearn.manifold import trustworthiness

    generator = torch.Generator().manual_seed(5)
    centres = torch.randn(12, 32, generator=generator) * 3
    features = centres[torch.arange(72) % 12] + torch.randn(72, 32, generator=generator)
    reference = embedding.project(features, "tsne", dim=2, seed=0)
    return features, float(trustworthiness(features.numpy(), reference.numpy(), n_neighbors=5))


@exercise("tsne_2d", _("A 2-D t-SNE map [N, 2] that is the same for the same seed (whatever the global random "
                       "state) and keeps the neighbourhoods of 72 points in 12 clusters as well as vislib's."))
def tsne_2d(fn) -> None:
    features, reference = _tsne_data()
    from sklearn.manifold import trustworthiness

    maps = []
    for draw in (1, 2):  # the same seed under two global random states (the check's own, restored after)
        np.random.seed(draw)
        torch.manual_seed(draw)
        got = call("tsne_2d", fn, features, 0)
        if not isinstance(got, torch.Tensor):
            raise CheckFailure(_("your tsne_2d must return a torch.Tensor [N, 2], got {type}: convert with "
                                 "torch.as_tensor(coords, dtype=torch.float32)", type=type(got).__name__))
        if got.shape != (len(features), 2):
            raise CheckFailure(_("your tsne_2d returns shape {shape}; expected [{rows}, 2]: two coordinates per row "
                                 "(TSNE(n_components=2))", shape=list(got.shape), rows=len(features)))
        if not torch.isfinite(got).all():
            raise CheckFailure(_("your tsne_2d returns NaN or infinite coordinates"))
        maps.append(got.detach().double())
    if not torch.allclose(maps[0], maps[1]):
        raise CheckFailure(_("your tsne_2d gave two different maps for the same seed: your t-SNE starts from "
                             "random positions drawn from the global random state (init='random' without a seed), "
                             "so pass random_state=seed to TSNE (or keep the default start, init='pca')"))
    score = trustworthiness(features.numpy(), maps[0].numpy(), n_neighbors=5)
    if score < reference - TRUST_MARGIN:
        raise CheckFailure(_("your tsne_2d keeps fewer neighbourhoods than t-SNE does (trustworthiness {score:.3f}, "
                             "t-SNE {reference:.3f}): did you use PCA, a linear projection, instead of "
                             "sklearn.manifold.TSNE? (Too few iterations do this too.)", score=score,
                             reference=reference))
