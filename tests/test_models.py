import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from vislib import models
from vislib.data import make_shapes
from vislib.models import (
    IMAGENET_MEAN,
    WeightsError,
    deprocess,
    file_sha256,
    preprocess,
    pretrained_available,
    shapes_net,
    torchvision_model,
    verified_state_dict,
)
from vislib.train import HELD_OUT_SEED, accuracy


def test_shapes_net_is_in_eval_mode_with_inplace_relu_and_gap_linear_head(shapes_model):
    assert not shapes_model.training
    relus = [m for m in shapes_model.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and all(m.inplace for m in relus)
    assert isinstance(shapes_model.pool, torch.nn.AdaptiveAvgPool2d) and isinstance(shapes_model.fc, torch.nn.Linear)
    assert shapes_model(torch.rand(2, 3, 64, 64)).shape == (2, 8)


def test_recorded_metadata_matches_the_weights_file():
    meta = json.loads(models.METADATA_FILE.read_text())
    assert meta["sha256"] == file_sha256(models.WEIGHTS_FILE)
    assert meta["held_out_accuracy"] >= 0.98
    assert meta["held_out"]["seed"] == HELD_OUT_SEED


def test_held_out_accuracy_is_reproduced(shapes_model):
    # 1,000 of the held-out images (drawn from a seed training never used): the recorded figure holds.
    held_out = make_shapes(1000, seed=HELD_OUT_SEED)
    assert accuracy(shapes_model, held_out.images, held_out.labels) >= 0.98


def test_wrong_sha256_is_a_clear_error(tmp_path, monkeypatch):
    weights = tmp_path / "shapes_net.pt"
    weights.write_bytes(models.WEIGHTS_FILE.read_bytes() + b"tampered")
    with pytest.raises(WeightsError, match="sha256"):
        verified_state_dict(weights, json.loads(models.METADATA_FILE.read_text())["sha256"])
    monkeypatch.setattr(models, "WEIGHTS_FILE", weights)
    with pytest.raises(WeightsError, match="corrupt"):
        shapes_net()


def test_missing_weights_say_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "WEIGHTS_FILE", tmp_path / "absent.pt")
    with pytest.raises(WeightsError, match="make weights"):
        shapes_net()


class NotAStateDict:
    """A pickled object that runs code on load would be an attack; weights_only must refuse it."""


def test_arbitrary_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": NotAStateDict()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        verified_state_dict(path, file_sha256(path))


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    """No torch cache, VISLIB_OFFLINE=1, and any attempt to open a socket fails the test."""
    monkeypatch.setenv("VISLIB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("vislib tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return tmp_path / "hub" / "checkpoints"


def test_offline_imagenet_request_is_a_clear_error_without_network(offline_empty_cache):
    assert not pretrained_available("resnet18")
    with pytest.raises(WeightsError, match="python -m vislib.models download resnet18"):
        torchvision_model("resnet18")
    with pytest.raises(WeightsError, match="VISLIB_OFFLINE"):
        models.download("resnet18")


def test_cached_imagenet_file_with_wrong_hash_is_refused(offline_empty_cache):
    offline_empty_cache.mkdir(parents=True)
    (offline_empty_cache / "resnet18-f37072fd.pth").write_bytes(b"not the real weights")
    assert pretrained_available("resnet18")
    with pytest.raises(WeightsError, match="sha256"):
        torchvision_model("resnet18")


def test_random_torchvision_models_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = torchvision_model("resnet18", pretrained=False), torchvision_model("resnet18", pretrained=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not a.training


def test_unknown_torchvision_model():
    with pytest.raises(ValueError, match="unknown torchvision model"):
        torchvision_model("resnet7")


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P"])
def test_preprocess_pil_modes(mode):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).convert(mode)
    x = preprocess(image.convert("RGBA") if mode == "P" else image, size=32)
    assert x.shape == (1, 3, 32, 32) and torch.isfinite(x).all()


def test_preprocess_arrays_tensors_and_roundtrip():
    rng = np.random.default_rng(0)
    array = rng.random((20, 30, 3)).astype(np.float32)
    x = preprocess(array)
    assert x.shape == (1, 3, 20, 30)
    assert torch.allclose(deprocess(x)[0].permute(1, 2, 0), torch.from_numpy(array), atol=1e-6)
    grey = preprocess((array[..., 0] * 255).astype(np.uint8), normalize=False)
    assert torch.equal(grey[:, 0], grey[:, 1]) and grey.max() <= 1
    assert preprocess(torch.rand(2, 3, 10, 10)).shape == (2, 3, 10, 10)
    white = preprocess(np.ones((4, 4, 4), dtype=np.float32))
    assert torch.allclose(white[0, :, 0, 0], (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(models.IMAGENET_STD))


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2, 2, 2)), torch.zeros(5, 5), np.zeros((4, 4, 5)), "cat.jpg"])
def test_preprocess_rejects_bad_input(bad):
    with pytest.raises((ValueError, TypeError)):
        preprocess(bad)
