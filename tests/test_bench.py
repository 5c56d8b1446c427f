"""The benchmark command: interleaving and ratio logic (fake clock), and a --quick run."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from experiments.bench import __main__ as bench
from experiments.bench import jobs, official, timing
from experiments.bench.cases import Case, Comparison


@pytest.fixture(autouse=True)
def no_official_root(monkeypatch):
    """These runs never time the official code, whatever the environment says."""
    monkeypatch.delenv(official.ENV_ROOT, raising=False)


class FakeClock:
    """A clock that only moves when a job says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def job(self, name: str, cost: float, first_penalty: float = 0.0):
        """A job costing ``cost`` seconds, plus ``first_penalty`` when it runs first in a round."""

        def run() -> None:
            self.calls.append(name)
            first = len(self.calls) % 3 == 1  # three jobs per round in these tests
            self.now += cost + (first_penalty if first else 0.0)

        return run


def test_round_orders_reverse_every_other_round():
    assert timing.round_orders(["a", "b", "c"], 3) == [
        ["a", "b", "c"],
        ["c", "b", "a"],
        ["a", "b", "c"],
    ]
    with pytest.raises(ValueError, match="rounds"):
        timing.round_orders(["a"], 0)


def test_known_costs_give_known_ratios_and_interleaved_calls():
    clock = FakeClock()
    jobs_ = {"ref": clock.job("ref", 1.0), "x2": clock.job("x2", 2.0), "x3": clock.job("x3", 3.0)}
    times = timing.interleaved_times(jobs_, rounds=4, clock=clock, warmup=1)
    # one untimed warm-up round, then the order reversed each round
    assert clock.calls == ["ref", "x2", "x3"] * 2 + ["x3", "x2", "ref", "ref", "x2", "x3"] + [
        "x3",
        "x2",
        "ref",
    ]
    ratios = timing.per_round_ratios(times, "ref")
    assert set(ratios) == {"x2", "x3"}
    np.testing.assert_allclose(ratios["x2"], 2.0)
    np.testing.assert_allclose(ratios["x3"], 3.0)


def test_reversal_cancels_a_first_in_round_penalty():
    """Whichever job goes first pays 1 s more (cold cache); the median ratio stays exact."""
    clock = FakeClock()
    jobs_ = {"ref": clock.job("ref", 2.0, 1.0), "mid": clock.job("mid", 1.0, 1.0)}
    jobs_["x"] = clock.job("x", 2.0, 1.0)
    times = timing.interleaved_times(jobs_, rounds=4, clock=clock, warmup=0)
    ratios = timing.per_round_ratios(times, "ref")
    # rounds with ref first: 2/3; with x first: 3/2; the true ratio is 1
    np.testing.assert_allclose(ratios["x"], [2 / 3, 3 / 2, 2 / 3, 3 / 2])
    assert timing.summarize(np.array([2 / 3, 3 / 2, 2 / 3, 3 / 2])).median == pytest.approx(
        (2 / 3 + 3 / 2) / 2
    )


def test_summarize_median_and_quartiles():
    summary = timing.summarize(np.array([5.0, 1.0, 4.0, 2.0, 3.0]))
    assert (summary.median, summary.q1, summary.q3, summary.rounds) == (3.0, 2.0, 4.0, 5)


def test_reference_without_measurable_time_is_refused():
    with pytest.raises(ValueError, match="no measurable time"):
        timing.per_round_ratios({"ref": np.array([0.0, 1.0]), "x": np.ones(2)}, "ref")
    with pytest.raises(ValueError, match="not timed"):
        timing.per_round_ratios({"x": np.ones(2)}, "ref")


def test_flops_rows_are_flop_rate_ratios():
    """gemm: 2 FLOPs in 1 s; step: 4 FLOPs in 4 s -> step runs at half the GEMM rate."""
    clock = FakeClock()
    case = Case(
        "flops",
        "fake",
        3,
        lambda: Comparison(
            jobs={"gemm": clock.job("gemm", 1.0), "step": clock.job("step", 4.0)},
            reference="gemm",
            flops={"gemm": 2.0, "step": 4.0},
        ),
    )
    (row,) = bench.run_case(case, 3, clock)
    assert (row.job, row.measure, row.median, row.reference_seconds) == ("step", "flops", 0.5, 1.0)


def test_mlp_step_flops_by_hand():
    # layers 2->3 and 3->1: 6 + 3 multiply-adds per example, x 6 (fwd + 2 bwd, 2 FLOPs each)
    assert jobs.mlp_step_flops([2, 3, 1], batch=5) == 6 * 5 * 9


def test_bare_loop_does_exactly_the_harness_updates():
    """Same batches, loss and optimiser: one epoch of each leaves bit-identical weights."""
    data = jobs.random_dataset("mnist1d", (40,), 250, 30)
    cfg = jobs.compose_config(["method=backprop", "model.hidden_sizes=[16,8]"])
    method = jobs.build_from_config(cfg, data)
    model = jobs.bare_twin(method, cfg, data)
    harness = jobs.harness_epoch(method, data, 100, 1000, seed=3)
    bare = jobs.bare_epoch(model, jobs.bare_optimizer(model, cfg), data, 100, 1000, seed=3)
    for _ in range(2):
        harness()
        bare()
    for ours, theirs in zip(method.model.parameters(), model.parameters(), strict=True):
        assert torch.equal(ours, theirs)


