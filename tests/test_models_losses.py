"""The shared MLP builder and the task losses."""

import math

import pytest
import torch

from methods.losses import CrossEntropy, MeanSquaredError, loss_for_task
from methods.networks import MLP, build_mlp


def test_mlp_shapes_and_layers():
    torch.manual_seed(0)
    model = build_mlp(input_shape=(3, 4), output_size=3, hidden_sizes=[7, 5], activation="tanh")
    assert [tuple(layer.weight.shape) for layer in model.layers] == [(7, 12), (5, 7), (3, 5)]
    x = torch.randn(4, 3, 4)  # flattened to 12 features
    outputs = model.forward_layers(x)
    assert [tuple(o.shape) for o in outputs] == [(4, 7), (4, 5), (4, 3)]
    assert torch.all(outputs[0].abs() <= 1)  # tanh hidden units
    torch.testing.assert_close(model(x), outputs[-1])


def test_mlp_forward_matches_hand_computation():
    model = MLP(2, [2], 1, activation="relu")
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.5]]))
        model.layers[0].bias.copy_(torch.tensor([0.0, -1.0]))
        model.layers[1].weight.copy_(torch.tensor([[3.0, -2.0]]))
        model.layers[1].bias.copy_(torch.tensor([0.5]))
    # h = relu([1 - 2, 2 + 1 - 1]) = [0, 2]; o = 3*0 - 2*2 + 0.5 = -3.5
    assert model(torch.tensor([[1.0, 2.0]])).item() == pytest.approx(-3.5)


def test_orthogonal_init_gives_orthonormal_rows_and_zero_bias():
    model = MLP(16, [16, 8], 4, activation="tanh", init="orthogonal")
    gain = 5.0 / 3.0  # torch's gain for tanh
    w = model.layers[1].weight / gain
    torch.testing.assert_close(w @ w.T, torch.eye(8), atol=1e-5, rtol=0)
    assert torch.count_nonzero(model.layers[0].bias) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_sizes": []}, "model.hidden_sizes"),
        ({"hidden_sizes": [4, 0]}, "model.hidden_sizes"),
        ({"activation": "gelu"}, "model.activation"),
        ({"init": "lecun"}, "model.init"),
    ],
)
def test_mlp_rejects_bad_arguments(kwargs, message):
    args = {"input_size": 3, "hidden_sizes": [4], "output_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        MLP(**args)


def test_cross_entropy_hand_value_and_accuracy():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    target = torch.tensor([0, 1])
    # -log(1/2) and -log(1/(1+e^2)), averaged
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2
    loss = CrossEntropy()
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    metrics = loss.metrics(logits, target)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"] == 0.5  # argmax of a tie is class 0: right; second: wrong


def test_cross_entropy_metrics_skip_ignored_targets_and_reuse_a_given_loss():
    from methods.losses import IGNORE_INDEX

    # Per-step outputs (batch 1, 3 steps, 2 classes); the first step is not scored.
    logits = torch.tensor([[[5.0, 0.0], [0.0, 1.0], [3.0, 0.0]]])
    target = torch.tensor([[IGNORE_INDEX, 1, 1]])
    expected = (math.log(1 + math.e**-1) + math.log(1 + math.e**3)) / 2
    metrics = CrossEntropy().metrics(logits, target)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"] == 0.5  # step 2 right, step 3 wrong; step 1 not counted
    nothing = torch.full((1, 3), IGNORE_INDEX)
    assert math.isnan(CrossEntropy().metrics(logits, nothing)["accuracy"])
    # A loss the caller already has is reported as given, not recomputed.
    given = torch.tensor(7.25)
    assert CrossEntropy().metrics(logits, target, given)["loss"] == 7.25
    assert MeanSquaredError().metrics(torch.zeros(1, 2), torch.ones(1, 2), given) == {"loss": 7.25}


def test_mse_hand_value():
    output = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert MeanSquaredError()(output, target).item() == pytest.approx((1 + 4 + 0 + 1) / 4)
    assert MeanSquaredError().metrics(output, target) == {"loss": pytest.approx(1.5)}


def test_loss_for_task():
    assert isinstance(loss_for_task("classification"), CrossEntropy)
    assert isinstance(loss_for_task("regression"), MeanSquaredError)
    with pytest.raises(ValueError, match="data.task"):
        loss_for_task("ranking")
