"""vislib.embedding: features of a dataset, nearest neighbours, projections to 2-D and 3-D."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA

from tests.helpers import tiny_cnn, untouched
from vislib.data import make_shapes
from vislib.embedding import batches, extract, nearest, precision_at_k, project
from vislib.hooks import capture
from vislib.models import shapes_net, torchvision_model


@pytest.fixture(scope="module")
def net():
    return shapes_net(pretrained=False)


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(40, seed=3)


def gap_embedding(model, x):
    """The reference: ShapesNet's pooled vector, computed by hand."""
    with torch.no_grad():
        return model.flatten(model.pool(model.features(x)))


def test_default_is_the_vector_before_the_classifier(net, shapes):
    with untouched(net):
        features = extract(net, shapes.images, batch_size=16, progress=False)
    assert features.shape == (40, 128)
    torch.testing.assert_close(features, gap_embedding(net, shapes.images))


def test_default_works_on_a_torchvision_resnet():
    model = torchvision_model("resnet18", pretrained=False)
    x = torch.rand(3, 3, 64, 64)
    with untouched(model):
        features = extract(model, x, progress=False)
    trunk = nn.Sequential(*list(model.children())[:-1])
    with torch.no_grad():
        expected = trunk(x).flatten(1)
    assert features.shape == (3, 512)
    torch.testing.assert_close(features, expected)


def test_named_layers_pooling_and_batch_size_do_not_change_values(net, shapes):
    with capture(net, ["features.relu2", "features.relu4"]) as rec, torch.no_grad():
        net(shapes.images)
    with untouched(net):
        one = extract(net, shapes.images, "features.relu2", batch_size=7, progress=False)
        both = extract(net, shapes.images, ["features.relu2", "features.relu4"], pool="avg", progress=False)
        peak = extract(net, shapes.images, net.features.relu4, pool="max", progress=False)
    torch.testing.assert_close(one, rec["features.relu2"])
    torch.testing.assert_close(both["features.relu2"], rec["features.relu2"].mean(dim=(2, 3)))
    torch.testing.assert_close(both["features.relu4"], rec["features.relu4"].mean(dim=(2, 3)))
    torch.testing.assert_close(peak, rec["features.relu4"].amax(dim=(2, 3)))


def test_datasets_loaders_and_generators_are_read_in_order(net, shapes):
    expected = gap_embedding(net, shapes.images)
    loader = torch.utils.data.DataLoader(shapes, batch_size=9)
    generator = (shapes.images[i:i + 5] for i in range(0, 40, 5))
    for data in (shapes, loader, generator):
        torch.testing.assert_close(extract(net, data, progress=False), expected)


def test_model_state_is_handed_back_in_train_mode_under_no_grad_and_frozen(shapes):
    model = shapes_net(pretrained=False).train()
    model.fc.weight.requires_grad_(False)
    model.fc.bias.grad = torch.ones(8)
    with untouched(model), torch.no_grad():
        features = extract(model, shapes.images, progress=False)
    # features are computed in eval mode: BatchNorm's running statistics are not updated
    torch.testing.assert_close(features, gap_embedding(model.eval(), shapes.images))


def test_inplace_relu_twin_gives_the_same_features():
    x = torch.rand(6, 3, 8, 8)
    plain, inplace = tiny_cnn(inplace=False), tiny_cnn(inplace=True)
    with untouched(inplace):
        a = extract(inplace, x, "relu1", progress=False)
    torch.testing.assert_close(a, extract(plain, x, "relu1", progress=False))


def test_forward_stops_after_the_layer_once_the_model_is_known():
    calls = []
    model = nn.Sequential(tiny_cnn(), nn.Identity())
    handle = model[1].register_forward_hook(lambda *args: calls.append(1))
    try:
        extract(model, torch.rand(30, 3, 8, 8), "0.relu2", batch_size=10, progress=False)
    finally:
        handle.remove()
    assert len(calls) == 1  # only the first batch runs to the end (to count layer calls)


def test_a_layer_called_twice_gives_its_last_output():
    model = torchvision_model("resnet18", pretrained=False)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        block_output = model.layer1[0](model.maxpool(model.relu(model.bn1(model.conv1(x)))))
    with untouched(model):
        features = extract(model, x, "layer1.0.relu", batch_size=2, progress=False)
    torch.testing.assert_close(features, block_output)