def test_quick_run_writes_the_table(tmp_path, capsys):
    rows = bench.main(["--quick", "--out", str(tmp_path)])
    groups = {row.group for row in rows}
    assert groups == {"harness", "methods", "flops", "official"}
    with (tmp_path / "bench.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    assert tuple(table[0]) == bench.report.COLUMNS
    for line in table:
        for key in ("median", "q1", "q3", "reference_seconds"):
            value = float(line[key])
            assert math.isfinite(value) and value > 0, (line["job"], key, value)
        assert float(line["q1"]) <= float(line["median"]) <= float(line["q3"])
        assert int(line["rounds"]) == 3
    jobs_by_group = {}
    for line in table:
        jobs_by_group.setdefault(line["group"], set()).add(line["job"])
    assert jobs_by_group["harness"] == {"harness (fit, backprop)"}
    assert {"dtp", "drl", "hsic", "altmin", "dni", "cdni", "fa", "dfa", "numpy_backprop"} <= (
        jobs_by_group["methods"]
    )
    assert {"tbptt", "dni_rnn"} <= jobs_by_group["methods"]
    for line in table:  # the FLOP floor: methods against our backprop (or bptt), not NumPy's
        counted = line["group"] in ("methods", "official") and line["job"] != "numpy_backprop"
        assert (line["flop_ratio"] != "") == counted, (line["job"], line["flop_ratio"])
        if line["job"] == "fa":  # B_l has W_l's shape: exactly backprop's products
            assert float(line["flop_ratio"]) == 1.0
        if line["job"] == "dtp":  # the inverses' products on top of backprop's
            assert float(line["flop_ratio"]) > 1.0
    cnn_jobs = {line["job"] for line in table if " cnn " in line["case"]}
    assert cnn_jobs == set(bench.cases.CNN_METHODS) - {"backprop"}
    markdown = (tmp_path / "bench.md").read_text()
    for field in ("date", "cpu", "cores", "torch", "threads", "clock"):
        assert f"- {field}: " in markdown
    assert markdown.count("\n| ") == len(rows) + 1  # the header row, then one row per job
    assert "| epoch time / backprop's |" in (tmp_path / "summary.md").read_text()
    assert "(floor 1.00)" in (tmp_path / "summary.md").read_text()  # fa's cells
    assert "| FLOP floor |" in markdown


def test_unknown_group_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--only", "a,zz"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --only: unknown group 'zz'; groups: a=harness, b=methods, c=flops, d=official, "
        "e=official-code"
    )


def test_only_selects_groups_by_letter_or_name():
    assert bench.parse_groups("a, flops") == ["harness", "flops"]
    assert bench.parse_groups(None) == ["harness", "methods", "flops", "official", "official-code"]
    assert bench.parse_groups("e") == ["official-code"]


def test_methods_keeps_only_their_rows_against_the_reference(tmp_path):
    rows = bench.main(["--quick", "--only", "d", "--methods", "dtp,cdni", "--out", str(tmp_path)])
    assert [(row.case.split(":")[0], row.job, row.reference) for row in rows] == [
        ("dtp", "dtp", "backprop"),
        ("dni", "cdni (linear)", "backprop"),
    ]


def test_methods_option_needs_a_method(capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--methods", " , "])
    assert stop.value.code == 2
    assert "--methods: give at least one method" in capsys.readouterr().err


def test_summary_puts_each_median_in_its_method_and_network_cell():
    def row(group, case, job, reference, median, measure="time", floor=None):
        return bench.report.Row(group, case, job, reference, measure, median, 0, 0, 5, 1.0, floor)

    rows = [
        row("harness", "mnist1d 40-256-10 b100 (4000 ex)", "harness (fit, backprop)", "bare", 1.01),
        row("flops", "fashion_mnist wide", "training step", "matmul", 0.975, "flops"),
        row("methods", "mnist1d 40-256-10 b100 (4000 ex)", "dtp", "backprop", 2.345),
        row("methods", "fashion_mnist cnn b100 (1000 ex)", "dtp", "backprop", 2.75),
        row("methods", "fashion_mnist cnn b100 (1000 ex)", "ldrl", "backprop", 9.9, floor=13.514),
        row(
            "official", "dtp: fashion_mnist 784-256-10, tanh b128 (3840 ex)", "dtp", "backprop", 2.3
        ),
        row(
            "official-code",
            "dtp: fashion_mnist 784-256-10, tanh b128 (3840 ex), train only",
            "dtp",
            "official dtp",
            0.6,
        ),
    ]
    text = bench.report.summary_markdown(rows, {"date": "2026-11-30", "cores": "2"})
    assert text.startswith("Measured date 2026-11-30, cores 2.")
    assert "- harness / bare torch loop: 1.01 (mnist1d 40-256-10 b100)" in text
    assert "- wide net's training step: 98% of the measured GEMM FLOP/s" in text
    assert "| epoch time / backprop's | MLP, mnist1d | CNN, fashion_mnist |" in text
    assert "| dtp | 2.35 | 2.75 |" in text
    assert "| ldrl |  | 9.90 (floor 13.51) |" in text
    assert bench.report.FLOOR_NOTE in text
    assert "| dtp: fashion_mnist 784-256-10, tanh b128 | 2.30 | 0.60 |" in text
