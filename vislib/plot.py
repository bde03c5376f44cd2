"""Figures for the course: image grids, heatmap overlays, confusion matrices.

Every helper accepts tensors or arrays, images as [3,H,W], [H,W,3] or [H,W], and returns the
matplotlib Figure, with titles and labelled axes.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch


def to_numpy(x) -> np.ndarray:
    """A tensor (any device, with or without grad) or array as a float numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def to_image(x) -> np.ndarray:
    """An image as an [H,W,3] or [H,W] array in [0,1] (channels-first input is transposed)."""
    return np.clip(_channels_last(x), 0.0, 1.0)


def _channels_last(x) -> np.ndarray:
    """An image's values, unclipped, as an [H,W,3] or [H,W] array (one image of a batch of one;
    channels-first input is transposed)."""
    x = to_numpy(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = x.transpose(1, 2, 0)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3):
        raise ValueError(f"expected an image [3,H,W], [H,W,3] or [H,W], got shape {x.shape}")
    return x


def normalize_map(heatmap) -> np.ndarray:
    """A heatmap scaled to [0,1] by its min and max; a flat map becomes all zeros (never NaN)."""
    h = to_numpy(heatmap)
    low, span = h.min(), h.max() - h.min()
    return (h - low) / span if span > 0 else np.zeros_like(h)


def magnified(change) -> np.ndarray:
    """A small change of an image [C,H,W] or [1,C,H,W] made visible: 0 is mid-grey and the largest
    absolute change of the image reaches black or white (an all-zero change stays grey)."""
    change = _channels_last(change)
    largest = np.abs(change).max()
    return 0.5 + 0.5 * change / largest if largest > 0 else np.full_like(change, 0.5)


def _grid(n: int, ncols: int, size: float, suptitle: str | None):
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    return fig, axes.flat


def show_images(images, titles=None, ncols: int = 8, size: float = 1.6, cmap: str | None = None,
                suptitle: str | None = None, title_colors=None):
    """A grid of images with optional titles (and title colours, e.g. red for mistakes)."""
    images = list(images)
    fig, axes = _grid(len(images), ncols, size, suptitle)
    for i, (ax, image) in enumerate(zip(axes, images)):
        picture = to_image(image)
        ax.imshow(picture, cmap=cmap if picture.ndim == 2 else None, interpolation="nearest")
        if titles is not None:
            color = title_colors[i] if title_colors is not None else "black"
            ax.set_title(str(titles[i]), fontsize=8, color=color)
    fig.tight_layout()
    return fig


def overlay(image, heatmap, alpha: float = 0.5, cmap: str = "jet", ax=None, title: str | None = None):
    """Draw ``heatmap`` (any size; scaled to [0,1], stretched to the image) over ``image``."""
    picture = to_image(image)
    if ax is None:
        fig, ax = plt.subplots(figsize=(3, 3))
    h, w = picture.shape[:2]
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
    ax.imshow(normalize_map(heatmap), cmap=cmap, alpha=alpha, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
              interpolation="bilinear", vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def overlay_grid(images, heatmaps, titles=None, ncols: int = 6, alpha: float = 0.5, size: float = 2.0,
                 suptitle: str | None = None):
    """Several heatmap overlays side by side."""
    images, heatmaps = list(images), list(heatmaps)
    fig, axes = _grid(len(images), ncols, size, suptitle)
    for i, (ax, image, heatmap) in enumerate(zip(axes, images, heatmaps)):
        overlay(image, heatmap, alpha=alpha, ax=ax, title=None if titles is None else str(titles[i]))
    fig.tight_layout()
    return fig


def confusion_matrix(y_true, y_pred, classes, ax=None, title: str = "Confusion matrix"):
    """Counts of (true class, predicted class), with the counts written in each cell."""
    y_true, y_pred = to_numpy(y_true).astype(int), to_numpy(y_pred).astype(int)
    k = len(classes)
    counts = np.zeros((k, k), dtype=int)
    np.add.at(counts, (y_true, y_pred), 1)
    if ax is None:
        fig, ax = plt.subplots(figsize=(0.55 * k + 2, 0.55 * k + 1.5))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=8,
                        color="white" if counts[i, j] > counts.max() / 2 else "black")
    ax.figure.tight_layout()
    return ax.figure


