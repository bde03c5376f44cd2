"""Mutation tests of the CAM assignment's checks: typical wrong implementations are each rejected
with their own hint; correct implementations written differently are accepted."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vislib import cam, checks

from .hint_coverage import names_the_mistake

# --------------------------------------------------------------------------- class_activation_map


def cam_einsum(features, fc_weight, target):
    return torch.einsum("bk,bkhw->bhw", fc_weight[target], features)


def cam_bmm(features, fc_weight, target):
    b, k, h, w = features.shape
    return torch.bmm(fc_weight[target][:, None, :], features.reshape(b, k, h * w)).reshape(b, h, w)


def cam_loops(features, fc_weight, target):
    maps = torch.zeros(features.shape[0], *features.shape[2:])
    for i, cls in enumerate(target.tolist()):
        for k in range(features.shape[1]):
            maps[i] += fc_weight[cls, k] * features[i, k]
    return maps


def cam_with_relu(features, fc_weight, target):
    return cam_einsum(features, fc_weight, target).clamp(min=0)


def cam_first_target(features, fc_weight, target):
    return torch.einsum("k,bkhw->bhw", fc_weight[target[0]], features)


def cam_channel_mean(features, fc_weight, target):
    return (fc_weight[target][:, :, None, None] * features).mean(dim=1)


def cam_normalised(features, fc_weight, target):
    maps = cam_einsum(features, fc_weight, target)
    return maps / maps.flatten(1).amax(1)[:, None, None]


def cam_divided_by_positions(features, fc_weight, target):
    return cam_einsum(features, fc_weight, target) / (features.shape[2] * features.shape[3])


def cam_upsampled(features, fc_weight, target):
    return F.interpolate(cam_einsum(features, fc_weight, target)[:, None], scale_factor=4, mode="bilinear")[:, 0]


def cam_channels_not_summed(features, fc_weight, target):
    return fc_weight[target][:, :, None, None] * features


def cam_weight_columns(features, fc_weight, target):
    """fc_weight[:, target] takes columns (features) instead of rows (classes): PyTorch's shape error."""
    return torch.einsum("bk,bkhw->bhw", fc_weight[:, target], features)


def cam_stub(features, fc_weight, target):
    raise NotImplementedError()


@pytest.mark.parametrize("fn", [cam_einsum, cam_bmm, cam_loops])
def test_class_activation_map_accepts_correct_implementations(fn, capsys):
    checks.class_activation_map(fn)
    assert "class_activation_map: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (cam_with_relu, "no ReLU"),
    (cam_first_target, "its own target class"),
    (cam_channel_mean, "not their mean"),
    (cam_normalised, "no normalisation"),
    (cam_divided_by_positions, "Grad-CAM's weights, not CAM's"),
    (cam_upsampled, "without upsampling"),
    (cam_channels_not_summed, "sum the weighted channels"),
    (cam_weight_columns, r"raised RuntimeError on line \d+ \(`return torch.einsum.*shapes do not fit.*"
                         r"weight\[target\] is one row per image"),
])
def test_class_activation_map_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.class_activation_map(fn)


def test_class_activation_map_stub_is_not_implemented_yet(capsys):
    checks.class_activation_map(cam_stub)
    assert "class_activation_map: not implemented yet" in capsys.readouterr().out
    with pytest.raises(checks.NotImplementedYet):
        checks.class_activation_map(cam_stub, strict=True)


# --------------------------------------------------------------------------- grad_cam


def _combine(alpha, activations, relu=True):
    maps = torch.einsum("bk,bkhw->bhw", alpha, activations)
    return maps.clamp(min=0) if relu else maps


def grad_cam_tensor_hook(model, x, target, layer):
    """A forward hook keeps the layer's output and hooks its gradient (Tensor.register_hook)."""
    saved = {}

    def keep(module, inputs, output):
        saved["activations"] = output.detach()
        output.register_hook(lambda grad: saved.__setitem__("gradients", grad))

    handle = model.get_submodule(layer).register_forward_hook(keep)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        model(x.clone().requires_grad_(True)).gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return _combine(saved["gradients"].mean(dim=(2, 3)), saved["activations"])


