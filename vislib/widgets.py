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

import contextlib

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from ipywidgets import widgets

from vislib import cam as cam_methods
from vislib.conventions import as_batch
from vislib.hooks import get_layer
from vislib.plot import overlay, to_image

EXPLORER_CLASS = "vislib-explorer"  # CSS classes that the browser test looks for
PLOT_CLASS = "vislib-explorer-plot"
COMPUTING = "computing…"
PREDICTED = "predicted"  # a class dropdown's first choice; the figure function gets target=None


def explorer(figure_fn, controls: dict, auto: bool = True, **fixed) -> widgets.VBox:
    """Controls above a figure: ``figure_fn(**fixed, **{name: control.value})`` is drawn again
    whenever a control changes (``auto=True``, and once now) or when "Draw" is pressed
    (``auto=False``: for figures that take seconds). An error is shown in the status line."""
    if not controls:
        raise ValueError("an explorer needs at least one control")
    status = widgets.Label()
    plot = widgets.Output()
    plot.add_class(PLOT_CLASS)

    def update(change=None):
        values = {name: None if control.value == PREDICTED else control.value for name, control in controls.items()}
        status.value = COMPUTING
        # After a change, long loops' progress bars show in the plot area until the figure replaces them.
        # The first drawing runs in the notebook cell, which shows them itself; writing into an Output
        # widget while a cell runs can also stall headless runners (nbclient) until their timeout.
        try:
            with plot if change is not None else contextlib.nullcontext():
                figure = figure_fn(**fixed, **values)
        except (ValueError, KeyError, IndexError) as error:
            status.value = f"cannot draw: {error}"
            return
        plot.outputs = ()
        plot.append_display_data(figure)
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
    return [(PREDICTED, PREDICTED)] + [(name, k) for k, name in enumerate(names)]


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).softmax(1)


def _index_slider(images: torch.Tensor, index: int = 0) -> widgets.IntSlider:
    return widgets.IntSlider(value=index, min=0, max=len(images) - 1, description="image", continuous_update=False)


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose output is a feature map worth looking at: convolutions and ReLUs."""
    return [name for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.ReLU)) and name]


# --- CAM --------------------------------------------------------------------------------------------

CAM_METHODS = {"Grad-CAM": "grad_cam", "CAM": "cam"}


def cam_figure(model: nn.Module, images, index: int = 0, target: int | None = None, layer=None,
               method: str = "grad_cam", alpha: float = 0.5, class_names=None, to_picture=None):
    """One image, and its class map (``"grad_cam"`` or ``"cam"`` from ``vislib.cam``) for
    ``target`` (None: the predicted class) at ``layer``, drawn over it with opacity ``alpha``.

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
    heatmap = getattr(cam_methods, method)(model, x, target=target, layer=layer)[0]
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
    """Grad-CAM / CAM explorer: method, layer, target class, image and overlay strength."""
    images = _check_images(images)
    layers = list(layers) if layers is not None else conv_layers(model)
    for name in layers:
        get_layer(model, name)
    default_layer = cam_methods.SHAPES_NET_LAYER if cam_methods.SHAPES_NET_LAYER in layers else layers[-1]
    controls = {
        "method": widgets.Dropdown(options=CAM_METHODS, value="grad_cam", description="method"),
        "layer": widgets.Dropdown(options=layers, value=default_layer, description="layer"),
        "target": widgets.Dropdown(options=_class_options(_names(model, class_names)), value=PREDICTED,
                                   description="class"),
        "index": _index_slider(images),
        "alpha": widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="overlay",
                                     continuous_update=False),
    }
    return explorer(cam_figure, controls, model=model, images=images, class_names=class_names,
                    to_picture=to_picture)
