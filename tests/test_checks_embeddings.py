"""Mutation tests of the embeddings assignment's checks: typical wrong implementations are each
rejected with their own hint; correct implementations written differently are accepted."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from vislib import checks, embedding

from .hint_coverage import names_the_mistake

# --------------------------------------------------------------------------- embed


def last_linear(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def embed_pre_hook(model, x):
    caught = []
    handle = last_linear(model).register_forward_pre_hook(lambda module, args: caught.append(args[0].detach().clone()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    return caught[0]


def embed_forward_hook_inputs(model, x):
    """A forward hook reading its `inputs` instead of a pre-hook; each module's mode saved and
    restored on its own."""
    modes = {m: m.training for m in model.modules()}
    caught = {}

    def hook(module, inputs, output):
        caught["x"] = inputs[0].detach().clone()

    handle = last_linear(model).register_forward_hook(hook)
    try:
        for m in modes:
            m.training = False
        model(x)
    finally:
        handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return caught["x"]


def embed_logits(model, x):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)


def embed_feature_map_flattened(model, x):
    caught = []
    handle = model.features.register_forward_hook(lambda module, args, output: caught.append(output.flatten(1).clone()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    return caught[0]


def embed_first_linear(model, x):
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    caught = []
    handle = first.register_forward_pre_hook(lambda module, args: caught.append(args[0].clone()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    return caught[0]


def embed_train_mode(model, x):
    caught = []
    handle = last_linear(model).register_forward_pre_hook(lambda module, args: caught.append(args[0].clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return caught[0]


def embed_mode_not_restored(model, x):
    caught = []
    handle = last_linear(model).register_forward_pre_hook(lambda module, args: caught.append(args[0].clone()))
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return caught[0]


def embed_hook_left(model, x):
    caught = []
    last_linear(model).register_forward_pre_hook(lambda module, args: caught.append(args[0].clone()))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(x)
    model.train(was_training)
    return caught[-1]


def embed_by_name(model, x):
    caught = []
    handle = model.fc.register_forward_pre_hook(lambda module, args: caught.append(args[0].clone()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    return caught[0]


def embed_calls_vislib(model, x):
    return embedding.extract(model, x, progress=False)


@pytest.mark.parametrize("fn", [embed_pre_hook, embed_forward_hook_inputs])
def test_embed_accepts_correct_implementations(fn, capsys):
    checks.embed(fn)
    assert "embed: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (embed_logits, r"not the model's output \(the logits\)"),
    (embed_feature_map_flattened, "yours is the last feature map flattened"),
    (embed_first_linear, "input of the LAST nn.Linear"),
    (embed_train_mode, r"buffer changed.*embed in eval mode"),
    (embed_mode_not_restored, r"train/eval mode of a module changed.*Leave the model's train/eval mode"),
    (embed_hook_left, r"hooks are registered.*handle\.remove\(\)"),
    (embed_by_name, r"don't rely on a layer's name.*last nn\.Linear among model\.modules\(\)"),
    (embed_calls_vislib, "calls vislib's own implementation"),
])
def test_embed_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.embed(fn)


# --------------------------------------------------------------------------- cosine_knn


def knn_vectorised(features, k):
    unit = F.normalize(features, dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity.topk(k, dim=1).indices


def knn_loops(features, k):
    """Row by row with F.cosine_similarity, sorted in Python."""
    rows = []
    for i in range(len(features)):
        scores = F.cosine_similarity(features[i:i + 1], features, dim=1).tolist()
        others = sorted((j for j in range(len(features)) if j != i), key=lambda j: -scores[j])
        rows.append(others[:k])
    return torch.tensor(rows)


def knn_with_itself(features, k):
    unit = F.normalize(features, dim=1)
    return (unit @ unit.T).topk(k, dim=1).indices


def knn_topk_plus_one(features, k):
    """Drops the first of k + 1 neighbours, assuming it is the row itself: wrong for rows that point the same way."""
    unit = F.normalize(features, dim=1)
    return (unit @ unit.T).topk(k + 1, dim=1).indices[:, 1:]


def knn_euclidean(features, k):
    distance = torch.cdist(features, features)
    distance.fill_diagonal_(float("inf"))
    return distance.topk(k, dim=1, largest=False).indices


def knn_dot_product(features, k):
    similarity = features @ features.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity.topk(k, dim=1).indices


def knn_farthest(features, k):
    unit = F.normalize(features, dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(float("inf"))
    return similarity.topk(k, dim=1, largest=False).indices


def knn_sorted_indices(features, k):
    return knn_vectorised(features, k).sort(dim=1).values


def knn_calls_vislib(features, k):
    return embedding.nearest(features, torch.arange(len(features)), k=k)[0]


@pytest.mark.parametrize("fn", [knn_vectorised, knn_loops])
def test_cosine_knn_accepts_correct_implementations(fn, capsys):
    checks.cosine_knn(fn)
    assert "cosine_knn: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (knn_with_itself, "leave each row itself out"),
    (knn_topk_plus_one, r"rows 2 and 6 pointing the same way.*Dropping the first column of\s+topk\(k \+ 1\)"),
    (knn_euclidean, "not the euclidean distance"),
    (knn_dot_product, "divide by the norms"),
    (knn_farthest, "the nearest rows have the LARGEST cosine similarity"),
    (knn_sorted_indices, "closest first"),
    (knn_calls_vislib, "calls vislib's own implementation"),
])
def test_cosine_knn_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.cosine_knn(fn)


# --------------------------------------------------------------------------- precision_at_k


def precision_vectorised(features, labels, k):
    neighbours = knn_vectorised(features, k)
    return (labels[neighbours] == labels[:, None]).float().mean().item()


def precision_loops(features, labels, k):
    """Item by item, neighbours from scikit-learn (k + 1 of them: the first is the item itself)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(features.numpy())
    _, neighbours = index.kneighbors(features.numpy())
    total = 0.0
    for i, row in enumerate(neighbours):
        others = [j for j in row if j != i][:k]
        total += sum(int(labels[j] == labels[i]) for j in others) / k
    return total / len(labels)