def grad_cam_full_backward_hook(model, x, target, layer):
    """register_full_backward_hook's grad_output, with the ReLU's inplace switched off while it runs
    (a full backward hook cannot follow an inplace module) and put back after."""
    module = model.get_submodule(layer)
    saved, inplace = {}, getattr(module, "inplace", False)
    handles = [module.register_forward_hook(lambda m, i, o: saved.__setitem__("activations", o.detach())),
               module.register_full_backward_hook(lambda m, gi, go: saved.__setitem__("gradients", go[0]))]
    module.inplace = False
    try:
        inputs = x.clone().requires_grad_(True)
        torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)
    finally:
        module.inplace = inplace
        for handle in handles:
            handle.remove()
    return _combine(saved["gradients"].mean(dim=(2, 3)), saved["activations"])


def grad_cam_autograd_per_image(model, x, target, layer):
    """torch.autograd.grad of each image's score with respect to the layer's output, one image at a time."""
    maps = []
    for image, cls in zip(x, target.tolist()):
        saved = []
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o, saved=saved: saved.append(o))
        try:
            score = model(image[None].clone().requires_grad_(True))[0, cls]
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(score, saved[0])
        maps.append(_combine(grad.mean(dim=(2, 3)), saved[0].detach())[0])
    return torch.stack(maps)


def _grad_cam_parts(model, x, target, layer, score=lambda logits, target: logits.gather(1, target[:, None])):
    saved = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: saved.append(o))
    try:
        logits = model(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score(logits, target).sum(), saved[0])
    return saved[0].detach(), grad


def grad_cam_summed(model, x, target, layer):
    activations, grad = _grad_cam_parts(model, x, target, layer)
    return _combine(grad.sum(dim=(2, 3)), activations)


def grad_cam_no_relu(model, x, target, layer):
    activations, grad = _grad_cam_parts(model, x, target, layer)
    return _combine(grad.mean(dim=(2, 3)), activations, relu=False)


def grad_cam_upsampled(model, x, target, layer):
    maps = grad_cam_tensor_hook(model, x, target, layer)
    return F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def grad_cam_normalised(model, x, target, layer):
    maps = grad_cam_tensor_hook(model, x, target, layer)
    low, high = maps.flatten(1).amin(1)[:, None, None], maps.flatten(1).amax(1)[:, None, None]
    return (maps - low) / (high - low + 1e-12)


def grad_cam_of_probability(model, x, target, layer):
    activations, grad = _grad_cam_parts(model, x, target, layer,
                                        lambda logits, t: logits.softmax(1).gather(1, t[:, None]))
    return _combine(grad.mean(dim=(2, 3)), activations)


def grad_cam_first_target(model, x, target, layer):
    activations, grad = _grad_cam_parts(model, x, target, layer, lambda logits, t: logits[:, t[0]])
    return _combine(grad.mean(dim=(2, 3)), activations)


def grad_cam_layer_input(model, x, target, layer):
    """A forward hook that keeps the layer's *input* (with inplace ReLUs it is the output anyway)."""
    saved = {}

    def keep(module, inputs, output):
        saved["activations"] = inputs[0].detach().clone()
        inputs[0].register_hook(lambda grad: saved.__setitem__("gradients", grad))

    handle = model.get_submodule(layer).register_forward_hook(keep)
    try:
        inputs = x.clone().requires_grad_(True)
        torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)
    finally:
        handle.remove()
    return _combine(saved["gradients"].mean(dim=(2, 3)), saved["activations"])


def grad_cam_grad_input(model, x, target, layer):
    """A full backward hook whose grad_input is taken for the gradient (inplace handled as above)."""
    module = model.get_submodule(layer)
    saved, inplace = {}, module.inplace
    handles = [module.register_forward_hook(lambda m, i, o: saved.__setitem__("activations", o.detach())),
               module.register_full_backward_hook(lambda m, gi, go: saved.__setitem__("gradients", gi[0]))]
    module.inplace = False
    try:
        inputs = x.clone().requires_grad_(True)
        torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)
    finally:
        module.inplace = inplace
        for handle in handles:
            handle.remove()
    return _combine(saved["gradients"].mean(dim=(2, 3)), saved["activations"])


