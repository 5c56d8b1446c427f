"""End-to-end training jobs on tiny budgets, read back from MLflow."""

import math
import os
from pathlib import Path

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from experiments.train import run
from experiments.validation import ConfigError, validate_config
from methods import register_method
from methods.backprop import Backprop
from tests.test_data import write_tiny_cifar, write_tiny_idx


def runs_of(cfg):
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    return mlflow.search_runs(experiment_names=[cfg.mlflow.experiment_name], output_format="list")


def test_one_epoch_mnist1d_logs_everything(make_config):
    cfg = make_config("train.epochs=2", "seed=3")
    final = run(cfg)
    [logged] = runs_of(cfg)
    assert logged.info.status == "FINISHED"
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    # Per-epoch metrics, at steps 1 and 2.
    history = client.get_metric_history(logged.info.run_id, "test_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == pytest.approx(final["test_accuracy"])
    for key in ("train_loss", "train_accuracy", "test_loss", "epoch_seconds", "samples_per_second"):
        assert len(client.get_metric_history(logged.info.run_id, key)) == 2
    # Flattened params, tags and config artifacts.
    params = logged.data.params
    assert params["method.optimizer._target_"] == "torch.optim.Adam"
    assert params["model.hidden_sizes"] == "[256, 256]" and params["train.epochs"] == "2"
    tags = logged.data.tags
    assert (tags["method"], tags["data"], tags["model"], tags["seed"]) == (
        "backprop",
        "mnist1d",
        "mlp",
        "3",
    )
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id, "config")}
    assert artifacts == {"config/config.yaml", "config/overrides.yaml"}
    stored = OmegaConf.load(client.download_artifacts(logged.info.run_id, "config/config.yaml"))
    assert stored.seed == 3 and stored.train.epochs == 2


@pytest.mark.parametrize("dataset", ["digits", "mnist", "fashion_mnist", "cifar10"])
def test_one_epoch_per_dataset(make_config, tmp_path, dataset):
    overrides = ["train.epochs=1", f"data={dataset}"]
    if dataset in ("mnist", "fashion_mnist"):
        write_tiny_idx(tmp_path, n_train=50, n_test=20)
        overrides += [f"data.root={tmp_path}", "data.download=false"]
    if dataset == "cifar10":
        write_tiny_cifar(tmp_path, per_batch=10)
        overrides += [f"data.root={tmp_path}", "data.download=false"]
    cfg = make_config(*overrides)
    final = run(cfg)
    [logged] = runs_of(cfg)
    assert logged.info.status == "FINISHED" and logged.data.tags["data"] == dataset
    assert 0.0 <= final["test_accuracy"] <= 1.0


def test_digits_learns_in_three_epochs(make_config):
    final = run(make_config("data=digits", "train.epochs=3"))
    assert final["test_accuracy"] > 0.85


def test_same_seed_same_result_different_seed_different_result(make_config):
    a = run(make_config("data=digits", "train.epochs=1", "seed=5"))
    b = run(make_config("data=digits", "train.epochs=1", "seed=5"))
    c = run(make_config("data=digits", "train.epochs=1", "seed=6"))
    assert a["test_loss"] == b["test_loss"] and a["test_loss"] != c["test_loss"]


def test_validation_split_metrics(make_config):
    final = run(make_config("data=digits", "train.epochs=1", "data.val_fraction=0.2"))
    assert {"val_loss", "val_accuracy", "test_accuracy"} <= set(final)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.optimizer.lr=-0.1", "method.optimizer.lr: learning rate must be > 0"),
        ("model.hidden_sizes=[]", "model.hidden_sizes: must be a non-empty list"),
        ("train.batch_size=0", "train.batch_size: must be an integer >= 1, got 0"),
        ("train.epochs=1.5", "train.epochs: must be an integer >= 1"),
        ("data.val_fraction=1.5", "data.val_fraction: must lie in [0, 1)"),
        ("device=tpu", "device: must be one of"),
        ("seed=???", "seed: missing mandatory value"),
        ("+method.momentum=0.9", "method.momentum: method 'backprop' has no option"),
        ("method.name=nope", "method.name: unknown method 'nope'"),
        ("+train.epoch=3", "train.epoch: unknown key; train has only: batch_size, checkpoint"),
        ("+foo=1", "foo: unknown key; the top level has only"),
        ("+mlflow.experiment=x", "mlflow.experiment: unknown key"),
        ("cpu_threads=0", "cpu_threads: must be an integer >= 1"),
        ("train.objective=test_accuracy", "train.objective: must be a validation metric"),
        ("train.objective=val_accuracy", "train.objective: needs a validation split"),
    ],
)
def test_bad_values_fail_before_training_naming_the_key(make_config, override, message):
    cfg = make_config(override)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert str(info.value).startswith(message)
    with pytest.raises(ConfigError):
        run(cfg)
    assert runs_of(cfg) == []  # no MLflow run was created


