"""Tuned defaults: conf/tuned/<method>_<model>.yaml, applied automatically, and their export."""

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from analysis.export_tuned import (
    best_trial,
    parse_param,
    round_significant,
    search_space_keys,
    tuned_config,
    write_tuned,
)
from experiments.tracking import flatten_config
from experiments.train import run
from experiments.validation import ConfigError, check_tuned_choice, validate_config

CONF = Path(__file__).resolve().parents[1] / "conf"
TUNED = sorted(CONF.glob("tuned/*.yaml"))
INTERVAL = re.compile(r"interval\(\s*([^,]+),\s*([^)]+)\)")
# Presets whose README figures were measured with each method's own (untuned) defaults.
UNTUNED_PRESETS = (
    "dni_benchmark",
    "fa_altmin_benchmark",
    "hsic_benchmark",
    "rnn_benchmark",
    "tp_benchmark",
    "tune",
)


def tuned_values(path):
    config = yaml.safe_load(path.read_text())
    return config["tuned"], flatten_config({k: v for k, v in config.items() if k != "tuned"})


def test_every_compared_method_has_tuned_defaults_on_the_mlp():
    compare = yaml.safe_load((CONF / "experiment/compare.yaml").read_text())
    methods = compare["hydra"]["sweeper"]["params"]["method"].split(",")
    assert {f"{m}_mlp" for m in methods} <= {p.stem for p in TUNED}


@pytest.mark.parametrize("path", TUNED, ids=[p.stem for p in TUNED])
def test_tuned_file_holds_its_search_space_within_bounds(path):
    info, values = tuned_values(path)
    assert info["name"] == path.stem == f"{info['method']}_{info['model']}"
    assert (CONF / "method" / f"{info['method']}.yaml").is_file()
    assert (CONF / "model" / f"{info['model']}.yaml").is_file()
    assert info["objective"].startswith("val_") and info["trials"] >= 1
    space = yaml.safe_load((CONF / "search" / f"{info['method']}.yaml").read_text())
    assert set(values) == set(space)
    for key, value in values.items():
        low, high = map(float, INTERVAL.search(space[key]).groups())
        # 4 significant digits may round just past a bound
        assert low * (1 - 1e-3) <= value <= high * (1 + 1e-3), key


@pytest.mark.parametrize("path", TUNED, ids=[p.stem for p in TUNED])
def test_tuned_defaults_apply_to_their_method_and_model(make_config, path):
    info, values = tuned_values(path)
    cfg = make_config(f"method={info['method']}", f"model={info['model']}")
    assert cfg.tuned.name == path.stem
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == value, key
    other = "rnn" if info["model"] == "mlp" else "mlp"
    assert make_config(f"method={info['method']}", f"model={other}").tuned is None


def test_command_line_beats_tuned_and_tilde_opts_out(make_config):
    method_defaults = yaml.safe_load((CONF / "method/dtp.yaml").read_text())
    tuned = make_config("method=dtp")
    assert tuned.tuned.name == "dtp_mlp"
    assert tuned.method.forward_optimizer.lr != method_defaults["forward_optimizer"]["lr"]
    assert (
        make_config("method=dtp", "method.forward_optimizer.lr=0.5").method.forward_optimizer.lr
        == 0.5
    )
    plain = make_config("method=dtp", "~tuned")
    assert plain.tuned is None
    assert plain.method.forward_optimizer.lr == method_defaults["forward_optimizer"]["lr"]


@pytest.mark.parametrize("preset", UNTUNED_PRESETS)
def test_benchmark_presets_and_tuning_run_without_tuned_defaults(make_config, preset):
    assert make_config(f"experiment={preset}", "method=dtp").tuned is None


def test_tuned_defaults_of_another_method_are_refused(make_config):
    with pytest.raises(ConfigError, match=r"^tuned: dtp_mlp .* not of method=backprop"):
        validate_config(make_config("method=backprop", "tuned=dtp_mlp"))