def precision_with_itself(features, labels, k):
    neighbours = knn_with_itself(features, k)
    return (labels[neighbours] == labels[:, None]).float().mean().item()


def precision_not_divided_by_k(features, labels, k):
    neighbours = knn_vectorised(features, k)
    return (labels[neighbours] == labels[:, None]).float().sum(1).mean().item()


def precision_per_class(features, labels, k):
    hits = (labels[knn_vectorised(features, k)] == labels[:, None]).float().mean(1)
    return torch.stack([hits[labels == c].mean() for c in labels.unique()]).mean().item()


def precision_any(features, labels, k):
    hits = labels[knn_vectorised(features, k)] == labels[:, None]
    return hits.any(1).float().mean().item()


def precision_euclidean(features, labels, k):
    return (labels[knn_euclidean(features, k)] == labels[:, None]).float().mean().item()


def precision_topk_plus_one(features, labels, k):
    unit = F.normalize(features, dim=1)
    neighbours = (unit @ unit.T).topk(k + 1, dim=1).indices[:, 1:]
    return (labels[neighbours] == labels[:, None]).float().mean().item()


def precision_per_item(features, labels, k):
    return (labels[knn_vectorised(features, k)] == labels[:, None]).float().mean(1)


@pytest.mark.parametrize("fn", [precision_vectorised, precision_loops])
def test_precision_at_k_accepts_correct_implementations(fn, capsys):
    checks.precision_at_k(fn)
    assert "precision_at_k: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (precision_with_itself, "leave each item itself out"),
    (precision_not_divided_by_k, "divide by k"),
    (precision_per_class, "not first within each class"),
    (precision_any, "not whether any of them does"),
    (precision_euclidean, "not the euclidean distance"),
    (precision_topk_plus_one, r"dropping the first of topk\(k \+ 1\) fails for items that point the same way"),
    (precision_per_item, "one value per item"),
])
def test_precision_at_k_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.precision_at_k(fn)


# --------------------------------------------------------------------------- tsne_2d


def tsne_defaults(features, seed):
    return torch.as_tensor(TSNE(n_components=2, random_state=seed).fit_transform(features.numpy()))


def tsne_exact_random_start(features, seed):
    coords = TSNE(2, init="random", perplexity=10, method="exact", random_state=seed).fit_transform(
        features.double().numpy())
    return torch.from_numpy(coords).float()


def tsne_no_random_state(features, seed):
    """Right: the default start, init='pca', is the data's PCA projection, the same on every run."""
    return torch.as_tensor(TSNE(n_components=2).fit_transform(features.numpy()))


def tsne_pca(features, seed):
    return torch.as_tensor(PCA(2, random_state=seed).fit_transform(features.numpy()))


def tsne_unseeded(features, seed):
    return torch.as_tensor(TSNE(2, init="random").fit_transform(features.numpy()))


def tsne_three_d(features, seed):
    return torch.as_tensor(TSNE(3, random_state=seed, method="exact").fit_transform(features.numpy()))


def tsne_numpy(features, seed):
    return TSNE(2, random_state=seed).fit_transform(features.numpy())


def tsne_calls_vislib(features, seed):
    return embedding.project(features, "tsne", seed=seed)


@pytest.mark.parametrize("fn", [tsne_defaults, tsne_exact_random_start, tsne_no_random_state])
def test_tsne_2d_accepts_correct_implementations(fn, capsys):
    checks.tsne_2d(fn)
    assert "tsne_2d: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (tsne_pca, r"did you use PCA.*instead of\s+sklearn\.manifold\.TSNE"),
    (tsne_unseeded, "pass random_state=seed"),
    (tsne_three_d, r"expected \[72, 2\]: two coordinates per row"),
    (tsne_numpy, r"must return a torch\.Tensor \[N, 2\], got ndarray"),
    (tsne_calls_vislib, "calls vislib's own implementation"),
])
def test_tsne_2d_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.tsne_2d(fn)


def stub(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("check", [checks.embed, checks.cosine_knn, checks.precision_at_k, checks.tsne_2d])
def test_an_unimplemented_function_is_not_implemented_yet(check, capsys):
    check(stub)
    assert f"{check.exercise}: not implemented yet" in capsys.readouterr().out
    with pytest.raises(checks.NotImplementedYet, match="not implemented yet"):
        check(stub, strict=True)
