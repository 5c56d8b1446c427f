"""Online alternating minimisation: code steps against a NumPy oracle, descent direction,
locality, learning, logging."""

import copy

import mlflow
import numpy as np
import pytest
import torch

from experiments.train import run
from methods import MethodConfigError, build_method
from methods.losses import CrossEntropy, MeanSquaredError
from methods.networks import MLP

SGD = {"_target_": "torch.optim.SGD", "lr": 0.05}


def problem(seed=0):
    torch.manual_seed(seed)
    model = MLP(6, [8, 8, 8], 3, activation="tanh").double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    return model, x, y


# NumPy oracle of the code steps, written from the authors' code (IBM/online-alt-min,
# altmin.py: compute_codes_loss, update_codes), not from ours. Reductions as there:
# nn.CrossEntropyLoss is the batch mean, F.mse_loss the mean over all batch x units elements.
# The proximity term mse(c, c0) is differentiated as written; in their update_codes its gradient
# happens to vanish (c0 is cloned inside the autograd graph), which we do not copy: the
# two-step cases below would fail without it (checked by `without_proximity`).


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def top_code_gradient(c, c0, weight, bias, y, mu, form, proximity=True):
    """d/dc of (1/mu) CE(W tanh(c) + b, y) + mse(c, c0), or CE + mu mse for scaled_mismatch."""
    batch = c.shape[0]
    h = np.tanh(c)
    dz = softmax(h @ weight.T + bias)
    dz[np.arange(batch), y] -= 1.0
    d_loss = (dz / batch) @ weight * (1.0 - h**2)
    d_mse = 2.0 * (c - c0) / c.size if proximity else 0.0 * c
    return d_loss / mu + d_mse if form == "scaled_loss" else d_loss + mu * d_mse


def lower_code_gradient(c, c0, weight, bias, above):
    """d/dc of mse(W tanh(c) + b, above) + mse(c, c0)."""
    h = np.tanh(c)
    residual = h @ weight.T + bias - above
    return (2.0 * residual / residual.size) @ weight * (1.0 - h**2) + 2.0 * (c - c0) / c.size


def sgd(gradient, c0, lr, momentum, steps):
    """torch.optim.SGD(lr, momentum, nesterov=momentum > 0), written out: the buffer starts at
    the first gradient, then b <- m b + g; the step is lr (g + m b) with Nesterov."""
    c, buffer = c0.copy(), None
    for _ in range(steps):
        g = gradient(c)
        if momentum:
            buffer = g if buffer is None else momentum * buffer + g
            g = g + momentum * buffer
        c = c - lr * g
    return c


@pytest.mark.parametrize("form", ["scaled_loss", "scaled_mismatch"])
@pytest.mark.parametrize(("steps", "momentum"), [(1, 0.0), (2, 0.9)])
def test_code_steps_match_the_numpy_oracle(form, steps, momentum):
    model, x, y = problem(4)
    mu, lr = 0.05, 0.3
    options = {"mu": mu, "code_lr": lr, "code_steps": steps, "code_momentum": momentum}
    method = build_method(
        "altmin", model, CrossEntropy(), {"optimizer": SGD, "top_code_loss": form, **options}
    )
    codes = method.forward_codes(x)
    updated = method.update_codes(codes, y)

    params = [(p.weight.detach().numpy(), p.bias.detach().numpy()) for p in model.layers]
    c0 = [c.numpy() for c in codes]
    labels = y.numpy()

    def top(proximity):
        def gradient(c):
            return top_code_gradient(c, c0[-1], *params[-1], labels, mu, form, proximity)

        return sgd(gradient, c0[-1], lr, momentum, steps)

    expected_top = top(proximity=True)
    np.testing.assert_allclose(updated[-1].numpy(), expected_top, rtol=1e-10, atol=1e-12)
    assert np.abs(expected_top - c0[-1]).max() > 1e-3  # the code did move
    if steps > 1:  # from the second step on, the proximity term's gradient is not zero
        without_proximity = top(proximity=False)
        assert np.abs(expected_top - without_proximity).max() > 1e-8

    # The code below, towards the updated top code (held fixed), through layer L-1.
    def lower(c):
        return lower_code_gradient(c, c0[-2], *params[-2], expected_top)

    expected_lower = sgd(lower, c0[-2], lr, momentum, steps)
    np.testing.assert_allclose(updated[-2].numpy(), expected_lower, rtol=1e-10, atol=1e-12)
    assert np.abs(expected_lower - c0[-2]).max() > 1e-6


