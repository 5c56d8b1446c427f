"""The gradient studies of make reproduce: vanishing gradients over depth, recurrent horizon."""

import pandas as pd
import pytest

from analysis.report import build_report
from analysis.studies import depth_profile, depth_ratios, horizon_table
from experiments.train import run


def test_deep_sigmoid_gradients_vanish_and_relu_stays_flatter(make_config, tmp_path):
    """Glorot & Bengio 2010 (Sec. 4.2): sigmoid units shrink the gradient layer by layer.

    sigma' <= 1/4, so eight sigmoid layers scale the first layer's gradient by orders of
    magnitude less than the output layer's; ReLU (derivative 1 where active) keeps it flatter.
    """
    cfg = None
    for activation in ("sigmoid", "relu"):
        for hidden in ("[32,32]", "[32,32,32,32,32,32,32,32]"):
            cfg = make_config(
                "data=digits",
                "train.epochs=1",
                "diagnostics.every_steps=5",
                f"model.hidden_sizes={hidden}",
                f"model.activation={activation}",
            )
            run(cfg)
    written = build_report(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name, tmp_path)
    assert {"depth.png", "depth_trained.png", "depth_ratios.md"} <= {p.name for p in written}
    ratios = pd.read_csv(tmp_path / "depth_ratios.csv").set_index(["activation", "depth"])
    ratio = ratios["first_over_last"]
    assert ratio["sigmoid", 8] < 1e-4  # orders of magnitude below the output layer
    assert ratio["sigmoid", 8] < 1e-3 * ratio["sigmoid", 2]  # and it is the depth that does it
    assert ratio["relu", 8] > 100 * ratio["sigmoid", 8]  # relu much flatter
    table = (tmp_path / "depth_ratios.md").read_text()
    assert "| activation   |   depth |" in table and "| sigmoid      |       8 |" in table


def profile_rows():
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "method": "backprop",
            "param.model.hidden_sizes": ["[4]", "[4, 4]"],
            "param.model.activation": "tanh",
        }
    )
    metrics = {"a": [0.5, 2.0], "b": [0.01, float("nan"), 4.0]}
    rows = [
        {
            "run_id": run,
            "method": "backprop",
            "metric": f"grad_norm/layers.{i}.weight",
            "epoch": 5,
            "value": v,
        }
        for run, values in metrics.items()
        for i, v in enumerate(values)
    ]
    return pd.DataFrame(rows), runs


def test_depth_ratio_is_first_over_output_layer_and_nan_without_a_finite_output():
    histories, runs = profile_rows()
    profile = depth_profile(histories, runs)
    assert len(profile) == 2 * 4  # 4 finite norms (the NaN is dropped) at the first and last probe
    ratios = depth_ratios(profile).set_index("depth")["first_over_last"]
    assert ratios[1] == pytest.approx(0.25) and ratios[2] == pytest.approx(0.0025)
    histories.loc[histories.value == 4.0, "value"] = float("inf")
    ratios = depth_ratios(depth_profile(histories, runs)).set_index("depth")["first_over_last"]
    assert pd.isna(ratios[2])  # never the ratio to a hidden layer


def test_horizon_is_the_longest_length_every_run_solved():
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d", "e"],
            "method": ["bptt", "bptt", "bptt", "bptt", "tbptt"],
            "param.model.cell": "gru",
            "param.data.length": ["10", "20", "20", "50", "10"],
        }
    )
    best = {"a": 1.0, "b": 0.995, "c": 0.98, "d": 0.991, "e": 0.7}
    histories = pd.DataFrame(
        [
            {"run_id": run, "metric": "test_accuracy", "epoch": epoch, "value": value * epoch / 2}
            for run, value in best.items()
            for epoch in (1, 2)
        ]
    )
    table = horizon_table(runs, histories).set_index("method")
    # T=20 is not solved (one of its two runs stayed at 98%), T=50 is: the longest is 50
    assert table.loc["bptt", "solved"] == [10, 50]
    assert table.loc["bptt", "longest_solved"] == 50
    assert table.loc["tbptt", "longest_solved"] == 0
