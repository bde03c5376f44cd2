"""Mutation tests of the saliency assignment's checks: typical wrong implementations are each
rejected with their own hint; correct implementations written differently are accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vislib
from vislib import checks, saliency
from vislib.checks.harness import explain_error, learner_frame

from .hint_coverage import names_the_mistake

# --------------------------------------------------------------------------- saliency_map


def saliency_autograd(model, x, target):
    x = x.clone().requires_grad_(True)
    score = model(x).gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad.abs().amax(dim=1)


def saliency_tensor_hook_per_image(model, x, target):
    """One image at a time, the gradient caught by a hook on the input tensor (cs231n's way,
    with the parameters left alone)."""
    maps = []
    for image, cls in zip(x, target.tolist()):
        caught = []
        image = image[None].clone().requires_grad_(True)
        image.register_hook(caught.append)
        flags = [p.requires_grad for p in model.parameters()]
        model.requires_grad_(False)
        try:
            model(image)[0, cls].backward()
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
        maps.append(caught[0][0].abs().max(dim=0).values)
    return torch.stack(maps)


def saliency_no_abs(model, x, target):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return grad.amax(dim=1)


def saliency_channel_sum(model, x, target):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return grad.abs().sum(dim=1)


def saliency_of_probability(model, x, target):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).softmax(1).gather(1, target[:, None]).sum(), x)
    return grad.abs().amax(dim=1)


def saliency_first_target(model, x, target):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, target[0]].sum(), x)
    return grad.abs().amax(dim=1)


def saliency_with_backward(model, x, target):
    """Right values, but .backward() fills the parameters' .grad."""
    x = x.clone().requires_grad_(True)
    model(x).gather(1, target[:, None]).sum().backward()
    return x.grad.abs().amax(dim=1)


def saliency_leaves_hook(model, x, target):
    model.fc.register_forward_hook(lambda *args: None)
    return saliency_autograd(model, x, target)


def saliency_calls_vislib(model, x, target):
    return saliency.to_heatmap(saliency.gradient(model, x, target))


def saliency_caller_requires_grad(model, x, target):
    """Right values, but switches requires_grad on in the caller's own tensor."""
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return grad.abs().amax(dim=1)


def saliency_cross_entropy(model, x, target):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), target), x)
    return grad.abs().amax(dim=1)


def saliency_predicted_class(model, x, target):
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), x)
    return grad.abs().amax(dim=1)


def saliency_all_logits(model, x, target):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    return grad.abs().amax(dim=1)


