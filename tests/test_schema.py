"""The typed config schema: one mechanism for unknown keys, types, bounds and defaults."""

import dataclasses
import inspect
import subprocess
import sys

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import MISSING

from experiments.schema import method_schema, validate_config
from experiments.train import describe_failure
from experiments.validation import ConfigError
from methods import get_method_class
from methods.base import NOT_OPTIONS
from methods.options import Bounds, OneOf, check_value, option_specs
from tests.test_cli import REPO_ROOT, subprocess_env


def failure_line(make_config, *overrides):
    """The one line the command line prints for ``overrides``, and its exit status."""
    try:
        validate_config(make_config(*overrides))
    except ConfigCompositionException as error:  # rejected while Hydra composed
        message, status, traceback = describe_failure(error)
        assert not traceback
        return message, status
    except ConfigError as error:  # rejected by the schema's checks after composition
        return str(error), 2
    raise AssertionError(f"{overrides} was accepted")


@pytest.mark.parametrize(
    ("override", "line"),
    [
        (
            "train.epoch=3",
            "train.epoch: unknown key; train has only: batch_size, checkpoint_dir, "
            "checkpoint_every, epochs, eval_batch_size, lr_schedule, lr_step_epochs, "
            "lr_step_factor, objective, objective_seeds",
        ),
        ("method.lr=0.1", "method.lr: unknown key; method has only: name, optimizer"),
        (
            "model.hidden=[3]",
            "model.hidden: unknown key; model has only: _target_, activation, hidden_sizes, "
            "init, name",
        ),
        (
            "data.samples=10",
            "data.samples: unknown key; data has only: _target_, generation_seed, length, name, "
            "num_samples, split_seed, train_split, val_fraction",
        ),
        # `+key` adds a key that composition accepts; the schema check still names it.
        ("+train.epoch=3", "train.epoch: unknown key; train has only: batch_size, checkpoint"),
        ("+foo=1", "foo: unknown key; the top level has only: cpu_threads, data, deterministic"),
        (
            "train.epochs=abc",
            "train.epochs: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        ("train.epochs=1.5", "train.epochs: Value '1.5' of type 'float' could not be converted"),
        ("method=dtp method.target_stepsize=-1", "method.target_stepsize: must be > 0, got -1.0"),
        ("method=dtp method.schedule=often", "method.schedule: must be one of per_batch, altern"),
        ("method=altmin method.code_steps=-1", "method.code_steps: must be an integer >= 0, got"),
        ("method=hsic method.format_fraction=1", "method.format_fraction: must lie in (0, 1), g"),
        (
            "method=dni method.hidden_sizes=[8,0]",
            "method.hidden_sizes: every element must be an integer >= 1, got [8, 0]",
        ),
        ("method=dtp method.noise_std=x", "method.noise_std: Value 'x' of type 'str' could not"),
        ("train.checkpoint_every=-1", "train.checkpoint_every: must be an integer >= 0, got -1"),
        ("model.activation=softplus", "model.activation: must be one of relu, tanh, sigmoid, id"),
    ],
)
def test_a_wrong_key_type_or_value_is_one_line_naming_the_key(make_config, override, line):
    message, status = failure_line(make_config, *override.split())
    assert status == 2 and "\n" not in message
    assert message.startswith(line)


def test_an_unknown_key_in_a_config_file_names_the_file_and_the_valid_keys(tmp_path):
    """A preset that sets a key the method does not have fails at composition, one line."""
    from hydra import compose, initialize_config_dir

    conf = tmp_path / "conf"
    subprocess.run(["cp", "-r", str(REPO_ROOT / "conf"), str(conf)], check=True)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\nmethod:\n  lr: 1\n")
    with (
        initialize_config_dir(config_dir=str(conf), version_base="1.3"),
        pytest.raises(ConfigCompositionException) as info,
    ):
        compose(config_name="config", overrides=["experiment=typo"])
    message, status, _ = describe_failure(info.value)
    assert (message, status) == (
        "method.lr: unknown key (in conf/experiment/typo.yaml); method has only: name, optimizer",
        2,
    )


def test_method_defaults_come_from_the_constructor_only(make_config):
    dtp = make_config("method=dtp", "~tuned").method
    assert "noise_std" not in yaml.safe_load((REPO_ROOT / "conf/method/dtp.yaml").read_text())
    assert dtp.noise_std == 0.359830 and dtp.top_target_layer == "last_hidden"
    drl = make_config("method=drl", "~tuned").method
    assert drl.top_target_layer == "output" and drl.noise_std == dtp.noise_std
    # The schema is the signature: the same keys and defaults, nothing else.
    options = {s.name: s.default for s in option_specs(get_method_class("drl"), NOT_OPTIONS)}
    schema = method_schema("drl")
    defaults = {f.name: f.default for f in dataclasses.fields(schema) if f.name != "name"}
    assert defaults == {
        k: (MISSING if v is inspect.Parameter.empty else v) for k, v in options.items()
    }


def test_a_bound_is_enforced_when_the_library_is_used_directly():
    from methods import MethodConfigError, build_method
    from methods.losses import CrossEntropy
    from methods.networks import MLP

    adam = {"_target_": "torch.optim.Adam", "lr": 1e-3}
    with pytest.raises(MethodConfigError, match=r"^method.target_stepsize: must be > 0, got 0$"):
        build_method(
            "dtp",
            MLP(4, [5], 3),
            CrossEntropy(),
            {"forward_optimizer": adam, "feedback_optimizer": adam, "target_stepsize": 0},
        )
    cls = get_method_class("dtp")
    with pytest.raises(MethodConfigError, match=r"^method.schedule: must be one of"):
        cls(MLP(4, [5], 3), CrossEntropy(), adam, adam, schedule="often")


@pytest.mark.parametrize(
    ("value", "markers", "annotation", "problem"),
    [
        (0, [Bounds(ge=1)], int, "k: must be an integer >= 1, got 0"),
        (0.0, [Bounds(gt=0, le=1)], float, "k: must lie in (0, 1], got 0.0"),
        (1.0, [Bounds(gt=0, le=1)], float, None),
        ("x", [OneOf("a", "b")], str, "k: must be one of a, b, got 'x'"),
        (None, [Bounds(gt=0)], float | None, None),
        (True, [], int, "k: must be an integer, got True"),
        ([1, 2], [Bounds(ge=1)], list[int], None),
    ],
)
def test_check_value(value, markers, annotation, problem):
    assert check_value("k", value, annotation, markers) == problem


@pytest.mark.slow
def test_cfg_job_shows_the_checked_config_with_constructor_defaults(tmp_path, tracking_uri):
    def job(*overrides):
        result = subprocess.run(
            [sys.executable, "-m", "experiments.train", "--cfg", "job", *overrides],
            cwd=tmp_path,
            env=subprocess_env(tracking_uri),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return yaml.safe_load(result.stdout)

    dtp = job("method=dtp")
    assert dtp["method"]["noise_std"] == 0.35983  # the constructor's, absent from dtp.yaml
    assert dtp["train"]["checkpoint_every"] == 0 and dtp["resume"] is None
    drl = job("method=drl", "data=digits")
    assert drl["method"]["top_target_layer"] == "output"
    assert drl["method"]["target_stepsize"] == 0.327736