def embedding_scatter(coords, labels=None, classes=None, images=None, thumbnails: int = 60, ax=None,
                      title: str | None = None, zoom: float = 0.35, seed: int = 0):
    """Points of a 2-D or 3-D projection [N,2|3], coloured by label (with a legend of ``classes``);
    with ``images`` (2-D only), a seeded random subset of ``thumbnails`` of them drawn at their
    points, framed in their class colour, so one sees what lies where."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    points = to_numpy(coords)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise ValueError(f"expected coordinates [N,2] or [N,3], got shape {points.shape}")
    dim = points.shape[1]
    if images is not None and dim == 3:
        raise ValueError("thumbnails are drawn on 2-D scatters only")
    labels = np.zeros(len(points), dtype=int) if labels is None else to_numpy(labels).astype(int)
    if ax is None:
        fig = plt.figure(figsize=(5.5, 4.5))
        ax = fig.add_subplot(projection="3d" if dim == 3 else None)
    colors = plt.get_cmap("tab10")(labels % 10)
    for k in np.unique(labels):
        chosen = labels == k
        name = classes[k] if classes is not None else str(k)
        ax.scatter(*points[chosen].T, s=8, color=colors[chosen][0], label=name, alpha=0.8)
    if images is not None:
        for i in np.random.default_rng(seed).permutation(len(points))[:thumbnails]:
            box = AnnotationBbox(OffsetImage(to_image(images[i]), zoom=zoom, cmap="gray"), points[i],
                                 frameon=True, pad=0.1, bboxprops={"edgecolor": colors[i], "linewidth": 1.5})
            ax.add_artist(box)
    for axis, setter in enumerate((ax.set_xlabel, ax.set_ylabel, getattr(ax, "set_zlabel", None))[:dim]):
        setter(f"component {axis + 1}")
    ax.legend(fontsize=7, markerscale=2, loc="best")
    if title:
        ax.set_title(title)
    return ax.figure


def activation_grid(maps: dict, channels: int = 8, size: float = 1.1, suptitle: str | None = None):
    """One row per layer: the first ``channels`` feature maps of one image ({name: [C,H,W]}),
    each scaled to its own range; the row label gives the layer and its shape."""
    fig, axes = plt.subplots(len(maps), channels, figsize=(size * channels, size * len(maps) + 0.4),
                             squeeze=False)
    for row, (name, fmap) in zip(axes, maps.items()):
        fmap = to_numpy(fmap)
        fmap = fmap[0] if fmap.ndim == 4 else fmap
        for c, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(fmap):
                ax.imshow(normalize_map(fmap[c]), cmap="viridis", interpolation="nearest")
                ax.set_title(f"ch {c}", fontsize=7)
        row[0].set_ylabel(f"{name}\n{fmap.shape[0]}x{fmap.shape[1]}x{fmap.shape[2]}", fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_boxes(images, boxes, titles=None, ncols: int = 8, size: float = 1.6, suptitle: str | None = None,
               color: str = "red"):
    """Images with one box each, (top, left, bottom, right) in pixels, ends exclusive (e.g. the
    receptive field of a unit)."""
    images, boxes = list(images), to_numpy(boxes).astype(int)
    if len(boxes) != len(images) or boxes.shape[-1] != 4:
        raise ValueError(f"expected one box (top, left, bottom, right) per image, got shape {boxes.shape}")
    fig, axes = _grid(len(images), ncols, size, suptitle)
    for i, (ax, image, (top, left, bottom, right)) in enumerate(zip(axes, images, boxes)):
        picture = to_image(image)
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
        ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                   edgecolor=color, linewidth=1.5))
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    return fig
