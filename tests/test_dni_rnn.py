"""Recurrent synthetic gradients: exact decomposition with an oracle, reductions, logging."""

import mlflow
import pytest
import torch

from experiments.train import run
from methods import MethodConfigError, build_method
from methods.losses import MeanSquaredError
from methods.networks import RecurrentNetwork

STILL = {"_target_": "torch.optim.SGD", "lr": 0.0}  # parameters stay put: exact comparisons


def make(model, **options):
    options = {"optimizer": STILL, "synthetic_optimizer": STILL, "truncation": 4, **options}
    return build_method("dni_rnn", model, MeanSquaredError(), options)


def problem(cell="rnn", seed=0):
    torch.manual_seed(seed)
    model = RecurrentNetwork(2, 1, hidden_size=5, cell=cell).double()
    x = torch.randn(3, 10, 2, dtype=torch.float64)
    y = torch.randn(3, 1, dtype=torch.float64)
    return model, x, y


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_oracle_synthetic_gradients_decompose_bptt_exactly(cell):
    """With M = the true dL/dh at each border (scale 1), the segments' updates add up to the
    full BPTT gradient, and each border's bootstrapped target is the true gradient there."""
    model, x, y = problem(cell)
    method = make(model, synthetic_scale=1.0)
    outputs, hidden, _ = model.run(x)
    borders = [4, 8]  # segments [0, 4), [4, 8), [8, 10)
    true = torch.autograd.grad(MeanSquaredError()(outputs, y), [hidden[t - 1] for t in borders])
    oracle = iter(g.detach() for g in true)
    method.synthetic_module = lambda h: next(oracle)
    seen = {}
    method._train_synthetic = lambda b, d: seen.update(borders=b, deltas=d)
    total = [torch.zeros_like(p) for p in model.parameters()]

    def accumulate():
        for t, p in zip(total, model.parameters()):
            if p.grad is not None:
                t += p.grad

    method.optimizer.step = accumulate
    method.compute_update(x, y)
    accumulate()  # the last segment's update, left in .grad
    expected = torch.autograd.grad(MeanSquaredError()(model(x), y), list(model.parameters()))
    for got, want in zip(total, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for delta, want in zip(seen["deltas"], true):
        torch.testing.assert_close(delta, want, rtol=1e-10, atol=1e-12)


def test_zero_scale_is_truncated_bptt():
    model_a, x, y = problem()
    model_b, _, _ = problem()
    adam = {"_target_": "torch.optim.Adam", "lr": 1e-2}
    dni = make(model_a, synthetic_scale=0.0, optimizer=adam)
    tbptt = build_method("tbptt", model_b, MeanSquaredError(), {"optimizer": adam, "truncation": 4})
    for _ in range(2):
        dni.step(x, y)
        tbptt.step(x, y)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)


def test_unsupported_models_are_refused():
    with pytest.raises(MethodConfigError, match="one recurrent layer of model.cell=rnn or gru"):
        make(RecurrentNetwork(2, 1, cell="lstm"))
    with pytest.raises(MethodConfigError, match="num_layers=2"):
        make(RecurrentNetwork(2, 1, num_layers=2))


def test_end_to_end_logs_synthetic_gradient_metrics(make_config):
    cfg = make_config(
        "method=dni_rnn",
        "model=rnn",
        "model.cell=gru",
        "data=adding",
        "data.length=20",
        "data.num_train=300",
        "data.num_test=100",
        "train.epochs=2",
    )
    run(cfg)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    assert {"sg_loss", "sg_cosine", "dL_dh/t001", "train_updates"} <= set(logged.data.metrics)
    assert logged.data.metrics["train_updates"] == 2.0  # segments [0, 10), [10, 20)