def test_run_is_tagged_with_its_tuned_defaults(make_config):
    import mlflow

    cfg = make_config("method=fa", "data=digits", "train.epochs=1")
    run(cfg)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    assert logged.data.tags["tuned"] == "fa_mlp"
    assert logged.data.params["tuned.data"] == cfg.tuned.data
    assert float(logged.data.params["method.optimizer.lr"]) == cfg.method.optimizer.lr


def study(objective="val_accuracy", **columns):
    base = {
        "run_id": ["a", "b", "c"],
        "status": ["FINISHED", "FINISHED", "FAILED"],
        "method": "dfa",
        "model": "mlp",
        "data": "digits",
        "seed": 0,
        "sweep_dir": "multirun/x",
        "param.train.objective": objective,
        "param.train.epochs": "20",
        "param.data.val_fraction": "0.1",
        "param.method.optimizer.lr": ["0.0012345678", "1e-05", "0.5"],
    }
    return pd.DataFrame({**base, **columns})


def test_best_trial_maximises_accuracy_and_skips_failed_trials():
    trial, objective, direction = best_trial(study(val_accuracy=[0.5, 0.7, 0.9]))
    assert (trial["run_id"], objective, direction) == ("b", "val_accuracy", "maximize")


def test_best_trial_minimises_a_loss():
    trial, _, direction = best_trial(study("val_loss", val_loss=[0.4, 0.9, 0.1]))
    assert (trial["run_id"], direction) == ("a", "minimize")


def test_best_trial_needs_a_finished_trial_with_the_objective():
    with pytest.raises(ValueError, match="no finished trial logged val_accuracy"):
        best_trial(study(val_accuracy=[math.nan, math.nan, 0.9]))
    with pytest.raises(ValueError, match="exactly one train.objective"):
        best_trial(study(objective="None", val_accuracy=[0.5, 0.7, 0.9]))


def test_params_round_trip_and_round_to_four_digits():
    assert parse_param("1e-05") == 1e-05 and parse_param("[256, 256]") == [256, 256]
    assert parse_param("torch.optim.Adam") == "torch.optim.Adam"
    assert round_significant(0.0012345678) == 0.001235 and round_significant(3) == 3


def test_exported_file_composes_back_to_the_best_trial(tmp_path):
    config = tuned_config(study(val_accuracy=[0.8, 0.7, 0.9]))
    assert config["method"] == {"optimizer": {"lr": 0.001235}}
    info = config["tuned"]
    assert (info["name"], info["best_value"], info["trials"], info["best_run_id"]) == (
        "dfa_mlp",
        0.8,
        3,
        "a",
    )
    path = write_tuned(config, tmp_path)
    assert path.name == "dfa_mlp.yaml"
    text = path.read_text()
    assert text.startswith("# @package _global_\n")
    assert yaml.safe_load(text) == config
    assert search_space_keys("dfa") == ["method.optimizer.lr"]


def test_study_without_its_overrides_artifact_is_a_clear_error(tracking_uri):
    from analysis.export_tuned import study_overrides

    with pytest.raises(ValueError, match="cannot read config/overrides.yaml"):
        study_overrides(tracking_uri, "0" * 32, [])


def test_only_the_automatic_tuned_choice_may_lack_a_file(tmp_path):
    (tmp_path / "dtp_mlp.yaml").write_text("")
    check_tuned_choice({"method": "dtp", "model": "mlp", "tuned": "dtp_mlp"}, tmp_path)
    check_tuned_choice({"method": "fa", "model": "mlp", "tuned": "fa_mlp"}, tmp_path)  # none
    check_tuned_choice({"method": "fa", "model": "mlp", "tuned": None}, tmp_path)  # ~tuned
    with pytest.raises(ConfigError, match=r"^tuned: no tuned defaults named 'dtp_mpl' .*dtp_mlp"):
        check_tuned_choice({"method": "dtp", "model": "mlp", "tuned": "dtp_mpl"}, tmp_path)


def test_load_runs_reports_the_tuned_defaults_of_each_run(make_config):
    from analysis.runs import load_runs

    for extra in ((), ("~tuned",)):
        run(make_config("method=dfa", "data=digits", "train.epochs=1", *extra))
    cfg = make_config()
    runs = load_runs(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name)
    assert sorted(runs["tuned"]) == ["dfa_mlp", "none"]
