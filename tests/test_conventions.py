from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn as nn

from vislib.conventions import (
    Pick,
    as_baseline,
    as_batch,
    as_logits,
    check_number,
    copies_per_pass,
    fast_layout,
    logits_of,
    model_device,
    model_dtype,
    model_input,
    resolve_target,
    selected_scores,
)

from .helpers import tiny_cnn


def test_as_batch():
    assert as_batch(torch.zeros(3, 8, 8)).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\[B,C,H,W\]"):
        as_batch(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="float"):
        as_batch(torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError):
        as_batch([[0.0]])


@pytest.mark.parametrize("bad,message", [(torch.zeros(0, 3, 8, 8), "x holds no pixels"),
                                         (torch.zeros(2, 3, 0, 8), "x holds no pixels"),
                                         (torch.full((1, 3, 4, 4), float("nan")), "x contains NaN"),
                                         (torch.full((1, 3, 4, 4), float("inf")), "x contains NaN or infinite")])
def test_as_batch_refuses_empty_and_non_finite_batches(bad, message):
    with pytest.raises(ValueError, match=message):
        as_batch(bad)
    with pytest.raises(ValueError, match=message.replace("x ", "images ")):
        as_batch(bad, "images")


def test_as_batch_turns_an_inference_tensor_into_a_normal_one():
    with torch.inference_mode():
        x = torch.rand(1, 3, 4, 4)
    batch = as_batch(x)
    assert not batch.is_inference() and torch.equal(batch, x)
    batch.requires_grad_(True)  # refused on an inference tensor


def test_as_baseline():
    x = torch.zeros(2, 3, 4, 4)
    assert as_baseline(0.5, x).ndim == 0
    assert as_baseline(torch.zeros(3, 1, 1), x).shape == (3, 1, 1)
    for bad in (torch.zeros(5, 4, 4), "grey", torch.zeros(2, 2, 3, 4, 4)):
        with pytest.raises(ValueError, match="baseline must be a number or a tensor broadcastable"):
            as_baseline(bad, x)
    with pytest.raises(ValueError, match="baseline contains NaN"):
        as_baseline(float("nan"), x)


def test_resolve_target_forms():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert resolve_target(None, logits).tolist() == [1, 0]
    assert resolve_target(2, logits).tolist() == [2, 2]
    assert resolve_target([0, 2], logits).tolist() == [0, 2]
    assert resolve_target(torch.tensor([2, 1]), logits).tolist() == [2, 1]
    assert resolve_target(np.array([2, 1]), logits).tolist() == [2, 1]
    assert selected_scores(logits, torch.tensor([1, 2])).tolist() == [2.0, 1.0]


@pytest.mark.parametrize("single", [np.int64(2), np.int32(2), torch.tensor(2), torch.tensor(2, dtype=torch.uint8)])
def test_resolve_target_takes_numpy_integers_and_0d_tensors_as_one_class_for_all(single):
    assert resolve_target(single, torch.zeros(2, 3)).tolist() == [2, 2]


def test_resolve_target_refuses_to_predict_from_nan_scores():
    with pytest.raises(ValueError, match="NaN"):
        resolve_target(None, torch.tensor([[float("nan"), 1.0]]))


@pytest.mark.parametrize("bad,error", [([0, 1, 2], ValueError), ([0], ValueError), (3, ValueError),
                                       (-1, ValueError), (True, TypeError), ([0.5, 1.0], TypeError),
                                       (torch.tensor(True), TypeError), (torch.tensor(1.0), TypeError),
                                       ("cat", TypeError), (1.0, TypeError), ([[0], [1]], ValueError)])
def test_resolve_target_rejects_bad_targets(bad, error):
    with pytest.raises(error):
        resolve_target(bad, torch.zeros(2, 3))