def test_cuda_requested_without_cuda(make_config):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="device: 'cuda' requested but CUDA is not available"):
        validate_config(make_config("device=cuda"))


@register_method("test_nan_after_two_steps")
class NanAfterTwoSteps(Backprop):
    """Backprop whose reported loss becomes NaN at the third update."""

    def __init__(self, model, loss, optimizer):
        super().__init__(model, loss, optimizer)
        self.calls = 0

    def compute_update(self, x, y):
        self.calls += 1
        metrics = super().compute_update(x, y)
        return {**metrics, "loss": math.nan} if self.calls == 3 else metrics


def test_diverging_run_is_failed_with_step_and_reason(make_config):
    cfg = make_config(
        "data=digits", "method=backprop", "method.name=test_nan_after_two_steps", "~tuned"
    )
    result = run(cfg)
    assert result == {"diverged_at_step": 3.0}
    [logged] = runs_of(cfg)
    assert logged.info.status == "FAILED"
    assert logged.data.metrics["diverged_at_step"] == 3
    assert logged.data.tags["failure_reason"] == "train loss became nan at step 3"


def test_real_divergence_with_huge_learning_rate(make_config):
    cfg = make_config(
        "data=digits",
        "train.epochs=5",
        "method.optimizer._target_=torch.optim.SGD",
        "method.optimizer.lr=1e12",
    )
    result = run(cfg)
    [logged] = runs_of(cfg)
    assert logged.info.status == "FAILED" and "diverged_at_step" in result


@register_method("test_interrupt_in_epoch_two")
class InterruptInEpochTwo(Backprop):
    """Backprop that raises KeyboardInterrupt (as Ctrl-C would) during the second epoch."""

    def compute_update(self, x, y):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return super().compute_update(x, y)


def test_interrupted_run_is_killed_and_keeps_its_metrics(make_config):
    cfg = make_config(
        "data=digits", "train.epochs=3", "method.name=test_interrupt_in_epoch_two", "~tuned"
    )
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    [logged] = runs_of(cfg)
    assert logged.info.status == "KILLED"
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "test_loss")] == [1]


@register_method("test_lifecycle")
class RecordsItsLifecycle(Backprop):
    """Backprop that records every lifecycle call the harness makes (one log per instance)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []
        LIFECYCLES.append(self.calls)

    def check_budget(self, epochs, batches_per_epoch):
        self.calls.append(("check_budget", epochs))

    def on_train_start(self, epochs, batches_per_epoch):
        self.calls.append(("on_train_start", epochs))

    def on_epoch_start(self, epoch):
        super().on_epoch_start(epoch)
        self.calls.append(("on_epoch_start", epoch))

    def epoch_metrics(self):
        self.calls.append(("epoch_metrics", self.epoch))
        return {}

    def reset_epoch_metrics(self):
        self.calls.append(("reset_epoch_metrics", self.epoch))


LIFECYCLES: list[list[tuple[str, int]]] = []


def test_the_harness_starts_training_once_and_owns_the_epoch_count(make_config):
    """The entry point only checks the budget (pure); fit() starts training exactly once."""
    cfg = make_config("data=digits", "train.epochs=2", "method.name=test_lifecycle", "~tuned")
    LIFECYCLES.clear()
    run(cfg)
    [calls] = LIFECYCLES
    assert calls == [
        ("check_budget", 2),  # the entry point, before the run is created
        ("check_budget", 2),  # fit(), which also works on its own
        ("on_train_start", 2),
        ("on_epoch_start", 1),
        ("epoch_metrics", 1),
        ("reset_epoch_metrics", 1),
        ("on_epoch_start", 2),
        ("epoch_metrics", 2),
        ("reset_epoch_metrics", 2),
    ]


DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.mark.parametrize(
    ("dataset", "threshold"),
    [
        ("mnist1d", 0.60),  # the MNIST-1D paper's MLP: 65-68%
        ("digits", 0.95),
        pytest.param(
            "fashion_mnist",
            0.85,
            marks=pytest.mark.skipif(
                not os.path.exists(DEBIAN_FASHION), reason="needs Debian's dataset-fashion-mnist"
            ),
        ),
    ],
)
def test_default_budget_reaches_the_target_accuracy(make_config, dataset, threshold):
    """The README's claims: backprop with the default MLP and budget, seed 0."""
    final = run(make_config(f"data={dataset}"))
    assert final["test_accuracy"] >= threshold


@pytest.mark.parametrize(
    "preset",
    sorted(
        p.stem for p in (Path(__file__).resolve().parents[1] / "conf/experiment").glob("*.yaml")
    ),
)
def test_every_experiment_preset_composes_and_validates(make_config, preset):
    validate_config(make_config(f"experiment={preset}"))


@pytest.mark.parametrize(
    "space",
    sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf/search").glob("*.yaml")),
)
def test_every_search_space_composes(make_config, space):
    cfg = make_config("experiment=tune", f"method={space}", f"search={space}")
    assert cfg.method.name == space and cfg.train.objective == "val_accuracy"
