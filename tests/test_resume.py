"""Checkpoints and ``resume=``: a job killed with SIGKILL ends, once resumed, exactly as if never
interrupted (same weights bit for bit, same metric histories); unsafe or foreign checkpoints are
refused with one line."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from experiments.checkpoint import CHECKPOINT_FILE, capture_rng, load_checkpoint, restore_rng
from experiments.errors import ConfigError
from experiments.tracking import make_client
from experiments.train import run
from methods import available_methods, get_method_class

REPO_ROOT = Path(__file__).resolve().parents[1]
# Wall-clock metrics differ between any two runs; everything else must be equal.
TIMING = ("epoch_seconds", "samples_per_second")
SMALL_MLP = ("data=digits", "model.hidden_sizes=[16,16]", "train.batch_size=200")
# Per method: its overrides (tiny networks, few batches). dtp also draws noise and is probed by
# the diagnostics (which must not shift training); backprop runs a cosine schedule.
CASES = {
    "backprop": (*SMALL_MLP, "train.lr_schedule=cosine"),
    "dtp": (*SMALL_MLP, "diagnostics.every_steps=4", "diagnostics.probe_size=32"),
    "hsic": (*SMALL_MLP, "method.format_fraction=0.4"),
    "dni": SMALL_MLP,
    "altmin": (*SMALL_MLP, "method.code_steps=2"),
    "bptt": (
        "model=rnn",
        "data=adding",
        "data.length=10",
        "data.num_train=300",
        "data.num_test=100",
        "model.hidden_size=8",
        "train.batch_size=100",
        "method.probe_every=1",
    ),
}
# Run as a separate process: the job kills itself with SIGKILL right after the checkpoint of
# epoch KILL_AFTER is on disk (as ``kill -9`` at that moment would: no handler, no cleanup).
KILLER = """
import os, signal, sys
from experiments import train
kill_after = int(os.environ["KILL_AFTER_EPOCH"])
save = train.save_checkpoint
def save_then_die(checkpoint, path):
    save(checkpoint, path)
    if checkpoint["loop"]["epoch"] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
train.save_checkpoint = save_then_die
sys.argv = ["experiments.train", *sys.argv[1:]]
train.cli()
"""


def overrides(method: str, folder: Path) -> list[str]:
    return [
        f"method={method}",
        "~tuned",
        "train.epochs=3",
        "train.checkpoint_every=1",
        f"train.checkpoint_dir={folder}",
        *CASES[method],
    ]


def job(tmp_path: Path, tracking_uri: str, experiment: str, args: list[str], kill_after: int = 0):
    """Run ``experiments.train`` in a fresh Python process from ``tmp_path``."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KILL_AFTER_EPOCH": str(kill_after)}
    command = [
        sys.executable,
        "-c",
        KILLER,
        f"mlflow.tracking_uri={tracking_uri}",
        f"mlflow.experiment_name={experiment}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        *args,
    ]
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )


def only_run(folder: Path) -> tuple[str, Path]:
    (path,) = folder.glob(f"*/{CHECKPOINT_FILE}")
    return path.parent.name, path


def histories(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric's ``(step, value)`` history, in logging order, timing metrics left out."""
    keys = client.get_run(run_id).data.metrics
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in sorted(keys)
        if key not in TIMING
    }


def training_state(checkpoint: dict) -> dict:
    """A checkpoint's loop state without what may differ between two equal trainings.

    The timing metrics, and Python's global random state: no training code draws from it, but
    a library imported lazily (``rich``, at import: ``count(getrandbits(24))``) does, once per
    process, at a moment that differs between one process and two.
    """
    loop = dict(checkpoint["loop"])
    loop.pop("metrics")
    loop["rng"] = {k: v for k, v in loop["rng"].items() if k != "python"}
    return loop


