"""The one cosine and the one angle: known values by hand, NaN wherever they are undefined."""

import ast
import math
from pathlib import Path

import pytest
import torch

from experiments.diagnostics import UpdateDiagnostics
from methods import Method
from methods.geometry import angle_degrees, cosine
from methods.losses import CrossEntropy
from methods.networks import MLP

NAN, INF = float("nan"), float("inf")
X = torch.tensor([1.0, 0.0], dtype=torch.float64)


@pytest.mark.parametrize(
    ("b", "degrees"),
    [
        ([2.0, 0.0], 0.0),  # same direction, other length
        ([0.0, 3.0], 90.0),
        ([-0.5, 0.0], 180.0),
        ([0.5, math.sqrt(3) / 2], 60.0),  # cos 60 = 1/2
        ([1.0, 1.0], 45.0),
        ([-1.0, math.sqrt(3)], 120.0),
    ],
)
def test_known_angles(b, degrees):
    b = torch.tensor(b, dtype=torch.float64)
    assert angle_degrees(X, b) == pytest.approx(degrees, abs=1e-9)
    assert cosine(X, b) == pytest.approx(math.cos(math.radians(degrees)), abs=1e-12)


def test_shapes_are_flattened_and_parallel_vectors_stay_in_range():
    torch.manual_seed(0)
    a = torch.randn(7, 3)
    assert angle_degrees(a, a.clone()) == 0.0
    assert angle_degrees(a, a.flatten()) == 0.0  # any shapes with as many elements
    for _ in range(100):  # rounding never pushes the cosine past 1 (acos would fail)
        v = torch.randn(50, dtype=torch.float64)
        assert -1.0 <= cosine(v, 3.7 * v) <= 1.0
    assert angle_degrees(a, -a) == pytest.approx(180.0)
    with pytest.raises(ValueError, match="different sizes"):
        angle_degrees(torch.ones(3), torch.ones(4))


@pytest.mark.parametrize(
    "bad",
    [
        [NAN, 1.0],
        [INF, 1.0],
        [-INF, 0.0],
        [0.0, 0.0],  # a zero vector has no direction
    ],
    ids=["nan", "inf", "minus-inf", "zero"],
)
def test_undefined_geometry_is_nan(bad):
    bad = torch.tensor(bad)
    for a, b in ((bad, X), (X, bad), (bad, bad)):
        assert math.isnan(angle_degrees(a, b))
        assert math.isnan(cosine(a, b))


def test_huge_and_tiny_finite_vectors_keep_their_angle():
    big = torch.tensor([1e300, 1e300], dtype=torch.float64)  # squares overflow float64
    assert angle_degrees(big, X) == pytest.approx(45.0)
    tiny = torch.tensor([1e-30, 0.0])  # squares underflow float32
    assert angle_degrees(tiny, X) == 0.0
    assert math.isnan(angle_degrees(torch.empty(0), torch.empty(0)))


def test_every_caller_uses_the_same_functions():
    import experiments.diagnostics
    import methods.dni
    import methods.dni_rnn

    assert experiments.diagnostics.angle_degrees is angle_degrees
    assert methods.dni.cosine is cosine and methods.dni_rnn.cosine is cosine


ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = ROOT / "methods" / "geometry.py"
# Ways to compute an angle or a cosine between vectors other than methods.geometry's.
OTHER_GEOMETRY = {"acos", "arccos", "atan2", "cosine_similarity", "CosineSimilarity"}


def test_no_other_copy_of_the_angle_or_the_cosine_exists():
    """methods/geometry.py is the one place that defines or computes an angle or a cosine."""
    found = []
    for folder in ("methods", "experiments", "analysis", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == GEOMETRY:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
                defines = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not (
                    node.name.startswith("test_")
                )
                if defines and ("angle" in node.name.lower() or "cosine" in node.name.lower()):
                    found.append(f"{where} defines {node.name}")
                name = (
                    node.attr
                    if isinstance(node, ast.Attribute)
                    else node.id
                    if isinstance(node, ast.Name)
                    else None
                )
                if name in OTHER_GEOMETRY:
                    found.append(f"{where} uses {name}")
    assert not found, found


class _Broken(Method):
    """Writes a NaN update into the first layer's weights and a zero one into its bias."""

    def compute_update(self, x, y):
        self.zero_grad()
        output = self.model(x)
        self.loss(output, y).backward()
        first = self.model.layers[0]
        first.weight.grad.fill_(NAN)
        first.bias.grad.zero_()
        return self.loss.metrics(output.detach(), y)


def test_diagnostics_of_a_nan_update_are_nan_not_aligned():
    torch.manual_seed(0)
    model = MLP(6, [8], 3, activation="tanh")
    method = _Broken(model, CrossEntropy())
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    metrics = UpdateDiagnostics(x, y, every_steps=1)(method)
    assert math.isnan(metrics["alignment/layers.0.weight"])  # was 0: NaN clamped to cos 1
    assert math.isnan(metrics["update_norm/layers.0.weight"])
    assert math.isnan(metrics["alignment/layers.0.bias"])  # was 90 for a zero update
    assert metrics["update_norm/layers.0.bias"] == 0.0
    assert metrics["alignment/layers.1.weight"] == pytest.approx(0.0, abs=1e-5)
    assert math.isfinite(metrics["grad_norm/layers.0.weight"])


def test_nan_metrics_survive_the_sqlite_store(tracking_uri):
    """MLflow keeps NaN; it stores +-Inf as +-float max, which analysis.runs turns back."""
    import time

    from mlflow.entities import Metric

    from analysis.runs import load_histories, load_runs
    from experiments.tracking import ROLE_TAG, get_or_create_experiment, make_client

    client = make_client(tracking_uri)
    experiment = get_or_create_experiment(client, "geometry_nan_store")
    run = client.create_run(experiment, tags={ROLE_TAG: "job", "method": "x", "seed": "0"})
    now = int(time.time() * 1000)
    logged = [
        Metric("angle", NAN, now, 1),
        Metric("norm", INF, now, 1),
        Metric("low", -INF, now, 1),
    ]
    client.log_batch(run.info.run_id, metrics=logged)
    client.set_terminated(run.info.run_id)
    [row] = load_runs(tracking_uri, "geometry_nan_store").to_dict("records")
    assert math.isnan(row["angle"]) and row["norm"] == INF and row["low"] == -INF
    history = load_histories(tracking_uri, load_runs(tracking_uri, "geometry_nan_store"), ["norm"])
    assert history["value"].tolist() == [INF]
