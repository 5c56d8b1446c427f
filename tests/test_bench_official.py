"""Group ``official-code`` of the benchmark: skipped without checkouts, built from a fake one.

No real official code and no network: a tiny fake "official" module in ``tmp_path`` stands in
for a checkout.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch

from experiments.bench import __main__ as bench
from experiments.bench import cases, jobs, official

STAND_INS = ("torchvision", "torchvision.datasets", "torchvision.transforms", "tensorboardX")

FAKE_MODULE = '''
import torch

calls = []


def train(batches):
    """One 'official' epoch: records the batch sizes it got and does a little work."""
    calls.append([len(x) for x, _ in batches])
    for x, _ in batches:
        flat = x.flatten(1)
        torch.mm(flat, flat.T)
'''


@pytest.fixture
def fake_checkout(tmp_path, monkeypatch):
    """A root with one checkout, ``fake-official/fakeofficial.py``, registered as ``fake``."""
    folder = tmp_path / "fake-official"
    folder.mkdir()
    (folder / "fakeofficial.py").write_text(FAKE_MODULE)
    spec = official.Checkout("fake-official", "nobody/fake", "0" * 40)
    monkeypatch.setitem(official.CHECKOUTS, "fake", spec)
    before = set(sys.modules)
    yield tmp_path
    # the fake module and any stand-in (never a real install) must not leak into other tests
    for name in [*STAND_INS, "fakeofficial"]:
        if name not in before:
            sys.modules.pop(name, None)


def test_group_is_skipped_with_one_line_without_a_root(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(official.ENV_ROOT, raising=False)
    rows = bench.main(["--quick", "--only", "e", "--out", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert rows == []
    assert out[0] == bench.SKIP_OFFICIAL
    assert "--official-root" in out[0] and official.ENV_ROOT in out[0]
    assert not any(case.group == "official-code" for case in cases.all_cases(quick=True))


def test_missing_checkouts_are_named_with_repository_and_commit(tmp_path, capsys):
    rows = bench.main(["--quick", "--only", "e", "--official-root", str(tmp_path), "--out",
                       str(tmp_path / "out")])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert rows == []
    skipped = [line for line in lines if line.startswith("official-code: skipped: ")]
    assert len(skipped) == len(official.CHECKOUTS) == 4
    for line, spec in zip(skipped, official.CHECKOUTS.values(), strict=True):
        assert spec.repo in line and spec.commit in line and spec.folder in line
    with pytest.raises(official.OfficialCodeMissing, match="choasma/HSIC-bottleneck"):
        official.hsic_model(tmp_path, 8, 1)
    assert cases.official_code_cases(tmp_path, tiny=True) == []


def test_a_fake_official_module_is_built_and_timed_against_ours(fake_checkout):
    cwd, path = os.getcwd(), list(sys.path)
    (module,) = official.import_from(fake_checkout, "fake", "fakeofficial")
    assert (os.getcwd(), sys.path) == (cwd, path)  # imported inside, nothing left behind
    shapes = cases.Shapes("fashion_mnist", (28, 28), 50, 5, (8,), 20)
    label = official.CHECKOUTS["fake"].label
    assert label == "official nobody/fake@0000000"

    def theirs(data):
        batches = official.batch_lists(data, shapes.batch)
        return lambda: module.train(batches())

    case = cases.ours_against_theirs_case(shapes, "backprop", (), theirs, label, rounds=3)
    assert (case.group, case.methods) == ("official-code", ("backprop",))
    (row,) = bench.run_case(case, 3, time.process_time)
    assert (row.job, row.reference, row.rounds) == ("backprop", label, 3)
    assert 0 < row.q1 <= row.median <= row.q3 < float("inf")
    # one warm-up and three timed epochs, each over the same batch sizes as ours (50 = 20+20+10)
    assert module.calls == [[20, 20, 10]] * 4


def test_theirs_sees_the_same_batches_as_ours():
    data = jobs.random_dataset("fashion_mnist", (28, 28), 45, 5)
    epoch = official.batch_lists(data, 20, seed=4)
    generator = torch.Generator().manual_seed(4)
    from experiments.data import minibatches

    for _ in range(2):  # the permutation continues from call to call, as in train_epoch
        expected = list(minibatches(data.x_train, data.y_train, 20, generator))
        got = epoch()
        assert [len(x) for x, _ in got] == [20, 20, 5]
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            assert torch.equal(x, ex) and torch.equal(y, ey)


@pytest.mark.parametrize("method", ["backprop", "dtp"])
def test_train_epoch_does_exactly_the_harness_epochs_updates(method):
    """Same calls as fit's batch loop: two epochs of each leave bit-identical weights."""
    data = jobs.random_dataset("mnist1d", (40,), 250, 30)
    cfg = jobs.compose_config([f"method={method}", "model.hidden_sizes=[16,8]"])
    harness_method = jobs.build_from_config(cfg, data)
    train_method = jobs.build_from_config(cfg, data)
    harness = jobs.harness_epoch(harness_method, data, 100, 1000, seed=3)
    train = jobs.train_epoch(train_method, data, 100, seed=3)
    for run in (harness, train):  # dtp's noise comes from the global generator
        torch.manual_seed(11)
        for _ in range(2):
            run()
    pairs = zip(harness_method.model.parameters(), train_method.model.parameters(), strict=True)
    changed = False
    for ours, theirs in pairs:
        assert torch.equal(ours, theirs)
    first = jobs.build_from_config(cfg, data).model.parameters()
    for start, after in zip(first, train_method.model.parameters(), strict=True):
        changed |= not torch.equal(start, after)
    assert changed  # the epochs trained something


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "hsic,zz"], "error: --only: unknown pair 'zz'; pairs: hsic, altmin100,"),
        (["--epochs", "0"], "error: --epochs: must be at least 1"),
    ],
)
def test_accuracy_script_bad_options_are_one_line(tmp_path, capsys, argv, message):
    from experiments.bench import official_accuracy

    with pytest.raises(SystemExit) as stop:
        official_accuracy.main(["--official-root", str(tmp_path), *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_accuracy_script_needs_a_root(capsys, monkeypatch):
    from experiments.bench import official_accuracy

    monkeypatch.delenv(official.ENV_ROOT, raising=False)
    with pytest.raises(SystemExit):
        official_accuracy.main([])
    assert "--official-root (or $BENCH_OFFICIAL_ROOT) is needed" in capsys.readouterr().err
