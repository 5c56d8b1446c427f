"""L-DRL (Ernoult et al. 2022): the feedback loss against hand and finite-difference oracles,
its fixed point (feedback = transposed forward weights), exact targets, the paper's order of
feedback and forward updates, alignment with backprop, and a short run."""

import copy

import mlflow
import numpy as np
import pytest
import torch

from experiments.train import run
from methods import MethodConfigError, build_method
from methods.geometry import angle_degrees
from methods.losses import CrossEntropy
from methods.networks import MLP


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny steps: with more threads than free cores torch spins (16x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}
SGD = {"_target_": "torch.optim.SGD", "lr": 0.1}


def make(model, **options):
    options = {"forward_optimizer": ADAM, "feedback_optimizer": ADAM, **options}
    return build_method("ldrl", model, CrossEntropy(), options)


def linear_ldrl(seed=7, **options):
    """L-DRL on a linear 4-5-3-2 network with identity feedback layers (every map a matrix)."""
    torch.manual_seed(seed)
    model = MLP(4, [5, 3], 2, activation="identity").double()
    options = {"feedback_optimizer": SGD, "feedback_iterations": 1, **options}
    method = make(model, **options)
    with torch.no_grad():  # non-zero biases: they must cancel in the differences
        for inverse in method.inverses:
            inverse.bias.normal_()
    return method, torch.randn(9, 4, dtype=torch.float64)