def test_scaled_loss_moves_the_top_code_about_one_over_mu_further():
    """One plain SGD step from c0 (where the proximity gradient is zero): the step of the
    scaled_loss form is exactly 1/mu times that of scaled_mismatch."""
    model, x, y = problem(5)
    shifts = {}
    for form in ("scaled_loss", "scaled_mismatch"):
        options = {"code_steps": 1, "code_momentum": 0.0, "mu": 0.01, "top_code_loss": form}
        method = build_method("altmin", model, CrossEntropy(), {"optimizer": SGD, **options})
        codes = method.forward_codes(x)
        shifts[form] = method.update_codes(codes, y)[-1] - codes[-1]
    torch.testing.assert_close(shifts["scaled_loss"], shifts["scaled_mismatch"] / 0.01)


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
        ({"top_code_loss": "authors"}, "top_code_loss"),
        ({"lr_halving_epochs": 8}, "lr_halving_epochs"),  # now train.lr_schedule, shared
    ],
)
def test_bad_options(options, key):
    with pytest.raises(MethodConfigError, match=f"method.{key}"):
        build_method("altmin", MLP(4, [4], 2), CrossEntropy(), {"optimizer": SGD, **options})


def test_end_to_end(make_config):
    cfg = make_config("method=altmin", "data=digits", "train.epochs=2")
    final = run(cfg)
    assert final["test_accuracy"] > 0.8
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    assert {"code_shift_layer1", "code_shift_layer2"} <= set(logged.data.metrics)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "identity"])
@pytest.mark.parametrize("form", ["scaled_loss", "scaled_mismatch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_written_out_gradients_are_autograds_bit_for_bit(activation, form, dtype, task):
    """The hand-written code and weight gradients (methods/altmin_gradients.py) against
    autograd of the objectives (the fallback path): the same bits, codes and updates."""
    torch.manual_seed(7)
    model = MLP(6, [9, 8, 7], 3, activation=activation).to(dtype)
    x = torch.randn(16, 6, dtype=dtype)
    if task == "classification":
        loss, y = CrossEntropy(), torch.randint(0, 3, (16,))
    else:
        loss, y = MeanSquaredError(), torch.randn(16, 3, dtype=dtype)
    options = {"optimizer": SGD, "top_code_loss": form, "mu": 0.05}
    written = build_method("altmin", model, loss, options)
    assert written._closed_form
    by_autograd = build_method("altmin", copy.deepcopy(model), loss, options)
    by_autograd._closed_form = False
    codes = written.forward_codes(x)
    updated = written.update_codes(codes, y)
    reference = by_autograd.update_codes(codes, y)
    assert all(torch.equal(a, b) for a, b in zip(updated, reference))
    # The first steps reusing the forward pass's products (as compute_update does): same bits.
    _, hidden, output = written._forward_pass(x)
    reused = written.update_codes(codes, y, hidden, output)
    assert all(torch.equal(a, b) for a, b in zip(reused, reference))
    assert not torch.equal(updated[0], codes[0])  # the codes moved
    for a, b in zip(
        written.layer_updates(x, updated, y, first_output=codes[0]),
        by_autograd.layer_updates(x, updated, y),
    ):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    written.step(x, y)
    by_autograd.step(x, y)
    for a, b in zip(written.model.parameters(), by_autograd.model.parameters()):
        assert torch.equal(a, b)


def test_unsupported_activation_falls_back_to_autograd():
    model, x, y = problem()
    model.activation = torch.nn.Softplus()
    method = build_method("altmin", model, CrossEntropy(), {"optimizer": SGD})
    assert not method._closed_form
    codes = method.forward_codes(x)
    assert not torch.equal(method.update_codes(codes, y)[0], codes[0])
