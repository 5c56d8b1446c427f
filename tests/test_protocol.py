"""The fair protocol: one learning-rate schedule for every optimiser, tuning on seeds of its own."""

import math

import mlflow
import pytest

from experiments.schedule import make_schedulers
from experiments.schema import validate_config
from experiments.train import TrialDiverged, objective, run
from experiments.validation import ConfigError
from methods import build_method
from methods.losses import CrossEntropy
from methods.networks import MLP

ADAM = {"_target_": "torch.optim.Adam", "lr": 0.01}
SGD = {"_target_": "torch.optim.SGD", "lr": 0.01}


def lrs(method):
    return [group["lr"] for opt in method.optimizers() for group in opt.param_groups]


@pytest.mark.parametrize(
    ("name", "options", "count"),
    [
        ("backprop", {"optimizer": ADAM}, 1),
        ("dtp", {"forward_optimizer": ADAM, "feedback_optimizer": ADAM}, 1),  # shared by both
        ("dtp", {"forward_optimizer": ADAM, "feedback_optimizer": SGD}, 2),
        ("dni", {"optimizer": ADAM, "synthetic_optimizer": ADAM}, 2),
        ("hsic", {"optimizer": ADAM, "format_optimizer": ADAM}, 2),  # hidden layers + format
    ],
)
def test_step_schedule_halves_every_optimiser_of_a_method(name, options, count):
    model = MLP(4, [8, 8], 3)
    method = build_method(name, model, CrossEntropy(), options)
    schedulers = make_schedulers(method.optimizers(), "step", epochs=10, step_epochs=3)
    assert len(method.optimizers()) == count and len(schedulers) == count
    # Every weight of the model is in exactly one scheduled optimiser: none trains unscheduled.
    scheduled = [
        id(p) for opt in method.optimizers() for g in opt.param_groups for p in g["params"]
    ]
    assert all(scheduled.count(id(p)) == 1 for p in model.parameters())
    for epoch in range(1, 8):
        for opt in method.optimizers():
            opt.step()  # no gradients: only lets the scheduler follow the usual order
        for scheduler in schedulers:
            scheduler.step()
        assert lrs(method) == pytest.approx([0.01 * 0.5 ** (epoch // 3)] * count)


def test_cosine_schedule_follows_the_closed_form():
    model = MLP(4, [8], 3)
    method = build_method("backprop", model, CrossEntropy(), {"optimizer": ADAM})
    [scheduler] = make_schedulers(method.optimizers(), "cosine", epochs=4)
    seen = []
    for _ in range(4):
        seen.append(lrs(method)[0])
        method.optimizer.step()
        scheduler.step()
    # eta_t = eta_0 (1 + cos(pi t / T)) / 2, Loshchilov & Hutter 2017 without restarts
    assert seen == pytest.approx([0.01 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)])
    assert make_schedulers(method.optimizers(), "none", epochs=4) == []


def test_the_run_logs_the_scheduled_rate_and_the_default_is_constant(make_config):
    cfg = make_config(
        "data=digits", "train.epochs=3", "train.lr_schedule=step", "train.lr_step_epochs=1"
    )
    run(cfg)
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    history = [m.value for m in client.get_metric_history(logged.info.run_id, "lr")]
    lr = cfg.method.optimizer.lr
    assert history == pytest.approx([lr, lr / 2, lr / 4])
    assert make_config().train.lr_schedule == "none"


def test_schedule_and_tuning_seed_values_are_checked(make_config):
    with pytest.raises(ConfigError, match=r"^train.lr_schedule: must be one of none, step"):
        validate_config(make_config("train.lr_schedule=linear"))
    with pytest.raises(ConfigError, match=r"^train.lr_step_factor: must lie in \(0, 1\]"):
        validate_config(make_config("train.lr_step_factor=2"))
    tune = ("train.objective=val_accuracy", "data.val_fraction=0.1")
    with pytest.raises(ConfigError, match=r"^train.objective_seeds: .* >= 1000"):
        validate_config(make_config(*tune, "train.objective_seeds=[0,1]"))


def test_a_method_that_rebuilds_its_optimisers_refuses_a_schedule(make_config):
    cfg = make_config(
        "method=hsic",
        "data=digits",
        "method.rebuild_optimizers_each_step=true",
        "train.lr_schedule=cosine",
    )
    with pytest.raises(ConfigError, match=r"^train.lr_schedule: method=hsic replaces"):
        run(cfg)


def test_the_objective_is_the_mean_over_the_tuning_seeds(make_config):
    cfg = make_config(
        "data=digits",
        "train.epochs=1",
        "train.objective=val_accuracy",
        "data.val_fraction=0.1",
        "train.objective_seeds=[1000,1001,1002]",
    )
    value = objective(cfg)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment_name])
    assert sorted(runs["tags.seed"].astype(int)) == [1000, 1001, 1002]
    assert runs["metrics.val_accuracy"].nunique() > 1  # the seeds differ ...
    assert value == pytest.approx(runs["metrics.val_accuracy"].mean())  # ... and are averaged


def test_a_diverged_seed_fails_the_trial(make_config):
    cfg = make_config(
        "data=digits",
        "train.epochs=1",
        "train.objective=val_accuracy",
        "data.val_fraction=0.1",
        "method.optimizer._target_=torch.optim.SGD",
        "method.optimizer.lr=1e12",
    )
    with pytest.raises(TrialDiverged, match="seed 1000 diverged"):
        objective(cfg)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment_name])
    assert list(runs["status"]) == ["FAILED"]  # the second seed is not run
