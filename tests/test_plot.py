import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vislib import plot  # noqa: E402


def test_to_image_layouts_and_clipping():
    chw = torch.rand(3, 5, 7) * 2
    image = plot.to_image(chw)
    assert image.shape == (5, 7, 3) and image.max() <= 1
    assert plot.to_image(np.zeros((1, 5, 7))).shape == (5, 7)
    with pytest.raises(ValueError):
        plot.to_image(np.zeros((2, 2, 2, 2)))


def test_normalize_map_flat_map_stays_finite():
    assert np.array_equal(plot.normalize_map(torch.zeros(4, 4)), np.zeros((4, 4)))
    assert np.allclose(plot.normalize_map(np.array([1.0, 3.0])), [0.0, 1.0])


def test_confusion_matrix_counts():
    fig = plot.confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2], ["a", "b", "c"])
    ax = fig.axes[0]
    counts = ax.images[0].get_array()
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"


def test_grids_and_overlays_have_one_panel_per_image_with_titles():
    images = torch.rand(5, 3, 8, 8)
    fig = plot.show_images(images, titles=list("abcde"), ncols=3, suptitle="grid")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5 and [ax.get_title() for ax in shown] == list("abcde")
    fig = plot.overlay_grid(images, torch.rand(5, 4, 4), titles=list("abcde"))
    assert sum(len(ax.images) == 2 for ax in fig.axes) == 5  # image + heatmap in each panel


def test_magnified_change_is_grey_at_zero_and_full_contrast_at_the_largest():
    from vislib.plot import magnified

    change = torch.zeros(1, 3, 2, 2)
    change[0, 0, 0, 0], change[0, 1, 1, 1] = 0.02, -0.01
    picture = magnified(change)
    assert picture.shape == (2, 2, 3)
    assert picture[0, 0, 0] == 1.0 and picture[1, 1, 1] == 0.25 and picture[0, 1, 2] == 0.5
    assert (magnified(torch.zeros(3, 2, 2)) == 0.5).all()