def test_bad_inputs_raise_clear_errors_and_leave_nothing_behind(net, shapes):
    no_linear = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with untouched(no_linear), pytest.raises(ValueError, match="no nn.Linear"):
        extract(no_linear, shapes.images, progress=False)
    with untouched(net):
        with pytest.raises(KeyError, match="closest valid names"):
            extract(net, shapes.images, "features.relu9", progress=False)
        with pytest.raises(ValueError, match="pool"):
            extract(net, shapes.images, pool="mean")
        with pytest.raises(ValueError, match=r"\[N,C,H,W\]"):
            extract(net, shapes.images[0], progress=False)
        with pytest.raises(ValueError, match="batch_size"):
            extract(net, shapes.images, batch_size=0)
        with pytest.raises(TypeError):
            extract(net, 3.0)
        with pytest.raises(RuntimeError):  # wrong channel count fails inside the forward pass
            extract(net, torch.rand(4, 1, 64, 64), progress=False)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_matches_brute_force(metric):
    gen = torch.Generator().manual_seed(0)
    database, queries = torch.randn(50, 7, generator=gen), torch.randn(6, 7, generator=gen)
    idx, dist = nearest(database, queries, k=4, metric=metric, chunk=4)
    full = cdist(queries.numpy(), database.numpy(), metric=metric)
    order = np.argsort(full, axis=1)[:, :4]
    np.testing.assert_array_equal(idx.numpy(), order)
    np.testing.assert_allclose(dist.numpy(), np.take_along_axis(full, order, 1), rtol=1e-4, atol=1e-5)


def test_nearest_with_indices_leaves_each_query_out():
    database = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    idx, dist = nearest(database, torch.tensor([0, 3]), k=2, metric="euclidean")
    assert idx.tolist() == [[1, 2], [2, 1]]
    torch.testing.assert_close(dist, torch.tensor([[1.0, 3.0], [4.0, 6.0]]))
    own, _ = nearest(database, database[:2], k=1, metric="euclidean")
    assert own.tolist() == [[0], [1]]  # rows as queries find themselves


def test_nearest_rejects_bad_arguments():
    database = torch.randn(5, 3)
    with pytest.raises(ValueError, match="metric"):
        nearest(database, database, metric="manhattan")
    with pytest.raises(ValueError, match="k must"):
        nearest(database, torch.arange(5), k=5)
    with pytest.raises(ValueError, match="features per row"):
        nearest(database, torch.randn(2, 4))
    with pytest.raises(IndexError):
        nearest(database, torch.tensor([5]))


def test_precision_at_k_by_hand():
    features = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [0.15]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    # k=1 neighbours: 0->1 (same), 1->5 (diff), 2->5 (diff), 3->4, 4->3 (same), 5->2 (diff)
    assert precision_at_k(features, labels, k=1, metric="euclidean") == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="labels"):
        precision_at_k(features, labels[:4])


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_project_is_deterministic_per_seed(method):
    features = torch.randn(60, 10, generator=torch.Generator().manual_seed(1))
    options = {"max_iter": 250} if method == "tsne" else {}
    a = project(features, method, dim=2, seed=0, **options)
    b = project(features, method, dim=2, seed=0, **options)
    assert a.shape == (60, 2) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    if method == "umap":  # (PCA, and t-SNE started from PCA, do not depend on the seed)
        assert not torch.allclose(a, project(features, method, dim=2, seed=1))


def test_umap_keeps_its_compiled_code_on_disk():
    """umap-learn compiles most of its numba functions without numba's cache: about 17 s in every new
    process. vislib turns the cache on, so that only a machine's first UMAP pays it."""
    import umap
    from numba.core.caching import NullCache

    project(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), "umap")
    compiled = [umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths,
                umap.layouts._nb_optimize_layout_euclidean_single_epoch]
    assert not any(isinstance(function._cache, NullCache) for function in compiled)


def test_project_pca_matches_scikit_learn_in_3d():
    features = torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    coords = project(features, "pca", dim=3)
    expected = PCA(3).fit_transform(features.double().numpy())
    np.testing.assert_allclose(np.abs(coords.numpy()), np.abs(expected), atol=1e-5)


def test_project_rejects_bad_arguments():
    features = torch.randn(20, 4)
    with pytest.raises(ValueError, match="method"):
        project(features, "lda")
    with pytest.raises(ValueError, match="dim"):
        project(features, "pca", dim=4)
    with pytest.raises(ValueError, match="rows"):
        project(features[:3], "pca", dim=2)
    with pytest.raises(ValueError, match="NaN"):
        project(torch.full((10, 4), float("nan")), "pca")


def test_project_leaves_torch_thread_count_alone():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        project(torch.randn(30, 4, generator=torch.Generator().manual_seed(0)), "umap")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_default_batches_are_small_for_large_images_whatever_holds_them():
    large, small = torch.zeros(12, 3, 224, 224), torch.zeros(130, 3, 64, 64)
    assert [len(b) for b in batches(large, progress=False)] == [6, 6]
    assert [len(b) for b in batches(small, progress=False)] == [64, 64, 2]
    labelled = torch.utils.data.TensorDataset(large, torch.zeros(12, dtype=torch.long))
    assert [len(b) for b in batches(labelled, progress=False)] == [6, 6]
    assert [len(b) for b in batches(small, batch_size=100, progress=False)] == [100, 30]
    with pytest.raises(ValueError, match="positive int"):
        next(batches(small, batch_size=0))
