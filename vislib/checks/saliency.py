"""Checks of the saliency assignment: ``saliency_map``, ``relu_backward``, ``occlusion_map``."""

from __future__ import annotations

import torch
import torch.nn as nn

from vislib import saliency
from vislib.checks.cases import cases
from vislib.checks.harness import CheckFailure, call, exercise, expect
from vislib.checks.language import _
from vislib.checks.offlimits import OffLimits

__all__ = ["occlusion_map", "relu_backward", "saliency_map"]

# What the functions of this assignment must not use (see vislib.checks.offlimits).
OFF_LIMITS = OffLimits(modules=("vislib.saliency",))

EACH_OWN_TARGET = _("each image must use its own target class: pick logits[i, target[i]], e.g. with logits.gather")
LOGIT_NOT_PROBABILITY = _("explain the raw class score (the logit, before the softmax), not the probability or the "
                          "loss")


def _probability(model: nn.Module) -> nn.Module:
    return nn.Sequential(model, nn.Softmax(dim=1))


def _log_probability(model: nn.Module) -> nn.Module:
    return nn.Sequential(model, nn.LogSoftmax(dim=1))


class _Scored(nn.Module):
    """The model followed by another score of its logits, one column [B, 1]: what a mistake
    differentiates instead of each image's target logit (explained as target 0)."""

    def __init__(self, model: nn.Module, score):
        super().__init__()
        self.model, self.score = model, score

    def forward(self, x):
        return self.score(self.model(x))


@exercise("saliency_map", _("The max over colour channels of |d logit / d x|, per image and target, on 3 models "
                            "(inplace ReLUs, BatchNorm, a non-square batch, one image)."))
def saliency_map(fn) -> None:
    for case in cases():
        got = call("saliency_map", fn, case.model, case.x, case.target, models=[case.model])
        grad = saliency.gradient(case.model, case.x, case.target)
        first = saliency.gradient(case.model, case.x, case.target[0].item())
        log_probability = saliency.gradient(_log_probability(case.model), case.x, case.target).abs().amax(1)
        mistakes = {
            _("{logit_not_probability}: yours is the gradient of the cross-entropy loss averaged over the batch",
              logit_not_probability=LOGIT_NOT_PROBABILITY): log_probability / len(case.x),
            _("explain the given target class of each image, not the class the model predicts (argmax)"):
                saliency.gradient(case.model, case.x).abs().amax(1),
            _("differentiate each image's target logit, not the sum of all its class scores"):
                saliency.gradient(_Scored(case.model, lambda s: s.sum(1, keepdim=True)), case.x, 0).abs().amax(1),
            _("logits[:, target] is a B x B matrix (every image's score for every image's target): pick one score "
              "per image, logits[i, target[i]], e.g. logits.gather(1, target[:, None])"):
                saliency.gradient(_Scored(case.model, lambda s, t=case.target: s[:, t].sum(1, keepdim=True)), case.x,
                                  0).abs().amax(1),
            _("the saliency map is the gradient alone: multiplying it by the input gives another method "
              "(gradient x input)"): (grad * case.x).abs().amax(1),
            _("take the absolute value of the gradient before the maximum over colour channels"): grad.amax(1),
            _("reduce the colour channels with the maximum, not the sum"): grad.abs().sum(1),
            _("reduce the colour channels with the maximum, not the mean"): grad.abs().mean(1),
            LOGIT_NOT_PROBABILITY: [saliency.gradient(_probability(case.model), case.x, case.target).abs().amax(1),
                                    log_probability],
            _("one map per image [B,H,W]: take the maximum of |gradient| over the colour channels (dim 1)"):
                grad.abs(),
            EACH_OWN_TARGET: first.abs().amax(1),
        }
        expect("saliency_map", got, grad.abs().amax(1), mistakes, what=_("map ({case})", case=case.label))


RULES = ("backprop", "deconvnet", "guided")


@exercise("relu_backward", _("The three backward rules of a ReLU, backprop, deconvnet and guided, on values "
                             "with exact zeros."))
