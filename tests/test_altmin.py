"""Online alternating minimisation: descent direction, locality, learning, logging."""

import mlflow
import pytest
import torch

from experiments.losses import CrossEntropy
from experiments.models import MLP
from experiments.train import run
from methods import MethodConfigError, build_method

SGD = {"_target_": "torch.optim.SGD", "lr": 0.05}


def problem(seed=0):
    torch.manual_seed(seed)
    model = MLP(6, [8, 8, 8], 3, activation="tanh").double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    return model, x, y


def test_small_code_steps_give_a_descent_direction_for_every_layer():
    model, x, y = problem()
    method = build_method(
        "altmin",
        model,
        CrossEntropy(),
        {"optimizer": SGD, "code_lr": 1e-3, "code_steps": 1, "code_momentum": 0.0, "mu": 1.0},
    )
    true = torch.autograd.grad(CrossEntropy()(model(x), y), list(model.parameters()))
    method.compute_update(x, y)
    for layer, index in zip(model.layers, range(0, 8, 2)):
        inner = (layer.weight.grad * true[index]).sum()
        assert inner > 0, (index, inner)  # moving against .grad lowers the loss to first order


def test_one_step_lowers_the_batch_loss():
    model, x, y = problem(1)
    method = build_method("altmin", model, CrossEntropy(), {"optimizer": SGD})
    before = CrossEntropy()(model(x), y).item()
    method.step(x, y)
    assert CrossEntropy()(model(x), y).item() < before


def test_hidden_layer_updates_are_independent():
    model, x, y = problem(2)
    method = build_method("altmin", model, CrossEntropy(), {"optimizer": SGD})
    codes = method.update_codes(method.forward_codes(x), y)
    before = method.layer_updates(x, codes, y)
    for j in range(len(codes)):
        changed = list(codes)
        # Code c_{j+1} appears in two local losses only: as the target of hidden layer j + 1
        # and, through f, as the input of layer j + 2. No other layer's update may change.
        changed[j] = codes[j] + torch.randn_like(codes[j])
        after = method.layer_updates(x, changed, y)
        assert not torch.equal(after[j][0], before[j][0])
        for i in range(len(codes)):
            if i not in (j, j + 1):  # layer j + 2 reads f(c_{j+1}) as its input
                assert torch.equal(after[i][0], before[i][0])


def test_codes_move_towards_lower_loss():
    model, x, y = problem(3)
    method = build_method("altmin", model, CrossEntropy(), {"optimizer": SGD})
    codes = method.forward_codes(x)
    updated = method.update_codes(codes, y)
    head, act = model.layers[-1], model.activation
    assert CrossEntropy()(head(act(updated[-1])), y) < CrossEntropy()(head(act(codes[-1])), y)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"mu": 0.0}, "mu"),
        ({"code_steps": -1}, "code_steps"),
        ({"code_momentum": 1.0}, "code_momentum"),
    ],
)
def test_bad_options(options, key):
    with pytest.raises(MethodConfigError, match=f"method.{key}"):
        build_method("altmin", MLP(4, [4], 2), CrossEntropy(), {"optimizer": SGD, **options})


def test_learning_rate_halves_on_schedule():
    model, _, _ = problem()
    method = build_method(
        "altmin", model, CrossEntropy(), {"optimizer": SGD, "lr_halving_epochs": 2}
    )
    for epoch in range(1, 5):
        method.on_epoch_end(epoch)
    assert method.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 / 4)


def test_end_to_end(make_config):
    cfg = make_config("method=altmin", "data=digits", "train.epochs=2")
    final = run(cfg)
    assert final["test_accuracy"] > 0.8
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    assert {"code_shift_layer1", "code_shift_layer2"} <= set(logged.data.metrics)
