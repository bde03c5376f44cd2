import pytest
import torch
import torch.nn as nn

from vislib.hooks import capture, count_hooks, frozen, get_layer, layer_name, model_state, state_changes
from vislib.models import ShapesNet

from .helpers import tiny_cnn, untouched


def test_get_layer_by_name_and_module():
    model = ShapesNet()
    assert get_layer(model, "features.conv2") is model.features.conv2
    assert get_layer(model, model.fc) is model.fc
    assert layer_name(model, model.features.relu4) == "features.relu4"


def test_unknown_layer_lists_closest_names():
    with pytest.raises(KeyError, match="features.relu4"):
        get_layer(ShapesNet(), "features.relu_4")


def test_foreign_module_is_an_error():
    with pytest.raises(ValueError, match="not a submodule"):
        get_layer(ShapesNet(), nn.ReLU())


def test_capture_records_activations_before_inplace_relu_overwrites_them():
    model = tiny_cnn(inplace=True)
    x = torch.randn(2, 3, 8, 8)
    with untouched(model), capture(model, ["conv1", "relu1", "fc"]) as rec:
        logits = model(x)
    expected_conv1 = model.conv1(x)
    assert torch.allclose(rec["conv1"], expected_conv1)
    assert (rec["conv1"] < 0).any(), "conv1's copy must keep its negative values"
    assert torch.allclose(rec["relu1"], expected_conv1.clamp(min=0))
    assert torch.allclose(rec["fc"], logits)


def test_capture_gradients_match_autograd():
    model = tiny_cnn(inplace=True)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with untouched(model), frozen(model), capture(model, "relu2", grads=True) as rec:
        model(x)[:, 1].sum().backward()
    # d(sum of logit 1)/d(relu2 output): fc weight of class 1 spread evenly by the average pool.
    expected = (model.fc.weight[1] / 64).view(1, 6, 1, 1).expand(2, 6, 8, 8)
    assert torch.allclose(rec.gradients["relu2"], expected)


def graph_nodes(tensor: torch.Tensor) -> list[str]:
    """The names of every autograd node a backward pass from ``tensor`` would visit."""
    seen, todo = [], [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None:
            seen.append(type(node).__name__)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return seen


@pytest.mark.parametrize("inplace", [True, False])
def test_capture_starts_the_graph_at_the_layer_when_nothing_before_it_needs_grad(inplace):
    model = tiny_cnn(inplace=inplace)
    x = torch.randn(2, 3, 8, 8)
    with untouched(model), frozen(model), capture(model, "conv2", grads=True) as rec:
        logits = model(x)
        nodes = graph_nodes(logits)
        logits[:, 1].sum().backward()
    # the backward pass runs fc, pool and relu2 only: conv2 and everything below it are not differentiated
    assert not any(name.startswith("Convolution") for name in nodes), nodes
    with frozen(model):
        conv2_output = model.conv2(model.relu1(model.conv1(x.clone()))).requires_grad_(True)
        (expected,) = torch.autograd.grad(model.fc(model.pool(conv2_output.relu()).flatten(1))[:, 1].sum(),
                                          conv2_output)
    assert torch.allclose(rec.gradients["conv2"], expected)
    assert not x.requires_grad


@pytest.mark.parametrize("inplace", [True, False])
def test_no_hook_left_after_exit_or_exception(inplace):
    model = ShapesNet().train()
    assert count_hooks(model) == 0
    with capture(model, ["features.relu1", "features.bn2", "fc"], grads=True):
        model(torch.rand(2, 3, 32, 32))
    assert count_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"), capture(model, "features.relu1"):
        model.eval()
        raise RuntimeError("boom")
    assert count_hooks(model) == 0
    assert all(m.training for m in model.modules()), "train mode must be restored after the exception"


def test_frozen_restores_everything_also_on_exception():
    model = tiny_cnn()
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    with untouched(model):
        with torch.no_grad(), frozen(model):
            x = torch.randn(1, 3, 8, 8, requires_grad=True)
            model(x).sum().backward()
            assert x.grad is not None and all(not p.requires_grad for p in model.parameters())
        with pytest.raises(ZeroDivisionError), frozen(model):
            model.train()
            raise ZeroDivisionError


def test_module_called_twice_keeps_the_last_call_and_its_own_gradient():
    class Twice(nn.Module):  # like torchvision's BasicBlock, which calls self.relu twice
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.relu(x) * 3 - 1) * 2

    model = Twice()
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    with capture(model, "relu", grads=True) as rec:
        model(x).sum().backward()
    assert rec.calls["relu"] == 2
    assert torch.equal(rec["relu"], torch.tensor([[2.0, 5.0]]))           # the second call's output
    assert torch.equal(rec.gradients["relu"], torch.tensor([[2.0, 2.0]]))  # d(2 * out2) / d out2, not 6


def test_frozen_runs_a_train_mode_model_in_eval_mode_and_hands_it_back_in_train_mode():
    model = ShapesNet().train()
    with untouched(model), frozen(model):
        assert not any(m.training for m in model.modules())
        model(torch.rand(4, 3, 32, 32) * 5)  # eval mode: BatchNorm reads its running statistics, never updates them
        assert torch.equal(model.features.bn1.running_mean, torch.zeros(16))
    assert all(m.training for m in model.modules())


def test_frozen_restores_buffers_that_the_body_changes():
    model = ShapesNet()
    with untouched(model), frozen(model):
        model.train()  # the body may switch modes itself; the statistics it changes are put back
        model(torch.rand(4, 3, 32, 32) * 5)
        assert not torch.equal(model.features.bn1.running_mean, torch.zeros(16))


def test_frozen_nested_is_free_and_the_outer_block_restores():
    model = ShapesNet().train()
    model.fc.weight.requires_grad_(True)
    with untouched(model), frozen(model):
        with frozen(model):
            assert not model.fc.weight.requires_grad and not model.training
        assert not model.fc.weight.requires_grad and not model.training  # still inside the outer block


def test_frozen_works_inside_inference_mode():
    model = ShapesNet()
    with torch.inference_mode(), untouched(model), frozen(model):
        x = torch.rand(1, 3, 16, 16, requires_grad=True)
        model(x).sum().backward()
        assert x.grad is not None


def test_differentiable_output_keeps_the_graph_and_survives_inplace_relu():
    """The kept output is the one the graph uses (gradients flow from it to the input), an inplace
    ReLU after it changes only the clone the network goes on with, and no hook is left, also on
    an exception."""
    from vislib.hooks import differentiable_output

    model = tiny_cnn(inplace=True)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with untouched(model), differentiable_output(model, "conv1") as kept:
        logits = model(x)
    assert torch.allclose(kept["output"], model.conv1(x)) and (kept["output"] < 0).any()
    (grad,) = torch.autograd.grad(kept["output"].sum() + logits.sum(), x)
    assert grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="boom"), differentiable_output(model, "conv1"):
        raise RuntimeError("boom")
    assert count_hooks(model) == 0


def test_model_state_notices_a_changed_module_setting_and_not_a_restored_one():
    model = tiny_cnn(inplace=True)
    before = model_state(model)
    model.relu1.inplace = False
    model.conv2.stride = (2, 2)
    changes = state_changes(before, model_state(model))
    assert changes == ["the setting relu1.inplace changed from True to False",
                       "the setting conv2.stride changed from (1, 1) to (2, 2)"]
    model.relu1.inplace, model.conv2.stride = True, (1, 1)
    assert state_changes(before, model_state(model)) == []
