"""Data for the course: synthetic shapes with ground-truth masks, real photos, real digits.

The shapes are what make explanations measurable: every image comes with a boolean mask of
exactly the pixels of its object, so a saliency map can be scored instead of only admired.
Generation is vectorised in torch (thousands of images per second on a laptop CPU) and
deterministic for a given seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")

# Regular shapes as "folded star polygons": (number of points, inner radius / outer radius).
# A regular n-gon is the star whose inner radius is cos(pi / n).
_POLYGONS = {
    "square": (4, math.cos(math.pi / 4)),
    "triangle": (3, math.cos(math.pi / 3)),
    "star": (5, 0.42),
    "hexagon": (6, math.cos(math.pi / 6)),
}
PIXEL_NOISE = 0.07  # every pixel's luminance gets uniform noise in [-PIXEL_NOISE, PIXEL_NOISE]
_CHUNK = 512  # images generated per vectorised step: bounds the memory of the pixel grids


@dataclass
class Shapes(torch.utils.data.Dataset):
    """A batch of synthetic shapes: images [n,3,S,S] in [0,1], labels [n], masks [n,S,S].

    With ``objects > 1`` each image holds several objects of distinct classes;
    ``object_labels`` [n,objects] and ``object_masks`` [n,objects,S,S] describe each one,
    while ``labels`` and ``masks`` describe the first.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    object_labels: torch.Tensor
    object_masks: torch.Tensor
    classes: tuple = SHAPE_CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def make_shapes(n: int, seed: int = 0, size: int = 64, objects: int = 1) -> Shapes:
    """Draw ``n`` images of coloured shapes on textured, cluttered backgrounds.

    Classes are balanced (``n // 8`` or one more each, in shuffled order). Each object has a
    random position, scale, rotation and colour; the background is low-frequency colour
    texture plus pixel noise, with thin line segments and dots as clutter that belong to no
    class. Everything is decided by ``seed``: the same arguments give the same tensors.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    if objects not in (1, 2, 3, 4):
        raise ValueError(f"objects must be 1 to 4 (one per image quadrant), got {objects!r}")
    gen = torch.Generator().manual_seed(seed)
    k = len(SHAPE_CLASSES)
    # Balanced, shuffled classes; with several objects, each image gets distinct classes.
    first = torch.arange(n) % k
    first = first[torch.randperm(n, generator=gen)]
    offsets = torch.stack([torch.randperm(k - 1, generator=gen)[: objects - 1] + 1 for _ in range(n)]) \
        if objects > 1 else torch.zeros(n, 0, dtype=torch.long)
    object_labels = torch.cat([first[:, None], (first[:, None] + offsets) % k], dim=1)

    images = torch.empty(n, 3, size, size)
    object_masks = torch.empty(n, objects, size, size, dtype=torch.bool)
    for i in range(0, n, _CHUNK):
        _draw_chunk(object_labels[i : i + _CHUNK], gen, images[i : i + _CHUNK], object_masks[i : i + _CHUNK])
    return Shapes(
        images=images,
        labels=object_labels[:, 0].clone(),
        masks=object_masks[:, 0].clone(),
        object_labels=object_labels,
        object_masks=object_masks,
    )


def _draw_chunk(labels: torch.Tensor, gen: torch.Generator, images: torch.Tensor, masks: torch.Tensor):
    """Render one chunk in place: labels [m, objects] -> images [m,3,S,S], masks [m,objects,S,S].

    Paint layers (clutter, then objects) only record which layer is on top of each pixel;
    the colours are looked up once at the end, which is much cheaper than blending each layer.
    """
    m, objects = labels.shape
    size = images.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")

    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    # Background: a base colour, smooth colour texture (upsampled coarse noise).
    base = 0.15 + 0.7 * rand(m, 3, 1, 1)
    coarse = base + 0.35 * (rand(m, 3, 6, 6) - 0.5)
    images.copy_(F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False))

    top = torch.zeros(m, size, size, dtype=torch.uint8)  # which paint layer is on top; 0 = background
    layer = 0

    def paint(mask):
        nonlocal layer
        layer += 1
        top.masked_fill_(mask, layer)

    # Clutter: thin line segments and small dots, under the objects.
    for _ in range(3):
        p0, p1 = rand(m, 2) * size, rand(m, 2) * size
        paint(_segment_distance2(xs, ys, p0, p1) < 0.75**2)
    for _ in range(2):
        centre, radius = rand(m, 2) * size, 1.0 + 1.5 * rand(m)
        dot = (xs - centre[:, 0, None, None]) ** 2 + (ys - centre[:, 1, None, None]) ** 2
        paint(dot < radius[:, None, None] ** 2)
    palette = [torch.zeros(m, 3)] + [rand(m, 3) for _ in range(layer)]

    # Objects: each in its own cell of a 2x2 grid when there are several, so they never overlap.
    cells = torch.stack([torch.randperm(4, generator=gen)[:objects] for _ in range(m)])
    for j in range(objects):
        extent = size if objects == 1 else size / 2
        radius = extent * (0.2 + 0.12 * rand(m))
        low = radius + 1
        centre = low[:, None] + rand(m, 2) * (extent - 2 * low)[:, None]
        if objects > 1:
            centre = centre + extent * torch.stack([cells[:, j] % 2, cells[:, j] // 2], 1)
        angle = 2 * math.pi * rand(m)
        # Object-local coordinates: unit outer radius, rotated.
        dx = (xs - centre[:, 0, None, None]) / radius[:, None, None]
        dy = (ys - centre[:, 1, None, None]) / radius[:, None, None]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        for c, name in enumerate(SHAPE_CLASSES):
            rows = labels[:, j] == c
            if rows.any():
                masks[rows, j] = _inside(name, u[rows], v[rows])
        paint(masks[:, j])
        # A colour far from the background's base colour in every channel (circular shift).
        palette.append((base[:, :, 0, 0] + 0.35 + 0.3 * rand(m, 3)) % 1.0)

    colours = torch.stack(palette, 1)  # [m, layers + 1, 3]
    painted = colours[torch.arange(m)[:, None, None], top.long()].permute(0, 3, 1, 2)
    images.copy_(torch.where((top > 0)[:, None], painted, images))
    noise = rand(m, 1, size, size).sub_(0.5).mul_(2 * PIXEL_NOISE)  # uniform luminance noise, std 0.04
    images.add_(noise).clamp_(0.0, 1.0)


def _segment_distance2(xs, ys, p0, p1):
    """Squared distance of every pixel centre to the segment p0-p1, per image: [m,S,S]."""
    d = (p1 - p0)[:, :, None, None]
    px, py = xs - p0[:, 0, None, None], ys - p0[:, 1, None, None]
    length2 = (d**2).sum(1).clamp_min(1e-6)
    t = ((px * d[:, 0] + py * d[:, 1]) / length2).clamp(0, 1)
    return (px - t * d[:, 0]) ** 2 + (py - t * d[:, 1]) ** 2


def _inside(name: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Membership of local coordinates (outer radius 1) in the named shape."""
    r = torch.hypot(u, v)
    if name == "circle":
        return r <= 1.0
    if name == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if name == "cross":
        au, av = u.abs(), v.abs()
        return ((au <= 0.32) & (av <= 1.0)) | ((av <= 0.32) & (au <= 1.0))
    if name == "diamond":  # a rhombus, longer than wide, so it is no rotated square
        return u.abs() / 0.6 + v.abs() <= 1.0
    points, inner = _POLYGONS[name]
    return _in_star_polygon(u, v, points, inner)


