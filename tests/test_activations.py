"""vislib.activations: filter tiles, receptive fields, top patches and images, channel ablation."""

import copy
import gc

import pytest
import torch
import torch.nn as nn

from tests.helpers import tiny_cnn, untouched
from vislib.activations import ablate, filter_grid, receptive_field, top_images, top_patches
from vislib.hooks import capture
from vislib.models import shapes_net, torchvision_model


@pytest.fixture(scope="module")
def net():
    return shapes_net(pretrained=False)


@pytest.fixture(scope="module")
def resnet():
    return torchvision_model("resnet18", pretrained=False)


# --------------------------------------------------------------------------- filter_grid


def test_filter_grid_scales_each_filter_symmetrically_by_hand():
    weight = torch.zeros(3, 1, 1, 2)
    weight[0, 0, 0] = torch.tensor([2.0, -1.0])  # max |w| = 2 -> 0.5 + 0.5 * w / 2
    weight[1, 0, 0] = torch.tensor([0.1, 0.05])  # scaled on its own, not by filter 0's range
    grid = filter_grid(weight, ncols=2, padding=1)  # filter 2 is all zeros: flat grey, no NaN
    expected = torch.tensor([[[1.0, 0.25, 1.0, 1.0, 0.75],
                              [1.0, 1.0, 1.0, 1.0, 1.0],
                              [0.5, 0.5, 1.0, 1.0, 1.0]]])
    torch.testing.assert_close(grid, expected)


def test_filter_grid_of_a_first_layer_and_refusal_of_a_deeper_one(net):
    grid = filter_grid(net.features.conv1, ncols=8)
    assert grid.shape == (3, 2 * 4 - 1, 8 * 4 - 1)
    assert grid.min() >= 0 and grid.max() <= 1
    with pytest.raises(ValueError, match="16 feature maps"):
        filter_grid(net.features.conv2)
    with pytest.raises(ValueError, match="ncols"):
        filter_grid(net.features.conv1, ncols=0)


# --------------------------------------------------------------------------- receptive_field


def test_receptive_field_by_hand_on_shapes_net(net):
    # conv3x3 (r=3, j=1, start=-1), pool2 (r=4, j=2), conv (r=8), pool (r=10, j=4), conv (r=18),
    # pool (r=22, j=8), conv (r=38)
    expected = {"features.conv1": (3, 1, -1), "features.relu2": (8, 2, -3), "features.pool2": (10, 4, -3),
                "features.relu3": (18, 4, -7), "features.relu4": (38, 8, -15)}
    with untouched(net):
        for layer, (size, stride, offset) in expected.items():
            rf = receptive_field(net, layer, 64)
            assert (rf.size, rf.stride, rf.offset) == ((size,) * 2, (stride,) * 2, (offset,) * 2), layer


def test_receptive_field_of_resnet18_matches_the_published_435_pixels(resnet):
    with untouched(resnet):
        rf = receptive_field(resnet, "layer4", 224)
        assert (rf.size, rf.stride, rf.offset) == ((435, 435), (32, 32), (-217, -217))
        assert receptive_field(resnet, resnet.layer2, (96, 128)).size == (99, 99)


