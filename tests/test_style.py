"""vislib.style: Gram matrices and losses by hand, optimisation that lowers them, seeds, inputs."""

import warnings

import pytest
import torch

from vislib import style
from vislib.models import WeightsError, pretrained_available
from vislib.style import (
    STYLE_LAYERS,
    content_loss,
    extract,
    gram_matrix,
    style_loss,
    style_transfer,
    texture_synthesis,
    vgg19_features,
)

FAST = dict(pretrained=False, progress=False)


def smooth_image(seed, size=32):
    """A random low-frequency picture in [0, 1]."""
    coarse = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_gram_matrix_by_hand():
    # Two channels over a 1x2 image: channel 0 = (1, 2), channel 1 = (3, 4).
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    # Sums of products over positions: (1+4, 3+8; 3+8, 9+16), divided by C*H*W = 4.
    expected = torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4
    assert torch.allclose(gram_matrix(features), expected)
    assert torch.allclose(gram_matrix(features[0]), expected)  # one [C,H,W] map = a batch of one


def test_gram_matrix_against_a_loop_and_its_invariance_to_position():
    features = torch.randn(2, 5, 3, 4)
    expected = torch.zeros(2, 5, 5)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                expected[b, i, j] = (features[b, i] * features[b, j]).sum() / (5 * 3 * 4)
    assert torch.allclose(gram_matrix(features), expected, atol=1e-6)
    shuffled = features.flatten(2)[..., torch.randperm(12)].reshape(2, 5, 3, 4)
    assert torch.allclose(gram_matrix(shuffled), gram_matrix(features), atol=1e-6)  # where is forgotten


def test_gram_matrix_without_normalisation_is_the_plain_sum():
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    assert torch.equal(gram_matrix(features, normalize=False), torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]))
    features = torch.randn(2, 5, 3, 4)
    assert torch.allclose(gram_matrix(features, normalize=False), gram_matrix(features) * 5 * 3 * 4, atol=1e-5)
    assert torch.equal(gram_matrix(features, normalize=True), gram_matrix(features))  # the default


def test_losses_by_hand():
    target = torch.tensor([[[[3.0, 4.0]]]])
    assert content_loss(target, target) == 0
    assert torch.allclose(content_loss(torch.zeros_like(target), target), torch.tensor(1.0))
    assert torch.allclose(content_loss(target + 1, target), torch.tensor(2 / 25))
    features = {"a": torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])}
    grams = {"a": gram_matrix(features["a"])}
    assert style_loss(features, grams) == 0
    assert torch.allclose(style_loss({"a": 2 * features["a"]}, grams), torch.tensor(9.0))  # Gram x4: (4-1)^2
    with pytest.raises(ValueError):
        style_loss(features, {})


def test_random_vgg19_is_seeded_named_and_truncated():
    net = vgg19_features(False, seed=0, last="relu2_1")
    assert list(dict(net.named_children())) == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1",
                                                "relu2_1"]
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    fresh = vgg19_features.__wrapped__(False, seed=0, last="relu2_1")
    other = vgg19_features.__wrapped__(False, seed=1, last="relu2_1")
    assert torch.equal(net.conv1_1.weight, fresh.conv1_1.weight)
    assert not torch.equal(net.conv1_1.weight, other.conv1_1.weight)
    outputs = extract(net, torch.rand(1, 3, 16, 16), ["relu1_1", "relu2_1"])
    assert outputs["relu1_1"].shape == (1, 64, 16, 16) and outputs["relu2_1"].shape == (1, 128, 8, 8)
    with pytest.raises(KeyError, match="relu"):
        vgg19_features(False, last="relu9_9")


def test_pretrained_vgg19_loads_only_from_the_cache():
    if pretrained_available("vgg19"):
        assert vgg19_features(True, last="relu1_1").conv1_1.weight.shape == (64, 3, 3, 3)
    else:
        with pytest.raises(WeightsError, match="download"):
            vgg19_features(True, last="relu1_1")


@pytest.fixture
def forget_vgg19():
    """VGG19 is read from the cache once per process: forget what an earlier test read (the ImageNet weights
    or `make test`'s stand-ins), before and after a test with a cache of its own."""
    for cached in (style._imagenet_vgg19_convs, style.vgg19_features):
        cached.cache_clear()
    yield
    for cached in (style._imagenet_vgg19_convs, style.vgg19_features):
        cached.cache_clear()


@pytest.mark.parametrize("cached", ["absent", "empty", "corrupt"])
def test_pretrained_none_means_imagenet_when_valid_else_random(tmp_path, monkeypatch, cached, forget_vgg19):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("VISLIB_STAND_IN_WEIGHTS", raising=False)
    if cached != "absent":
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        (tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth").write_bytes(b"" if cached == "empty" else b"junk")
    style = smooth_image(3, size=16)
    kwargs = dict(size=8, steps=2, style_layers=("relu1_1",), progress=False)
    random = texture_synthesis(style, pretrained=False, **kwargs).image
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(texture_synthesis(style, **kwargs).image, random)
        assert torch.equal(style_transfer(style, style, steps=2, style_layers=("relu1_1",), content_layer="relu1_1",
                                          progress=False).image,
                           style_transfer(style, style, steps=2, style_layers=("relu1_1",), content_layer="relu1_1",
                                          **FAST).image)
    warned = any("Using fixed-seed random VGG19 weights instead" in str(w.message) for w in caught)
    assert warned == (cached == "corrupt")  # a file that fails its check is not used, and not silently
    with pytest.raises(WeightsError, match="python -m vislib.models download vgg19"):
        texture_synthesis(style, pretrained=True, **kwargs)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_style_transfer_reduces_its_losses(optimizer):
    content, style = smooth_image(0), torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = style_transfer(content, style, steps=15, style_weight=10.0, content_layer="relu2_1",
                            style_layers=STYLE_LAYERS[:2], optimizer=optimizer, **FAST)
    assert result.image.shape == content.shape and 0 <= result.image.min() and result.image.max() <= 1
    assert len(result.losses) == 15
    assert torch.allclose(result.losses, result.content_losses + 10.0 * result.style_losses)
    assert result.content_losses[0] == 0  # it starts from the content image
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.style_losses[-1] < 0.5 * result.style_losses[0]


def test_texture_synthesis_lowers_the_style_loss_and_is_seeded():
    style = smooth_image(2, size=24)
    kwargs = dict(size=16, steps=10, style_layers=("relu1_1", "relu2_1"), **FAST)
    result = texture_synthesis(style, seed=0, **kwargs)
    assert result.image.shape == (1, 3, 16, 16)
    assert result.losses[-1] < 0.1 * result.losses[0]
    assert torch.equal(result.image, texture_synthesis(style, seed=0, **kwargs).image)
    assert not torch.equal(result.image, texture_synthesis(style, seed=1, **kwargs).image)


def test_bad_inputs_are_clear_errors():
    image = smooth_image(0, size=16)
    for args, kwargs, error in [((image * 2, image), {}, ValueError), ((image, image[0, :1]), {}, ValueError),
                                ((image, image), dict(optimizer="sgd"), ValueError),
                                ((image, image), dict(steps=0), ValueError),
                                ((image, image), dict(style_weight=-1.0), ValueError),
                                ((image, image), dict(style_layers=["relu7_1"]), KeyError),
                                ((image, image), dict(init="zeros"), ValueError),
                                ((image, image), dict(init=torch.rand(1, 3, 8, 8)), ValueError)]:
        with pytest.raises(error):
            style_transfer(*args, **(FAST | kwargs))
    with pytest.raises(ValueError):
        texture_synthesis(torch.rand(3, 3, 16, 16), **FAST)