def test_feedback_gradient_of_a_linear_network_by_hand():
    """l_i = mean_n [-2 e_n . V W e_n + ||V u_n||^2] for f = W x + b, g = V y + c (the biases
    cancel in the differences): dl/dV = (2 / B) sum_n (V u_n u_n^T - e_n (W e_n)^T), dl/dc = 0.
    One SGD step (lr 0.1) per layer: the gradient is (before - after) / lr."""
    method, x = linear_ldrl()
    sigma, batch = method.noise_std, x.shape[0]
    h = method.activations(x)
    before = [[p.detach().numpy().copy() for p in g.parameters()] for g in method.inverses]
    torch.manual_seed(8)
    method.feedback_step(x, h)
    torch.manual_seed(8)  # the same draws, in feedback_step's order: g_2 (eps, eta), then g_3
    for i in (2, 3):
        E = (sigma * torch.randn_like(h[i - 1])).numpy()
        U = (sigma * torch.randn_like(h[i])).numpy()
        (V, c), W = before[i - 2], method.model.layers[i - 1].weight.detach().numpy()
        expected = 2 / batch * ((U @ V.T).T @ U - E.T @ (E @ W.T))
        g = method.inverses[i - 2]
        step_v = (V - g.weight.detach().numpy()) / SGD["lr"]
        step_c = (c - g.bias.detach().numpy()) / SGD["lr"]
        np.testing.assert_allclose(step_v, expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(step_c, 0.0, atol=1e-12)


def test_feedback_loss_of_a_tanh_layer_against_finite_differences():
    """The loss as the paper writes it, evaluated in NumPy (float64) for a tanh layer and a tanh
    feedback layer; its central differences in V and c match the method's autograd gradient."""
    torch.manual_seed(3)
    model = MLP(3, [4, 5], 2, activation="tanh").double()
    method = make(model, inverse_activation="tanh")
    x = torch.randn(6, 3, dtype=torch.float64)
    h = method.activations(x)
    eps = 0.3 * torch.randn_like(h[1])
    eta = 0.3 * torch.randn_like(h[2])
    g = method.inverses[0]  # g_2: h_2 (5) -> h_1 (4)
    loss = method.feedback_loss(2, h, eps, eta)
    grad_v, grad_c = torch.autograd.grad(loss, [g.weight, g.bias])

    W, b = (p.detach().numpy() for p in (model.layers[1].weight, model.layers[1].bias))
    x1, e, u = h[1].numpy(), eps.numpy(), eta.numpy()

    def paper_loss(V, c):
        def f(z):
            return np.tanh(z @ W.T + b)

        def gfb(y):
            return np.tanh(y @ V.T + c)

        y = f(x1)
        r = gfb(y)
        return np.mean(
            -2 * np.sum(e * (gfb(f(x1 + e)) - r), axis=1) + np.sum((gfb(y + u) - r) ** 2, axis=1)
        )

    V0, c0 = g.weight.detach().numpy().copy(), g.bias.detach().numpy().copy()
    assert paper_loss(V0, c0) == pytest.approx(loss.item(), rel=1e-12)
    step = 1e-6
    numeric_v = np.zeros_like(V0)
    for index in np.ndindex(V0.shape):
        d = np.zeros_like(V0)
        d[index] = step
        numeric_v[index] = (paper_loss(V0 + d, c0) - paper_loss(V0 - d, c0)) / (2 * step)
    numeric_c = np.array(
        [
            (paper_loss(V0, c0 + step * np.eye(4)[k]) - paper_loss(V0, c0 - step * np.eye(4)[k]))
            / (2 * step)
            for k in range(4)
        ]
    )
    np.testing.assert_allclose(grad_v.numpy(), numeric_v, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad_c.numpy(), numeric_c, rtol=1e-6, atol=1e-9)


def test_feedback_training_drives_feedback_to_the_transposed_weights():
    """E[dl/dV] = 2 sigma^2 (V - W^T) for a linear layer: the fixed point is J_g = J_f^T."""
    torch.manual_seed(4)
    model = MLP(6, [8, 7], 5, activation="identity").double()
    method = make(
        model, feedback_optimizer={"_target_": "torch.optim.SGD", "lr": 1.0}, noise_std=0.1
    )
    x = torch.randn(512, 6, dtype=torch.float64)  # a large batch: less gradient noise
    start = [
        angle_degrees(g.weight, model.layers[i + 1].weight.T) for i, g in enumerate(method.inverses)
    ]
    for _ in range(100):  # 5 iterations each: E[V - W^T] shrinks by (1 - 0.02)^500
        method.feedback_step(x)
    for i, g in enumerate(method.inverses):
        W = model.layers[i + 1].weight
        assert start[i] > 45
        assert angle_degrees(g.weight, W.T) < 3.0, i
        torch.testing.assert_close(g.weight, W.T, rtol=0, atol=0.05)


def transposed_feedback(method):
    """Set every identity feedback layer to g_i(y) = W_i^T y (the L-DRL optimum)."""
    with torch.no_grad():
        for i, inverse in enumerate(method.inverses, start=2):
            inverse.weight.copy_(method.model.layers[i - 1].weight.T)
            inverse.bias.zero_()


@pytest.mark.parametrize("beta", [1e-3, 0.5])
def test_transposed_feedback_gives_beta_times_backprop_in_a_linear_network(beta):
    """With V_i = W_i^T every target difference is -beta B dL/dh_i exactly (linear layers), so
    every layer's update (local loss 1/2 ||.||^2, batch mean) is beta times backprop's."""
    torch.manual_seed(5)
    model = MLP(5, [7, 6, 4], 3, activation="identity").double()
    method = make(model, target_stepsize=beta, inverse_activation="identity")
    transposed_feedback(method)
    x, y = torch.randn(11, 5, dtype=torch.float64), torch.randint(0, 3, (11,))
    true = torch.autograd.grad(CrossEntropy()(model(x), y), list(model.parameters()))
    method.forward_step(x, y)
    for param, grad in zip(model.parameters(), true):
        torch.testing.assert_close(param.grad, beta * grad, rtol=1e-10, atol=1e-13)


def test_small_target_step_moves_last_hidden_layer_along_backprop():
    """tanh network, output feedback g(o) = W_out^T o: the last hidden layer's update is within
    1 degree of backprop's for a small beta (its target is then h_H - beta B dL/dh_H)."""
    torch.manual_seed(1)
    model = MLP(7, [9, 8, 6], 4, activation="tanh").double()
    method = make(model, target_stepsize=1e-4)
    transposed_feedback(method)
    x, y = torch.randn(32, 7, dtype=torch.float64), torch.randint(0, 4, (32,))
    true = torch.autograd.grad(CrossEntropy()(model(x), y), list(model.parameters()))
    method.compute_update(x, y)  # trains the feedback first: still within 1 degree
    last_hidden = model.layers[-2]
    assert angle_degrees(last_hidden.weight.grad, true[-4]) < 1.0
    assert angle_degrees(last_hidden.bias.grad, true[-3]) < 1.0


def test_exact_inverses_pull_the_top_target_back_exactly():
    torch.manual_seed(0)
    width = 6
    model = MLP(width, [width] * 3, width, activation="identity").double()
    method = make(model, inverse_activation="identity")
    with torch.no_grad():
        for i in range(2, method.top + 1):
            layer = model.layers[i - 1]
            layer.weight.add_(torch.eye(width, dtype=torch.float64))
            inverse = torch.linalg.inv(layer.weight)
            method.inverses[i - 2].weight.copy_(inverse)
            method.inverses[i - 2].bias.copy_(-inverse @ layer.bias)
    h = method.activations(torch.randn(10, width, dtype=torch.float64))
    top = h[method.top] + 0.3 * torch.randn_like(h[method.top])
    targets = method.propagate_targets(h, top)
    for i in range(2, method.top + 1):  # f_i(h_hat_{i-1}) = h_hat_i
        torch.testing.assert_close(
            method.layer(i, targets[i - 1]), targets[i], rtol=1e-9, atol=1e-10
        )


def test_targets_come_from_the_feedback_weights_after_this_batch_training():
    """Their Alg. 1: the feedback layers train on the batch first, then the targets."""
    torch.manual_seed(5)
    model = MLP(5, [8, 8, 8], 3, activation="tanh").double()
    method = make(model, feedback_optimizer={"_target_": "torch.optim.SGD", "lr": 0.5})
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    after, before = copy.deepcopy(method), copy.deepcopy(method)
    torch.manual_seed(6)
    method.compute_update(x, y)
    torch.manual_seed(6)
    after.feedback_step(x)
    after.forward_step(x, y)
    before.forward_step(x, y)
    for a, b in zip(model.parameters(), after.model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    assert not torch.allclose(model.layers[0].weight.grad, before.model.layers[0].weight.grad)


def test_feedback_iterations_steps_each_layer_that_many_times():
    method, x = linear_ldrl(feedback_iterations=3)
    steps = []
    method.feedback_optimizer.step = lambda *a, **k: steps.append(  # noqa: ARG005
        [p.grad is not None for p in method.inverses.parameters()]
    )
    method.feedback_step(x)
    assert steps == [[True, True, False, False]] * 3 + [[False, False, True, True]] * 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"feedback_iterations": 0}, "method.feedback_iterations"),
        ({"feedback_iterations": 2.5}, "method.feedback_iterations"),
        ({"noise_std": 0.0}, "method.noise_std: must be > 0 .with sigma = 0"),
        ({"target_stepsize": -1.0}, "method.target_stepsize"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(MethodConfigError, match=message):
        make(MLP(5, [6, 6], 3), **options)


def test_training_on_digits_logs_feedback_losses_and_learns(make_config):
    cfg = make_config(
        "method=ldrl",
        "data=digits",
        "train.epochs=2",
        "model.hidden_sizes=[64,64]",
        "model.activation=tanh",
    )
    final = run(cfg)
    assert final["test_accuracy"] > 0.3  # chance is 0.1
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    for key in ["feedback_loss_layer2", "feedback_loss_layer3", "target_distance_layer3"]:
        history = client.get_metric_history(logged.info.run_id, key)
        assert [m.step for m in history] == [1, 2]
    # The L-DRL loss tends to -sigma^2 ||J_f||_F^2 < 0 as the feedback learns.
    assert client.get_metric_history(logged.info.run_id, "feedback_loss_layer3")[-1].value < 0
