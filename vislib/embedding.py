"""Seeing a network through its data: the feature vector of every image, who its nearest
neighbours are, and a 2-D or 3-D map of the whole feature space.

The lecture's "embedding before the FC layer" is the default: the vector a classifier's last
linear layer reads (for ShapesNet and ResNets, the globally average-pooled last feature map).
Any other layer can be asked for by name; a whole dataset is read in one streaming pass.
"""

from __future__ import annotations

import sys
from contextlib import closing, contextmanager

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from vislib.conventions import copies_per_pass, model_device, model_input, reuse_freed_memory
from vislib.hooks import frozen, layer_name, uses_model

METRICS = ("cosine", "euclidean")
METHODS = ("pca", "tsne", "umap")


class _Enough(Exception):
    """Raised inside a hook once every requested layer has been seen: the rest of the forward
    pass would only cost time."""


def _dataset_batch_size(dataset, batch_size: int | None) -> int:
    """``batch_size``, or ``copies_per_pass`` of the dataset's first image (64 if it cannot be seen)."""
    if batch_size is not None:
        return batch_size
    if isinstance(dataset, torch.utils.data.IterableDataset) or len(dataset) == 0:
        return 64
    first = dataset[0]  # an image, or an (image, label) pair
    image = first[0] if isinstance(first, (tuple, list)) else first
    return copies_per_pass(image) if isinstance(image, torch.Tensor) and image.ndim >= 2 else 64


def batches(data, batch_size: int | None = None, progress: bool = True, desc: str = "batches"):
    """Yield image batches [B,C,H,W] from a tensor [N,C,H,W], a dataset of images or
    (image, label) pairs, or an iterable of such batches (e.g. a DataLoader, whose own batch
    size is kept), with a progress bar when there are several batches. ``batch_size=None``:
    ``copies_per_pass`` of the first image."""
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(data, torch.Tensor):
        if data.ndim != 4:
            raise ValueError(f"expected images [N,C,H,W], got a tensor of shape {tuple(data.shape)}")
        chunks = data.split(copies_per_pass(data, batch_size))
    elif isinstance(data, torch.utils.data.Dataset):
        chunks = torch.utils.data.DataLoader(data, batch_size=_dataset_batch_size(data, batch_size), shuffle=False)
    elif hasattr(data, "__iter__"):
        chunks = data
    else:
        raise TypeError(f"expected a tensor, a Dataset or an iterable of batches, got {type(data).__name__}")
    reuse_freed_memory()
    total = len(chunks) if hasattr(chunks, "__len__") else None
    for chunk in tqdm(chunks, total=total, desc=desc, disable=not progress or total == 1, leave=False):
        x = chunk[0] if isinstance(chunk, (tuple, list)) else chunk
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"each batch must be a float tensor [B,C,H,W], got {type(x).__name__} "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}")
        yield x


