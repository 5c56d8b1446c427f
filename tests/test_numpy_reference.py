"""The NumPy backprop reference: the seed article's worked example and a float64 autograd oracle."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from methods.numpy_reference import NumpyMLP


def assert_quoted(value: float, quoted: str) -> None:
    """``value`` equals the article's number in every digit it quotes (9 decimals or more)."""
    decimals = len(quoted.split(".")[1])
    assert f"{value:.{decimals}f}" == quoted


@pytest.fixture
def neuron() -> NumpyMLP:
    """The article's neuron: two inputs, no hidden layer, sigmoid output, E = 1/2 (d - y)^2."""
    net = NumpyMLP(2, [], 1, output_activation="sigmoid", loss="squared_error")
    net.weights[0][:] = [[0.5, 0.2]]
    net.biases[0][:] = [1.83]
    return net


X = np.array([[0.1, 0.3]])
D = np.array([[0.03]])


def test_worked_example_forward(neuron):
    pre, post = neuron.forward(X)
    assert_quoted(pre[-1][0, 0], "1.940000000")
    assert_quoted(post[-1][0, 0], "0.874352143")
    assert_quoted(neuron.loss(X, D), "0.356465271")


def test_worked_example_chain_rule_factors(neuron):
    pre, post = neuron.forward(X)
    y = post[-1]
    de_dy = neuron.output_error(y, D)[0, 0]
    dy_ds = (y * (1 - y))[0, 0]
    assert_quoted(de_dy, "0.844352143")
    assert_quoted(dy_ds, "0.109860473")


def test_worked_example_gradients(neuron):
    grad_w, grad_b = neuron.backward(X, D)
    assert_quoted(grad_w[0][0, 0], "0.009276093")
    assert_quoted(grad_w[0][0, 1], "0.027828278")
    # dE/db = dE/dy * dy/ds * ds/db with ds/db = 1
    assert grad_b[0][0] == pytest.approx(0.844352143 * 0.109860473, rel=1e-8)


def test_worked_example_one_step(neuron):
    error = neuron.train_step(X, D, lr=0.01)
    assert_quoted(error, "0.356465271")
    assert_quoted(neuron.weights[0][0, 0], "0.49990723907")
    assert_quoted(neuron.weights[0][0, 1], "0.1997217172")


def torch_gradients(net: NumpyMLP, x: np.ndarray, d: np.ndarray):
    """Autograd oracle in float64 for the same network and loss."""
    ws = [torch.tensor(w, requires_grad=True) for w in net.weights]
    bs = [torch.tensor(b, requires_grad=True) for b in net.biases]
    act = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": torch.relu,
        "identity": lambda a: a,
    }
    h = torch.tensor(x)
    for i, (w, b) in enumerate(zip(ws, bs)):
        a = h @ w.T + b
        if i < len(ws) - 1:
            h = act[net.activation](a)
        elif net.output_activation == "softmax":
            h = a  # logits; cross_entropy applies log-softmax
        else:
            h = act[net.output_activation](a)
    if net.loss_name == "cross_entropy":
        loss = F.cross_entropy(h, torch.tensor(d))
    elif net.loss_name == "mse":
        loss = F.mse_loss(h, torch.tensor(d))
    else:
        loss = (0.5 * ((torch.tensor(d) - h) ** 2).sum(dim=1)).mean()
    loss.backward()
    return loss.item(), [w.grad.numpy() for w in ws], [b.grad.numpy() for b in bs]


@settings(max_examples=40, deadline=None)
@given(
    net_arch=st.lists(st.integers(1, 7), min_size=0, max_size=4),
    input_size=st.integers(1, 6),
    output_size=st.integers(1, 5),
    batch=st.integers(1, 9),
    activation=st.sampled_from(["sigmoid", "tanh", "relu"]),
    head=st.sampled_from(
        [
            ("sigmoid", "squared_error"),
            ("identity", "mse"),
            ("tanh", "squared_error"),
            ("softmax", "cross_entropy"),
        ]
    ),
    seed=st.integers(0, 2**31 - 1),
)
def test_gradients_equal_autograd_float64(
    net_arch, input_size, output_size, batch, activation, head, seed
):
    output_activation, loss = head
    rng = np.random.default_rng(seed)
    net = NumpyMLP(
        input_size,
        net_arch,
        output_size,
        activation=activation,
        output_activation=output_activation,
        loss=loss,
        seed=seed,
    )
    x = rng.normal(size=(batch, input_size))
    if loss == "cross_entropy":
        d = rng.integers(0, output_size, size=batch)
    else:
        d = rng.normal(size=(batch, output_size))
    expected_loss, expected_w, expected_b = torch_gradients(net, x, d)
    grad_w, grad_b = net.backward(x, d)
    assert net.loss(x, d) == pytest.approx(expected_loss, rel=1e-10, abs=1e-14)
    for got, want in zip(grad_w + grad_b, expected_w + expected_b):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_training_learns_xor():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    d = np.array([[0], [1], [1], [0]], dtype=float)
    net = NumpyMLP(2, [8], 1, activation="tanh", output_activation="sigmoid", seed=3)
    history = net.train(x, d, epochs=3000, lr=2.0)
    assert history[-1] < 0.01 < history[0]
    np.testing.assert_array_equal(net.predict(x).round(), d)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"net_arch": [0]}, "positive integers"),
        ({"activation": "swish"}, "activation"),
        ({"loss": "hinge"}, "loss"),
        ({"loss": "cross_entropy"}, "softmax"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    args = {"input_size": 2, "net_arch": [3], "output_size": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        NumpyMLP(**args)


def test_bad_shapes_raise_clear_errors(neuron):
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        neuron.predict(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="targets must have shape"):
        neuron.backward(X, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="lr must be positive"):
        neuron.train_step(X, D, lr=-0.1)