def saliency_target_columns(model, x, target):
    """model(x)[:, target] is [B, B]: every image's score for every image's target."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    return grad.abs().amax(dim=1)


def saliency_times_input(model, x, target):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return (grad * x).abs().amax(dim=1)


def saliency_stub(model, x, target):
    raise NotImplementedError()


@pytest.mark.parametrize("fn", [saliency_autograd, saliency_tensor_hook_per_image])
def test_saliency_map_accepts_correct_implementations(fn, capsys):
    checks.saliency_map(fn)
    assert "saliency_map: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (saliency_no_abs, "absolute value of the gradient"),
    (saliency_channel_sum, "maximum, not the sum"),
    (saliency_of_probability, "not the probability"),
    (saliency_first_target, "its own target class"),
    (saliency_with_backward, r"\.grad of a parameter changed.*torch\.autograd\.grad"),
    (saliency_leaves_hook, r"hooks are registered.*handle\.remove\(\)"),
    (saliency_calls_vislib, "calls vislib's own implementation"),
    (saliency_caller_requires_grad, r"set requires_grad on its argument number 2.*x\.detach\(\)\.clone\(\)"),
    (saliency_cross_entropy, "gradient of the cross-entropy loss averaged over the batch"),
    (saliency_predicted_class, r"not the class the model predicts \(argmax\)"),
    (saliency_all_logits, "not the sum of all its class scores"),
    (saliency_target_columns, r"logits\[:, target\] is a B x B matrix"),
    (saliency_times_input, r"the saliency map is the gradient alone.*\(gradient x input\)"),
])
def test_saliency_map_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.saliency_map(fn)


def test_an_unimplemented_function_is_not_implemented_yet(capsys):
    checks.saliency_map(saliency_stub)
    assert "saliency_map: not implemented yet" in capsys.readouterr().out
    with pytest.raises(checks.NotImplementedYet, match="not implemented yet"):
        checks.saliency_map(saliency_stub, strict=True)


def test_a_check_wants_the_function_itself():
    with pytest.raises(TypeError, match=r"checks.saliency_map\(saliency_map\)"):
        checks.saliency_map(torch.zeros(3))


def test_explain_error_names_the_line_and_what_the_error_usually_means():
    text = explain_error("RuntimeError", "Trying to backward through the graph a second time (or directly access "
                         "saved tensors after they have already been freed).\nmore", "    score.backward()\n", 12,
                         "saliency_map").render("en")
    assert text.startswith("your saliency_map raised RuntimeError on line 12 (`score.backward()`): Trying to "
                           "backward through the graph a second time")
    assert "more" not in text and "one backward pass" in text
    unknown = explain_error("ValueError", "odd", None, None, "grad_cam").render("en")
    assert unknown == "your grad_cam raised ValueError: odd. Look at that line: the error is in your code."
    assert "dictionary has no such key" in explain_error("KeyError", "'A'", "saved['A']", 3, "grad_cam").render("en")


def saliency_index_error(model, x, target):
    return model(x)[:, target + 10]


def test_an_error_in_the_learners_code_is_explained():
    with pytest.raises(AssertionError, match=r"raised IndexError on line \d+ \(`return model\(x\)\[:, target \+ "
                                             r"10\]`\).*This usually means: an index does not fit"):
        checks.saliency_map(saliency_index_error)


def test_learner_frame_is_the_innermost_frame_outside_vislib_and_the_libraries():
    namespace = {}
    exec(compile("def boom():\n    raise ValueError('x')\n", str(Path(vislib.__file__).parent / "fake.py"), "exec"),
         namespace)
    try:
        namespace["boom"]()  # vislib's frame (boom) below this test's frame
    except ValueError as error:
        tb = error.__traceback__
    assert learner_frame(tb).filename == __file__
    assert learner_frame(tb.tb_next) is None  # vislib's code alone: the check's own error, left as it is


def test_unless_unimplemented_turns_a_stub_into_a_note(capsys):
    with checks.unless_unimplemented("saliency_map"):
        saliency_stub(None, None, None)
    assert "saliency_map: not implemented yet" in capsys.readouterr().out
    with pytest.raises(ZeroDivisionError), checks.unless_unimplemented():
        print(1 / 0)  # other errors still show


# --------------------------------------------------------------------------- relu_backward


def relu_backward_vectorised(h_in, grad_out, rule):
    mask = (h_in > 0).to(grad_out.dtype)
    if rule == "backprop":
        return grad_out * mask
    if rule == "deconvnet":
        return F.relu(grad_out)
    return F.relu(grad_out) * mask


def relu_backward_where(h_in, grad_out, rule):
    keep_forward = h_in > 0 if rule in ("backprop", "guided") else torch.ones_like(h_in, dtype=torch.bool)
    keep_backward = grad_out > 0 if rule in ("deconvnet", "guided") else torch.ones_like(h_in, dtype=torch.bool)
    return torch.where(keep_forward & keep_backward, grad_out, torch.zeros_like(grad_out))


def relu_backward_ge(h_in, grad_out, rule):
    mask = (h_in >= 0).to(grad_out.dtype)
    return {"backprop": grad_out * mask, "deconvnet": grad_out.clamp(min=0),
            "guided": grad_out.clamp(min=0) * mask}[rule]


def relu_backward_deconvnet_masked(h_in, grad_out, rule):
    mask = (h_in > 0).to(grad_out.dtype)
    return grad_out * mask if rule == "backprop" else grad_out.clamp(min=0) * mask


def relu_backward_guided_unmasked(h_in, grad_out, rule):
    return grad_out * (h_in > 0) if rule == "backprop" else grad_out.clamp(min=0)


def relu_backward_abs(h_in, grad_out, rule):
    mask = (h_in > 0).to(grad_out.dtype)
    return {"backprop": grad_out * mask, "deconvnet": grad_out.abs(), "guided": grad_out.abs() * mask}[rule]


def relu_backward_ignores_rule(h_in, grad_out, rule):
    return grad_out * (h_in > 0)


def relu_backward_in_place(h_in, grad_out, rule):
    grad_out[h_in <= 0] = 0
    if rule != "backprop":
        grad_out.clamp_(min=0)
    return grad_out


@pytest.mark.parametrize("fn", [relu_backward_vectorised, relu_backward_where])
def test_relu_backward_accepts_correct_implementations(fn, capsys):
    checks.relu_backward(fn)
    assert "relu_backward: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (relu_backward_ge, "not h_in >= 0"),
    (relu_backward_deconvnet_masked, "deconvnet rule ignores the forward activation"),
    (relu_backward_guided_unmasked, "guided backpropagation keeps both conditions"),
    (relu_backward_abs, "not its absolute value"),
    (relu_backward_in_place, "changed its argument number 2 in place"),
    (relu_backward_ignores_rule, r"for rule='deconvnet' yours gives the backprop rule's gradient"),
])
def test_relu_backward_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.relu_backward(fn)


# --------------------------------------------------------------------------- occlusion_map


def occlusion_loops(model, x, target, window, stride):
    """Window by window, one image at a time."""
    height, width = x.shape[-2:]
    maps = torch.zeros(x.shape[0], height, width)
    counts = torch.zeros(height, width)
    with torch.no_grad():
        original = model(x).gather(1, target[:, None])[:, 0]
        for top in range(0, height - window + 1, stride):
            for left in range(0, width - window + 1, stride):
                hidden = x.clone()
                hidden[:, :, top:top + window, left:left + window] = 0
                drop = original - model(hidden).gather(1, target[:, None])[:, 0]
                maps[:, top:top + window, left:left + window] += drop[:, None, None]
                counts[top:top + window, left:left + window] += 1
    return maps / counts


def occlusion_batched(model, x, target, window, stride):
    """Every occluded copy of an image in one batch, drops spread with a transposed convolution."""
    height, width = x.shape[-2:]
    tops, lefts = range(0, height - window + 1, stride), range(0, width - window + 1, stride)
    maps = []
    with torch.no_grad():
        for image, cls in zip(x, target.tolist()):
            copies = image.repeat(len(tops) * len(lefts), 1, 1, 1)
            for n, (top, left) in enumerate((t, w) for t in tops for w in lefts):
                copies[n, :, top:top + window, left:left + window] = 0
            drops = model(image[None])[0, cls] - model(copies)[:, cls]
            kernel = torch.ones(1, 1, window, window)
            summed = F.conv_transpose2d(drops.view(1, 1, len(tops), len(lefts)), kernel, stride=stride)
            count = F.conv_transpose2d(torch.ones(1, 1, len(tops), len(lefts)), kernel, stride=stride)
            maps.append((summed / count)[0, 0])
    return torch.stack(maps)


def occlusion_signed_wrong(model, x, target, window, stride):
    return -occlusion_loops(model, x, target, window, stride)


def occlusion_summed(model, x, target, window, stride):
    height, width = x.shape[-2:]
    counts = torch.zeros(height, width)
    for top in range(0, height - window + 1, stride):
        for left in range(0, width - window + 1, stride):
            counts[top:top + window, left:left + window] += 1
    return occlusion_loops(model, x, target, window, stride) * counts


def occlusion_of_probability(model, x, target, window, stride):
    class Probabilities(torch.nn.Module):
        def forward(self, x):
            return model(x).softmax(1)

    return occlusion_loops(Probabilities(), x, target, window, stride)


def occlusion_first_target(model, x, target, window, stride):
    return occlusion_loops(model, x, target[:1].expand(len(target)), window, stride)


def occlusion_misses_the_last_window(model, x, target, window, stride):
    """range(0, height - window, stride): the last window is never tried."""
    height, width = x.shape[-2:]
    maps, counts = torch.zeros(x.shape[0], height, width), torch.zeros(height, width)
    with torch.no_grad():
        original = model(x).gather(1, target[:, None])[:, 0]
        for top in range(0, height - window, stride):
            for left in range(0, width - window, stride):
                hidden = x.clone()
                hidden[:, :, top:top + window, left:left + window] = 0
                drop = original - model(hidden).gather(1, target[:, None])[:, 0]
                maps[:, top:top + window, left:left + window] += drop[:, None, None]
                counts[top:top + window, left:left + window] += 1
    return maps / counts


def occlusion_mean_baseline(model, x, target, window, stride):
    """Hides each window with the batch's mean value instead of 0."""
    class Hidden(torch.nn.Module):
        def forward(self, inputs):
            return model(torch.where(inputs == 0, x.mean(), inputs))

    return occlusion_loops(Hidden(), x, target, window, stride)


def occlusion_calls_vislib(model, x, target, window, stride):
    return saliency.occlusion(model, x, target, window=window, stride=stride, progress=False)


@pytest.mark.parametrize("fn", [occlusion_loops, occlusion_batched])
def test_occlusion_map_accepts_correct_implementations(fn, capsys):
    checks.occlusion_map(fn)
    assert "occlusion_map: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (occlusion_signed_wrong, "opposite sign"),
    (occlusion_summed, "yours adds them up"),
    (occlusion_of_probability, "not the probability"),
    (occlusion_first_target, "its own target class"),
    (occlusion_calls_vislib, "calls vislib's own implementation"),
    (occlusion_mean_baseline, "not with the images. mean value"),
    (occlusion_misses_the_last_window, r"NaN in the last rows or columns.*range\(0, height - window \+ 1, stride\)"),
])
def test_occlusion_map_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.occlusion_map(fn)
