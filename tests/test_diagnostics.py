"""Diagnostics: alignment with backprop and gradient norms, never changing training."""

import mlflow
import pytest
import torch

from experiments.data.digits import load_digits
from experiments.diagnostics import UpdateDiagnostics
from experiments.loop import fit
from experiments.train import run
from methods import build_method
from methods.geometry import angle_degrees
from methods.losses import CrossEntropy
from methods.networks import MLP

ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}


def test_backprop_is_aligned_with_itself():
    torch.manual_seed(0)
    model = MLP(6, [8, 8], 3, activation="tanh")
    method = build_method("backprop", model, CrossEntropy(), {"optimizer": ADAM})
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    metrics = UpdateDiagnostics(x, y, every_steps=1)(method)
    angles = {k: v for k, v in metrics.items() if k.startswith("alignment/")}
    assert len(angles) == 6 and max(angles.values()) < 1e-4  # weights and biases, 3 layers
    for name, p in model.named_parameters():
        assert p.grad is None  # the probe never touched the real model
        true = torch.autograd.grad(CrossEntropy()(model(x), y), [p])[0]
        assert metrics[f"grad_norm/{name}"] == pytest.approx(true.norm().item(), rel=1e-5)


def test_linear_network_with_symmetric_feedback_alignment_has_zero_angle():
    torch.manual_seed(1)
    model = MLP(6, [8, 8], 3, activation="identity")
    method = build_method("fa", model, CrossEntropy(), {"optimizer": ADAM, "feedback": "symmetric"})
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    metrics = UpdateDiagnostics(x, y, every_steps=1)(method)
    assert max(v for k, v in metrics.items() if k.startswith("alignment/")) < 1e-3
    random_fa = build_method("fa", model, CrossEntropy(), {"optimizer": ADAM})
    metrics = UpdateDiagnostics(x, y, every_steps=1)(random_fa)
    assert metrics["alignment/layers.0.weight"] > 10  # random feedback: not aligned at first


def test_angle_in_float64():
    a = torch.randn(1000)
    assert angle_degrees(a, a.clone()) == 0.0
    assert angle_degrees(a, -a) == pytest.approx(180)
    assert angle_degrees(a, a + 1e-4 * torch.randn(1000)) > 0  # float32 would round it to 0


@pytest.mark.parametrize("name", ["backprop", "dtp", "dni", "hsic"])
def test_diagnostics_on_or_off_gives_identical_weights(name):
    data = load_digits()

    def train(with_diagnostics):
        torch.manual_seed(0)
        model = MLP(64, [16, 16], 10, activation="tanh")
        options = {
            "backprop": {"optimizer": ADAM},
            "dtp": {"forward_optimizer": ADAM, "feedback_optimizer": ADAM},
            "dni": {"optimizer": ADAM, "synthetic_optimizer": ADAM},
            "hsic": {"optimizer": ADAM, "format_optimizer": ADAM},
        }[name]
        method = build_method(name, model, CrossEntropy(), options)
        diagnostics = (
            UpdateDiagnostics(data.x_train[:64], data.y_train[:64], 3) if with_diagnostics else None
        )
        seen = []
        fit(
            method,
            data,
            epochs=2,
            batch_size=100,
            eval_batch_size=500,
            generator=torch.Generator().manual_seed(0),
            progress=False,
            diagnostics=diagnostics,
            on_diagnostics=lambda step, m: seen.append(step),
        )
        return [p.detach().clone() for p in model.parameters()], seen

    (plain, none), (probed, steps) = train(False), train(True)
    assert none == [] and steps[:3] == [3, 6, 9]
    for a, b in zip(plain, probed):
        assert torch.equal(a, b)


def test_logged_with_update_count_as_step(make_config):
    cfg = make_config("method=fa", "data=digits", "train.epochs=1", "diagnostics.every_steps=5")
    run(cfg)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    history = client.get_metric_history(logged.info.run_id, "alignment/layers.0.weight")
    assert [m.step for m in history] == [5, 10, 15]  # 15 updates in an epoch of digits
    assert "grad_norm/layers.2.bias" in logged.data.metrics