def assert_same_state(a: dict, b: dict, where: str = "") -> None:
    """Two checkpoint trees are equal: tensors bit for bit, everything else by ``==``."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where  # NaN == NaN here


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(CASES))
def test_kill_9_after_epoch_2_then_resume_ends_as_the_uninterrupted_run(
    method, tmp_path, tracking_uri, make_config
):
    experiment = f"resume-{method}"
    plain_dir, killed_dir = tmp_path / "plain", tmp_path / "killed"
    plain = run(make_config(*overrides(method, plain_dir), f"mlflow.experiment_name={experiment}"))
    plain_id, plain_file = only_run(plain_dir)

    killed = job(tmp_path, tracking_uri, experiment, overrides(method, killed_dir), kill_after=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_id, path = only_run(killed_dir)
    assert load_checkpoint(path)["loop"]["epoch"] == 2
    client = make_client(tracking_uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody closed it: kill -9
    assert max(s for s, _ in histories(client, run_id)["test_loss"]) == 2

    resumed = job(
        tmp_path, tracking_uri, experiment, [*overrides(method, killed_dir), f"resume={run_id}"]
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming run {run_id} after epoch 2" in resumed.stdout + resumed.stderr

    info = client.get_run(run_id)
    assert info.info.status == "FINISHED"
    assert info.data.tags["resumed"] == "1"
    a, b = training_state(load_checkpoint(plain_file)), training_state(load_checkpoint(path))
    assert a["epoch"] == b["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert_same_state(a, b)
    plain_history, resumed_history = histories(client, plain_id), histories(client, run_id)
    assert plain_history == resumed_history
    steps = resumed_history["test_loss"]
    assert [s for s, _ in steps] == [1, 2, 3]  # each epoch once: no step logged twice
    assert plain["test_loss"] == steps[-1][1]


def test_interrupted_in_process_then_resumed_equals_uninterrupted(
    make_config, tmp_path, monkeypatch, caplog
):
    """The fast variant (no subprocess): Ctrl-C right after epoch 2's checkpoint, then resume."""
    from experiments import train

    save = train.save_checkpoint

    def save_then_interrupt(checkpoint, path):
        save(checkpoint, path)
        if checkpoint["loop"]["epoch"] == 2:
            raise KeyboardInterrupt

    plain_dir, killed_dir = tmp_path / "plain", tmp_path / "killed"
    run(make_config(*overrides("dtp", plain_dir)))
    monkeypatch.setattr(train, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(make_config(*overrides("dtp", killed_dir)))
    monkeypatch.setattr(train, "save_checkpoint", save)
    run_id, path = only_run(killed_dir)
    client = make_client(mlflow.get_tracking_uri())
    assert client.get_run(run_id).info.status == "KILLED"
    with caplog.at_level(logging.INFO, logger="experiments.tracking"):
        run(make_config(*overrides("dtp", killed_dir), f"resume={path}"))  # a path works too
    assert client.get_run(run_id).info.status == "FINISHED"
    experiment_id = client.get_run(run_id).info.experiment_id
    assert f"/#/experiments/{experiment_id}/runs/{run_id}" in caplog.text  # the UI address
    assert "failure_reason" not in client.get_run(run_id).data.tags
    plain_id, plain_file = only_run(plain_dir)
    a, b = training_state(load_checkpoint(plain_file)), training_state(load_checkpoint(path))
    assert_same_state(a, b)
    assert histories(client, plain_id) == histories(client, run_id)


def test_resume_with_a_different_config_is_refused_naming_the_key(make_config, tmp_path):
    args = ("train.epochs=2", "train.checkpoint_every=1", f"train.checkpoint_dir={tmp_path}")
    run(make_config(*SMALL_MLP, *args))
    run_id, _ = only_run(tmp_path)
    with pytest.raises(ConfigError) as error:
        run(make_config(*SMALL_MLP, *args, "seed=1", f"resume={run_id}"))
    assert str(error.value).startswith("resume: seed differs from the checkpoint's")
    assert "checkpoint: 0, now: 1" in str(error.value)


def test_a_checkpoint_holding_an_arbitrary_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"loop": {}, "run_id": "x", "config": {}, "payload": os.system}, path)
    with pytest.raises(ConfigError, match=r"^resume: .*evil.pt: refused, it holds more than"):
        load_checkpoint(path)


