"""Interactive explorers: choose a layer, a channel, a class or a method and watch the picture change.

Every explorer has two halves:

- a plain *figure function* (``cam_figure(model, images, ...)`` -> a matplotlib Figure) that does
  all the work; the tests call it directly, without a browser;
- a *builder* (``cam_explorer(model, images, ...)``) that puts ipywidgets controls above it with
  ``explorer``: each change re-draws the figure, while a label says "computing…" and long loops
  show their tqdm progress bar in the plot area (sliders update on release only).

Builders draw the first figure straight away only when that is cheap; the slow ones (t-SNE, class
visualisation) wait for their "Draw" button, so a notebook cell that builds them returns at once.
"""

from __future__ import annotations

import base64
import contextlib
import io

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from ipywidgets import widgets

from vislib import activations, embedding, optimize, saliency
from vislib import cam as cam_methods
from vislib.conventions import as_batch, logits_of
from vislib.hooks import capture, frozen, get_layer
from vislib.models import deprocess
from vislib.plot import embedding_scatter, overlay, to_image, to_numpy

EXPLORER_CLASS = "vislib-explorer"  # CSS classes that the browser test looks for
PLOT_CLASS = "vislib-explorer-plot"
COMPUTING = "computing…"
AUTO = "auto"  # a dropdown choice that passes None: the default (predicted class, classifier input)


def explorer(figure_fn, controls: dict, auto: bool = True, **fixed) -> widgets.VBox:
    """Controls above a figure: ``figure_fn(**fixed, **{name: control.value})`` is drawn again
    whenever a control changes (``auto=True``, and once now) or when "Draw" is pressed
    (``auto=False``: for figures that take seconds). A choice the figure function refuses
    (ValueError, KeyError, IndexError) is reported in the status line; other errors propagate."""
    if not controls:
        raise ValueError("an explorer needs at least one control")
    status = widgets.Label()
    plot = widgets.Output()
    plot.add_class(PLOT_CLASS)

    def update(change=None):
        values = {name: None if control.value == AUTO else control.value for name, control in controls.items()}
        status.value = COMPUTING
        # After a change, long loops' progress bars show in the plot area until the figure replaces them.
        # The first drawing runs in the notebook cell, which shows them itself; writing into an Output
        # widget while a cell runs can also stall headless runners (nbclient) until their timeout.
        try:
            with plot if change is not None else contextlib.nullcontext():
                figure = figure_fn(**fixed, **values)
        except Exception as error:
            status.value = f"cannot draw: {error}"
            if isinstance(error, (ValueError, KeyError, IndexError)):  # a choice the method refuses
                return
            raise
        plot.outputs = ({"output_type": "display_data", "metadata": {},
                         "data": {"image/png": png_base64(figure), "text/plain": repr(figure)}},)
        plt.close(figure)
        status.value = ""

    buttons = []
    if auto:
        for control in controls.values():
            control.observe(update, names="value")
    else:
        button = widgets.Button(description="Draw", button_style="primary", icon="play")
        button.on_click(update)
        buttons = [button]
        status.value = "press Draw (takes a few seconds)"
    box = widgets.VBox([widgets.HBox(list(controls.values()) + buttons, layout=widgets.Layout(flex_flow="row wrap")),
                        status, plot])
    box.add_class(EXPLORER_CLASS)
    if auto:
        update()
    return box