def grad_cam_full_backward_hook_inplace(model, x, target, layer):
    module = model.get_submodule(layer)
    saved = {}
    handles = [module.register_forward_hook(lambda m, i, o: saved.__setitem__("activations", o.detach())),
               module.register_full_backward_hook(lambda m, gi, go: saved.__setitem__("gradients", go[0]))]
    try:
        inputs = x.clone().requires_grad_(True)
        torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)
    finally:
        for handle in handles:
            handle.remove()
    return _combine(saved["gradients"].mean(dim=(2, 3)), saved["activations"])


def grad_cam_batch_alpha(model, x, target, layer):
    activations, grad = _grad_cam_parts(model, x, target, layer)
    return _combine(grad.mean(dim=(0, 2, 3)).expand(len(x), -1), activations)


def grad_cam_with_backward(model, x, target, layer):
    """Right values, but .backward() with the parameters unfrozen fills their .grad."""
    saved = {}

    def keep(module, inputs, output):
        saved["activations"] = output.detach()
        output.register_hook(lambda grad: saved.__setitem__("gradients", grad))

    handle = model.get_submodule(layer).register_forward_hook(keep)
    try:
        model(x).gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
    return _combine(saved["gradients"].mean(dim=(2, 3)), saved["activations"])


def grad_cam_leaves_hook(model, x, target, layer):
    saved = {}
    model.get_submodule(layer).register_forward_hook(lambda m, i, o: saved.__setitem__("a", o))
    inputs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), saved["a"])
    return _combine(grad.mean(dim=(2, 3)), saved["a"].detach())


def grad_cam_calls_vislib(model, x, target, layer):
    return cam.grad_cam(model, x, target, layer=layer, upsample=False)


def grad_cam_position_by_position(model, x, target, layer):
    """Gradient times activation at each position (HiResCAM): Grad-CAM only where the gradient is constant."""
    activations, grad = _grad_cam_parts(model, x, target, layer)
    return (grad * activations).sum(dim=1).clamp(min=0)


def grad_cam_max_pooled(model, x, target, layer):
    activations, grad = _grad_cam_parts(model, x, target, layer)
    return _combine(grad.amax(dim=(2, 3)), activations)


def grad_cam_one_position(model, x, target, layer):
    activations, grad = _grad_cam_parts(model, x, target, layer)
    return _combine(grad[:, :, 0, 0], activations)


def grad_cam_positive_gradient(model, x, target, layer):
    activations, grad = _grad_cam_parts(model, x, target, layer)
    return _combine(grad.clamp(min=0).mean(dim=(2, 3)), activations)


def grad_cam_relu_per_channel(model, x, target, layer):
    activations, grad = _grad_cam_parts(model, x, target, layer)
    return (grad.mean(dim=(2, 3))[:, :, None, None] * activations).clamp(min=0).sum(dim=1)


def grad_cam_hook_returns_handle(model, x, target, layer):
    """The lambda returns register_hook's handle, which replaces the layer's output."""
    saved = {}
    handle = model.get_submodule(layer).register_forward_hook(
        lambda m, i, o: o.register_hook(lambda grad: saved.__setitem__("gradients", grad)))
    try:
        model(x.clone().requires_grad_(True)).gather(1, target[:, None]).sum()
    finally:
        handle.remove()
    return saved["gradients"]


def grad_cam_detached_in_hook(model, x, target, layer):
    """The hook keeps o.detach(), which is not part of the graph: autograd.grad cannot reach it."""
    saved = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: saved.__setitem__("A", o.detach()))
    try:
        score = model(x.clone().requires_grad_(True)).gather(1, target[:, None]).sum()
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, saved["A"])
    return _combine(grad.mean(dim=(2, 3)), saved["A"])


