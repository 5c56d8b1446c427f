"""Tuned defaults: conf/tuned/<method>_<model>_<data>.yaml, applied automatically, and export."""

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from analysis.export_tuned import (
    best_trial,
    parse_param,
    search_space_keys,
    tuned_config,
    write_tuned,
)
from experiments.schema import validate_config
from experiments.tracking import flatten_config
from experiments.train import describe_failure, run
from experiments.validation import ConfigError, check_tuned_choice

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


def test_every_compared_method_has_tuned_defaults_on_the_compared_data():
    compare = yaml.safe_load((CONF / "experiment/compare.yaml").read_text())
    methods = compare["hydra"]["sweeper"]["params"]["method"].split(",")
    assert {f"{m}_mlp_mnist1d" for m in methods} <= {p.stem for p in TUNED}


def test_every_method_of_the_comparison_had_the_same_tuning_budget():
    compare = yaml.safe_load((CONF / "experiment/compare.yaml").read_text())
    methods = compare["hydra"]["sweeper"]["params"]["method"].split(",")
    tune = yaml.safe_load((CONF / "experiment/tune.yaml").read_text())
    infos = [tuned_values(CONF / "tuned" / f"{m}_mlp_mnist1d.yaml")[0] for m in methods]
    assert {info["trials"] for info in infos} == {tune["hydra"]["sweeper"]["n_trials"]}
    assert {tuple(info["seeds"]) for info in infos} == {tuple(tune["train"]["objective_seeds"])}
    evaluation = {int(s) for s in str(compare["hydra"]["sweeper"]["params"]["seed"]).split(",")}
    assert len(evaluation) >= 5 and not evaluation & set(tune["train"]["objective_seeds"])


@pytest.mark.parametrize("path", TUNED, ids=[p.stem for p in TUNED])
def test_tuned_file_holds_its_search_space_within_bounds(path):
    info, values = tuned_values(path)
    assert info["name"] == path.stem == f"{info['method']}_{info['model']}_{info['data']}"
    assert (CONF / "method" / f"{info['method']}.yaml").is_file()
    assert (CONF / "model" / f"{info['model']}.yaml").is_file()
    assert (CONF / "data" / f"{info['data']}.yaml").is_file()
    assert info["objective"].startswith("val_") and info["trials"] >= 1
    assert len(info["seeds"]) >= 2 and min(info["seeds"]) >= 1000
    space = yaml.safe_load((CONF / "search" / f"{info['method']}.yaml").read_text())
    assert set(values) == set(space)
    for key, value in values.items():
        low, high = map(float, INTERVAL.search(space[key]).groups())
        # files exported before values were kept exact hold 4 significant digits, which may
        # round just past a bound
        assert low * (1 - 1e-3) <= value <= high * (1 + 1e-3), key


@pytest.mark.parametrize("path", TUNED, ids=[p.stem for p in TUNED])
def test_tuned_defaults_apply_to_their_method_model_and_data_only(make_config, path):
    info, values = tuned_values(path)
    where = (f"method={info['method']}", f"model={info['model']}", f"data={info['data']}")
    cfg = make_config(*where)
    assert cfg.tuned.name == path.stem
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == value, key
    other = "rnn" if info["model"] == "mlp" else "mlp"
    assert make_config(f"method={info['method']}", f"model={other}").tuned is None
    assert make_config(*where[:2], "data=digits").tuned is None  # tuned on another dataset


def test_command_line_beats_tuned_and_tilde_opts_out(make_config):
    method_defaults = yaml.safe_load((CONF / "method/dtp.yaml").read_text())
    tuned = make_config("method=dtp")
    assert tuned.tuned.name == "dtp_mlp_mnist1d"
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
    # A recurrent preset sets options (clip_grad_norm) that only the recurrent methods have.
    method = "tbptt" if preset.startswith("rnn_") else "dtp"
    assert make_config(f"experiment={preset}", f"method={method}").tuned is None


def test_tuned_defaults_of_another_method_or_dataset_are_refused(make_config):
    # Another method's file sets options this method does not have: refused while composing.
    with pytest.raises(ConfigCompositionException) as info:
        make_config("method=backprop", "tuned=dtp_mlp_mnist1d")
    message, status, _ = describe_failure(info.value)
    assert status == 2 and "\n" not in message
    assert message.startswith(
        "method.forward_optimizer: unknown key (in conf/tuned/dtp_mlp_mnist1d.yaml); "
        "method has only: name, optimizer; conf/tuned/dtp_mlp_mnist1d.yaml holds the tuned "
        "defaults of another method"
    )
    with pytest.raises(ConfigError, match=r"^tuned: dtp_mlp_mnist1d .* data=mnist1d, not .*digits"):
        validate_config(make_config("method=dtp", "data=digits", "tuned=dtp_mlp_mnist1d"))


def test_a_run_on_data_without_tuned_defaults_says_so_in_one_line(make_config):
    from experiments.train import tuned_note

    tuned_dir = CONF / "tuned"
    cfg = make_config("method=dtp", "data=digits")
    choices = {"method": "dtp", "model": "mlp", "data": "digits", "tuned": "dtp_mlp_digits"}
    assert cfg.tuned is None
    assert tuned_note(cfg, choices, tuned_dir) == (
        "no tuned defaults of method=dtp model=mlp for data=digits (tuned on: mnist1d): "
        "the method's own defaults apply"
    )
    assert tuned_note(cfg, {**choices, "tuned": None}, tuned_dir) is None  # ~tuned: no note
    tuned = make_config("method=dtp")
    assert tuned_note(tuned, {**choices, "data": "mnist1d"}, tuned_dir) is None


