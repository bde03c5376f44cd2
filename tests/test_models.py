import json
import re
import socket
from pathlib import Path

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
    prepare_test_cache,
    preprocess,
    pretrained_available,
    shapes_net,
    stand_in_weights,
    torchvision_model,
    verified_state_dict,
    write_stand_in_weights,
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


def test_the_weights_are_package_data_inside_vislib():
    # Read through importlib.resources, so an installed wheel has them (tests/test_wheel.py installs one).
    import vislib

    folder = Path(vislib.__file__).resolve().parent / "weights"
    assert Path(models.weights_folder()) == folder
    files = [models.WEIGHTS_FILE, models.METADATA_FILE, *models.weights_files(robust=True)]
    assert [Path(f).resolve().parent for f in files] == [folder] * 4 and all(f.is_file() for f in files)


def test_robust_shapes_net_is_recorded_and_robust(shapes_model):
    """The robust ShapesNet's file matches its record, which says how it was trained; on held-out
    shapes its recorded accuracies hold, and PGD at 8/255 barely moves it while it breaks the
    standard network."""
    from vislib.adversarial import pgd
    from vislib.train import PGD_EVALUATION_STEPS, ROBUST_EPS, ROBUST_MIN_ACCURACY

    weights, metadata = models.weights_files(robust=True)
    meta = json.loads(metadata.read_text())
    assert meta["sha256"] == file_sha256(weights) and meta["file"] == weights.name
    assert meta["training"]["attack"]["eps"] == ROBUST_EPS and meta["held_out"]["seed"] == HELD_OUT_SEED
    assert meta["held_out_accuracy"] >= ROBUST_MIN_ACCURACY
    robust = shapes_net(robust=True)
    held_out = make_shapes(200, seed=HELD_OUT_SEED)
    clean = accuracy(robust, held_out.images, held_out.labels)
    attacked_set = held_out.images[:100], held_out.labels[:100]  # PGD is 10 forward and backward passes
    attacked = {name: accuracy(model, pgd(model, *attacked_set, ROBUST_EPS, steps=PGD_EVALUATION_STEPS),
                               attacked_set[1])
                for name, model in [("robust", robust), ("standard", shapes_model)]}
    assert clean >= meta["held_out_accuracy"] - 0.05
    assert attacked["robust"] >= meta["held_out_pgd_accuracy"] - 0.1
    assert attacked["robust"] > attacked["standard"] + 0.5
    with pytest.raises(TypeError, match="robust"):
        shapes_net(robust="yes")


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


def test_short_or_malformed_expected_sha256_is_refused(tmp_path, monkeypatch):
    # One matching hex digit used to be enough: a tampered file passes 1 time in 16.
    weights = tmp_path / "shapes_net.pt"
    weights.write_bytes(models.WEIGHTS_FILE.read_bytes() + b"tampered")
    digest = file_sha256(weights)
    for expected in [digest[:1], digest[:63], "", "g" * 64, digest + "0"]:
        with pytest.raises(WeightsError, match="64 hex digits"):
            verified_state_dict(weights, expected)
    # torchvision's file names carry 8 hex digits: that many are enough there, fewer are not.
    assert verified_state_dict(weights, digest[:8].upper(), min_digits=8).keys()
    for expected in [digest[:7], "f37072fz"]:
        with pytest.raises(WeightsError, match="8 to 64 hex digits"):
            verified_state_dict(weights, expected, min_digits=8)
    # ShapesNet's record must hold the whole digest.
    record = tmp_path / "shapes_net.json"
    record.write_text(json.dumps({"sha256": digest[:1]}))
    monkeypatch.setattr(models, "WEIGHTS_FILE", weights)
    monkeypatch.setattr(models, "METADATA_FILE", record)
    with pytest.raises(WeightsError, match="make weights"):
        shapes_net()


@pytest.mark.parametrize("text, problem", [('{"file": "shapes_net.pt"}', 'no "sha256"'), ("[]", 'no "sha256"'),
                                           ('{"sha256": "73', "not valid JSON")])
def test_broken_record_is_a_clear_error(tmp_path, monkeypatch, text, problem):
    record = tmp_path / "shapes_net.json"
    record.write_text(text)
    monkeypatch.setattr(models, "METADATA_FILE", record)
    with pytest.raises(WeightsError, match=f"{problem}.*git checkout vislib/weights/.*make weights"):
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


def test_cached_imagenet_file_with_wrong_hash_is_refused_with_download_advice(offline_empty_cache):
    offline_empty_cache.mkdir(parents=True)
    (offline_empty_cache / "resnet18-f37072fd.pth").write_bytes(b"not the real weights")
    assert pretrained_available("resnet18")
    with pytest.raises(WeightsError, match="sha256") as error:
        torchvision_model("resnet18")
    assert "Delete it" in str(error.value) and "python -m vislib.models download resnet18" in str(error.value)
    assert "make weights" not in str(error.value)


def test_empty_file_or_directory_is_not_available(offline_empty_cache):
    offline_empty_cache.mkdir(parents=True)
    (offline_empty_cache / "resnet18-f37072fd.pth").touch()
    (offline_empty_cache / "resnet50-11ad3fa6.pth").mkdir()
    assert not pretrained_available("resnet18") and not pretrained_available("resnet50")
    with pytest.raises(WeightsError, match="missing or empty"):
        torchvision_model("resnet18")


# --------------------------------------------------------------------------- stand-in weights
STAND_IN = "squeezenet1_0"  # the smallest of torchvision's ImageNet models: quick to write


@pytest.fixture
def stand_in(offline_empty_cache, monkeypatch):
    """A stand-in for STAND_IN written into the empty cache, VISLIB_STAND_IN_WEIGHTS unset; its sha256."""
    monkeypatch.delenv(models.STAND_IN_VARIABLE, raising=False)
    return write_stand_in_weights(STAND_IN, offline_empty_cache.parent.parent)


