"""Models for the course: the embedded ShapesNet, and torchvision's ImageNet models offline.

ShapesNet's weights ship in ``data/`` with their sha256; loading checks it and never unpickles
arbitrary objects. ImageNet weights are used only when already in the local torch cache:
nothing here downloads at run time except the explicit ``python -m vislib.models download``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from vislib.data import SHAPE_CLASSES

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
WEIGHTS_FILE = DATA_DIR / "shapes_net.pt"
METADATA_FILE = DATA_DIR / "shapes_net.json"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def shapes_net(pretrained: bool = True) -> ShapesNet:
    """ShapesNet in eval mode, with the trained weights from ``data/`` (sha256 checked)."""
    model = ShapesNet()
    if pretrained:
        if not METADATA_FILE.exists() or not WEIGHTS_FILE.exists():
            raise WeightsError(f"ShapesNet weights are missing in {DATA_DIR}; run `make weights`")
        meta = json.loads(METADATA_FILE.read_text())
        model.load_state_dict(verified_state_dict(WEIGHTS_FILE, meta["sha256"]))
    return model.eval()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_state_dict(path: Path, sha256: str) -> dict:
    """Load a state dict after checking the file's sha256 (a prefix is accepted, as in
    torchvision's file names), with ``weights_only=True`` so no arbitrary object is unpickled."""
    actual = file_sha256(path)
    if not sha256 or not actual.startswith(sha256.lower()):
        raise WeightsError(
            f"{path} has sha256 {actual}, expected {sha256}: the file is corrupt or not the "
            "recorded one. Restore it (git checkout data/) or rebuild it (make weights)."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- torchvision


def _imagenet_weights(name: str):
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as error:
        raise ValueError(f"unknown torchvision model {name!r}") from error


def _cache_path(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def pretrained_available(name: str) -> bool:
    """True when the ImageNet weights of torchvision model ``name`` are in the local cache."""
    return _cache_path(_imagenet_weights(name)).exists()


def torchvision_model(name: str, pretrained: bool = True, seed: int = 0) -> nn.Module:
    """A torchvision model in eval mode: ImageNet weights from the local torch cache, or
    (``pretrained=False``) random weights drawn from ``seed``. Never downloads."""
    from torchvision.models import get_model

    if not pretrained:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_model(name, weights=None).eval()
    weights = _imagenet_weights(name)
    path = _cache_path(weights)
    if not path.exists():
        raise WeightsError(
            f"ImageNet weights for {name} are not in the local torch cache ({path}). "
            f"On a machine with internet run `python -m vislib.models download {name}`, "
            "or copy the file there by hand; vislib never downloads while you work."
        )
    # torchvision's file names end in the first hex digits of the file's sha256.
    expected = path.stem.rsplit("-", 1)[-1]
    model = get_model(name, weights=None)
    model.load_state_dict(verified_state_dict(path, expected))
    return model.eval()


def download(name: str) -> Path:
    """Fetch torchvision's ImageNet weights into the torch cache (refused when offline)."""
    if os.environ.get("VISLIB_OFFLINE") == "1":
        raise WeightsError("VISLIB_OFFLINE=1 is set: refusing to download weights")
    weights = _imagenet_weights(name)
    path = _cache_path(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=path.stem.rsplit("-", 1)[-1])
    return path


# --------------------------------------------------------------------------- images


def preprocess(img, size: int | None = None, normalize: bool = True) -> torch.Tensor:
    """A PIL image, array or tensor -> float tensor [1,3,H,W], ImageNet-normalised.

    Greyscale is repeated to RGB; an alpha channel is composited on white. Arrays may be
    uint8 [0,255] or float [0,1], HxW, HxWxC; tensors CxH xW or BxCxHxW in [0,1].
    ``size`` resizes the shorter side and centre-crops a square. ``normalize=False`` keeps
    [0,1] (ShapesNet's input space).
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
        x = img.float()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ValueError(f"expected a [C,H,W] or [B,C,H,W] tensor, got shape {tuple(img.shape)}")
    else:
        raise TypeError(f"expected a PIL image, numpy array or tensor, got {type(img).__name__}")
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


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "download":
        print("usage: python -m vislib.models download MODEL_NAME   (e.g. resnet18)")
        return 2
    print(f"saved {download(argv[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