def png_base64(figure) -> str:
    """A figure as a base64 PNG, the form notebook outputs hold (independent of the matplotlib backend)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _check_images(images) -> torch.Tensor:
    images = as_batch(images) if torch.is_tensor(images) and images.ndim == 3 else images
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(f"images must be a tensor [N,C,H,W] (or [C,H,W]), got {getattr(images, 'shape', images)!r}")
    return images


def _check_index(index, images: torch.Tensor) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(images):
        raise IndexError(f"index must be an int in [0, {len(images)}), got {index!r}")
    return index


def _names(model: nn.Module, class_names, n_classes: int | None = None) -> list[str]:
    if class_names is not None:
        return [str(name) for name in class_names]
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    n = n_classes or (linears[-1].out_features if linears else 0)
    return [f"class {k}" for k in range(n)]


def _class_options(names: list[str]) -> list[tuple[str, int | str]]:
    return [("predicted", AUTO)] + [(name, k) for k, name in enumerate(names)]


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with frozen(model), torch.no_grad():
        return logits_of(model, x).softmax(1)


def _index_slider(images: torch.Tensor, index: int = 0) -> widgets.IntSlider:
    return widgets.IntSlider(value=index, min=0, max=len(images) - 1, description="image", continuous_update=False)


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose output is a feature map worth looking at: convolutions and ReLUs."""
    return [name for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.ReLU)) and name]


# --- CAM --------------------------------------------------------------------------------------------

CAM_METHODS = {label: method.__name__ for label, method in cam_methods.CAM_METHODS.items()}


def cam_figure(model: nn.Module, images, index: int = 0, target: int | None = None, layer=None,
               method: str = "grad_cam", alpha: float = 0.5, class_names=None, to_picture=None):
    """One image, and its class map (``method``: the name of a method of ``vislib.cam.CAM_METHODS``,
    such as ``"grad_cam"``, ``"cam"`` or ``"score_cam"``) for ``target`` (None: the predicted class)
    at ``layer``, drawn over it with opacity ``alpha``.

    ``images`` are model inputs [N,C,H,W]; ``to_picture`` turns one into a displayable image
    (e.g. ``vislib.models.deprocess`` for an ImageNet model; default: shown as they are).
    """
    images = _check_images(images)
    index = _check_index(index, images)
    if method not in CAM_METHODS.values():
        raise ValueError(f"method must be one of {sorted(CAM_METHODS.values())}, got {method!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    x = images[index : index + 1]
    probabilities = _predict(model, x)[0]
    names = _names(model, class_names, len(probabilities))
    target = int(probabilities.argmax()) if target is None else target
    options = {"progress": False} if getattr(cam_methods, method) in cam_methods.PERTURBATION_METHODS else {}
    heatmap = getattr(cam_methods, method)(model, x, target=target, layer=layer, **options)[0]
    picture = x[0] if to_picture is None else to_picture(x)[0]
    predicted = int(probabilities.argmax())
    fig, (left, right) = plt.subplots(1, 2, figsize=(6, 3.2))
    left.imshow(to_image(picture))
    left.set_title(f"image {index}: predicted {names[predicted]} ({probabilities[predicted]:.0%})", fontsize=9)
    left.axis("off")
    overlay(picture, heatmap, alpha=alpha, ax=right,
            title=f"{dict(map(reversed, CAM_METHODS.items()))[method]} for {names[target]} "
                  f"(p={probabilities[target]:.0%})")
    fig.suptitle(f"layer {layer or cam_methods.SHAPES_NET_LAYER}", fontsize=9)
    fig.tight_layout()
    return fig


def cam_explorer(model: nn.Module, images, layers=None, class_names=None, to_picture=None) -> widgets.VBox:
    """The CAM family's explorer: method (vislib.cam.CAM_METHODS), layer, target class, image and
    overlay strength."""
    images = _check_images(images)
    layers = list(layers) if layers is not None else conv_layers(model)
    for name in layers:
        get_layer(model, name)
    default_layer = cam_methods.SHAPES_NET_LAYER if cam_methods.SHAPES_NET_LAYER in layers else layers[-1]
    controls = {
        "method": widgets.Dropdown(options=CAM_METHODS, value="grad_cam", description="method"),
        "layer": widgets.Dropdown(options=layers, value=default_layer, description="layer"),
        "target": widgets.Dropdown(options=_class_options(_names(model, class_names)), value=AUTO,
                                   description="class"),
        "index": _index_slider(images),
        "alpha": widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="overlay",
                                     continuous_update=False),
    }
    return explorer(cam_figure, controls, model=model, images=images, class_names=class_names,
                    to_picture=to_picture)