def _in_star_polygon(u, v, points: int, inner: float):
    """Inside a star with tips at radius 1 and notches at ``inner``: fold into one half-sector.

    By symmetry, a point's angle is folded into [0, pi/points]; there the boundary is the
    straight edge from the tip (1, 0) to the notch at angle pi/points, radius ``inner``.
    """
    sector = 2 * math.pi / points
    phi = torch.atan2(v, u) % sector
    phi = torch.minimum(phi, sector - phi)
    r = torch.hypot(u, v)
    x, y = r * torch.cos(phi), r * torch.sin(phi)
    nx, ny = inner * math.sin(sector / 2), 1 - inner * math.cos(sector / 2)
    return nx * (x - 1) + ny * y <= 0


# --------------------------------------------------------------------------- real images

_SKIMAGE_SAMPLES = ("chelsea", "coffee", "astronaut", "rocket", "brick", "grass", "gravel")
SAMPLE_IMAGES = _SKIMAGE_SAMPLES + ("grace_hopper",)


def sample_image(name: str) -> Image.Image:
    """A real photograph or texture shipped inside an installed package, as an RGB PIL image.

    scikit-image: chelsea (a cat), coffee, astronaut, rocket, brick, grass, gravel;
    matplotlib: grace_hopper. Nothing is downloaded.
    """
    if name in _SKIMAGE_SAMPLES:
        import skimage.data

        array = getattr(skimage.data, name)()
    elif name == "grace_hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            array = np.asarray(Image.open(f).convert("RGB"))
    else:
        raise ValueError(f"unknown sample image {name!r}; choose one of {', '.join(SAMPLE_IMAGES)}")
    image = Image.fromarray(np.asarray(array))
    return image.convert("RGB")


@dataclass
class Digits(torch.utils.data.Dataset):
    """scikit-learn's 1,797 real handwritten digits: images [n,1,8,8] in [0,1], labels [n]."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple = tuple(str(d) for d in range(10))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def load_digits() -> Digits:
    """The UCI handwritten digits bundled with scikit-learn (no download), as tensors."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    return Digits(images=images, labels=torch.tensor(bunch.target, dtype=torch.long))
