"""dtp, drl and ldrl on model=cnn: conv feedback layers (transposed convolution after
max-unpooling with the forward switches), exact targets, alignment with backprop, short runs."""

import math

import pytest
import torch

from experiments.train import run
from methods import MethodConfigError, build_method
from methods.geometry import angle_degrees
from methods.losses import CrossEntropy
from methods.networks.cnn import build_cnn
from methods.tp_feedback import ConvFeedback, LinearFeedback
from tests.test_data import write_tiny_idx

ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}
TP = ["dtp", "drl", "ldrl"]


def make(name, model, **options):
    options = {"forward_optimizer": ADAM, "feedback_optimizer": ADAM, **options}
    return build_method(name, model, CrossEntropy(), options)


def images(n=8, shape=(2, 8, 8), classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, dtype=torch.float64, generator=generator)
    return x, torch.randint(0, classes, (n,), generator=generator)


@pytest.mark.parametrize("name", TP)
def test_feedback_layers_mirror_the_conv_blocks(name):
    model = build_cnn((2, 8, 8), 4, [3, 5], 3, 1, "tanh", "max", 2, 2, 0, [6]).double()
    method = make(name, model)
    assert method.layer_shapes() == [(2, 8, 8), (3, 4, 4), (5, 2, 2), (6,), (4,)]
    kinds = [type(g) for g in method.inverses]  # g_2 .. g_K
    assert kinds[:2] == [ConvFeedback, LinearFeedback]  # g_2: conv block 2; g_3: flatten-linear
    x, y = images()
    h = method.activations(x)
    switches = method.switches(h)
    assert [s.shape for s in switches[1:3]] == [h[1].shape, h[2].shape]  # one per pooled output
    assert switches[0] is switches[3] is switches[4] is None
    assert method.inverse(2, h[2], switches[2]).shape == h[1].shape
    assert method.inverse(3, h[3]).shape == h[2].shape  # (6,) -> (5, 2, 2)


def one_by_one_cnn(name, seed=0):
    """1x1 convolutions (invertible channel maps), max pooling 2x2, identity activations, float64,
    and g_i the exact inverse of the conv part (unpooling then W_i^{-1}); the output layer square
    too, with its exact inverse, for the chains through it."""
    torch.manual_seed(seed)
    model = build_cnn((3, 4, 4), 3, [3, 3], 1, 0, "identity", "max", 2, 2, 0, []).double()
    method = make(name, model, inverse_activation="identity")
    eye = torch.eye(3, dtype=torch.float64)
    with torch.no_grad():
        for i in range(2, method.top + 1):
            weight, bias = method.params_of(i)
            matrix = weight.view(3, 3)
            matrix.add_(eye)  # well conditioned
            inverse = torch.linalg.inv(matrix)
            g = method.inverses[i - 2]
            # convT: out[c_in] = sum_{c_out} weight[c_out, c_in] y[c_out], i.e. weight = W^{-T}
            g.weight.copy_(inverse.T.reshape(g.weight.shape) if g.weight.ndim == 4 else inverse)
            g.bias.copy_(-inverse @ bias)
    return model, method


@pytest.mark.parametrize("name", TP)
def test_exact_inverses_pull_targets_back_exactly(name):
    """f_i(h_hat_{i-1}) = h_hat_i through max pooling: the unpooled difference lands on the
    pooled maxima, which stay the maxima for a small step (the switches do not change)."""
    model, method = one_by_one_cnn(name)
    x, _ = images(n=10, shape=(3, 4, 4))
    h = method.activations(x)
    top = h[method.top] + 1e-3 * torch.randn_like(h[method.top])
    targets = method.propagate_targets(h, top)
    for i in range(2, method.top + 1):
        torch.testing.assert_close(
            method.layer(i, targets[i - 1]), targets[i], rtol=1e-9, atol=1e-12
        )
        assert not torch.allclose(targets[i - 1], h[i - 1])


@pytest.mark.parametrize("beta", [1e-3, 0.5])
def test_ldrl_with_transposed_feedback_is_beta_times_backprop_on_a_piecewise_linear_cnn(beta):
    """Identity activations and max pooling: with g_i = the transposed conv with the forward
    kernel after unpooling (and W^T for linear layers), the L-DRL optimum J_g = J_f^T holds
    exactly, so every layer's update is beta times backprop's, for any beta."""
    torch.manual_seed(2)
    model = build_cnn((2, 8, 8), 4, [3, 5], 3, 1, "identity", "max", 2, 2, 0, [6]).double()
    method = make("ldrl", model, target_stepsize=beta)
    with torch.no_grad():
        for i, g in enumerate(method.inverses, start=2):
            weight, _ = method.params_of(i)
            g.weight.copy_(weight if isinstance(g, ConvFeedback) else weight.T)
            g.bias.zero_()
    x, y = images()
    true = torch.autograd.grad(CrossEntropy()(model(x), y), list(model.parameters()))
    method.forward_step(x, y)
    for param, grad in zip(model.parameters(), true):
        torch.testing.assert_close(param.grad, beta * grad, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("name", ["dtp", "ldrl"])
def test_small_target_step_moves_last_hidden_conv_block_along_backprop(name):
    """tanh conv blocks with max pooling, no hidden linear layer: the last hidden layer is a conv
    block. dtp's target is on it (h - eta dL/dh); ldrl's comes through g(o) = W_out^T o."""
    torch.manual_seed(1)
    model = build_cnn((2, 8, 8), 4, [3, 5], 3, 1, "tanh", "max", 2, 2, 0, []).double()
    method = make(name, model, target_stepsize=1e-4)
    if name == "ldrl":
        with torch.no_grad():
            method.inverses[-1].weight.copy_(method.params_of(method.top)[0].T)
    x, y = images(n=16)
    true = torch.autograd.grad(CrossEntropy()(model(x), y), list(model.parameters()))
    method.forward_step(x, y)  # targets from the feedback as set (no feedback training first)
    weight, bias = method.params_of(method.num_hidden)
    assert angle_degrees(weight.grad, true[-4]) < 1.0
    assert angle_degrees(bias.grad, true[-3]) < 1.0


@pytest.mark.parametrize("name", TP)
def test_average_pooling_is_refused_in_one_line(name):
    model = build_cnn((2, 8, 8), 4, [3], 3, 1, "tanh", "avg", 2, 2, 0, [])
    with pytest.raises(MethodConfigError, match="needs model.pool=max or none") as error:
        make(name, model)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", TP)
def test_tp_methods_train_a_cnn_end_to_end(make_config, tmp_path, name):
    write_tiny_idx(tmp_path, n_train=40, n_test=10)
    cfg = make_config(
        f"method={name}",
        "model=cnn",
        "model.channels=[3,4]",
        "model.hidden_sizes=[8]",
        "data=fashion_mnist",
        f"data.root={tmp_path}",
        "data.download=false",
        "train.epochs=2",
        "train.batch_size=10",
    )
    final = run(cfg)
    assert 0.0 <= final["test_accuracy"] <= 1.0 and math.isfinite(final["train_loss"])
