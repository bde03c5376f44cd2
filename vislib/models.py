"""Models for the course: the embedded ShapesNet, and torchvision's ImageNet models offline.

ShapesNet's weights ship inside the package, in ``vislib/weights/`` (package data, read with
``importlib.resources``, so an installed wheel has them too), each beside its record with the
file's sha256; loading checks it and never unpickles arbitrary objects. ImageNet weights are
used only when already in the local torch cache: nothing here downloads at run time except the
explicit ``python -m vislib.models download``.

Tests run the ImageNet code paths without ImageNet weights through *stand-ins*: seeded random
models saved at torchvision's file names in a temporary torch cache (``write_stand_in_weights``).
The loader accepts such a file only when the environment variable ``VISLIB_STAND_IN_WEIGHTS``
holds its full sha256, and warns every time it does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import warnings
from collections import OrderedDict
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from vislib.data import SHAPE_CLASSES

if TYPE_CHECKING:  # importlib.resources.abc is Python 3.11's; vislib runs on 3.10
    from importlib.resources.abc import Traversable

# Package data: a folder of the package in a checkout (editable install) and in an installed wheel.
WEIGHTS_DIR: Traversable = files("vislib.weights")
WEIGHTS_FILE = WEIGHTS_DIR / "shapes_net.pt"
METADATA_FILE = WEIGHTS_DIR / "shapes_net.json"
ROBUST_WEIGHTS_FILE = WEIGHTS_DIR / "shapes_net_robust.pt"  # the same network, adversarially trained
ROBUST_METADATA_FILE = WEIGHTS_DIR / "shapes_net_robust.json"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

STAND_IN_VARIABLE = "VISLIB_STAND_IN_WEIGHTS"
_SHAPES_NET_FIX = ("Restore it (in a checkout: git checkout vislib/weights/; installed: reinstall vislib) "
                   "or rebuild it (make weights).")
# A float image may overshoot 1 this much (bicubic resampling, rounding) before it counts as 0-255;
# an image in 0-255 with any content goes far beyond it.
_RANGE_TOLERANCE = 0.05


class WeightsError(RuntimeError):
    """Weights are missing, or their file is not the one recorded."""


def best_device() -> torch.device:
    """CUDA when present, else Apple's MPS, else the CPU: notebooks run on all three."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# --------------------------------------------------------------------------- ShapesNet


class ShapesNet(nn.Module):
    """A small plain CNN for 64 px shapes: four conv-BN-ReLU stages, GAP, one linear layer.

    Layer names read like the lecture's diagrams: ``features.conv1`` ... ``features.relu4``
    (the last conv feature map, 8x8 at 64 px, the CAM layer), ``pool`` (global average
    pooling, the embedding) and ``fc`` (the class scores). Inputs are RGB in [0, 1].
    """

    widths = (16, 32, 64, 128)

    def __init__(self, num_classes: int = len(SHAPE_CLASSES)):
        super().__init__()
        layers = OrderedDict()
        channels = 3
        for i, width in enumerate(self.widths, start=1):
            layers[f"conv{i}"] = nn.Conv2d(channels, width, 3, padding=1, bias=False)
            layers[f"bn{i}"] = nn.BatchNorm2d(width)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            if i < len(self.widths):
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            channels = width
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        self.classes = SHAPE_CLASSES

        # Channels-last convolutions run about twice as fast on CPUs, for any input layout.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def shapes_net(pretrained: bool = True, robust: bool = False) -> ShapesNet:
    """ShapesNet in eval mode, with the trained weights from ``vislib/weights/`` (sha256 checked).

    ``robust=True``: the same network trained adversarially (PGD, ``python -m vislib.train
    --robust``), whose gradients look more like the shapes (notebook 07)."""
    model = ShapesNet()
    if pretrained:
        weights, metadata = weights_files(robust)
        if not metadata.is_file() or not weights.is_file():
            raise WeightsError(f"ShapesNet's weights or their record are missing ({weights}, {metadata}). "
                               + _SHAPES_NET_FIX)
        sha256 = _recorded_sha256(metadata)
        with as_file(weights) as path:  # the file itself; a temporary copy only if the package is zipped
            model.load_state_dict(verified_state_dict(path, sha256, fix=_SHAPES_NET_FIX))
    return model.eval()


def weights_files(robust: bool = False) -> tuple[Traversable, Traversable]:
    """(weights, record) of the standard or the robust ShapesNet in ``vislib/weights/``: package
    resources (``pathlib.Path`` objects when vislib is installed as files, as it is from a wheel or
    a checkout)."""
    if not isinstance(robust, bool):
        raise TypeError(f"robust must be True or False, got {robust!r}")
    return (ROBUST_WEIGHTS_FILE, ROBUST_METADATA_FILE) if robust else (WEIGHTS_FILE, METADATA_FILE)


def weights_folder() -> str:
    """The real path of the folder that holds ShapesNet's files: what a confined grading process
    (``vislib.grading``) may read although the rest of vislib is hidden from it."""
    return os.path.realpath(os.fspath(WEIGHTS_DIR))