def test_stand_in_is_a_seeded_random_model_loadable_without_unpickling_objects(stand_in, offline_empty_cache):
    (path,) = offline_empty_cache.iterdir()
    assert path.name == "squeezenet1_0-b66bff10.pth" and file_sha256(path) == stand_in
    state = torch.load(path, weights_only=True)
    random = torchvision_model(STAND_IN, pretrained=False).state_dict()
    assert state.keys() == random.keys() and all(torch.equal(state[k], random[k]) for k in state)
    with pytest.raises(FileExistsError):  # never over real weights
        write_stand_in_weights(STAND_IN, offline_empty_cache.parent.parent)


@pytest.mark.parametrize("variable", [None, "", "0" * 64])
def test_stand_in_is_refused_unless_its_sha256_is_listed(stand_in, monkeypatch, variable):
    if variable is not None:
        monkeypatch.setenv(models.STAND_IN_VARIABLE, variable)
    with pytest.raises(WeightsError, match="has sha256 .*expected b66bff10"):
        torchvision_model(STAND_IN)
    assert not stand_in_weights(STAND_IN)


@pytest.mark.parametrize("variable", ["1", "true", "prefix8", "prefix63", "plus1"])
def test_stand_in_override_takes_nothing_but_full_digests(stand_in, monkeypatch, variable):
    # The override cannot be switched on by accident: a flag or a prefix is an error, not a yes.
    value = {"prefix8": stand_in[:8], "prefix63": stand_in[:63], "plus1": stand_in + "0"}.get(variable, variable)
    monkeypatch.setenv(models.STAND_IN_VARIABLE, value)
    for call in (torchvision_model, stand_in_weights):
        with pytest.raises(WeightsError, match="must list full sha256 digests"):
            call(STAND_IN)


def test_listed_stand_in_loads_with_a_warning_and_says_so(stand_in, monkeypatch, offline_empty_cache):
    assert not stand_in_weights(STAND_IN)
    monkeypatch.setenv(models.STAND_IN_VARIABLE, f"{'ab' * 32}, {stand_in.upper()}")
    with pytest.warns(UserWarning, match="STAND-IN"):
        model = torchvision_model(STAND_IN)
    assert torch.equal(model.features[0].weight, torchvision_model(STAND_IN, pretrained=False).features[0].weight)
    assert stand_in_weights(STAND_IN) and not stand_in_weights("resnet18")
    # Only torchvision files can be stand-ins: ShapesNet's check ignores the list.
    with pytest.raises(WeightsError, match="sha256"):
        verified_state_dict(next(offline_empty_cache.iterdir()), "0" * 64)


def test_make_notebooks_gives_every_imagenet_section_weights():
    # `make notebooks` fills the test cache for IMAGENET_MODELS: a notebook asking for another model
    # would skip its ImageNet section in CI without anyone noticing.
    root = Path(__file__).resolve().parent.parent
    sources = ["".join(cell["source"]) for path in (root / "notebooks").glob("*.ipynb")
               for cell in json.loads(path.read_text())["cells"]]
    asked = {name for source in sources for name in re.findall(r'pretrained_available\("(\w+)"\)', source)}
    (line,) = [line for line in (root / "Makefile").read_text().splitlines() if line.startswith("IMAGENET_MODELS")]
    assert asked and asked == set(line.split(":=")[1].split())


def test_test_cache_links_real_weights_and_writes_stand_ins_for_the_rest(offline_empty_cache, tmp_path):
    offline_empty_cache.mkdir(parents=True)
    real = offline_empty_cache / "resnet18-f37072fd.pth"
    real.write_bytes(b"whatever the learner downloaded")
    home = tmp_path / "test_home"
    digests = prepare_test_cache(home, ["resnet18", STAND_IN])
    assert (home / "hub" / "checkpoints" / real.name).resolve() == real.resolve()
    assert digests == file_sha256(home / "hub" / "checkpoints" / "squeezenet1_0-b66bff10.pth")


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


def test_preprocess_divides_uint8_tensors_by_255_like_arrays():
    # torchvision.io.read_image returns uint8 [C,H,W]: it used to be clamped to white.
    array = np.random.default_rng(0).integers(0, 200, (12, 10, 3), dtype=np.uint8)
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    assert torch.equal(preprocess(tensor, normalize=False), preprocess(array, normalize=False))
    assert preprocess(tensor, normalize=False).max() == array.max() / 255  # not white
    # A float image that overshoots 1 a little (bicubic resampling) is clamped, not refused.
    assert torch.equal(preprocess(torch.ones(3, 2, 2) * 1.04, normalize=False), torch.ones(1, 3, 2, 2))


@pytest.mark.parametrize("image", [np.full((4, 4, 3), 200.0), torch.full((3, 4, 4), 255.0),
                                   np.full((4, 4), 2, dtype=np.int64), torch.full((1, 3, 2, 2), 1.2)])
def test_preprocess_refuses_floats_in_0_255(image):
    with pytest.raises(ValueError, match="img holds values up to .*divide it by 255"):
        preprocess(image)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_preprocess_refuses_nan_and_inf(value):
    image = torch.rand(3, 4, 4)
    image[0, 1, 2] = value
    with pytest.raises(ValueError, match="img contains NaN or infinite"):
        preprocess(image)
    with pytest.raises(ValueError, match="img contains NaN or infinite"):
        preprocess(image.permute(1, 2, 0).numpy())


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2, 2, 2)), torch.zeros(5, 5), np.zeros((4, 4, 5)), "cat.jpg"])
def test_preprocess_rejects_bad_input(bad):
    with pytest.raises((ValueError, TypeError)):
        preprocess(bad)