@pytest.mark.parametrize("fn", [grad_cam_tensor_hook, grad_cam_full_backward_hook, grad_cam_autograd_per_image])
def test_grad_cam_accepts_correct_implementations(fn, capsys):
    checks.grad_cam(fn)
    assert "grad_cam: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (grad_cam_summed, r"your map is (48|25|16|36)x larger than expected.*sum the gradient over positions instead "
                      "of averaging"),
    (grad_cam_no_relu, "apply a ReLU"),
    (grad_cam_upsampled, "without upsampling"),
    (grad_cam_normalised, "no normalisation"),
    (grad_cam_of_probability, "not the probability"),
    (grad_cam_first_target, "its own target class"),
    (grad_cam_layer_input, "not the layer's input"),
    (grad_cam_grad_input, r"not its input \(grad_input\)"),
    (grad_cam_full_backward_hook_inplace, "register_full_backward_hook cannot handle"),
    (grad_cam_batch_alpha, "not over the batch"),
    (grad_cam_with_backward, r"\.grad of a parameter changed"),
    (grad_cam_leaves_hook, r"hooks are registered.*handle\.remove\(\)"),
    (grad_cam_calls_vislib, "calls vislib's own implementation"),
    (grad_cam_position_by_position, "is HiResCAM, not Grad-CAM"),
    (grad_cam_positive_gradient, "Grad-CAM has one ReLU, after the weighted sum"),
    (grad_cam_relu_per_channel, "Grad-CAM has one ReLU, after the weighted sum"),
    (grad_cam_max_pooled, "MEAN of the gradient over all positions.*not its maximum"),
    (grad_cam_one_position, "MEAN of the gradient over all positions.*not its value at one position"),
    (grad_cam_hook_returns_handle, r"AttributeError on line \d+ .*returns a hook's handle.*let it return None"),
    (grad_cam_detached_in_hook, r"raised RuntimeError on line \d+ \(`\(grad,\) = torch.autograd.grad\(score, "
                                r"saved\[.A.\]\)`\): One of the differentiated Tensors.*detach\(\).*cut it off"),
])
def test_grad_cam_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.grad_cam(fn)


# --------------------------------------------------------------------------- guided_grad_cam


def _guided_backprop_hooks(model, x, target):
    """Guided backprop by forward hooks that clamp the gradient at every ReLU's output."""
    def positive_only(module, inputs, output):
        output.register_hook(lambda grad: grad.clamp(min=0))

    handles = [m.register_forward_hook(positive_only) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        inputs = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)
    finally:
        for handle in handles:
            handle.remove()
    return grad


def _upsampled(maps, size, **options):
    return F.interpolate(maps[:, None], size=size, **options)


def guided_grad_cam_hooks(model, x, target, layer):
    coarse = grad_cam_tensor_hook(model, x, target, layer)
    return _guided_backprop_hooks(model, x, target) * _upsampled(coarse, x.shape[-2:], mode="bilinear")


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        return h.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return grad.clamp(min=0) * (h > 0)


class _GuidedReLUModule(nn.Module):
    def forward(self, h):
        return _GuidedReLU.apply(h)


def _with_guided_relus(module):
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, _GuidedReLUModule())
        else:
            _with_guided_relus(child)
    return module


def guided_grad_cam_copied_model(model, x, target, layer):
    """Guided backprop on a copy of the model whose ReLUs are replaced by a custom autograd
    Function; Grad-CAM by autograd on the original, the product written with einsum."""
    guided_model = _with_guided_relus(copy.deepcopy(model))
    inputs = x.clone().requires_grad_(True)
    (guided,) = torch.autograd.grad(guided_model(inputs).gather(1, target[:, None]).sum(), inputs)
    coarse = grad_cam_autograd_per_image(model, x, target, layer)
    fine = F.interpolate(coarse[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return torch.einsum("bchw,bhw->bchw", guided, fine)


def _plain_gradient(model, x, target):
    inputs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)
    return grad


def guided_grad_cam_plain_gradient(model, x, target, layer):
    coarse = grad_cam_tensor_hook(model, x, target, layer)
    return _plain_gradient(model, x, target) * _upsampled(coarse, x.shape[-2:], mode="bilinear")


def guided_grad_cam_nearest(model, x, target, layer):
    coarse = grad_cam_tensor_hook(model, x, target, layer)
    return _guided_backprop_hooks(model, x, target) * _upsampled(coarse, x.shape[-2:], mode="nearest")


def guided_grad_cam_align_corners(model, x, target, layer):
    coarse = grad_cam_tensor_hook(model, x, target, layer)
    return _guided_backprop_hooks(model, x, target) * _upsampled(coarse, x.shape[-2:], mode="bilinear",
                                                                 align_corners=True)


def guided_grad_cam_signed(model, x, target, layer):
    coarse = grad_cam_no_relu(model, x, target, layer)
    return _guided_backprop_hooks(model, x, target) * _upsampled(coarse, x.shape[-2:], mode="bilinear")


def guided_grad_cam_deconvnet(model, x, target, layer):
    """The ReLU's mask skipped: each ReLU hands back the positive part of its output's gradient as it is."""
    class PositivePart(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h):
            return h.clamp(min=0)

        @staticmethod
        def backward(ctx, grad):
            return grad.clamp(min=0)

    class DeconvReLU(nn.Module):
        def forward(self, h):
            return PositivePart.apply(h)

    deconv_model = copy.deepcopy(model)
    for parent in deconv_model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, DeconvReLU())
    coarse = grad_cam_tensor_hook(model, x, target, layer)
    return _plain_gradient(deconv_model, x, target) * _upsampled(coarse, x.shape[-2:], mode="bilinear")