def _recorded_sha256(metadata: Traversable) -> str:
    """The sha256 in a ShapesNet record, or a WeightsError saying what is wrong with the record."""
    try:
        return json.loads(metadata.read_text(encoding="utf-8"))["sha256"]
    except json.JSONDecodeError as error:
        problem = f"is not valid JSON ({error})"
    except (KeyError, TypeError):
        problem = "has no \"sha256\" entry"
    raise WeightsError(f"ShapesNet's record {metadata} {problem}, so its weights cannot be checked. "
                       + _SHAPES_NET_FIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_hex(text) -> bool:
    return isinstance(text, str) and re.fullmatch(r"[0-9a-fA-F]+", text) is not None


def verified_state_dict(path: Path, sha256: str, min_digits: int = 64, fix: str = "",
                        allow_stand_in: bool = False) -> dict:
    """Load a state dict after checking the file's sha256, with ``weights_only=True`` so no
    arbitrary object is unpickled.

    ``sha256`` is the expected digest: all 64 hex digits, or (torchvision's file names carry
    only the first 8) a prefix of at least ``min_digits``. ``fix`` is the advice the error
    gives. ``allow_stand_in``: also accept a file whose full sha256 is listed in
    ``VISLIB_STAND_IN_WEIGHTS`` (tests only; see ``write_stand_in_weights``), with a warning.
    """
    if not _is_hex(sha256) or not min_digits <= len(sha256) <= 64:
        digits = "64" if min_digits >= 64 else f"{min_digits} to 64"
        raise WeightsError(f"the expected sha256 of {path} must be {digits} hex digits, got {sha256!r}: "
                           f"a shorter or malformed digest would let another file pass. {fix}")
    actual = file_sha256(path)
    if not actual.startswith(sha256.lower()):
        if not (allow_stand_in and actual in _stand_in_digests()):
            raise WeightsError(f"{path} has sha256 {actual}, expected {sha256}: the file is corrupt or not the "
                               f"recorded one. {fix}")
        warnings.warn(f"{path} is a STAND-IN with random weights (accepted because {STAND_IN_VARIABLE} lists "
                      "its sha256), not the real weights: its predictions mean nothing", stacklevel=3)
    return torch.load(path, map_location="cpu", weights_only=True)


def _stand_in_digests() -> frozenset[str]:
    """The full sha256 digests listed in VISLIB_STAND_IN_WEIGHTS (comma separated)."""
    digests = frozenset(d.strip().lower() for d in os.environ.get(STAND_IN_VARIABLE, "").split(",") if d.strip())
    malformed = sorted(d for d in digests if not (_is_hex(d) and len(d) == 64))
    if malformed:
        raise WeightsError(f"{STAND_IN_VARIABLE} must list full sha256 digests (64 hex digits, comma separated), "
                           f"got {', '.join(malformed)}; unset it unless a test wrote stand-in weights")
    return digests


# --------------------------------------------------------------------------- torchvision


def _imagenet_weights(name: str):
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as error:
        raise ValueError(f"unknown torchvision model {name!r}") from error


def _cache_path(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _name_hash(path: Path) -> str:
    """The sha256 prefix in a torchvision file name: resnet18-f37072fd.pth -> f37072fd."""
    return path.stem.rsplit("-", 1)[-1]


def _imagenet_fix(name: str) -> str:
    return (f"Delete it and download it again on a machine with internet: "
            f"`python -m vislib.models download {name}`.")


def pretrained_available(name: str) -> bool:
    """True when the ImageNet weights of torchvision model ``name`` are in the local cache (a
    regular, non-empty file; its sha256 is checked when it is loaded)."""
    path = _cache_path(_imagenet_weights(name))
    return path.is_file() and path.stat().st_size > 0


def stand_in_weights(name: str) -> bool:
    """True when the cached ImageNet weights of ``name`` are a stand-in accepted through
    VISLIB_STAND_IN_WEIGHTS: random weights that run the ImageNet code paths in tests, so
    notebooks assert only what holds for any weights (shapes, finite values), not what the
    network recognises. Reads the file only when that variable is set."""
    if not os.environ.get(STAND_IN_VARIABLE) or not pretrained_available(name):
        return False
    return file_sha256(_cache_path(_imagenet_weights(name))) in _stand_in_digests()


def torchvision_model(name: str, pretrained: bool = True, seed: int = 0) -> nn.Module:
    """A torchvision model in eval mode: ImageNet weights from the local torch cache, or
    (``pretrained=False``) random weights drawn from ``seed``. Never downloads."""
    from torchvision.models import get_model

    if not pretrained:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_model(name, weights=None).eval()
    path = _cache_path(_imagenet_weights(name))
    if not pretrained_available(name):
        raise WeightsError(
            f"ImageNet weights for {name} are not in the local torch cache ({path} is missing or empty). "
            f"On a machine with internet run `python -m vislib.models download {name}`, "
            "or copy the file there by hand; vislib never downloads while you work."
        )
    model = get_model(name, weights=None)
    model.load_state_dict(verified_state_dict(path, _name_hash(path), min_digits=8, fix=_imagenet_fix(name),
                                              allow_stand_in=True))
    return model.eval()


def download(name: str) -> Path:
    """Fetch torchvision's ImageNet weights into the torch cache (refused when offline)."""
    if os.environ.get("VISLIB_OFFLINE") == "1":
        raise WeightsError("VISLIB_OFFLINE=1 is set: refusing to download weights")
    weights = _imagenet_weights(name)
    path = _cache_path(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=_name_hash(path))
    return path


def write_stand_in_weights(name: str, torch_home, seed: int = 0) -> str:
    """Save a seeded random ``name`` (its state dict) at torchvision's file name in the cache of
    ``torch_home`` (a test's temporary TORCH_HOME), so that tests run the ImageNet code paths
    without the weights. Returns the file's sha256: the loader refuses the file unless
    VISLIB_STAND_IN_WEIGHTS lists it. Never overwrites a file (real weights may be there)."""
    path = Path(torch_home) / "hub" / "checkpoints" / os.path.basename(_imagenet_weights(name).url)
    if path.exists():
        raise FileExistsError(f"{path} exists; write stand-ins only into an empty temporary torch_home")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision_model(name, pretrained=False, seed=seed).state_dict(), path)
    return file_sha256(path)


# --------------------------------------------------------------------------- images


def preprocess(img, size: int | None = None, normalize: bool = True) -> torch.Tensor:
    """A PIL image, array or tensor -> float tensor [1,3,H,W], ImageNet-normalised.

    Greyscale is repeated to RGB; an alpha channel is composited on white. Arrays may be
    HxW or HxWxC, tensors CxHxW or BxCxHxW (as ``torchvision.io.read_image`` returns them);
    uint8 values are divided by 255, other values must already lie in [0,1]: a float image in
    0-255 or with NaN/Inf is a ValueError, never silently clamped. ``size`` resizes the shorter
    side and centre-crops a square. ``normalize=False`` keeps [0,1] (ShapesNet's input space).
    """
    if isinstance(img, Image.Image):
        img = np.asarray(img)
    if isinstance(img, np.ndarray):
        array = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise ValueError(f"expected an HxW or HxWxC image array, got shape {img.shape}")
        x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    elif isinstance(img, torch.Tensor):
        x = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ValueError(f"expected a [C,H,W] or [B,C,H,W] tensor, got shape {tuple(img.shape)}")
    else:
        raise TypeError(f"expected a PIL image, numpy array or tensor, got {type(img).__name__}")
    if not torch.isfinite(x).all():
        raise ValueError("img contains NaN or infinite values")
    if x.numel() and x.max() > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"img holds values up to {x.max().item():g}, but a float image must lie in [0, 1]: "
                         "divide it by 255 (or pass it as uint8)")
    channels = x.shape[1]
    if channels == 4:  # composite on white
        alpha = x[:, 3:]
        x = x[:, :3] * alpha + (1 - alpha)
    elif channels == 2:  # grey + alpha
        alpha = x[:, 1:]
        x = (x[:, :1] * alpha + (1 - alpha)).expand(-1, 3, -1, -1)
    elif channels == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels != 3:
        raise ValueError(f"expected 1 to 4 colour channels, got {channels}")
    if size is not None:
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                          mode="bilinear", antialias=True, align_corners=False)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top : top + size, left : left + size]
    x = x.clamp(0, 1).contiguous()
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def deprocess(x: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation: a tensor [..,3,H,W] -> the same shape in [0,1], on the CPU."""
    x = x.detach().float().cpu()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def prepare_test_cache(torch_home, names) -> str:
    """Fill the empty ``torch_home`` for a test run of the ImageNet sections: each model's real
    weights, linked, when the local cache has them, else a stand-in. Returns the stand-ins'
    digests, comma separated: the value VISLIB_STAND_IN_WEIGHTS needs."""
    digests = []
    for name in names:
        if pretrained_available(name):
            real = _cache_path(_imagenet_weights(name))
            link = Path(torch_home) / "hub" / "checkpoints" / real.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(real.resolve())
            print(f"{name}: your cached ImageNet weights ({real})", file=sys.stderr)
        else:
            digests.append(write_stand_in_weights(name, torch_home))
            print(f"{name}: STAND-IN random weights (no ImageNet weights in your cache)", file=sys.stderr)
    return ",".join(digests)


_USAGE = """usage: python -m vislib.models download MODEL_NAME        (e.g. resnet18)
       python -m vislib.models test-cache DIR MODEL_NAME...  (tests: real weights or stand-ins in DIR)"""


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "download":
        print(f"saved {download(argv[1])}")
    elif len(argv) >= 3 and argv[0] == "test-cache":
        print(prepare_test_cache(argv[1], argv[2:]))
    else:
        print(_USAGE)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
