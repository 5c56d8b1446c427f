"""Feedback alignment and direct feedback alignment."""

import math

import mlflow
import pytest
import torch

from experiments.diagnostics import UpdateDiagnostics
from experiments.train import run
from methods import MethodConfigError, build_method
from methods.geometry import angle_degrees
from methods.losses import CrossEntropy
from methods.networks import MLP

SGD = {"_target_": "torch.optim.SGD", "lr": 0.05}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "identity"])
def test_fa_with_symmetric_feedback_is_backprop_bit_for_bit(activation, dtype):
    """FA's step runs autograd's own kernels (activation backward from the output, the loss's
    output gradient, the same products), so with B = W it is backprop exactly."""
    torch.manual_seed(0)
    model = MLP(5, [7, 6, 4], 3, activation=activation).to(dtype)
    method = build_method("fa", model, CrossEntropy(), {"optimizer": SGD, "feedback": "symmetric"})
    x, y = torch.randn(9, 5, dtype=dtype), torch.randint(0, 3, (9,))
    x[0, :] = 0.0  # dead ReLU units, zero errors: signed zeros must match too
    expected = torch.autograd.grad(CrossEntropy()(model(x), y), list(model.parameters()))
    method.compute_update(x, y)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    for param, grad in zip(model.parameters(), expected, strict=True):
        assert torch.equal(param.grad.view(bits), grad.view(bits))  # bit patterns, -0 included
        assert param.grad.stride() == grad.stride()


def test_output_layer_update_is_backprop_for_both():
    torch.manual_seed(1)
    for name in ("fa", "dfa"):
        model = MLP(5, [6, 6], 3, activation="tanh").double()
        method = build_method(name, model, CrossEntropy(), {"optimizer": SGD})
        x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
        true = torch.autograd.grad(CrossEntropy()(model(x), y), list(model.parameters()))
        method.compute_update(x, y)
        torch.testing.assert_close(model.layers[-1].weight.grad, true[-2])


def test_dfa_sends_the_output_error_directly():
    torch.manual_seed(2)
    model = MLP(4, [5, 5], 3, activation="identity").double()
    method = build_method("dfa", model, CrossEntropy(), {"optimizer": SGD, "feedback_seed": 7})
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    logits = model(x).detach().requires_grad_(True)
    (e,) = torch.autograd.grad(CrossEntropy()(logits, y), logits)
    method.compute_update(x, y)
    # identity activation: delta_1 = e D_1, dW_1 = delta_1^T x
    expected = (e @ method.feedback_weights[0]).T @ x
    torch.testing.assert_close(model.layers[0].weight.grad, expected)
    assert [tuple(d.shape) for d in method.feedback_weights] == [(3, 5), (3, 5)]


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_fa_hidden_updates_follow_the_random_feedback_by_hand(activation):
    """Lillicrap et al. 2016: delta_L = e, delta_l = (delta_{l+1} B_{l+1}) * f'(a_l),
    dW_l = delta_l^T h_{l-1}, db_l = sum_n delta_l; written out with f' by hand, in float64."""
    torch.manual_seed(3)
    model = MLP(5, [7, 6], 3, activation=activation).double()
    method = build_method("fa", model, CrossEntropy(), {"optimizer": SGD, "feedback_seed": 11})
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    derivative = {
        "tanh": lambda h: 1 - h**2,
        "sigmoid": lambda h: h * (1 - h),
        "relu": lambda h: (h > 0).double(),
    }[activation]
    w1, w2, w3 = (layer.weight.detach() for layer in model.layers)
    b1, b2, b3 = (layer.bias.detach() for layer in model.layers)
    f = model.activation
    h1 = f(x @ w1.T + b1)
    h2 = f(h1 @ w2.T + b2)
    logits = h2 @ w3.T + b3
    e = (torch.softmax(logits, dim=1) - torch.nn.functional.one_hot(y, 3)) / len(y)
    B2, B3 = method.feedback_weights
    delta3 = e
    delta2 = (delta3 @ B3) * derivative(h2)
    delta1 = (delta2 @ B2) * derivative(h1)
    method.compute_update(x, y)
    expected = [delta1.T @ x, delta1.sum(0), delta2.T @ h1, delta2.sum(0), e.T @ h2, e.sum(0)]
    for param, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-10, atol=1e-13)
    # and not backprop's: W^T in place of B would give other hidden updates
    true = torch.autograd.grad(CrossEntropy()(model(x), y), list(model.parameters()))
    assert not torch.allclose(model.layers[0].weight.grad, true[0])


def test_feedback_is_fixed_and_seeded():
    a = build_method(
        "fa", MLP(4, [5, 5], 3), CrossEntropy(), {"optimizer": SGD, "feedback_seed": 3}
    )
    b = build_method(
        "fa", MLP(4, [5, 5], 3), CrossEntropy(), {"optimizer": SGD, "feedback_seed": 3}
    )
    assert all(torch.equal(p, q) for p, q in zip(a.feedback_weights, b.feedback_weights))
    before = [w.clone() for w in a.feedback_weights]
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    for _ in range(3):
        a.step(x, y)
    assert all(torch.equal(p, q) for p, q in zip(a.feedback_weights, before))


@pytest.mark.parametrize("name", ["fa", "dfa"])
def test_alignment_angle_decreases_over_training(name):
    """The "alignment" effect: W comes to align with the feedback (Lillicrap et al. 2016)."""
    torch.manual_seed(3)
    teacher = MLP(10, [20], 4, activation="tanh")
    x = torch.randn(256, 10)
    y = teacher(x).argmax(dim=1).detach()
    model = MLP(10, [32, 32], 4, activation="tanh")
    method = build_method(
        name,
        model,
        CrossEntropy(),
        {"optimizer": {"_target_": "torch.optim.SGD", "lr": 0.5}, "feedback_seed": 0},
    )
    diagnostics = UpdateDiagnostics(x, y, every_steps=1)
    start = diagnostics(method)
    for _ in range(400):
        method.step(x, y)
    end = diagnostics(method)
    for layer in (1, 2):  # the hidden layers
        key = f"alignment/layers.{layer - 1}.weight"
        assert end[key] < start[key] - 5, (key, start[key], end[key])


def test_angle_helper():
    assert angle_degrees(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == pytest.approx(90)
    assert angle_degrees(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])) == pytest.approx(
        0, abs=1e-3
    )
    assert math.isnan(angle_degrees(torch.zeros(2), torch.ones(2)))  # undefined, not 90


def test_dfa_has_no_symmetric_feedback():
    with pytest.raises(
        MethodConfigError, match="^method.feedback: must be one of random, got 'symmetric'$"
    ):
        build_method(
            "dfa", MLP(4, [5], 3), CrossEntropy(), {"optimizer": SGD, "feedback": "symmetric"}
        )


@pytest.mark.parametrize("name", ["fa", "dfa"])
def test_end_to_end_saves_feedback_weights_and_logs_angles(make_config, name):
    cfg = make_config(
        f"method={name}", "data=digits", "train.epochs=2", "diagnostics.every_steps=5"
    )
    run(cfg)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    assert "alignment/layers.0.weight" in logged.data.metrics
    assert not any(key.startswith("alignment_angle") for key in logged.data.metrics)
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    saved = torch.load(client.download_artifacts(logged.info.run_id, "feedback_weights.pt"))
    assert len(saved) == 2
