"""``python -m experiments.bench.fingerprint``: stable hashes, one-ulp sensitivity, --against."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments.bench import fingerprint as fp

# One configuration per kind of state: Adam moments only, inverses, feedback weights on a
# CNN, a synthetic-gradient module on a GRU, HSIC's two phases.
SAMPLE = (
    "backprop mlp tanh mse float64",
    "dtp mlp relu ce float32",
    "fa cnn elu/max ce float32 feedback=symmetric",
    "dni_rnn rnn gru ce float32",
    "hsic mlp sigmoid ce float32",
)


def configs(names):
    by_name = {c.name: c for c in fp.grid()}
    return [by_name[name] for name in names]


def test_two_runs_of_the_same_code_give_the_same_hashes(capsys):
    first = fp.run(configs(SAMPLE))
    second = fp.run(configs(SAMPLE))
    assert first == second
    assert list(first) == list(SAMPLE)
    for value in first.values():
        assert len(value) == 64 and int(value, 16) >= 0, value
    assert len(set(first.values())) == len(SAMPLE)
    assert capsys.readouterr().out.count("\n") == 2 * len(SAMPLE)


def nudge(tensor: torch.Tensor) -> None:
    """Move the first element of ``tensor`` to the next representable value (one ulp)."""
    with torch.no_grad():
        flat = tensor.view(-1)
        flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf"), dtype=flat.dtype))


def test_one_ulp_in_a_weight_or_in_the_optimiser_state_changes_the_hash():
    (config,) = configs(["backprop mlp tanh ce float32"])
    trained = fp.train(config)
    before = fp.digest(trained)
    assert fp.digest(trained) == before == fp.fingerprint(config)
    weight = trained.method.model.layers[0].weight
    nudge(weight)
    after_weight = fp.digest(trained)
    assert after_weight != before
    moment = trained.method.optimizer.state[weight]["exp_avg"]
    nudge(moment)
    assert fp.digest(trained) not in (before, after_weight)


def test_one_metric_bit_changes_the_hash():
    (config,) = configs(["fa mlp relu ce float32"])
    trained = fp.train(config)
    before = fp.digest(trained)
    loss = trained.history[-1]["train_loss"]
    trained.history[-1]["train_loss"] = math.nextafter(loss, math.inf)
    assert fp.digest(trained) != before


def test_a_refused_configuration_is_skipped_with_its_reason():
    (config,) = configs(["bptt mlp relu ce float32"])
    assert fp.fingerprint(config) == "skipped: method=bptt needs model=rnn"


def test_a_constructor_bug_is_an_error_not_a_skip(monkeypatch):
    """Only the method's own refusal (MethodConfigError) is a skip; any other exception while
    building is recorded as an error, so that a run with --out alone reports it."""
    (config,) = configs(["fa mlp relu ce float32"])

    def broken(config, data):
        raise TypeError("unexpected keyword argument 'feedback_sead'")

    monkeypatch.setattr(fp, "build", broken)
    assert fp.fingerprint(config) == (
        "error: TypeError: unexpected keyword argument 'feedback_sead'"
    )


def test_grid_covers_every_method_and_names_unknown_ones():
    names = {c.name for c in fp.grid()}
    assert len(names) == len(fp.grid())  # unique keys
    assert {c.method for c in fp.grid()} == set(fp.available_methods())
    assert "altmin mlp identity mse float64 top_code_loss=scaled_mismatch" in names
    with pytest.raises(ValueError, match="unknown nope"):
        fp.grid(["dtp", "nope"])


def test_against_exits_1_listing_the_configurations_that_differ(tmp_path, capsys):
    saved = tmp_path / "before.json"
    values = fp.main(["--methods", "tbptt", "--out", str(saved)])
    assert json.loads(saved.read_text()) == values
    assert fp.main(["--methods", "tbptt", "--against", str(saved)]) == values
    assert "0 differ, 0 gone, 0 new" in capsys.readouterr().out

    changed = dict(values)
    name = "tbptt rnn gru ce float64"
    changed[name] = "0" * 64
    changed.pop("tbptt rnn lstm ce float32")  # missing from the file: new, accepted
    changed["dtp mlp relu ce float32"] = "0" * 64  # not run now: neither gone nor compared
    saved.write_text(json.dumps(changed))
    with pytest.raises(SystemExit) as stop:
        fp.main(["--methods", "tbptt", "--against", str(saved)])
    assert stop.value.code == 1
    out = capsys.readouterr().out
    assert f"DIFFERS: {name}: {'0' * 64} -> {values[name]}" in out
    assert "new (not in" in out and "1 differ, 0 gone, 1 new" in out

    changed = dict(values)
    changed["tbptt rnn elman ce float32"] = "0" * 64  # a configuration no longer produced
    saved.write_text(json.dumps(changed))
    with pytest.raises(SystemExit) as stop:
        fp.main(["--methods", "tbptt", "--against", str(saved)])
    assert stop.value.code == 1
    assert "GONE (in" in capsys.readouterr().out


def test_bad_options_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        fp.main(["--methods", "dtp,nope"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: --methods: unknown nope; known: altmin")
    with pytest.raises(SystemExit) as stop:
        fp.main(["--methods", "dtp", "--against", str(tmp_path / "missing.json")])
    assert stop.value.code == 2
    assert "error: --against: cannot read" in capsys.readouterr().err
