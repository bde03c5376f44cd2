import math

import numpy as np
import pytest
import torch
from PIL import Image

from vislib.data import SAMPLE_IMAGES, SHAPE_CLASSES, _in_star_polygon, load_digits, make_shapes, sample_image


def test_same_seed_same_tensors_and_other_seed_differs():
    a, b, c = make_shapes(40, seed=3), make_shapes(40, seed=3), make_shapes(40, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)


def test_shapes_and_ranges():
    d = make_shapes(20, seed=0, size=48)
    assert d.images.shape == (20, 3, 48, 48) and d.images.dtype == torch.float32
    assert d.labels.shape == (20,) and d.labels.dtype == torch.long
    assert d.masks.shape == (20, 48, 48) and d.masks.dtype == torch.bool
    assert 0.0 <= d.images.min() and d.images.max() <= 1.0
    assert len(d) == 20 and d[3][1] == d.labels[3]


def test_classes_are_balanced():
    d = make_shapes(801, seed=1)
    counts = torch.bincount(d.labels, minlength=len(SHAPE_CLASSES))
    assert len(SHAPE_CLASSES) >= 8
    assert counts.max() - counts.min() <= 1


def test_mask_marks_exactly_the_object():
    # Inside the mask every pixel has the object's colour (up to the pixel noise, +-0.07);
    # and the object covers a plausible area for its radius.
    d = make_shapes(64, seed=2)
    for image, mask in zip(d.images, d.masks, strict=True):
        inside = image[:, mask]
        assert mask.sum() > 30
        spread = inside.max(dim=1).values - inside.min(dim=1).values
        assert (spread <= 0.14 + 1e-6).all(), "pixels under the mask are not one colour"
        # Pixels next to the object but outside the mask differ from the object colour somewhere.
        colour = inside.median(dim=1).values
        ring = torch.nn.functional.max_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0].bool() & ~mask
        outside = image[:, ring]
        assert ((outside - colour[:, None]).abs().max(dim=0).values > 0.14).float().mean() > 0.9


def test_mask_area_matches_the_geometry():
    # A circle of radius r covers about pi r^2 pixels: check the ratio area / max-extent^2.
    d = make_shapes(400, seed=5)
    for c, name in enumerate(SHAPE_CLASSES):
        if name != "circle":
            continue
        for mask in d.masks[d.labels == c]:
            ys, xs = torch.nonzero(mask, as_tuple=True)
            diameter = (xs.max() - xs.min() + 1).item()
            assert abs(mask.sum().item() / (math.pi * diameter**2 / 4) - 1) < 0.15


def test_regular_polygon_fold_is_exact():
    # A square (4 points, inner radius cos(pi/4)) of circumradius 1 is |u|+|v| <= 1 rotated by 45 degrees.
    u, v = torch.meshgrid(torch.linspace(-1.2, 1.2, 101), torch.linspace(-1.2, 1.2, 101), indexing="ij")
    square = _in_star_polygon(u, v, 4, math.cos(math.pi / 4))
    expected = (u.abs() + v.abs()) <= 1
    assert (square != expected).float().mean() < 0.005  # only boundary rounding


def test_several_objects_have_their_own_masks_and_classes():
    d = make_shapes(30, seed=0, size=128, objects=2)
    assert d.object_labels.shape == (30, 2) and d.object_masks.shape == (30, 2, 128, 128)
    assert (d.object_labels[:, 0] != d.object_labels[:, 1]).all()
    assert not (d.object_masks[:, 0] & d.object_masks[:, 1]).any()
    assert torch.equal(d.masks, d.object_masks[:, 0]) and torch.equal(d.labels, d.object_labels[:, 0])


@pytest.mark.parametrize("bad", [dict(n=0), dict(n=2.5), dict(n=4, size=8), dict(n=4, objects=5)])
def test_bad_arguments_are_errors(bad):
    with pytest.raises(ValueError):
        make_shapes(**bad)


@pytest.mark.parametrize("name", SAMPLE_IMAGES)
def test_sample_images_are_rgb_photos(name):
    image = sample_image(name)
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert min(image.size) >= 200 and np.asarray(image).std() > 10


def test_unknown_sample_image_lists_valid_names():
    with pytest.raises(ValueError, match="chelsea"):
        sample_image("dog")


def test_digits():
    digits = load_digits()
    assert digits.images.shape == (1797, 1, 8, 8) and digits.labels.shape == (1797,)
    assert digits.images.min() == 0 and digits.images.max() == 1
    assert set(digits.labels.tolist()) == set(range(10))