def relu_backward(fn) -> None:
    generator = torch.Generator().manual_seed(3)
    h_in = torch.randn(2, 4, 5, 6, generator=generator)
    h_in[h_in.abs() < 0.3] = 0.0  # the ReLU's kink: its gradient there is 0
    grad_out = torch.randn(2, 4, 5, 6, generator=generator)
    active, positive = (h_in > 0).to(grad_out.dtype), grad_out.clamp(min=0)
    expected = {"backprop": grad_out * active, "deconvnet": positive, "guided": positive * active}
    at_zero = _("at h_in == 0 the ReLU's gradient is 0: use the mask h_in > 0, not h_in >= 0")
    not_abs = _("keep the positive part of the gradient (max(grad_out, 0)), not its absolute value")
    mistakes = {
        "backprop": {at_zero: grad_out * (h_in >= 0),
                     _("the mask comes from the forward pass, h_in > 0, not from the sign of the gradient"): positive},
        "deconvnet": {_("the deconvnet rule ignores the forward activation: it passes max(grad_out, 0) whatever "
                        "h_in was"): positive * active,
                      not_abs: grad_out.abs(),
                      _("deconvnet keeps the positive part of the gradient, max(grad_out, 0)"): grad_out},
        "guided": {at_zero: positive * (h_in >= 0),
                   _("guided backpropagation keeps both conditions: max(grad_out, 0) and only where h_in > 0"):
                       positive,
                   _("guided backpropagation also drops negative gradients: max(grad_out, 0) * [h_in > 0]"):
                       grad_out * active,
                   not_abs: grad_out.abs() * active},
    }
    for rule in RULES:
        others = {_("each rule has its own backward pass: for rule={rule!r} yours gives the {other} rule's gradient",
                    rule=rule, other=other): expected[other] for other in RULES if other != rule}
        got = call("relu_backward", fn, h_in, grad_out, rule)
        expect("relu_backward", got, expected[rule], {**mistakes[rule], **others},
               what=_("gradient for rule={rule!r}", rule=rule))


WINDOW, STRIDE = 4, 2


@exercise("occlusion_map", _("Score drops averaged over the {window}x{window} windows (stride {stride}) covering "
                             "each pixel, per image and target, on 3 models.", window=WINDOW, stride=STRIDE))
def occlusion_map(fn) -> None:
    for case in cases():
        got = call("occlusion_map", fn, case.model, case.x, case.target, WINDOW, STRIDE, models=[case.model])

        def occlusion(model, target, x=case.x):
            return saliency.occlusion(model, x, target, window=WINDOW, stride=STRIDE, progress=False)

        expected = occlusion(case.model, case.target)
        height, width = case.x.shape[-2:]
        _last_window(got, expected, height, width)
        rows = saliency._window_cover(height, WINDOW, STRIDE, "cpu").sum(0).float()
        cols = saliency._window_cover(width, WINDOW, STRIDE, "cpu").sum(0).float()
        mistakes = {
            _("the map is the drop of the score, score(original) - score(occluded): yours has the opposite sign"):
                -expected,
            _("average the drops of the windows that cover a pixel; yours adds them up"):
                expected * rows[:, None] * cols[None, :],
            LOGIT_NOT_PROBABILITY: occlusion(_probability(case.model), case.target),
            EACH_OWN_TARGET: occlusion(case.model, case.target[0].item()),
            _("hide the window with 0 (the baseline), not with the images' mean value"):
                saliency.occlusion(case.model, case.x, case.target, window=WINDOW, stride=STRIDE,
                                   baseline=case.x.mean().item(), progress=False),
            _("hide the window with 0 (the baseline) in all colour channels, not only the first one"):
                saliency.occlusion(case.model, case.x, case.target, window=WINDOW, stride=STRIDE,
                                   baseline=_first_channel_only(case.x), progress=False),
        }
        expect("occlusion_map", got, expected, mistakes, what=_("map ({case})", case=case.label))


def _last_window(got, expected: torch.Tensor, height: int, width: int) -> None:
    """The hint for a loop that stops one window early (range(0, size - window, stride)): no window
    covers the last rows or columns, so their count is 0 and the average 0 / 0 is NaN."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or torch.isfinite(got).all():
        return
    rows = torch.arange(height) >= max(range(0, height - WINDOW, STRIDE), default=-STRIDE) + WINDOW
    cols = torch.arange(width) >= max(range(0, width - WINDOW, STRIDE), default=-STRIDE) + WINDOW
    if torch.equal(~torch.isfinite(got), (rows[:, None] | cols[None, :]).expand_as(got)):
        raise CheckFailure(_("your occlusion_map gives NaN in the last rows or columns: no window covered them "
                             "(0 / 0). Let the loop reach the last window: range(0, height - window + 1, stride), "
                             "the +1 included ({window}x{window} windows, stride {stride}, images of "
                             "{height}x{width})", window=WINDOW, stride=STRIDE, height=height, width=width))


def _first_channel_only(x: torch.Tensor) -> torch.Tensor:
    """A baseline that hides channel 0 and keeps the others: what occluding one channel does."""
    baseline = x.clone()
    baseline[:, 0] = 0
    return baseline
