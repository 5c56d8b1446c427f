"""Every preset in conf/experiment/ runs as a real job (the first job of its sweep), tiny budget.

Validating a preset does not show that it runs: a key its jobs need may be missing, or its
first combination may not train. Each preset here trains one job of one epoch on a few hundred
examples into the session's temporary store and must end FINISHED with a finite test metric.
"""

import math
from pathlib import Path

import mlflow
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from experiments.train import objective, run

PRESETS = Path(__file__).resolve().parents[1] / "conf" / "experiment"
# Data sizes that keep a job to about a second; the rest of each preset is kept as it is.
DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
TINY_DATA = {
    "mnist1d": ["data.num_samples=600"],
    "mnist1d_seq": ["data.num_samples=600"],
    "adding": ["data.num_train=200", "data.num_test=100"],
    "copy": ["data.num_train=200", "data.num_test=100"],
    "digits": [],
    # the real files (Debian's dataset-fashion-mnist); a few hundred training images
    "fashion_mnist": ["data.num_train=300"],
}


def first_job(preset: str) -> list[str]:
    """The overrides of the first job of ``preset``'s sweep (``hydra.sweeper.params``).

    Each swept value is parsed by Hydra's own override parser, so ``a,b`` and ``choice(...)``
    give the value Hydra's basic sweeper launches first.
    """
    params = (yaml.safe_load((PRESETS / f"{preset}.yaml").read_text()) or {}).get("hydra", {})
    params = ((params or {}).get("sweeper") or {}).get("params") or {}
    parser = OverridesParser.create()
    overrides = []
    for key, value in params.items():
        [parsed] = parser.parse_overrides([f"{key}={value}"])
        first = next(iter(parsed.sweep_string_iterator())) if parsed.is_sweep_override() else value
        overrides.append(f"{key}={first}")
    return overrides


def test_first_job_reads_the_sweep_like_hydra():
    assert first_job("compare") == ["method=backprop", "seed=0"]
    assert "model.hidden_sizes=[64,64]" in first_job("vanishing_depth")
    assert first_job("rnn_horizon") == ["method=bptt", "model.cell=rnn", "data.length=10"]


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("*.yaml")))
def test_every_preset_runs_one_tiny_job(make_config, preset):
    overrides = [f"experiment={preset}", *first_job(preset), "train.epochs=1"]
    cfg = make_config(*overrides)
    if cfg.data.name == "fashion_mnist" and not Path(DEBIAN_FASHION).exists():
        pytest.skip("needs Debian's dataset-fashion-mnist (make data; .ci/run installs it)")
    cfg = make_config(*overrides, *TINY_DATA[cfg.data.name])
    if cfg.train.objective is not None:  # a tuning preset: one trial on one tuning seed
        cfg = make_config(*overrides, *TINY_DATA[cfg.data.name], "train.objective_seeds=[1000]")
        assert math.isfinite(objective(cfg))
    else:
        assert math.isfinite(run(cfg)["test_loss"])
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    assert logged.info.status == "FINISHED"
    assert math.isfinite(logged.data.metrics["test_loss"])
    assert logged.data.tags["method"] == cfg.method.name
