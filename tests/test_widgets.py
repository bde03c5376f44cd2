"""vislib.widgets without a browser: the figure functions draw what the library computes, the
explorers redraw when a control changes, and nothing is left behind in the model."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from tests.helpers import untouched
from vislib import activations, cam, embedding, optimize, saliency, widgets
from vislib.data import SHAPE_CLASSES
from vislib.plot import normalize_map


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def images(held_out):
    return held_out.images[:12]


def shown_arrays(axis) -> list[np.ndarray]:
    return [np.asarray(image.get_array()) for image in axis.get_images()]


def png(box) -> str:
    """The figure currently shown by an explorer (its Output widget's PNG)."""
    plot = box.children[-1]
    assert len(plot.outputs) == 1
    return plot.outputs[0]["data"]["image/png"]


def control(box, description: str):
    return next(c for c in box.children[0].children if c.description == description)


# --- figure functions -------------------------------------------------------------------------------


def test_cam_figure_draws_grad_cam_of_the_chosen_class(shapes_model, images):
    with untouched(shapes_model):
        fig = widgets.cam_figure(shapes_model, images, index=4, target=2, class_names=SHAPE_CLASSES)
    assert isinstance(fig, Figure)
    expected = normalize_map(cam.grad_cam(shapes_model, images[4:5], target=2)[0])
    heatmap = shown_arrays(fig.axes[1])[1]
    np.testing.assert_allclose(heatmap, expected, atol=1e-6)
    assert "triangle" in fig.axes[1].get_title()  # SHAPE_CLASSES[2]
    predicted = SHAPE_CLASSES[int(shapes_model(images[4:5]).argmax())]
    assert f"predicted {predicted}" in fig.axes[0].get_title()


def test_cam_figure_target_none_is_the_prediction_and_other_classes_differ(shapes_model, images):
    predicted = int(shapes_model(images[:1]).argmax())
    other = (predicted + 1) % len(SHAPE_CLASSES)
    default = shown_arrays(widgets.cam_figure(shapes_model, images, target=None, method="cam").axes[1])[1]
    same = shown_arrays(widgets.cam_figure(shapes_model, images, target=predicted, method="cam").axes[1])[1]
    different = shown_arrays(widgets.cam_figure(shapes_model, images, target=other, method="cam").axes[1])[1]
    np.testing.assert_array_equal(default, same)
    assert np.abs(default - different).max() > 0.1


@pytest.mark.parametrize("kwargs, error", [({"index": 12}, IndexError), ({"index": -1}, IndexError),
                                           ({"index": 1.0}, IndexError), ({"method": "gradcam"}, ValueError),
                                           ({"alpha": 1.5}, ValueError), ({"layer": "features.nope"}, KeyError)])
def test_cam_figure_bad_input(shapes_model, images, kwargs, error):
    with untouched(shapes_model), pytest.raises(error):
        widgets.cam_figure(shapes_model, images, **kwargs)


def test_images_must_be_a_batch(shapes_model, images):
    with pytest.raises(ValueError, match=r"\[N,C,H,W\]"):
        widgets.saliency_figure(shapes_model, images[0, 0])
    single = widgets.saliency_figure(shapes_model, images[0], progress=False)  # [C,H,W] is one image
    assert isinstance(single, Figure)


@pytest.mark.parametrize("method", ["gradient", "guided_backprop", "deconvnet"])
def test_saliency_figure_shows_the_library_map(shapes_model, images, method):
    with untouched(shapes_model):
        fig = widgets.saliency_figure(shapes_model, images, method=method, target=3, index=2, progress=False)
    expected = saliency.to_heatmap(getattr(saliency, method)(shapes_model, images[2:3], 3))[0]
    np.testing.assert_allclose(shown_arrays(fig.axes[1])[0], expected.numpy(), rtol=1e-5, atol=1e-7)


def test_saliency_figure_occlusion_uses_window_and_stride(shapes_model, images):
    fig = widgets.saliency_figure(shapes_model, images, "occlusion", target=1, index=0, window=16, stride=8,
                                  progress=False)
    expected = saliency.occlusion(shapes_model, images[:1], 1, window=16, stride=8, progress=False)[0]
    np.testing.assert_allclose(shown_arrays(fig.axes[1])[0], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert "window 16, stride 8" in fig.axes[1].get_title()
    with pytest.raises(ValueError):
        widgets.saliency_figure(shapes_model, images, "occlusion", window=0, progress=False)
    with pytest.raises(ValueError, match="method"):
        widgets.saliency_figure(shapes_model, images, "lime")


def test_activation_figure_shows_the_feature_map_and_top_patches(shapes_model, images):
    with untouched(shapes_model):
        fig = widgets.activation_figure(shapes_model, images, "features.relu2", channel=7, index=5, k=4,
                                        progress=False)
    top = activations.top_patches(shapes_model, images, "features.relu2", k=4, channels=[7], progress=False)
    map_axis, patch_axes = fig.axes[1], fig.axes[2:]
    features = torch.nn.Sequential(*list(shapes_model.features)[:7])  # conv1 .. relu2
    with torch.no_grad():
        expected = features(images[5:6].clone())[0, 7]
    np.testing.assert_allclose(shown_arrays(map_axis)[1], normalize_map(expected), atol=1e-5)
    assert len(patch_axes) == 4
    for axis, box, source in zip(patch_axes, top.boxes[0], top.image_index[0]):
        top_, left, bottom, right = (int(v) for v in box)
        np.testing.assert_allclose(shown_arrays(axis)[0],
                                   images[int(source), :, top_:bottom, left:right].permute(1, 2, 0).numpy())
        assert axis.get_title().startswith(f"#{int(source)}:")
    with pytest.raises(ValueError, match="channels"):
        widgets.activation_figure(shapes_model, images, "features.relu2", channel=32, progress=False)


def test_embedding_figure_projects_the_library_features(shapes_model, held_out):
    images, labels = held_out.images[:40], held_out.labels[:40]
    with untouched(shapes_model):
        fig = widgets.embedding_figure(shapes_model, images, labels, layer=None, method="pca",
                                       class_names=SHAPE_CLASSES, progress=False)
    features = embedding.extract(shapes_model, images, progress=False)
    expected = embedding.project(features, method="pca").numpy()
    points = np.concatenate([collection.get_offsets() for collection in fig.axes[0].collections])
    assert len(points) == 40
    # The same 40 points (the scatter draws them grouped by class, so compare as sets of rows).
    np.testing.assert_allclose(np.sort(points, axis=0), np.sort(expected, axis=0), atol=1e-4)
    assert "128 features" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="one label per image"):
        widgets.embedding_figure(shapes_model, images, labels[:39], method="pca", progress=False)
    with pytest.raises(ValueError, match="method"):
        widgets.embedding_figure(shapes_model, images, labels, method="lda", progress=False)


def test_class_visualization_figure_is_the_optimised_image(shapes_model):
    with untouched(shapes_model):
        fig = widgets.class_visualization_figure(shapes_model, target=5, l2=1e-3, tv=1e-2, steps=4, size=32,
                                                 class_names=SHAPE_CLASSES, progress=False)
    image = optimize.visualize(shapes_model, optimize.class_logit(5), size=32, steps=4, l2=1e-3, tv=1e-2,
                               progress=False)
    np.testing.assert_allclose(shown_arrays(fig.axes[0])[0], image[0].permute(1, 2, 0).numpy(), atol=1e-6)
    logit = shapes_model(image)[0, 5].item()
    assert fig.axes[0].get_title().startswith(f"ring: logit {logit:.1f}")
    for bad in (8, -1, True, "ring"):
        with pytest.raises(ValueError, match="target"):
            widgets.class_visualization_figure(shapes_model, target=bad, steps=1, size=16, progress=False)


# --- explorers --------------------------------------------------------------------------------------


def test_explorer_redraws_on_change_and_reports_errors(shapes_model, images):
    with untouched(shapes_model):
        box = widgets.cam_explorer(shapes_model, images, class_names=SHAPE_CLASSES)
        first = png(box)
        status = box.children[1]
        assert status.value == ""
        target = control(box, "class")
        assert target.value == widgets.AUTO and target.options[0][0] == "predicted"
        predicted = int(shapes_model(images[:1]).argmax())
        target.value = (predicted + 1) % len(SHAPE_CLASSES)
        assert png(box) != first and status.value == ""
        control(box, "method").value = "cam"
        control(box, "layer").value = "features.conv1"  # CAM needs the layer before pooling: an error, no crash
        assert status.value.startswith("cannot draw") and "fc" in status.value
    assert "vislib-explorer" in box._dom_classes and widgets.PLOT_CLASS in box.children[-1]._dom_classes


def test_slow_explorers_wait_for_draw(shapes_model, held_out):
    box = widgets.embedding_explorer(shapes_model, held_out.images[:30], held_out.labels[:30],
                                     class_names=SHAPE_CLASSES)
    assert box.children[-1].outputs == () and "Draw" in box.children[1].value
    control(box, "method").value = "pca"
    assert box.children[-1].outputs == ()  # a change alone does not start the computation
    control(box, "Draw").click()
    assert png(box) and box.children[1].value == ""


def test_activation_explorer_channel_range_follows_the_layer(shapes_model, images):
    box = widgets.activation_explorer(shapes_model, images, layers=["features.relu1", "features.relu3"], k=3)
    channel = control(box, "channel")
    assert channel.max == 63
    control(box, "layer").value = "features.relu1"
    assert channel.max == 15
    channel.value = 15
    assert box.children[1].value == ""


def test_builders_reject_bad_input(shapes_model, images):
    with pytest.raises(ValueError, match="at least one control"):
        widgets.explorer(lambda: None, {})
    with pytest.raises(KeyError):
        widgets.cam_explorer(shapes_model, images, layers=["features.relu9"])
    with pytest.raises(ValueError):
        widgets.saliency_explorer(shapes_model, images.numpy())
    assert isinstance(widgets.class_visualization_explorer(shapes_model, SHAPE_CLASSES), widgets.widgets.VBox)