# --- activations and top patches ------------------------------------------------------------------


def activation_figure(model: nn.Module, images, layer, channel: int = 0, index: int = 0, k: int = 9,
                      to_picture=None, progress: bool = True):
    """What one channel of ``layer`` does: image ``index`` with its feature map for ``channel``
    drawn over it, and the ``k`` patches of ``images`` (their units' receptive fields) that excite
    the channel most (``vislib.activations.top_patches``)."""
    images = _check_images(images)
    index = _check_index(index, images)
    top = activations.top_patches(model, images, layer, k=k, channels=[channel], progress=progress)
    with frozen(model), capture(model, [top.layer]) as recording, torch.no_grad():
        model(images[index : index + 1])
    feature_map = recording[top.layer][0, channel]
    pictures = images if to_picture is None else to_picture(images)
    fig = plt.figure(figsize=(2.0 * max(k, 6) / 2 + 0.5, 4.4))
    grid = fig.add_gridspec(2, max(k, 2))
    half = max(k, 2) // 2
    image_axis, map_axis = fig.add_subplot(grid[0, :half]), fig.add_subplot(grid[0, half:])
    image_axis.imshow(to_image(pictures[index]))
    image_axis.set_title(f"image {index}", fontsize=9)
    image_axis.axis("off")
    overlay(pictures[index], feature_map, alpha=0.6, ax=map_axis,
            title=f"{top.layer} channel {channel}: max {feature_map.max():.2f}")
    for i, (box, value, source) in enumerate(zip(top.boxes[0], top.values[0], top.image_index[0])):
        top_, left, bottom, right = (int(v) for v in box)
        axis = fig.add_subplot(grid[1, i])
        axis.imshow(to_image(pictures[int(source)][:, top_:bottom, left:right]), interpolation="nearest")
        axis.set_title(f"#{int(source)}: {value:.1f}", fontsize=7)
        axis.axis("off")
    fig.suptitle(f"top row: one image; bottom row: the {k} patches of {len(images)} images that excite "
                 f"channel {channel} most", fontsize=9)
    return fig


def activation_explorer(model: nn.Module, images, layers=None, k: int = 9, to_picture=None) -> widgets.VBox:
    """Layer, channel and image: a feature map and the channel's top patches."""
    images = _check_images(images)
    layers = list(layers) if layers is not None else conv_layers(model)
    widths = {name: _channels(model, name, images) for name in layers}
    layer = widgets.Dropdown(options=layers, value=layers[-1], description="layer")
    channel = widgets.IntSlider(value=0, min=0, max=widths[layers[-1]] - 1, description="channel",
                                continuous_update=False)
    # Registered before the explorer's own observer, so the slider's range is right when it redraws.
    layer.observe(lambda change: setattr(channel, "max", widths[change["new"]] - 1), names="value")
    controls = {"layer": layer, "channel": channel, "index": _index_slider(images)}
    return explorer(activation_figure, controls, model=model, images=images, k=k, to_picture=to_picture)


def _channels(model: nn.Module, layer: str, images: torch.Tensor) -> int:
    """How many channels ``layer`` outputs (one forward pass of one image)."""
    with frozen(model), capture(model, [layer]) as recording, torch.no_grad():
        model(images[:1])
    return recording[layer].shape[1]


# --- saliency ---------------------------------------------------------------------------------------

SALIENCY_METHODS = {"gradient": "gradient", "deconvnet": "deconvnet", "guided backprop": "guided_backprop",
                    "SmoothGrad": "smoothgrad", "integrated gradients": "integrated_gradients",
                    "occlusion": "occlusion"}


