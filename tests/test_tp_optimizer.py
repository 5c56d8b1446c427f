"""DTP/DRL's shared optimiser: when the inverses join the forward weights' optimiser, and that
the weights, inverses and Adam moments then equal those of two optimisers bit for bit."""

import pytest
import torch

from methods import build_method
from methods.losses import CrossEntropy
from methods.networks import MLP
from methods.target_propagation import DifferenceTargetPropagation

ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}
SGD = {"_target_": "torch.optim.SGD", "lr": 0.1}


def make(name, model, **options):
    options = {"forward_optimizer": ADAM, "feedback_optimizer": ADAM, **options}
    return build_method(name, model, CrossEntropy(), options)


@pytest.mark.parametrize(
    ("name", "feedback", "lrs"),
    [
        ("drl", ADAM, [[1e-3]]),  # the same config: one optimiser, one group
        ("dtp", {**ADAM, "lr": 3e-3}, [[1e-3, 3e-3]]),  # lr apart: one optimiser, two groups
        ("drl", SGD, [[1e-3], [0.1]]),  # another class: two optimisers
        ("dtp", {**ADAM, "betas": [0.8, 0.99]}, [[1e-3], [1e-3]]),  # another option: two
        ("ldrl", ADAM, [[1e-3], [1e-2]]),  # steps its feedback optimiser on its own: two
    ],
)
def test_inverses_share_the_optimiser_only_when_the_configs_differ_at_most_in_lr(
    name, feedback, lrs
):
    model = MLP(4, [6, 6], 3)
    options = {"feedback_optimizer": feedback}
    if name == "ldrl":
        options["feedback_optimizer"] = {**ADAM, "lr": 1e-2}
    method = make(name, model, **options)
    optimizers = method.optimizers()
    assert [[g["lr"] for g in opt.param_groups] for opt in optimizers] == lrs
    # Every weight and inverse in exactly one optimiser, the model's in the first group.
    held = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
    wanted = [id(p) for p in [*model.parameters(), *method.inverses.parameters()]]
    assert sorted(held) == sorted(wanted)
    assert optimizers[0].param_groups[0]["params"][: len(list(model.parameters()))] == list(
        model.parameters()
    )


def train(name, shared, monkeypatch, **options):
    """Five epochs of 6 batches from seed 0; the model, the inverses and every Adam state."""
    if not shared:
        monkeypatch.setattr(DifferenceTargetPropagation, "can_share_optimizer", False)
    torch.manual_seed(0)
    model = MLP(12, [16, 16], 3)
    method = make(name, model, **options)
    monkeypatch.undo()
    assert (len(method.optimizers()) == 1) == shared
    x, y = torch.randn(96, 12), torch.randint(0, 3, (96,))
    for epoch in range(1, 6):
        method.on_epoch_start(epoch)
        for b in range(0, 96, 16):
            method.step(x[b : b + 16], y[b : b + 16])
    params = [*model.parameters(), *method.inverses.parameters()]
    states = {}
    for opt in method.optimizers():
        states.update(opt.state)
    return params, [states.get(p, {}) for p in params]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("dtp", {}),
        ("drl", {"feedback_optimizer": {**ADAM, "lr": 3e-3}, "feedback_pretrain_epochs": 1}),
        ("drl", {"schedule": "alternating"}),  # the inverses' gradients must not outlive a batch
    ],
)
def test_one_shared_optimiser_updates_as_two_bit_for_bit(name, options, monkeypatch):
    shared_params, shared_states = train(name, True, monkeypatch, **options)
    params, states = train(name, False, monkeypatch, **options)
    for a, b in zip(shared_params, params, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(shared_states, states, strict=True):
        assert a.keys() == b.keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_feedback_step_alone_moves_the_inverses_only():
    torch.manual_seed(0)
    model = MLP(4, [6, 6], 3)
    method = make("drl", model)
    assert method.optimizers() == [method.optimizer]
    for param in model.parameters():
        param.grad = torch.ones_like(param)  # stale gradients a shared step must not apply
    forward = [p.detach().clone() for p in model.parameters()]
    inverses = [p.detach().clone() for p in method.inverses.parameters()]
    method.feedback_step(torch.randn(8, 4))
    assert all(torch.equal(a, b) for a, b in zip(forward, model.parameters(), strict=True))
    assert not any(
        torch.equal(a, b) for a, b in zip(inverses, method.inverses.parameters(), strict=True)
    )
