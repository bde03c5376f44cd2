import platform
import subprocess
import sys

import pytest
import torch

from vislib.conventions import (
    as_batch,
    copies_per_pass,
    fast_layout,
    logits_of,
    model_device,
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


def test_resolve_target_forms():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert resolve_target(None, logits).tolist() == [1, 0]
    assert resolve_target(2, logits).tolist() == [2, 2]
    assert resolve_target([0, 2], logits).tolist() == [0, 2]
    assert resolve_target(torch.tensor([2, 1]), logits).tolist() == [2, 1]
    assert selected_scores(logits, torch.tensor([1, 2])).tolist() == [2.0, 1.0]


@pytest.mark.parametrize("bad,error", [([0, 1, 2], ValueError), ([0], ValueError), (3, ValueError),
                                       (-1, ValueError), (True, TypeError), ([0.5, 1.0], TypeError)])
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


def test_copies_per_pass_keeps_large_images_in_small_batches_on_the_cpu():
    assert copies_per_pass(torch.zeros(1, 3, 64, 64)) == 64
    assert copies_per_pass(torch.zeros(1, 3, 64, 64), backward=True) == 32
    assert copies_per_pass(torch.zeros(1, 3, 224, 224)) == 6
    assert copies_per_pass(torch.zeros(1, 3, 224, 224), backward=True) == 3
    assert copies_per_pass(torch.zeros(1, 3, 16, 16), backward=True) == 64
    assert copies_per_pass(torch.zeros(1, 3, 1024, 1024)) == 1
    assert copies_per_pass(torch.zeros(1, 3, 1024, 1024, device="meta"), backward=True) == 64
    assert copies_per_pass(torch.zeros(1, 3, 224, 224), batch_size=32) == 32


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


PAGE_FAULTS_OF_FORWARD_PASSES = """
import resource, sys, torch
from vislib.conventions import reuse_freed_memory
from vislib.models import shapes_net

model, x = shapes_net(), torch.rand(3, 3, 224, 224).contiguous(memory_format=torch.channels_last)
if sys.argv[1] == "reuse":
    reuse_freed_memory()
faults = []
with torch.no_grad():
    for _ in range(30):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[10:]))
"""


def page_faults_of_forward_passes(mode: str) -> int:
    """Page faults of ShapesNet's passes 11 to 30 over 3 images of 224 px, in a fresh process
    (the allocator's state belongs to the process)."""
    done = subprocess.run([sys.executable, "-c", PAGE_FAULTS_OF_FORWARD_PASSES, mode], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)


def test_reuse_freed_memory_stops_the_page_faults_of_repeated_passes():
    """With glibc, each pass's activations (9.6 MB blocks) go back to the system and are faulted
    in again by the next pass, about 4,700 faults per pass; after ``reuse_freed_memory``, none."""
    after = page_faults_of_forward_passes("reuse")
    if platform.libc_ver()[0] == "glibc":
        assert page_faults_of_forward_passes("plain") > 10_000
        assert after < 1_000
    else:  # another allocator has its own rules; the call must only do no harm
        assert after <= page_faults_of_forward_passes("plain") + 1_000