def test_run_is_tagged_with_its_tuned_defaults(make_config):
    import mlflow

    tuned = make_config("method=fa", "train.epochs=1")
    run(tuned)
    run(make_config("method=fa", "data=digits", "train.epochs=1"))
    mlflow.set_tracking_uri(tuned.mlflow.tracking_uri)
    logged = mlflow.search_runs(
        experiment_names=[tuned.mlflow.experiment_name], output_format="list"
    )
    by_data = {r.data.tags["data"]: r for r in logged}
    assert by_data["mnist1d"].data.tags["tuned"] == "fa_mlp_mnist1d"
    assert by_data["mnist1d"].data.params["tuned.data"] == "mnist1d"
    assert float(by_data["mnist1d"].data.params["method.optimizer.lr"]) == tuned.method.optimizer.lr
    assert by_data["digits"].data.tags["tuned"] == "none"  # tuned on mnist1d only


def study(objective="val_accuracy", **columns):
    """Three trials x two tuning seeds; trial 3's second seed diverged (FAILED)."""
    base = {
        "run_id": ["a1", "a2", "b1", "b2", "c1", "c2"],
        "status": ["FINISHED"] * 5 + ["FAILED"],
        "method": "dfa",
        "model": "mlp",
        "data": "digits",
        "seed": [1000, 1001] * 3,
        "sweep_dir": "multirun/x",
        "param.train.objective": objective,
        "param.train.objective_seeds": "[1000, 1001]",
        "param.train.epochs": "20",
        "param.data.val_fraction": "0.1",
        "param.method.optimizer.lr": ["0.0012345678"] * 2 + ["1e-05"] * 2 + ["0.5"] * 2,
    }
    return pd.DataFrame({**base, **columns})


def test_best_trial_maximises_the_seed_mean_and_skips_failed_trials():
    # Trial b has the best single run (0.95) but a lower mean than a; c failed on one seed.
    trial, objective, direction, score, trials = best_trial(
        study(val_accuracy=[0.8, 0.8, 0.95, 0.55, 0.99, math.nan])
    )
    assert (trial["run_id"], objective, direction, trials) == ("a1", "val_accuracy", "maximize", 3)
    assert score == pytest.approx(0.8)


def test_best_trial_minimises_a_loss():
    trial, _, direction, score, _ = best_trial(
        study("val_loss", val_loss=[0.4, 0.6, 0.2, 0.2, 0.9, 0.1])
    )
    assert (trial["run_id"], direction, score) == ("b1", "minimize", pytest.approx(0.2))


def test_best_trial_needs_a_trial_finished_on_every_seed():
    with pytest.raises(ValueError, match="no trial finished every tuning seed"):
        best_trial(study(val_accuracy=[math.nan, 0.5, math.nan, 0.5, 0.9, math.nan]))
    with pytest.raises(ValueError, match="exactly one train.objective"):
        best_trial(study(objective="None", val_accuracy=[0.5] * 6))


def test_params_round_trip_exactly():
    assert parse_param("1e-05") == 1e-05 and parse_param("[256, 256]") == [256, 256]
    assert parse_param("0.0012345678") == 0.0012345678  # not rounded: the trial's own value
    assert parse_param("torch.optim.Adam") == "torch.optim.Adam"


def test_exported_file_composes_back_to_the_best_trial(tmp_path):
    config = tuned_config(study(val_accuracy=[0.8, 0.7, 0.6, 0.7, 0.9, 0.9]))
    # The best trial's exact value: a rounded one would be another configuration.
    assert config["method"] == {"optimizer": {"lr": 0.0012345678}}
    info = config["tuned"]
    assert (info["name"], info["best_value"], info["trials"], info["best_run_id"]) == (
        "dfa_mlp_digits",
        0.75,
        3,
        "a1",
    )
    assert info["seeds"] == [1000, 1001]
    path = write_tuned(config, tmp_path)
    assert path.name == "dfa_mlp_digits.yaml"
    text = path.read_text()
    assert text.startswith("# @package _global_\n")
    # 3 trials is not the protocol's 16 (conf/experiment/tune.yaml): the header must say so
    assert "best of 3 Optuna trials\n# (NOT the protocol's 16" in text
    assert yaml.safe_load(text) == config
    assert search_space_keys("dfa") == ["method.optimizer.lr"]


def test_study_without_its_overrides_artifact_is_a_clear_error(tracking_uri):
    from analysis.export_tuned import study_overrides

    with pytest.raises(ValueError, match="cannot read config/overrides.yaml"):
        study_overrides(tracking_uri, "0" * 32, [])


def test_only_the_automatic_tuned_choice_may_lack_a_file(tmp_path):
    (tmp_path / "dtp_mlp_digits.yaml").write_text("")
    where = {"model": "mlp", "data": "digits"}
    check_tuned_choice({**where, "method": "dtp", "tuned": "dtp_mlp_digits"}, tmp_path)
    check_tuned_choice({**where, "method": "fa", "tuned": "fa_mlp_digits"}, tmp_path)  # none
    check_tuned_choice({**where, "method": "fa", "tuned": None}, tmp_path)  # ~tuned
    with pytest.raises(ConfigError, match=r"^tuned: no tuned defaults named 'dtp_mpl' .*dtp_mlp"):
        check_tuned_choice({**where, "method": "dtp", "tuned": "dtp_mpl"}, tmp_path)


def test_load_runs_reports_the_tuned_defaults_of_each_run(make_config):
    from analysis.runs import load_runs

    for extra in ((), ("~tuned",)):
        run(make_config("method=dfa", "train.epochs=1", *extra))
    cfg = make_config()
    runs = load_runs(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name)
    assert sorted(runs["tuned"]) == ["dfa_mlp_mnist1d", "none"]