def classifier_input_layer(model: nn.Module) -> str:
    """The name of the last ``nn.Linear`` in ``model``: its input is the default embedding."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear classifier; pass layer=... to choose the features")
    return linears[-1]


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()


@contextmanager
def _recording(model: nn.Module, names: list, inputs: bool, reduce):
    """Store ``reduce(tensor)`` for the output of each named layer (its input, with ``inputs=True``)
    into the yielded dict, last call wins; hooks removed on exit.

    The reduction runs inside the hook, while the tensor is valid (a later inplace ReLU cannot
    have changed it yet), so a reduced result never needs a full copy of the activations."""
    store = {}

    def hook_for(name):
        if inputs:
            return lambda module, args: store.__setitem__(name, reduce(args[0]))
        return lambda module, args, output: store.__setitem__(name, reduce(output))

    handles = []
    try:
        for name in names:
            module = model.get_submodule(name)
            register = module.register_forward_pre_hook if inputs else module.register_forward_hook
            handles.append(register(hook_for(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _stop_when_seen(model: nn.Module, names: list, seen: dict):
    """Abort the forward pass (with ``_Enough``) right after every layer in ``names`` has run,
    from the second batch on: the first batch counts how often each layer runs per forward,
    and a layer that runs several times (a shared ReLU) turns the shortcut off."""
    calls = dict.fromkeys(names, 0)
    state = {"first": True, "stoppable": False}

    def counter(name):
        def hook(module, *args):
            calls[name] += 1
            if state["stoppable"] and all(n in seen for n in names):
                raise _Enough
        return hook

    def end_of_batch():
        if state["first"]:
            state["first"], state["stoppable"] = False, all(c == 1 for c in calls.values())

    handles = [model.get_submodule(n).register_forward_hook(counter(n)) for n in names]
    try:
        yield end_of_batch
    finally:
        for handle in handles:
            handle.remove()


def stream_layers(model: nn.Module, data, layers, batch_size: int | None = None, progress: bool = True,
                  desc: str = "forward", reduce=_copy):
    """Yield ``(batch, {name: reduce(activation)})`` per batch for ``layers`` (names or modules),
    computed in eval mode without gradients (the default ``reduce`` is a detached copy); the
    forward pass stops early once all layers have been seen. ``layers=None`` means the input of
    the last linear layer. The model is handed back as it was (hooks removed, modes and
    ``requires_grad`` restored), also when a batch raises."""
    device = model_device(model)
    pre = layers is None
    if pre:
        names = [classifier_input_layer(model)]
    else:
        names = [layer_name(model, n) for n in ([layers] if isinstance(layers, (str, nn.Module)) else layers)]
        if not names:
            raise ValueError("give at least one layer")
    with frozen(model), torch.no_grad():
        with _recording(model, names, pre, reduce) as seen, _stop_when_seen(model, names, seen) as end_of_batch:
            for x in batches(data, batch_size, progress, desc):
                seen.clear()
                try:
                    model(model_input(x.to(device)))
                except _Enough:
                    pass
                end_of_batch()
                missing = [n for n in names if n not in seen]
                if missing:
                    raise ValueError(f"layer {missing[0]!r} did not run in the model's forward pass; "
                                     "choose a layer that the model's forward uses")
                yield x, {n: seen[n] for n in names}


@uses_model
def extract(model: nn.Module, data, layer=None, batch_size: int | None = None, pool: str | None = None,
            progress: bool = True):
    """Features of a whole dataset, one row per image, in one streaming pass.

    ``layer=None`` gives the embedding before the classifier: the input of the model's last
    ``nn.Linear`` ([N,128] for ShapesNet, [N,512] for ResNet-18). A named layer gives its
    output [N,C,H,W]; ``pool="avg"`` or ``"max"`` reduces each channel over space ([N,C]).
    A list of layers gives a dict of such tensors, from the same single pass.
    Results stay on the data's device when ``data`` is a tensor, else on the CPU.
    """
    if pool not in (None, "avg", "max"):
        raise ValueError(f"pool must be None, 'avg' or 'max', got {pool!r}")
    out_device = data.device if isinstance(data, torch.Tensor) else torch.device("cpu")

    def reduce(a):
        if pool is None or a.ndim != 4:
            return _copy(a)
        return a.mean(dim=(2, 3)) if pool == "avg" else a.amax(dim=(2, 3))

    parts: dict = {}
    with closing(stream_layers(model, data, layer, batch_size, progress, "extract", reduce)) as stream:
        for _, acts in stream:
            for name, a in acts.items():
                parts.setdefault(name, []).append(a.to(out_device))
    features = {name: torch.cat(chunks) for name, chunks in parts.items()}
    if layer is None or isinstance(layer, (str, nn.Module)):
        return next(iter(features.values()))
    return features


def _as_matrix(features, what: str) -> torch.Tensor:
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor) or features.ndim < 1:
        raise TypeError(f"{what} must be a tensor or array with one row per item, got {type(features).__name__}")
    if features.ndim == 1:
        features = features[None]
    return features.reshape(len(features), -1).float()


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Distances [len(a), len(b)]: cosine distance 1 - cos(a, b), or euclidean ||a - b||."""
    if metric == "cosine":
        a = nn.functional.normalize(a, dim=1)
        b = nn.functional.normalize(b, dim=1)
        return (1 - a @ b.T).clamp_min(0)
    if metric == "euclidean":
        return torch.cdist(a, b)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def nearest(features, queries, k: int = 5, metric: str = "cosine", chunk: int = 1024):
    """The ``k`` nearest rows of ``features`` [N,...] to each query: ``(indices, distances)``,
    both [Q,k], closest first.

    ``queries`` are feature rows [Q,...] (or one row), or an integer tensor of row indices
    into ``features``; with indices each query's own row is left out ("leave one out"), as
    when asking which *other* images a network finds most alike.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    database = _as_matrix(features, "features")
    own = None
    if isinstance(queries, torch.Tensor) and not queries.is_floating_point():
        own = queries.reshape(-1).long()
        if len(own) and (own.min() < 0 or own.max() >= len(database)):
            raise IndexError(f"query indices must lie in [0, {len(database)})")
        queries = database[own]
    queries = _as_matrix(queries, "queries").to(database.device)
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} features per row, the database {database.shape[1]}")
    available = len(database) - (own is not None)
    if not isinstance(k, int) or not 1 <= k <= available:
        raise ValueError(f"k must be an int in [1, {available}], got {k!r}")
    indices, distances = [], []
    for start in range(0, len(queries), chunk):
        d = pairwise_distances(queries[start:start + chunk], database, metric)
        if own is not None:
            rows = torch.arange(len(d), device=d.device)
            d[rows, own[start:start + chunk].to(d.device)] = float("inf")
        dist, idx = d.topk(k, dim=1, largest=False)
        indices.append(idx)
        distances.append(dist)
    return torch.cat(indices), torch.cat(distances)


def precision_at_k(features, labels, k: int = 5, metric: str = "cosine") -> float:
    """Leave-one-out retrieval precision: the mean fraction of each item's ``k`` nearest other
    items that share its label."""
    labels = torch.as_tensor(labels).reshape(-1)
    database = _as_matrix(features, "features")
    if len(labels) != len(database):
        raise ValueError(f"{len(labels)} labels for {len(database)} feature rows")
    idx, _ = nearest(database, torch.arange(len(database)), k=k, metric=metric)
    labels = labels.to(idx.device)
    return (labels[idx] == labels[:, None]).float().mean().item()


def project(features, method: str = "tsne", dim: int = 2, seed: int = 0, **options) -> torch.Tensor:
    """Map features [N,...] to ``dim`` (2 or 3) coordinates per row for plotting.

    ``"pca"``: the directions of largest variance (linear, fast). ``"tsne"``: keeps each
    point's near neighbours near (scikit-learn, started from PCA, 500 iterations; distances
    between clusters are not meaningful).
    ``"umap"``: like t-SNE, often faster, keeps more of the global layout (umap-learn).
    Deterministic for a given ``seed``; extra ``options`` go to the estimator.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    matrix = _as_matrix(features, "features")
    if len(matrix) <= dim + 1:
        raise ValueError(f"need more than {dim + 1} rows to project to {dim}-D, got {len(matrix)}")
    if not torch.isfinite(matrix).all():
        raise ValueError("features contain NaN or infinite values")
    array = matrix.detach().cpu().numpy().astype(np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        estimator = PCA(n_components=dim, random_state=seed, **options)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        options.setdefault("perplexity", min(30.0, (len(array) - 1) / 3))
        options.setdefault("init", "pca")
        options.setdefault("max_iter", 500)  # half scikit-learn's default: the same clusters in half the time
        estimator = TSNE(n_components=dim, random_state=seed, **options)
    else:
        umap = _umap()
        options.setdefault("n_neighbors", min(15, len(array) - 1))
        estimator = umap.UMAP(n_components=dim, random_state=seed, n_jobs=1, **options)
    threads = torch.get_num_threads()
    try:
        coords = estimator.fit_transform(array)
    finally:
        torch.set_num_threads(threads)  # umap-learn's numba code resets the OpenMP thread count torch uses
    return torch.as_tensor(np.asarray(coords), dtype=torch.float32, device=matrix.device)


def _umap():
    """umap-learn, imported on first use (it takes seconds), with numba's on-disk cache turned on for
    all of its compiled functions: most are compiled without ``cache=True``, so every new process
    spent about 17 s compiling them on its first UMAP. Now only the first process on a machine does
    (numba keys its cache on the source file and the CPU; it writes beside the package, or to the
    user's cache folder where that is read-only)."""
    import umap
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("umap", "pynndescent"):
            for value in list(vars(module).values()):
                if isinstance(value, Dispatcher) and isinstance(value._cache, NullCache):
                    value.enable_caching()
    return umap
