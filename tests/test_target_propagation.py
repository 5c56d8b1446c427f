"""Difference target propagation and DRL: exact-inverse limits, locality, learning, logging."""

import math

import mlflow
import pytest
import torch

from experiments.losses import CrossEntropy
from experiments.models import MLP
from experiments.train import run
from experiments.validation import ConfigError
from methods import MethodConfigError, build_method

ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}


def make(name, model, **options):
    options = {"forward_optimizer": ADAM, "feedback_optimizer": ADAM, **options}
    return build_method(name, model, CrossEntropy(), options)


def linear_network_with_exact_inverses(name, width=6, depth=4, seed=0, **options):
    """Identity activations, square invertible layers and g_i = f_i^{-1} exactly (float64)."""
    torch.manual_seed(seed)
    model = MLP(width, [width] * depth, 3, activation="identity").double()
    method = make(name, model, inverse_activation="identity", **options)
    with torch.no_grad():
        for i in range(2, depth + 1):
            layer = model.layers[i - 1]
            layer.weight.add_(torch.eye(width, dtype=torch.float64))  # well conditioned
            inverse = torch.linalg.inv(layer.weight)
            method.inverses[i - 2].weight.copy_(inverse)
            method.inverses[i - 2].bias.copy_(-inverse @ layer.bias)
    x = torch.randn(16, width, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    return model, method, x, y


def angle_degrees(a, b):
    cosine = (a * b).sum() / (a.norm() * b.norm())
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine.item()))))


@pytest.mark.parametrize("name", ["dtp", "drl"])
def test_exact_inverses_pull_the_top_target_back_exactly(name):
    model, method, x, y = linear_network_with_exact_inverses(name)
    h = method.hidden_activations(x)
    top = h[-1] + 0.3 * torch.randn_like(h[-1])
    targets = method.propagate_targets(h, top)
    expected = top
    for i in range(method.num_hidden, 1, -1):  # f_i^{-1}(t) = W_i^{-1} (t - b_i)
        layer = model.layers[i - 1]
        expected = torch.linalg.solve(layer.weight, (expected - layer.bias).T).T
        torch.testing.assert_close(targets[i - 1], expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["dtp", "drl"])
def test_reconstruction_loss_vanishes_at_exact_inverses(name):
    _, method, x, _ = linear_network_with_exact_inverses(name)
    h = method.hidden_activations(x)
    for i in range(2, method.num_hidden + 1):
        corrupted = h[i - 1] + 0.5 * torch.randn_like(h[i - 1])
        reconstruction = method.reconstruction(i, h, corrupted)
        torch.testing.assert_close(reconstruction, corrupted, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_small_target_step_moves_last_hidden_layer_along_backprop(activation):
    torch.manual_seed(1)
    model = MLP(7, [9, 8, 6], 4, activation=activation).double()
    method = make("dtp", model, target_stepsize=1e-3)
    x, y = torch.randn(32, 7, dtype=torch.float64), torch.randint(0, 4, (32,))
    true = torch.autograd.grad(CrossEntropy()(model(x), y), list(model.parameters()))
    method.compute_update(x, y)
    last_hidden, head = model.layers[-2], model.layers[-1]
    assert angle_degrees(last_hidden.weight.grad, true[-4]) < 1.0
    assert angle_degrees(last_hidden.bias.grad, true[-3]) < 1.0
    # The output layer is trained on the loss itself: exactly backprop's gradient.
    torch.testing.assert_close(head.weight.grad, true[-2])
    torch.testing.assert_close(head.bias.grad, true[-1])


def test_forward_update_of_a_layer_depends_only_on_its_own_loss():
    torch.manual_seed(2)
    model = MLP(5, [8, 8, 8], 3, activation="tanh")
    method = make("dtp", model)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    h = method.hidden_activations(x)
    top, _, _ = method.top_target(h[-1], y)
    targets = method.propagate_targets(h, top)
    before = method.forward_update(h, targets)
    for j in range(1, method.num_hidden + 1):
        changed = list(targets)
        changed[j] = targets[j] + torch.randn_like(targets[j])  # only layer j's loss changes
        after = method.forward_update(h, changed)
        for i in range(1, method.num_hidden + 1):
            for a, b in zip(before[i - 1], after[i - 1]):
                if i == j:
                    assert not torch.equal(a, b)
                else:
                    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["dtp", "drl"])