def test_logits_of_and_model_device():
    model = tiny_cnn()
    assert logits_of(model, torch.zeros(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match="class scores"):
        logits_of(model.conv1, torch.zeros(2, 3, 8, 8))
    assert model_device(model) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")
    assert model_dtype(model) == torch.float32 and model_dtype(model.double()) == torch.float64
    assert model_dtype(torch.nn.ReLU()) == torch.float32


class _HuggingFaceStyleOutput(dict):
    """Like transformers' ModelOutput: a dict whose entries are also attributes."""

    def __getattr__(self, name):
        return self[name]


def test_one_rule_for_structured_model_outputs():
    scores = torch.randn(2, 5)
    inception = namedtuple("InceptionOutputs", ["logits", "aux_logits"])
    assert as_logits(scores, 2) is scores
    assert as_logits((scores, torch.zeros(2, 5)), 2) is scores
    assert as_logits([scores], 2) is scores
    assert as_logits(inception(scores, None), 2) is scores
    assert as_logits({"logits": scores, "hidden": torch.zeros(2, 7)}, 2) is scores
    assert as_logits(_HuggingFaceStyleOutput(logits=scores), 2) is scores
    assert as_logits(type("Output", (), {"logits": scores})(), 2) is scores
    with pytest.raises(ValueError, match=r"a dict with keys \['out'\].*Pick\('out'\)"):
        as_logits({"out": scores}, 2)
    for bad in ((), "scores", torch.zeros(2, 5, 1), torch.zeros(3, 5)):
        with pytest.raises(ValueError, match="must return class scores"):
            as_logits(bad, 2)


def test_pick_wraps_a_model_with_a_dict_output():
    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_cnn()

        def forward(self, x):
            return {"out": self.net(x)}

    x = torch.rand(2, 3, 8, 8)
    wrapped = nn.Sequential(DictModel(), Pick("out"))
    assert torch.equal(logits_of(wrapped, x), wrapped[0].net(x))


def test_copies_per_pass_keeps_large_images_in_small_batches_on_the_cpu():
    assert copies_per_pass(torch.zeros(1, 3, 64, 64)) == 64
    assert copies_per_pass(torch.zeros(1, 3, 64, 64), backward=True) == 32
    assert copies_per_pass(torch.zeros(1, 3, 224, 224)) == 6
    assert copies_per_pass(torch.zeros(1, 3, 224, 224), backward=True) == 3
    assert copies_per_pass(torch.zeros(1, 3, 16, 16), backward=True) == 64
    assert copies_per_pass(torch.zeros(1, 3, 1024, 1024)) == 1
    assert copies_per_pass(torch.zeros(1, 3, 1024, 1024, device="meta"), backward=True) == 64
    assert copies_per_pass(torch.zeros(1, 3, 224, 224), batch_size=32) == 32
    assert copies_per_pass(torch.zeros(1, 3, 224, 224), batch_size=np.int64(4)) == 4
    for bad in (2.5, 0, -1, True, "8"):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            copies_per_pass(torch.zeros(1, 3, 8, 8), batch_size=bad)


def test_model_input_is_a_channels_last_copy_on_the_cpu():
    x = torch.randn(2, 3, 5, 4)
    copy = model_input(x)
    assert torch.equal(copy, x) and copy.data_ptr() != x.data_ptr()
    assert copy.is_contiguous(memory_format=torch.channels_last)
    already = x.contiguous(memory_format=torch.channels_last)
    assert model_input(already).data_ptr() != already.data_ptr()  # a copy even when the layout matches


def test_fast_layout_copies_only_to_change_the_layout():
    x = torch.randn(2, 3, 5, 4)
    laid_out = fast_layout(x)
    assert torch.equal(laid_out, x) and laid_out.is_contiguous(memory_format=torch.channels_last)
    assert fast_layout(laid_out) is laid_out
    assert fast_layout(torch.randn(3, 5, 4)).is_contiguous()  # not a batch: left as it is


def test_check_number_takes_finite_numbers_and_names_the_argument():
    assert check_number(np.float32(0.5), "eps") == 0.5 and check_number(0, "eps") == 0.0
    assert check_number(2, "step_size", positive=True) == 2.0
    for bad, error in ((-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                       ("0.1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="eps must be"):
            check_number(bad, "eps")
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        check_number(0.0, "step_size", positive=True)
