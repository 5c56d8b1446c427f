"""The benchmark's FLOP floor: exact matrix-product counts of one training step, by hand.

Tiny MLPs, batch 5. A linear layer ``in -> out`` costs ``2 * batch * in * out`` FLOPs (a
multiply-add is 2, torch's flop_registry convention) per product: one forward (``addmm``), one
weight gradient (``mm``) and one input gradient (``mm``), except the first layer's input
gradient, which nothing asks for (the input does not require grad).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.bench import flops, jobs
from experiments.bench.__main__ import run_case
from experiments.bench.cases import Case, Comparison
from experiments.bench.fingerprint import method_options
from methods import build_method
from methods.losses import CrossEntropy
from methods.networks import MLP

BATCH = 5


def product(n_in: int, n_out: int) -> int:
    """FLOPs of one ``(BATCH, n_in) @ (n_in, n_out)`` product."""
    return 2 * BATCH * n_in * n_out


def mlp_method(name: str, hidden: list[int]):
    torch.manual_seed(0)
    model = MLP(3, hidden, 2)
    method = build_method(name, model, CrossEntropy(), method_options(name))
    x = torch.randn(BATCH, 3, generator=torch.Generator().manual_seed(1))
    return method, x, torch.tensor([0, 1, 1, 0, 1])


def test_backprop_step_by_hand():
    """3-4-2: forward 2*5*(3*4 + 4*2) = 200; backward 80 + 80 (layer 2) + 120 (layer 1's W)."""
    method, x, y = mlp_method("backprop", [4])
    with flops.CountFlops() as counter:
        method.step(x, y)
    forward = product(3, 4) + product(4, 2)
    backward = 2 * product(4, 2) + product(3, 4)  # no input gradient for the first layer
    assert (forward, backward) == (200, 280)
    assert counter.by_op == {"aten.addmm": forward, "aten.mm": backward}
    assert flops.step_flops(method, x, y) == 480


def test_fa_costs_exactly_backprops_products():
    """FA multiplies the error by B_l, of W_l's shape, where backprop multiplies by W_l."""
    for hidden in ([4], [4, 4]):
        counts = [flops.step_flops(*mlp_method(name, hidden)) for name in ("backprop", "fa")]
        assert counts[0] == counts[1]
    assert counts[0] == 3 * (product(4, 4) + product(4, 2)) + 2 * product(3, 4) == 960


def test_dfa_projects_the_output_error_to_each_hidden_layer():
    """3-4-4-2: the same forward (360) and weight gradients (360) as backprop; instead of the
    input gradients of layers 3 and 2 (80 + 160), one (5, 2) @ (2, 4) projection of the output
    error per hidden layer (2 x 80)."""
    forward = weights = product(3, 4) + product(4, 4) + product(4, 2)
    assert flops.step_flops(*mlp_method("dfa", [4, 4])) == forward + weights + 2 * product(2, 4)
    assert forward + weights + 2 * product(2, 4) == 880


def tiny_cnn(name: str):
    data = jobs.random_dataset("fashion_mnist", (1, 12, 12), 20, 4)
    cfg = jobs.compose_config(
        [
            f"method={name}",
            "data=fashion_mnist",
            "model=cnn",
            "model.channels=[2,3]",
            "model.hidden_sizes=[5]",
        ]  # fmt: skip
    )
    return jobs.build_from_config(cfg, data), data.x_train[:10], data.y_train[:10]


@pytest.mark.parametrize("name", ["backprop", "dfa", "drl"])
def test_same_count_as_torchs_flop_counter_where_it_works(name):
    """Same registry, same sum: our count equals torch's FlopCounterMode's on a tiny CNN."""
    method, x, y = tiny_cnn(name)
    ours = flops.step_flops(method, x, y)
    with FlopCounterMode(display=False) as theirs:
        method.step(x, y)
    assert ours == theirs.get_total_flops() > 0


class NoModuleTracker:
    """Stands in for FlopCounterMode's module tracker: everything counts as ``Global``."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def test_counts_a_step_that_calls_autograd_grad():
    """DTP on the CNN calls torch.autograd.grad, which torch's FlopCounterMode breaks (its module
    tracker's backward hooks); ours counts it, as torch's counter does without the tracker."""
    method, x, y = tiny_cnn("dtp")
    ours = flops.step_flops(method, x, y)
    with pytest.raises(RuntimeError, match="leaf node"), FlopCounterMode(display=False):
        method.step(x, y)
    method, x, y = tiny_cnn("dtp")  # afresh: the failed step left its state half-updated
    method.step(x, y)
    reference = FlopCounterMode(display=False)
    reference.mod_tracker = NoModuleTracker()
    with reference:
        method.step(x, y)
    assert ours == reference.get_total_flops()
    backprop = flops.step_flops(*tiny_cnn("backprop"))
    assert ours > 2 * backprop  # the inverses' products on top of the forward and backward


def test_floor_is_the_ratio_of_counts_and_is_not_timed():
    """run_case counts each job once, before the rounds, and divides by the reference's."""
    calls = []

    def job(name):
        return lambda: calls.append(name)

    def counter(name, value):
        return lambda: calls.append(f"count {name}") or value

    case = Case(
        "methods",
        "fake",
        2,
        lambda: Comparison(
            jobs={"ref": job("ref"), "m": job("m"), "numpy": job("numpy")},
            reference="ref",
            step_flops={"ref": counter("ref", 400), "m": counter("m", 900)},
        ),
    )
    clock = iter(range(1000)).__next__  # every call takes 1 "second"
    rows = {row.job: row for row in run_case(case, 2, clock)}
    assert rows["m"].flop_ratio == 900 / 400
    assert rows["numpy"].flop_ratio is None
    assert calls[:2] == ["count ref", "count m"]
    assert calls.count("count ref") == 1
