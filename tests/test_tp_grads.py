"""Closed-form gradients of the TP family's local losses equal autograd's exactly (torch.equal),
in float32 and float64: the functions of methods.tp_grads, and dtp/drl's forward updates,
output-layer gradients and inverse updates against autograd of the documented losses."""

import pytest
import torch
from torch import nn

from methods import build_method
from methods.autograd_kernels import activation_backward
from methods.losses import CrossEntropy
from methods.networks import MLP
from methods.target_propagation import squared_distance
from methods.tp_grads import difference_grad, distance_grad, linear_grads, linear_input_grad

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity}
DTYPES = [torch.float32, torch.float64]
SGD_ZERO = {"_target_": "torch.optim.SGD", "lr": 0.0}  # leaves the weights as they are


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act_name", sorted(ACTIVATIONS))
def test_two_term_difference_loss_matches_autograd_bit_for_bit(act_name, dtype):
    """scale * mean_n ||h + act(A r + c) - act(A u + c) - t||^2, DRL's form (A in both terms)."""
    torch.manual_seed(0)
    act = ACTIVATIONS[act_name]()
    layer = nn.Linear(7, 5).to(dtype)
    r, u = torch.randn(12, 7, dtype=dtype), torch.randn(12, 7, dtype=dtype)
    h, t = torch.randn(12, 5, dtype=dtype), torch.randn(12, 5, dtype=dtype)
    scale = 1 / 0.35983**2
    out_r, out_u = act(layer(r)), act(layer(u))
    loss = scale * squared_distance(h + out_r - out_u, t)
    expected = torch.autograd.grad(loss, [layer.weight, layer.bias])
    with torch.no_grad():
        d, grad = distance_grad(h + out_r - out_u, t, scale)
        grads = [activation_backward(act, grad, out_r), activation_backward(act, -grad, out_u)]
        weight, bias = linear_grads(grads, [r, u])
    assert torch.equal(d.pow(2).sum(1).mean() * scale, loss.detach())
    assert torch.equal(weight, expected[0])
    assert torch.equal(bias, expected[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_input_gradient_matches_autograd(dtype):
    torch.manual_seed(1)
    layer = nn.Linear(6, 4).to(dtype)
    u = torch.randn(9, 6, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 4, (9,))
    output = layer(u)
    loss = CrossEntropy()(output, y)
    (grad_out,) = torch.autograd.grad(loss, [output], retain_graph=True)
    expected = torch.autograd.grad(loss, [u, layer.weight, layer.bias])
    assert torch.equal(linear_input_grad(grad_out, layer.weight), expected[0])
    weight, bias = linear_grads([grad_out], [u.detach()])
    assert torch.equal(weight, expected[1]) and torch.equal(bias, expected[2])


def test_difference_grad_is_distance_grads():
    output, target = torch.randn(9, 4), torch.randn(9, 4)
    d, grad = distance_grad(output, target, 2.7)
    assert torch.equal(difference_grad(output - target, 2.7), grad)
    assert torch.equal(grad, d * (2 * torch.tensor(2.7) / 9))


def test_an_elu_inverse_takes_the_autograd_path():
    model = MLP(5, [6, 6], 3)
    adam = {"_target_": "torch.optim.Adam", "lr": 1e-3}
    elu = build_method(
        "drl",
        model,
        CrossEntropy(),
        {"forward_optimizer": adam, "feedback_optimizer": adam, "inverse_activation": "elu"},
    )
    assert not elu.closed_form
    tanh = build_method(
        "drl",
        model,
        CrossEntropy(),
        {"forward_optimizer": adam, "feedback_optimizer": adam, "inverse_activation": "tanh"},
    )
    assert tanh.closed_form


def make(name, act_name, dtype, **options):
    torch.manual_seed(2)
    model = MLP(5, [8, 7, 6], 4, activation=act_name).to(dtype)
    options = {"forward_optimizer": SGD_ZERO, "feedback_optimizer": SGD_ZERO, **options}
    method = build_method(name, model, CrossEntropy(), options)
    with torch.no_grad():  # non-zero inverse biases, so that their gradients are checked too
        for inverse in method.inverses:
            inverse.bias.normal_(0, 0.3)
    x = torch.randn(11, 5, dtype=dtype)
    y = torch.randint(0, 4, (11,))
    return model, method, x, y


CASES = [
    ("dtp", "relu", {}),
    ("dtp", "tanh", {"top_target_layer": "output"}),
    ("dtp", "sigmoid", {"inverse_activation": "identity"}),
    ("drl", "relu", {}),
    ("drl", "tanh", {"top_target_layer": "last_hidden"}),
    ("drl", "identity", {"inverse_activation": "sigmoid"}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "act_name", "options"), CASES)
def test_inverse_update_equals_autograd_of_the_reconstruction_loss(name, act_name, options, dtype):
    """feedback_step's closed form against autograd of sum_i scale * ||rec_i - corrupted_i||^2
    with rec_i from Method.reconstruction (the documented loss), on the same noise draws."""
    model, method, x, _ = make(name, act_name, dtype, **options)
    assert method.closed_form
    h = method.activations(x)
    torch.manual_seed(3)
    losses = []
    for i in range(2, method.top + 1):
        corrupted = h[i - 1] + method.noise_std * torch.randn_like(h[i - 1])
        losses.append(squared_distance(method.reconstruction(i, h, corrupted), corrupted))
    params = list(method.inverses.parameters())
    expected = torch.autograd.grad(method.feedback_loss_scale() * sum(losses), params)
    torch.manual_seed(3)
    errors = method.feedback_step(x)
    assert list(errors.values()) == [loss.item() for loss in losses]
    for param, grad in zip(params, expected, strict=True):
        assert torch.equal(param.grad, grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "act_name", "options"), CASES)
def test_forward_update_equals_autograd_of_the_local_losses(name, act_name, options, dtype):
    """Each chain layer's .grad against autograd of mean_n ||f_i(h_{i-1}) - h_hat_i||^2 through
    the model's own modules, and the output layer (K = H) against autograd of L."""
    model, method, x, y = make(name, act_name, dtype, **options)
    h = method.activations(x)
    method.compute_update(x, y)
    top, _ = method.top_target(h, y)
    targets = method.propagate_targets(h, top)
    for i in range(1, method.top + 1):
        layer = model.layers[i - 1]
        out = layer(h[i - 1])
        out = model.activation(out) if i < model.depth else out
        expected = torch.autograd.grad(squared_distance(out, targets[i]), list(layer.parameters()))
        assert torch.equal(layer.weight.grad, expected[0]), i
        assert torch.equal(layer.bias.grad, expected[1]), i
    if method.top == method.num_hidden:
        head, h_top = model.layers[-1], h[method.top].requires_grad_(True)
        expected = torch.autograd.grad(CrossEntropy()(head(h_top), y), [h_top, head.weight])
        assert torch.equal(head.weight.grad, expected[1])
        assert torch.equal(top, (h_top - method.target_stepsize * expected[0]).detach())
    else:  # o_hat = o - eta dL/do, dL/do written out (autograd_kernels.loss_and_output_grad)
        output = h[-1].clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(CrossEntropy()(output, y), [output])
        assert torch.equal(top, (output - method.target_stepsize * expected).detach())
