"""The written-out activation and loss kernels (methods.autograd_kernels) give autograd's bits
(torch.equal, float32 and float64), and say which activations and losses they cover."""

import pytest
import torch
from torch import nn

from methods.autograd_kernels import (
    activation_backward,
    activation_function,
    backward_from_output,
    has_closed_form,
    loss_and_output_grad,
    loss_backward,
    loss_gradient,
    mse_backward,
    mse_gradient,
    supported,
)
from methods.losses import IGNORE_INDEX, CrossEntropy, MeanSquaredError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity}
DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act_name", sorted(ACTIVATIONS))
def test_activation_backward_is_autograds_bit_for_bit(act_name, dtype):
    """grad * act'(z) from act(z) against autograd.grad(act(z), z, grad), torch.equal."""
    torch.manual_seed(3)
    act = ACTIVATIONS[act_name]()
    z = (torch.randn(9, 7, dtype=dtype) * 2).requires_grad_(True)
    z.data[0, :3] = 0.0  # relu's kink: threshold_backward zeroes the gradient at 0
    grad = torch.randn(9, 7, dtype=dtype)
    output = act(z)
    (expected,) = torch.autograd.grad(output, [z], grad)
    output = output.detach()
    assert torch.equal(activation_backward(act, grad, output), expected)
    assert torch.equal(backward_from_output(act)(grad, output), expected)
    assert activation_backward(None, grad, output) is grad  # a linear layer
    if act_name == "tanh":  # against the hand formula too: grad (1 - tanh^2)
        torch.testing.assert_close(expected, grad * (1 - output**2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_name", ["cross_entropy", "ignored_targets", "mse"])
def test_written_out_loss_gradient_is_autograds_bit_for_bit(loss_name, dtype):
    """(L, dL/do) of loss_and_output_grad, and loss_gradient's dL/do, against loss(o, y) and
    autograd.grad, torch.equal."""
    torch.manual_seed(4)
    output = torch.randn(13, 6, dtype=dtype) * 3
    if loss_name == "mse":
        loss, target = MeanSquaredError(), torch.randn(13, 6, dtype=dtype)
    else:
        loss, target = CrossEntropy(), torch.randint(0, 6, (13,))
        if loss_name == "ignored_targets":
            target[::4] = IGNORE_INDEX  # the mean is over the scored examples only
    leaf = output.clone().requires_grad_(True)
    expected = loss(leaf, target)
    (expected_grad,) = torch.autograd.grad(expected, [leaf])
    value, grad = loss_and_output_grad(loss, output, target)
    assert value.shape == () and torch.equal(value, expected.detach())
    assert torch.equal(grad, expected_grad)
    assert torch.equal(loss_gradient(loss, output, target), expected_grad)
    half = torch.tensor(0.5, dtype=dtype)  # a seed other than 1 scales the gradient
    assert torch.equal(loss_backward(loss)(half, output, target), expected_grad * 0.5)
    # Against the hand formula too: (softmax - onehot) / batch, or 2 (o - t) / numel.
    if loss_name == "cross_entropy":
        hand = (output.softmax(1) - nn.functional.one_hot(target, 6).to(dtype)) / 13
    elif loss_name == "mse":
        hand = 2 * (output - target) / output.numel()
    else:
        return
    torch.testing.assert_close(grad, hand)


@pytest.mark.parametrize("dtype", DTYPES)
def test_both_forms_of_mse_backward_are_autograds(dtype):
    """The out= form (no zero fill) and the functional form: the same bits as autograd."""
    torch.manual_seed(5)
    output, target = torch.randn(8, 5, dtype=dtype), torch.randn(8, 5, dtype=dtype)
    leaf = output.clone().requires_grad_(True)
    seed = torch.tensor(0.3, dtype=dtype)
    (expected,) = torch.autograd.grad(nn.functional.mse_loss(leaf, target), [leaf], seed)
    assert torch.equal(mse_backward(seed, output, target), expected)
    assert torch.equal(mse_backward(seed, output, target, zero_fill=True), expected)
    (unit,) = torch.autograd.grad(nn.functional.mse_loss(leaf, target), [leaf])
    assert torch.equal(mse_gradient(output, target), unit)


def test_other_losses_and_shapes_are_left_to_autograd():
    class Scaled(CrossEntropy):  # a subclass may change the loss: not written out
        def __call__(self, output, target):
            return 2 * super().__call__(output, target)

    output = torch.randn(4, 3)
    assert loss_and_output_grad(Scaled(), output, torch.tensor([0, 1, 2, 0])) is None
    assert loss_and_output_grad(CrossEntropy(), output, torch.rand(4, 3)) is None  # soft labels
    assert loss_and_output_grad(MeanSquaredError(), output, torch.randn(4, 1)) is None  # broadcast
    steps = torch.randn(4, 2, 3)  # per-step outputs
    assert loss_and_output_grad(CrossEntropy(), steps, torch.zeros(4, 2, dtype=torch.long)) is None
    assert not supported(nn.Tanh(), Scaled())
    with pytest.raises(KeyError):
        loss_backward(Scaled())


@pytest.mark.parametrize("act_name", [*sorted(ACTIVATIONS), "elu"])
def test_activation_function_gives_the_modules_values(act_name):
    module = nn.ELU() if act_name == "elu" else ACTIVATIONS[act_name]()
    x = torch.randn(5, 7)
    function = activation_function(module)
    assert (function is module) == (act_name == "elu")  # ELU: the module itself
    assert torch.equal(function(x), module(x))
    inplace = nn.ReLU(inplace=True)
    assert activation_function(inplace) is inplace


def test_which_activations_and_losses_are_written_out():
    assert has_closed_form(None) and has_closed_form(nn.Tanh())
    assert not has_closed_form(nn.ELU())
    with pytest.raises(TypeError, match="ELU"):
        activation_backward(nn.ELU(), torch.ones(2, 2), torch.ones(2, 2))
    for name, act in ACTIVATIONS.items():
        for loss in (CrossEntropy(), MeanSquaredError()):
            assert supported(act(), loss), name
    # An in-place ReLU's derivative is written out, but its function is the module itself,
    # which would overwrite the code it is given: not for supported's callers.
    assert has_closed_form(nn.ReLU(inplace=True))
    assert not supported(nn.ReLU(inplace=True), CrossEntropy())
    assert not supported(nn.ELU(), CrossEntropy())
    assert not supported(nn.Softplus(), MeanSquaredError())