def test_checkpoint_every_0_writes_nothing(make_config, tmp_path):
    run(make_config(*SMALL_MLP, "train.epochs=1", f"train.checkpoint_dir={tmp_path}"))
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_every_2_writes_after_epoch_2_only_and_auto_resumes_it(make_config, tmp_path):
    args = (
        *SMALL_MLP,
        "train.epochs=3",
        "train.checkpoint_every=2",
        f"train.checkpoint_dir={tmp_path}",
    )
    first = run(make_config(*args))
    run_id, path = only_run(tmp_path)
    assert load_checkpoint(path)["loop"]["epoch"] == 2
    # auto: this config's checkpoint in the folder; the run goes on after epoch 2.
    again = run(make_config(*args, "resume=auto"))
    assert only_run(tmp_path)[0] == run_id
    assert again["test_loss"] == first["test_loss"]
    # Epoch 3, trained again, is not logged twice: its step is already in the run.
    history = mlflow.MlflowClient().get_metric_history(run_id, "test_loss")
    assert [(m.step, m.value) for m in history][2:] == [(3, first["test_loss"])]


def test_unknown_run_and_missing_file_are_refused(make_config, tmp_path):
    with pytest.raises(ConfigError, match="^resume: nope is neither a checkpoint file nor a run"):
        run(make_config(*SMALL_MLP, "train.epochs=1", "resume=nope"))


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    torch.save(state, tmp_path / "rng.pt")
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def build(name: str, seed: int = 0):
    """Method ``name`` on a tiny network and its data (``from experiments.train`` builders)."""
    from hydra import compose, initialize_config_dir

    from experiments.train import _options, build_model, load_data
    from methods import build_method
    from methods.losses import loss_for_task

    recurrent = name in ("bptt", "tbptt", "dni_rnn")
    shape = (
        ("model=rnn", "data=adding", "data.length=10", "data.num_train=40", "data.num_test=10")
        if recurrent
        else ("data=digits", "model.hidden_sizes=[8,8]")
    )
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"method={name}", "~tuned", *shape])
    data = load_data(cfg)
    torch.manual_seed(seed)
    model = build_model(cfg, data)
    method = build_method(
        name, model, loss_for_task(data.task, data.tolerance), _options(cfg.method, ("name",))
    )
    return method, data


# The library's methods: other test modules register throwaway ones at import.
LIBRARY_METHODS = [
    name for name in available_methods() if get_method_class(name).__module__.startswith("methods.")
]


@pytest.mark.parametrize("name", LIBRARY_METHODS)
def test_every_method_state_goes_through_a_weights_only_file_and_steps_on_identically(
    name, tmp_path
):
    """After 2 steps, a fresh method loading the saved state takes the same 3rd step."""
    original, data = build(name)
    original.on_train_start(3, 2)
    x, y = data.x_train[:20], data.y_train[:20]
    for start in (0, 20):
        original.step(data.x_train[start : start + 20], data.y_train[start : start + 20])
    torch.save(
        {"model": original.model.state_dict(), "method": original.state_dict()}, tmp_path / "s.pt"
    )
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    copy, _ = build(name, seed=1)  # other initial weights: all must come from the file
    copy.on_train_start(3, 2)
    copy.model.load_state_dict(saved["model"])
    copy.load_state_dict(saved["method"])
    assert_same_state(copy.state_dict(), original.state_dict())
    rng = torch.get_rng_state()
    original.step(x, y)
    torch.set_rng_state(rng)  # dtp's noise: the same draws for both
    copy.step(x, y)
    for (key, a), b in zip(original.model.state_dict().items(), copy.model.state_dict().values()):
        assert torch.equal(a, b), key
    assert_same_state(copy.state_dict(), original.state_dict())


def test_a_method_attribute_that_cannot_be_saved_is_named():
    method, _ = build("backprop")
    method.cache = object()
    with pytest.raises(TypeError, match=r"^Backprop.cache: cannot checkpoint a object"):
        method.state_dict()
