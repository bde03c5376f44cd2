"""vislib.optimize: objectives read the right values, ascent improves them, seeds decide
everything, and the model is handed back untouched."""

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_cnn, untouched
from vislib.data import make_shapes, sample_image
from vislib.hooks import capture
from vislib.models import preprocess
from vislib.optimize import channel, class_logit, deep_dream, invert, layer, neuron, total_variation, visualize

PLAIN = dict(jitter=0, scale=0.0, rotate=0.0, progress=False)  # no random transforms: clean measurements


def grey_noise(seed=0, size=8):
    return (0.5 + 0.1 * torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


# --------------------------------------------------------------------------- objective values


def test_objective_values_match_hand_computed_activations():
    model, plain = tiny_cnn(inplace=True), tiny_cnn(inplace=False)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad(), capture(plain, ["relu1", "conv2"]) as rec:
        logits = plain(x)
    with torch.no_grad():
        assert torch.allclose(class_logit(2)(model, x), logits[:, 2])
        assert torch.allclose(class_logit([0, 1])(model, x), logits[[0, 1], [0, 1]])
        assert torch.allclose(channel("relu1", 3)(model, x), rec["relu1"][:, 3].mean((1, 2)))
        assert torch.allclose(neuron("relu1", 1)(model, x), rec["relu1"][:, 1, 4, 4])
        assert torch.allclose(neuron("relu1", 1, y=0, x=7)(model, x), rec["relu1"][:, 1, 0, 7])
        # conv2 is followed by an inplace ReLU: the objective must see conv2's own (signed) output.
        assert torch.allclose(layer("conv2")(model, x), rec["conv2"].square().mean((1, 2, 3)))
        assert (rec["conv2"] < 0).any()
        combined = 2 * channel("relu1", 3) - class_logit(2) + 0.5 * layer("conv2")
        expected = 2 * channel("relu1", 3)(model, x) - class_logit(2)(model, x) + 0.5 * layer("conv2")(model, x)
        assert torch.allclose(combined(model, x), expected)
        assert torch.allclose(sum([channel("relu1", 0), channel("relu1", 1)])(model, x),
                              rec["relu1"][:, :2].mean((2, 3)).sum(1))


def test_objective_gradient_matches_autograd_on_a_plain_model():
    model, plain = tiny_cnn(inplace=True), tiny_cnn(inplace=False)
    x = torch.rand(1, 3, 8, 8)
    objective = layer("conv2") + channel("relu1", 0) - class_logit(1)
    ours = x.clone().requires_grad_(True)
    objective(model, ours).sum().backward()
    reference = x.clone().requires_grad_(True)
    activations = {}
    plain.conv2.register_forward_hook(lambda m, i, o: activations.update(conv2=o))
    plain.relu1.register_forward_hook(lambda m, i, o: activations.update(relu1=o))
    logits = plain(reference)
    value = activations["conv2"].square().mean() + activations["relu1"][:, 0].mean() - logits[0, 1]
    value.backward()
    assert torch.allclose(ours.grad, reference.grad, atol=1e-6)


def test_objectives_reject_bad_input():
    model = tiny_cnn()
    with pytest.raises(TypeError):
        channel("relu1", 1.5)
    with pytest.raises(TypeError):
        class_logit("cat")
    with pytest.raises(TypeError):
        channel("relu1", 0) + 1
    with pytest.raises(KeyError, match="relu1"):
        channel("relu9", 0)(model, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="4 channels"):
        channel("relu1", 4)(model, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="outside"):
        neuron("relu1", 0, y=8, x=0)(model, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError):
        class_logit(3)(model, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError):
        class_logit([0, 1, 2])(model, torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError):
        channel("relu1", 0)(model, torch.rand(8, 8))


# --------------------------------------------------------------------------- visualize


@pytest.mark.parametrize("param", ["pixel", "fourier"])
@pytest.mark.parametrize("objective", [class_logit(1), channel("relu2", 4), neuron("conv2", 3), layer("conv2"),
                                       channel("relu1", 0) - 0.5 * class_logit(0)], ids=repr)
def test_each_objective_improves_after_a_few_steps(objective, param):
    model = tiny_cnn()
    start = grey_noise()
    with torch.no_grad():
        before = objective(model, start)
    with untouched(model):
        image = visualize(model, objective, size=8, steps=10, lr=0.1, param=param, init=start, **PLAIN)
    with torch.no_grad():
        after = objective(model, image)
    assert image.shape == (1, 3, 8, 8) and 0 <= image.min() and image.max() <= 1
    assert after > before + 1e-4


def test_visualize_on_shapesnet_with_every_regulariser_raises_the_class_logit(shapes_model):
    objective = class_logit(4)
    with untouched(shapes_model):
        image = visualize(shapes_model, objective, size=64, steps=24, lr=0.05, l2=0.05, tv=0.05, blur_every=8,
                          jitter=2, scale=0.05, rotate=5, progress=False)
    with torch.no_grad():
        assert objective(shapes_model, image) > objective(shapes_model, torch.full_like(image, 0.5)) + 1.0


def test_a_batch_with_one_class_per_image_equals_separate_runs():
    model = tiny_cnn()
    kwargs = dict(size=8, steps=15, lr=0.1, init="zeros", **PLAIN)
    batch = visualize(model, class_logit([0, 1, 2]), batch=3, **kwargs)
    assert batch.shape == (3, 3, 8, 8)
    for k in range(3):
        alone = visualize(model, class_logit(k), **kwargs)
        assert torch.allclose(batch[k], alone[0], atol=1e-5)
    with torch.no_grad():
        gain = model(batch) - model(torch.full_like(batch, 0.5))
    assert (gain.diagonal() > 0).all()


def test_same_seed_same_image_and_seed_matters():
    model = tiny_cnn()
    kwargs = dict(size=8, steps=5, jitter=1, scale=0.1, rotate=10.0, progress=False)
    first = visualize(model, channel("relu2", 5), seed=3, **kwargs)
    again = visualize(model, channel("relu2", 5), seed=3, **kwargs)
    other = visualize(model, channel("relu2", 5), seed=4, **kwargs)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_zero_steps_return_the_initial_image_in_the_input_space(param):
    model = tiny_cnn()
    picture = torch.rand(1, 3, 8, 8) * 0.9 + 0.05
    assert torch.allclose(visualize(model, class_logit(0), size=8, steps=0, init=picture, param=param,
                                    progress=False), picture, atol=1e-4)
    normalised = preprocess(picture)  # ImageNet-normalised: normalize=True round-trips it
    assert torch.allclose(visualize(model, class_logit(0), size=8, steps=0, init=normalised, param=param,
                                    normalize=True, progress=False), normalised, atol=1e-3)
    grey = visualize(model, class_logit(0), size=8, steps=0, init="zeros", param=param, progress=False)
    assert torch.allclose(grey, torch.full_like(grey, 0.5))


def test_blur_and_tv_make_smoother_images():
    model = tiny_cnn()
    plain = visualize(model, layer("conv2"), size=16, steps=20, lr=0.1, param="pixel", **PLAIN)
    smooth = visualize(model, layer("conv2"), size=16, steps=20, lr=0.1, param="pixel", tv=5.0, blur_every=4,
                       blur_sigma=1.0, **PLAIN)
    assert total_variation(smooth) < 0.5 * total_variation(plain)


def test_total_variation_by_hand():
    image = torch.zeros(1, 1, 2, 3)
    image[0, 0, 0] = torch.tensor([0.0, 1.0, 3.0])
    # horizontal differences: (1, 2) and (0, 0) -> squares sum to 5; vertical: (0, 1, 3) -> 10
    assert torch.allclose(total_variation(image), torch.tensor([15.0]))


def test_visualize_rejects_bad_arguments():
    model = tiny_cnn()
    for kwargs, error in [(dict(objective="class 0"), TypeError), (dict(param="wavelet"), ValueError),
                          (dict(init="ones"), ValueError), (dict(steps=-1), ValueError),
                          (dict(lr=0.0), ValueError), (dict(size=4), ValueError), (dict(normalize="yes"), TypeError),
                          (dict(init=torch.rand(2, 3, 8, 8), batch=3), ValueError),
                          (dict(init=torch.rand(1, 1, 8, 8)), ValueError)]:
        arguments = dict(objective=class_logit(0), size=8, steps=2, progress=False) | kwargs
        with untouched(model), pytest.raises(error):
            visualize(model, **arguments)


def test_model_untouched_with_live_grads_train_mode_and_no_grad():
    model = tiny_cnn()
    model.train()
    model(torch.rand(2, 3, 8, 8)).sum().backward()  # every parameter now has a .grad
    model.fc.weight.requires_grad_(False)
    with untouched(model), torch.no_grad():
        image = visualize(model, layer("conv2"), size=8, steps=3, progress=False)
        invert(model, image, "relu1", steps=3, progress=False)
        deep_dream(model, image, "relu2", octaves=2, steps=2, progress=False)
    assert model.training


def test_model_untouched_when_a_call_raises():
    model = tiny_cnn()
    with untouched(model), pytest.raises(ValueError, match="channels"):
        visualize(model, channel("relu1", 7), size=8, steps=2, progress=False)
    with untouched(model), pytest.raises(KeyError):
        invert(model, torch.rand(1, 3, 8, 8), "conv9", steps=2, progress=False)
    with untouched(model), pytest.raises(KeyError):
        deep_dream(model, torch.rand(1, 3, 8, 8), "conv9", steps=2, progress=False)


def test_a_frozen_copy_gives_the_same_image():
    model = tiny_cnn()
    frozen_copy = copy.deepcopy(model).requires_grad_(False)
    kwargs = dict(size=8, steps=4, progress=False)
    assert torch.equal(visualize(model, channel("relu2", 0), **kwargs),
                       visualize(frozen_copy, channel("relu2", 0), **kwargs))


# --------------------------------------------------------------------------- invert, deep_dream


def test_invert_matches_the_features_better_than_its_start(shapes_model):
    image = make_shapes(1, seed=5).images
    with torch.no_grad(), capture(shapes_model, "features.relu1") as rec:
        shapes_model(image)
    target = rec["features.relu1"]

    def feature_error(x):
        with torch.no_grad(), capture(shapes_model, "features.relu1") as r:
            shapes_model(x)
        return ((r["features.relu1"] - target).square().sum() / target.square().sum()).item()

    with untouched(shapes_model):
        result = invert(shapes_model, image, "features.relu1", steps=25, progress=False)
    start = visualize(shapes_model, class_logit(0), size=64, steps=0, init="noise", param="pixel", progress=False)
    assert feature_error(result) < 0.5 * feature_error(start)
    assert F.mse_loss(result, image) < 0.5 * F.mse_loss(start, image)
    assert torch.equal(result, invert(shapes_model, image, "features.relu1", steps=25, progress=False))


def test_invert_rejects_non_square_images():
    with pytest.raises(ValueError, match="square"):
        invert(tiny_cnn(), torch.rand(1, 3, 8, 6), "relu1", progress=False)


def test_deep_dream_raises_the_layer_norm_and_keeps_the_size(shapes_model):
    photo = preprocess(sample_image("coffee"), size=64, normalize=False)
    with untouched(shapes_model):
        dream = deep_dream(shapes_model, photo, "features.relu3", octaves=2, steps=5, progress=False)
    objective = layer("features.relu3")
    with torch.no_grad():
        assert objective(shapes_model, dream) > 1.5 * objective(shapes_model, photo)
    assert dream.shape == photo.shape and 0 <= dream.min() and dream.max() <= 1
    again = deep_dream(shapes_model, photo, "features.relu3", octaves=2, steps=5, progress=False)
    assert torch.equal(dream, again)


def test_deep_dream_rejects_bad_arguments():
    model = tiny_cnn()
    for kwargs in [dict(octaves=0), dict(octave_scale=0.5), dict(steps=-2), dict(jitter=-1)]:
        with pytest.raises(ValueError):
            deep_dream(model, torch.rand(1, 3, 8, 8), "relu1", progress=False, **kwargs)