def saliency_figure(model: nn.Module, images, method: str = "gradient", target: int | None = None, index: int = 0,
                    window: int = 8, stride: int = 4, class_names=None, to_picture=None, progress: bool = True):
    """Image ``index``, and its saliency map by ``method`` (a function name of ``vislib.saliency``)
    for ``target`` (None: the predicted class), as a heatmap and drawn over the image. ``window``
    and ``stride`` are the occlusion patch and step in pixels (other methods ignore them)."""
    images = _check_images(images)
    index = _check_index(index, images)
    if method not in SALIENCY_METHODS.values():
        raise ValueError(f"method must be one of {sorted(SALIENCY_METHODS.values())}, got {method!r}")
    x = images[index : index + 1]
    probabilities = _predict(model, x)[0]
    names = _names(model, class_names, len(probabilities))
    target = int(probabilities.argmax()) if target is None else target
    if method == "occlusion":
        heatmap = saliency.occlusion(model, x, target, window=window, stride=stride, progress=progress)[0]
        label = f"occlusion, window {window}, stride {stride}"
    else:
        options = {"progress": progress} if method in ("smoothgrad", "integrated_gradients") else {}
        heatmap = saliency.to_heatmap(getattr(saliency, method)(model, x, target, **options))[0]
        label = f"{method.replace('_', ' ')} (|max| over colours)"
    picture = x[0] if to_picture is None else to_picture(x)[0]
    fig, axes = plt.subplots(1, 3, figsize=(8, 3.0))
    axes[0].imshow(to_image(picture))
    axes[0].set_title(f"image {index}: predicted {names[int(probabilities.argmax())]}", fontsize=9)
    shown = axes[1].imshow(to_numpy(heatmap), cmap="magma")
    axes[1].set_title(label, fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    overlay(picture, heatmap, alpha=0.5, ax=axes[2], title=f"for {names[target]} (p={probabilities[target]:.0%})")
    for axis in axes[:2]:
        axis.axis("off")
    fig.tight_layout()
    return fig


def saliency_explorer(model: nn.Module, images, class_names=None, to_picture=None) -> widgets.VBox:
    """Method, target class, image, and occlusion's window and stride."""
    images = _check_images(images)
    size = min(images.shape[-2:])
    controls = {
        "method": widgets.Dropdown(options=SALIENCY_METHODS, value="gradient", description="method"),
        "target": widgets.Dropdown(options=_class_options(_names(model, class_names)), value=AUTO,
                                   description="class"),
        "index": _index_slider(images),
        "window": widgets.IntSlider(value=max(2, size // 8), min=2, max=max(2, size // 2), description="window",
                                    continuous_update=False),
        "stride": widgets.IntSlider(value=max(1, size // 16), min=1, max=max(1, size // 4), description="stride",
                                    continuous_update=False),
    }
    return explorer(saliency_figure, controls, model=model, images=images, class_names=class_names,
                    to_picture=to_picture)


# --- embeddings -------------------------------------------------------------------------------------

BEFORE_CLASSIFIER = "before the classifier"


def embedding_figure(model: nn.Module, images, labels, layer=None, method: str = "tsne", perplexity: float = 30.0,
                     neighbours: int = 15, class_names=None, seed: int = 0, progress: bool = True):
    """The images' features at ``layer`` (None: the classifier's input; a conv layer is averaged
    over space) projected to 2-D by ``method`` ("pca", "tsne" with ``perplexity``, "umap" with
    ``neighbours``), coloured by label, with thumbnails."""
    images = _check_images(images)
    labels = torch.as_tensor(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"need one label per image: {len(images)} images, labels of shape {tuple(labels.shape)}")
    features = embedding.extract(model, images, layer, pool=None if layer is None else "avg", progress=progress)
    options = {"tsne": {"perplexity": perplexity}, "umap": {"n_neighbors": neighbours}}.get(method, {})
    coords = embedding.project(features, method=method, seed=seed, **options)
    detail = {"tsne": f", perplexity {perplexity:g}", "umap": f", {neighbours} neighbours"}.get(method, "")
    fig, axis = plt.subplots(figsize=(7, 6))
    embedding_scatter(coords, labels, classes=class_names, images=images, ax=axis,
                      title=f"{method}{detail} of {layer or BEFORE_CLASSIFIER} ({features.shape[1]} features)")
    fig.tight_layout()
    return fig


def embedding_explorer(model: nn.Module, images, labels, layers=None, class_names=None) -> widgets.VBox:
    """Method, perplexity (t-SNE) or neighbours (UMAP), and layer; drawn on "Draw" (seconds)."""
    images = _check_images(images)
    layers = list(layers) if layers is not None else [name for name in conv_layers(model)
                                                      if isinstance(get_layer(model, name), nn.ReLU)]
    n = len(images)
    controls = {
        "method": widgets.Dropdown(options=embedding.METHODS, value="tsne", description="method"),
        "perplexity": widgets.FloatSlider(value=min(30.0, (n - 1) / 3), min=2.0, max=max(2.0, (n - 1) / 3), step=1.0,
                                          description="perplexity", continuous_update=False),
        "neighbours": widgets.IntSlider(value=min(15, n - 1), min=2, max=max(2, min(100, n - 1)),
                                        description="neighbours", continuous_update=False),
        "layer": widgets.Dropdown(options=[(BEFORE_CLASSIFIER, AUTO)] + [(name, name) for name in layers],
                                  value=AUTO, description="layer"),
    }
    return explorer(embedding_figure, controls, auto=False, model=model, images=images, labels=labels,
                    class_names=class_names)


# --- class visualisation ----------------------------------------------------------------------------


def class_visualization_figure(model: nn.Module, target: int = 0, l2: float = 0.0, tv: float = 0.0,
                               blur_every: int = 0, jitter: int = 2, steps: int = 128, size: int = 64,
                               param: str = "fourier", normalize: bool = False, class_names=None, seed: int = 0,
                               progress: bool = True):
    """An image that maximises class ``target``'s logit (``vislib.optimize.visualize``) with the
    chosen regularisers: ``l2`` and ``tv`` penalties, a blur every ``blur_every`` steps, random
    ``jitter``; the title gives the class's logit and probability for that image."""
    names = _names(model, class_names)
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(names):
        raise ValueError(f"target must be a class index in [0, {len(names)}), got {target!r}")
    image = optimize.visualize(model, optimize.class_logit(target), size=size, steps=steps, l2=l2, tv=tv,
                               blur_every=blur_every, jitter=jitter, param=param, normalize=normalize, seed=seed,
                               progress=progress)
    with frozen(model), torch.no_grad():
        logits = logits_of(model, image)
    probability = logits.softmax(1)[0, target]
    fig, axis = plt.subplots(figsize=(3.6, 3.9))
    axis.imshow(to_image((deprocess(image) if normalize else image)[0]))
    axis.set_title(f"{names[target]}: logit {logits[0, target]:.1f}, p={probability:.0%}\n"
                   f"l2={l2:g}, tv={tv:g}, blur every {blur_every}, jitter {jitter}", fontsize=8)
    axis.axis("off")
    fig.tight_layout()
    return fig


def class_visualization_explorer(model: nn.Module, class_names=None, steps: int = 128, size: int = 64,
                                 normalize: bool = False, l2: float = 1e-3, tv: float = 1e-3) -> widgets.VBox:
    """Class and regularisers (L2 and TV penalties starting at ``l2``, ``tv``; blur; jitter);
    drawn on "Draw" (seconds)."""
    names = _names(model, class_names)
    controls = {
        "target": widgets.Dropdown(options=[(name, k) for k, name in enumerate(names)], value=0, description="class"),
        "l2": widgets.FloatLogSlider(value=l2, base=10, min=-5, max=0, description="L2", continuous_update=False),
        "tv": widgets.FloatLogSlider(value=tv, base=10, min=-5, max=0, description="TV", continuous_update=False),
        "blur_every": widgets.IntSlider(value=0, min=0, max=16, description="blur every", continuous_update=False),
        "jitter": widgets.IntSlider(value=2, min=0, max=8, description="jitter", continuous_update=False),
    }
    return explorer(class_visualization_figure, controls, auto=False, model=model, class_names=class_names,
                    steps=steps, size=size, normalize=normalize)