def guided_grad_cam_one_pass(model, x, target, layer):
    """Grad-CAM computed while the guided hooks are still on: its gradient is clamped too."""
    def positive_only(module, inputs, output):
        output.register_hook(lambda grad: grad.clamp(min=0))

    handles = [m.register_forward_hook(positive_only) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        coarse = grad_cam_tensor_hook(model, x, target, layer)
        guided = _plain_gradient(model, x, target)
    finally:
        for handle in handles:
            handle.remove()
    return guided * _upsampled(coarse, x.shape[-2:], mode="bilinear")


def guided_grad_cam_heatmap(model, x, target, layer):
    return guided_grad_cam_hooks(model, x, target, layer).abs().amax(dim=1)


def guided_grad_cam_first_target(model, x, target, layer):
    return guided_grad_cam_hooks(model, x, target[:1].expand(len(target)), layer)


def guided_grad_cam_inplace_off(model, x, target, layer):
    """Switches every ReLU's inplace off (so that hooks on outputs work) and never switches it back."""
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return guided_grad_cam_hooks(model, x, target, layer)


def guided_grad_cam_softmax(model, x, target, layer):
    """Guided backprop of the probability, times a right Grad-CAM."""
    guided = _guided_backprop_hooks(nn.Sequential(model, nn.Softmax(dim=1)), x, target)
    return guided * _upsampled(grad_cam_tensor_hook(model, x, target, layer), x.shape[-2:], mode="bilinear")


def guided_grad_cam_normalised(model, x, target, layer):
    result = guided_grad_cam_hooks(model, x, target, layer)
    return result / result.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)


def guided_grad_cam_clamped_at_input(model, x, target, layer):
    """The positive part of the plain gradient at the input, instead of at every ReLU."""
    guided = _plain_gradient(model, x, target).clamp(min=0)
    return guided * _upsampled(grad_cam_tensor_hook(model, x, target, layer), x.shape[-2:], mode="bilinear")


@pytest.mark.parametrize("fn", [guided_grad_cam_hooks, guided_grad_cam_copied_model])
def test_guided_grad_cam_accepts_correct_implementations(fn, capsys):
    checks.guided_grad_cam(fn)
    assert "guided_grad_cam: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,hint", [
    (guided_grad_cam_plain_gradient, "not the plain gradient"),
    (guided_grad_cam_deconvnet, "yours looks like deconvnet"),
    (guided_grad_cam_one_pass, "switch guided backprop's hooks on only for the gradient at the input"),
    (guided_grad_cam_nearest, "not to nearest-neighbour blocks"),
    (guided_grad_cam_align_corners, "align_corners=False"),
    (guided_grad_cam_signed, "after its ReLU"),
    (guided_grad_cam_heatmap, "keep the colour channels"),
    (guided_grad_cam_first_target, "its own target class"),
    (guided_grad_cam_inplace_off, r"the setting features\.relu1\.inplace changed from True to False.*Put back every "
                                  "module setting"),
    (guided_grad_cam_softmax, r"not the probability or the loss \(in your guided backpropagation\)"),
    (guided_grad_cam_normalised, "return the raw map: no normalisation"),
    (guided_grad_cam_clamped_at_input, "at every ReLU on the way back.*not once at the input"),
])
def test_guided_grad_cam_names_the_mistake(fn, hint):
    with names_the_mistake(hint):
        checks.guided_grad_cam(fn)