def linearised(model: nn.Module) -> nn.Module:
    """A copy with the same geometry whose gradient reaches every pixel a unit sees: ReLU ->
    identity, max pooling -> average pooling (max pooling passes gradient to one pixel only)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
    return model


def gradient_support(model, layer, size, units):
    """For each (y, x) unit of channel 1 of ``layer``, the bounding box (top, left, bottom, right,
    ends exclusive) of the input pixels its gradient reaches; one image per unit."""
    x = torch.rand(len(units), 3, size, size, requires_grad=True)
    kept = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, out: kept.update(out=out))
    try:
        model(x)
    finally:
        handle.remove()
    picked = torch.stack([kept["out"][i, 1, y, x_] for i, (y, x_) in enumerate(units)])
    (grad,) = torch.autograd.grad(picked.sum(), x)
    boxes = []
    for g in grad.abs().sum(1):
        rows, cols = g.sum(1).nonzero()[:, 0], g.sum(0).nonzero()[:, 0]
        boxes.append((rows.min().item(), cols.min().item(), rows.max().item() + 1, cols.max().item() + 1))
    return boxes


@pytest.mark.parametrize("layer,size", [("features.relu1", 64), ("features.pool2", 64), ("features.relu3", 64),
                                        ("features.relu4", 64), ("layer1", 96), ("layer2.0", 96), ("layer2", 128)])
def test_receptive_field_matches_the_support_of_a_gradient(net, resnet, layer, size):
    model = net if layer.startswith("features") else resnet
    rf = receptive_field(model, layer, size)
    with torch.no_grad(), capture(model, layer) as rec:
        model(torch.zeros(1, 3, size, size))
    h, w = rec[layer].shape[-2:]
    units = [(0, 0), (h - 1, w - 1), (h // 2, w // 3), (1, w - 2), (h // 2, w // 2)]
    support = gradient_support(linearised(model).eval(), layer, size, units)
    assert support == [rf.box(y, x) for y, x in units]
    assert any(box[2] - box[0] == rf.size[0] for box in support) or rf.size[0] > size  # one unclipped box


def test_gradient_of_the_real_network_stays_inside_the_box(net):
    rf = receptive_field(net, "features.relu4", 64)
    for (y, x), box in zip([(2, 3), (7, 0)], gradient_support(net, "features.relu4", 64, [(2, 3), (7, 0)])):
        top, left, bottom, right = rf.box(y, x)
        assert top <= box[0] and left <= box[1] and box[2] <= bottom and box[3] <= right


def test_boxes_are_clipped_to_the_image(net):
    rf = receptive_field(net, "features.relu4", 64)
    assert rf.box(0, 0) == (0, 0, 23, 23)  # starts at -15, 38 wide
    assert rf.box(7, 3) == (41, 9, 64, 47)
    torch.testing.assert_close(rf.boxes(torch.tensor([[[0, 0], [7, 3]]])),
                               torch.tensor([[[0, 0, 23, 23], [41, 9, 64, 47]]]))


def test_receptive_field_rejects_what_it_cannot_follow(net):
    with untouched(net):
        with pytest.raises(ValueError, match="no position"):
            receptive_field(net, "pool", 64)
        with pytest.raises(KeyError):
            receptive_field(net, "features.relu7", 64)
        with pytest.raises(ValueError, match="input_size"):
            receptive_field(net, "features.relu4", 0)
    upsampling = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3))
    with untouched(upsampling), pytest.raises(ValueError, match="cannot follow"):
        receptive_field(upsampling, "2", 32)


# --------------------------------------------------------------------------- top patches and images


def all_activations(model, images, layer):
    with torch.no_grad(), capture(model, layer) as rec:
        model(images)
    return rec[layer]


@pytest.mark.parametrize("distinct_images", [True, False])
def test_top_patches_equals_brute_force(net, distinct_images):
    images = torch.rand(30, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    channels = [0, 5, 31]
    with untouched(net):
        top = top_patches(net, images, "features.bn2", k=6, channels=channels, distinct_images=distinct_images,
                          batch_size=7, progress=False)
    acts = all_activations(net, images, "features.bn2")[:, channels]  # [N,C,16,16], no ties (pre-ReLU)
    n, c, h, w = acts.shape
    if distinct_images:
        best, where = acts.flatten(2).max(dim=2)  # [N,C]
        values, image = best.T.topk(6, dim=1)
        unit = where.T.gather(1, image)
    else:
        values, flat = acts.transpose(0, 1).reshape(c, -1).topk(6, dim=1)
        image, unit = flat // (h * w), flat % (h * w)
    torch.testing.assert_close(top.values, values)
    assert torch.equal(top.image_index, image)
    assert torch.equal(top.positions, torch.stack([unit // w, unit % w], -1))
    assert torch.equal(top.channels, torch.tensor(channels))
    assert torch.equal(top.boxes, receptive_field(net, "features.bn2", 32).boxes(top.positions))
    if distinct_images:
        assert all(len(set(row.tolist())) == 6 for row in top.image_index)


def test_top_images_equals_brute_force(net):
    images = torch.rand(25, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with untouched(net):
        top = top_images(net, images, "features.conv3", k=4, batch_size=6, progress=False)
    means = all_activations(net, images, "features.conv3").mean(dim=(2, 3))
    values, image = means.T.topk(4, dim=1)
    torch.testing.assert_close(top.values, values)
    assert torch.equal(top.image_index, image)
    assert top.values.shape == (64, 4) and top.positions is None


def live_tensor_bytes() -> int:
    """Bytes held by all tensors alive in this process (each storage counted once)."""
    storages = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def peak_live_bytes_during_top_patches(model, n_images: int, batch: int = 1000) -> int:
    peak = [0]

    def batches():
        gen = torch.Generator().manual_seed(n_images)
        for _ in range(n_images // batch):
            peak[0] = max(peak[0], live_tensor_bytes())
            yield torch.rand(batch, 3, 8, 8, generator=gen)
        peak[0] = max(peak[0], live_tensor_bytes())

    result = top_patches(model, batches(), "relu2", k=9, distinct_images=False, batch_size=batch, progress=False)
    assert result.values.shape == (6, 9)
    return peak[0]


def test_top_patches_memory_does_not_grow_with_the_dataset():
    model = tiny_cnn()
    small = peak_live_bytes_during_top_patches(model, 1_000)
    large = peak_live_bytes_during_top_patches(model, 10_000)
    # keeping all activations of 10,000 images would add 10,000 * 6 * 64 * 4 bytes = 15 MB
    assert large - small < 200_000, (small, large)


def test_top_patches_rejects_bad_arguments(net):
    images = torch.rand(4, 3, 32, 32)
    with untouched(net):
        with pytest.raises(ValueError, match="channels"):
            top_patches(net, images, "features.relu2", channels=[32], progress=False)
        with pytest.raises(ValueError, match="only 4"):
            top_patches(net, images, "features.relu2", k=5, progress=False)
        with pytest.raises(ValueError, match="k must"):
            top_patches(net, images, "features.relu2", k=0, progress=False)
        with pytest.raises(ValueError, match="not a feature map"):
            top_images(net, images, "fc", progress=False)
        with pytest.raises(KeyError):
            top_images(net, images, "features.relu5", progress=False)


# --------------------------------------------------------------------------- ablation


def test_ablate_zeroes_channels_and_removes_its_hook(net):
    x = torch.rand(5, 3, 64, 64)
    channels = [1, 7, 100]
    with torch.no_grad():
        features = net.features(x)
        features[:, channels] = 0
        expected = net.fc(net.flatten(net.pool(features)))
    with untouched(net), torch.no_grad():
        with ablate(net, "features.relu4", channels):
            ablated = net(x)
        plain = net(x)
    torch.testing.assert_close(ablated, expected)
    assert not torch.allclose(plain, ablated)


def test_ablate_leaves_nothing_behind_when_the_block_raises(net):
    with untouched(net):
        with pytest.raises(ValueError, match="cannot zero"), ablate(net, "features.relu1", [16]):
            net(torch.rand(1, 3, 32, 32))
        with pytest.raises(ValueError, match="non-negative"), ablate(net, "features.relu1", [-1]):
            pass
        with pytest.raises(KeyError), ablate(net, "features.nope", [0]):
            pass