def test_inverse_reconstruction_error_decreases_with_feedback_training(name):
    torch.manual_seed(3)
    model = MLP(10, [32, 32, 32], 4, activation="tanh", init="orthogonal")
    method = make(name, model)
    x = torch.randn(64, 10)
    weights = [p.detach().clone() for p in model.parameters()]
    history = [method.feedback_step(x) for _ in range(400)]
    for i in (2, 3):
        first = sum(step[i] for step in history[:20]) / 20
        last = sum(step[i] for step in history[-20:]) / 20
        assert last < 0.6 * first, (i, first, last)
    for p, w in zip(model.parameters(), weights):  # feedback training never moves W
        assert torch.equal(p, w)


def test_feedback_phases_follow_the_schedule():
    torch.manual_seed(4)
    model = MLP(5, [6, 6], 3, activation="tanh")
    method = make("dtp", model, schedule="alternating", feedback_pretrain_epochs=1)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    phases = []
    for epoch in range(1, 5):
        phases.append(method.phase())
        weights = [p.detach().clone() for p in model.parameters()]
        method.step(x, y)
        moved = any(not torch.equal(p, w) for p, w in zip(model.parameters(), weights))
        assert moved == (phases[-1] != "feedback")
        method.on_epoch_end(epoch)
    assert phases == ["feedback", "feedback", "forward", "feedback"]
    assert make("dtp", MLP(5, [6, 6], 3)).phase() == "both"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_stepsize": 0.0}, "method.target_stepsize"),
        ({"noise_std": -1.0}, "method.noise_std"),
        ({"schedule": "sometimes"}, "method.schedule"),
        ({"inverse_activation": "softplus"}, "method.inverse_activation"),
        ({"feedback_pretrain_epochs": -2}, "method.feedback_pretrain_epochs"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(MethodConfigError, match=message):
        make("dtp", MLP(5, [6, 6], 3), **options)


def test_drl_needs_noise():
    with pytest.raises(MethodConfigError, match="method.noise_std: must be > 0"):
        make("drl", MLP(5, [6, 6], 3), noise_std=0.0)
    make("dtp", MLP(5, [6, 6], 3), noise_std=0.0)  # plain DTP accepts sigma = 0


def test_bad_option_from_the_command_line_fails_before_a_run(make_config):
    cfg = make_config("method=dtp", "method.schedule=sometimes")
    with pytest.raises(ConfigError, match="method.schedule"):
        run(cfg)


@pytest.mark.parametrize("name", ["dtp", "drl"])
def test_training_logs_per_layer_metrics_and_learns(make_config, name):
    cfg = make_config(
        f"method={name}",
        "data=digits",
        "train.epochs=3",
        "model.hidden_sizes=[64,64,64]",
        "model.activation=tanh",
        "model.init=orthogonal",
    )
    final = run(cfg)
    assert final["test_accuracy"] > 0.5  # chance is 0.1
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    for key in (
        "inverse_loss_layer2",
        "inverse_loss_layer3",
        "target_distance_layer1",
        "target_distance_layer2",
        "target_distance_layer3",
    ):
        history = client.get_metric_history(logged.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3] and all(m.value >= 0 for m in history)
    assert "inverse_loss_layer1" not in logged.data.metrics  # the first layer has no inverse


def test_pretraining_longer_than_the_budget_fails_before_a_run(make_config, tracking_uri):
    from analysis.runs import load_runs

    cfg = make_config(
        "method=dtp", "method.feedback_pretrain_epochs=5", "train.epochs=5", "data=digits"
    )
    with pytest.raises(ConfigError, match="method.feedback_pretrain_epochs: 5 pre-training"):
        run(cfg)
    assert load_runs(tracking_uri, cfg.mlflow.experiment_name).empty
