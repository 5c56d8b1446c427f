"""HSIC estimators against independent computations, and the HSIC-bottleneck method."""

import itertools

import mlflow
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.train import run
from methods import MethodConfigError, build_method
from methods.hsic_estimators import (
    gaussian_kernel,
    hsic_biased,
    median_sigma,
    normalized_hsic,
)
from methods.losses import CrossEntropy
from methods.networks import MLP


def double_sum_hsic(kx, ky):
    """Gretton et al. 2005 by hand: (m-1)^-2 [sum K.L - 2/m sum K_ij L_iq + sum K sum L / m^2]."""
    m = len(kx)
    first = sum(kx[i][j] * ky[i][j] for i in range(m) for j in range(m))
    second = sum(kx[i][j] * ky[i][q] for i in range(m) for j in range(m) for q in range(m))
    third = sum(map(sum, kx)) * sum(map(sum, ky))
    return (first - 2.0 / m * second + third / m**2) / (m - 1) ** 2


def test_gaussian_kernel_by_hand():
    a = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    k = gaussian_kernel(a, sigma=5.0)
    # ||a_1 - a_2||^2 = 25, width^2 = 2 * 25 * d with d = 2
    expected = torch.exp(torch.tensor(-25.0 / 100.0, dtype=torch.float64))
    torch.testing.assert_close(
        k, torch.tensor([[1.0, expected], [expected, 1.0]], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gaussian_kernel(a, 0.0)


def test_median_heuristic_width_equals_the_median_distance():
    a = torch.tensor([[0.0], [1.0], [3.0]])  # distances 1, 2, 3: median 2
    assert median_sigma(a).item() == pytest.approx(2.0)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(2, 7), d=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_biased_estimator_equals_the_double_sum(m, d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g, dtype=torch.float64)
    b = torch.randn(m, 3, generator=g, dtype=torch.float64)
    kx, ky = gaussian_kernel(a, 1.0), gaussian_kernel(b, 1.0)
    assert hsic_biased(kx, ky).item() == pytest.approx(
        double_sum_hsic(kx.tolist(), ky.tolist()), rel=1e-10, abs=1e-14
    )


def test_hsic_of_a_variable_with_itself_is_positive():
    a = torch.randn(50, 3, dtype=torch.float64)
    k = gaussian_kernel(a, 1.0)
    assert hsic_biased(k, k).item() > 1e-3
    assert normalized_hsic(k, k).item() > 1.0


def test_hsic_of_independent_samples_tends_to_zero():
    def mean_hsic(m):
        values = []
        for seed in range(5):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(m, 2, generator=g, dtype=torch.float64)
            y = torch.randn(m, 2, generator=g, dtype=torch.float64)
            values.append(hsic_biased(gaussian_kernel(x, 1.0), gaussian_kernel(y, 1.0)).item())
        return sum(values) / len(values)

    small, large = mean_hsic(20), mean_hsic(640)
    dependent = hsic_biased(*(gaussian_kernel(torch.randn(640, 2, dtype=torch.float64), 1.0),) * 2)
    assert large < small / 10  # the biased estimate decays like 1/m under independence
    assert large < dependent.item() / 50


@settings(max_examples=15, deadline=None)
@given(m=st.integers(4, 24), seed=st.integers(0, 10_000), sigma=st.floats(0.3, 5.0))
def test_normalized_estimator_lies_in_zero_rank(m, seed, sigma):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, 3, generator=g, dtype=torch.float64)
    b = (a[:, :2] + 0.5 * torch.randn(m, 2, generator=g, dtype=torch.float64)).sign()
    kx, ky = gaussian_kernel(a, sigma), gaussian_kernel(b, sigma)
    h = torch.eye(m, dtype=torch.float64) - 1.0 / m
    rank = min(torch.linalg.matrix_rank(kx @ h).item(), torch.linalg.matrix_rank(ky @ h).item())
    value = normalized_hsic(kx, ky).item()
    assert -1e-9 <= value <= rank + 1e-9


@pytest.mark.parametrize("estimator", [hsic_biased, normalized_hsic])
def test_one_example_gives_zero_and_a_finite_gradient(estimator):
    """A last minibatch of one example: no evidence of dependence, and nothing undefined."""
    a = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    value = estimator(gaussian_kernel(a, median_sigma(a)), gaussian_kernel(a * 2, 1.0))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(a.grad).all()


def test_estimators_reject_bad_shapes():
    with pytest.raises(ValueError, match="need two"):
        hsic_biased(torch.eye(3), torch.eye(4))
    with pytest.raises(ValueError, match="epsilon"):
        normalized_hsic(torch.eye(3), torch.eye(3), epsilon=0.0)


ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-2}


def make_hsic(model, **options):
    return build_method(
        "hsic", model, CrossEntropy(), {"optimizer": ADAM, "format_optimizer": ADAM, **options}
    )


def separable_task(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 4, generator=g) + 3.0 * (2 * y[:, None] - 1)
    return x, y


def test_two_layer_hsic_network_raises_hsic_with_the_labels():
    """XOR quadrants: separable, but not by the random initial layers."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = ((x[:, 0] * x[:, 1]) > 0).long()
    model = MLP(4, [8, 8], 2, activation="tanh")
    method = make_hsic(model, sigma=1.0, beta=50.0)
    method.on_train_start(epochs=10, batches_per_epoch=1)
    before = [hy.item() for _, _, hy in method.objectives(x, y)]
    for _ in range(100):
        method.step(x, y)
    after = [hy.item() for _, _, hy in method.objectives(x, y)]
    assert all(a > b + 0.2 for a, b in zip(after, before)), (before, after)


def test_layer_updates_are_local_and_phases_freeze_the_right_layers():
    torch.manual_seed(1)
    model = MLP(4, [8, 8], 2, activation="tanh")
    method = make_hsic(model, sigma=1.0)
    method.on_train_start(epochs=4, batches_per_epoch=1)  # 3 HSIC epochs, 1 format epoch
    x, y = separable_task()
    method.compute_update(x, y)
    first = [p.grad.clone() for p in model.layers[0].parameters()]
    assert model.layers[-1].weight.grad is None  # the format layer waits for its phase
    # Layer 1's update depends only on its own objective: changing layer 2 changes nothing.
    with torch.no_grad():
        model.layers[1].weight.mul_(3.0)
    method.compute_update(x, y)
    for g, p in zip(first, model.layers[0].parameters()):
        torch.testing.assert_close(p.grad, g)
    method.on_epoch_start(4)
    assert method.formatting
    method.compute_update(x, y)
    assert all(p.grad is None for layer in model.layers[:-1] for p in layer.parameters())
    assert model.layers[-1].weight.grad is not None


def test_one_backward_pass_gives_each_layers_own_objective_gradient_bit_for_bit():
    """compute_update differentiates the sum of the layers' objectives once; each layer's
    gradient must be that of its own objective alone, to the bit."""
    torch.manual_seed(3)
    model = MLP(4, [8, 8, 8], 2, activation="tanh")
    method = make_hsic(model, sigma=1.0)
    method.on_train_start(epochs=4, batches_per_epoch=1)
    x, y = separable_task()
    method.compute_update(x, y)
    for layer, (objective, _, _) in zip(model.layers[:-1], method.objectives(x, y)):
        params = list(layer.parameters())
        for param, grad in zip(params, torch.autograd.grad(objective, params)):
            assert torch.equal(param.grad, grad)


def test_rebuilding_optimizers_each_step_discards_momentum():
    def run_steps(rebuild):
        torch.manual_seed(2)
        model = MLP(4, [8], 2, activation="tanh")
        sgd = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9}
        method = build_method(
            "hsic",
            model,
            CrossEntropy(),
            {
                "optimizer": sgd,
                "format_optimizer": sgd,
                "sigma": 1.0,
                "rebuild_optimizers_each_step": rebuild,
            },
        )
        method.on_train_start(epochs=10, batches_per_epoch=1)
        x, y = separable_task()
        for _ in range(3):
            method.step(x, y)
        return model.layers[0].weight.detach().clone()

    kept, rebuilt = run_steps(False), run_steps(True)
    assert not torch.allclose(kept, rebuilt)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"beta": 0.0}, "method.beta"),
        ({"sigma": -1.0}, "method.sigma"),
        ({"estimator": "unbiased"}, "method.estimator"),
        ({"format_fraction": 1.0}, "format_fraction"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(MethodConfigError, match=message):
        make_hsic(MLP(4, [8], 2), **options)


@pytest.mark.parametrize("estimator", ["normalized", "biased"])
def test_end_to_end_logs_both_phases_and_hsic_per_layer(make_config, estimator):
    cfg = make_config(
        "method=hsic",
        "data=digits",
        "train.epochs=4",
        "train.batch_size=256",
        f"method.estimator={estimator}",
    )
    final = run(cfg)
    assert final["phase"] == 1.0 and final["test_accuracy"] > 0.3
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    for key in ("hsic_zx_layer1", "hsic_zy_layer1", "hsic_zx_layer2", "hsic_zy_layer2"):
        assert [m.step for m in client.get_metric_history(logged.info.run_id, key)] == [1, 2, 3, 4]
    phases = [m.value for m in client.get_metric_history(logged.info.run_id, "phase")]
    assert phases == [0.0, 0.0, 0.0, 1.0]
    unformatted = client.get_metric_history(logged.info.run_id, "unformatted_train_accuracy")
    assert [m.step for m in unformatted] == [2, 3, 4] and unformatted[-1].value > 0.3


def test_kernel_work_is_vectorized_over_samples():
    """No Python loop over samples: one call handles m = 512 quickly and exactly."""
    a = torch.randn(512, 16, dtype=torch.float64)
    k = gaussian_kernel(a, 2.0)
    i, j = 17, 301
    expected = torch.exp(-((a[i] - a[j]) ** 2).sum() / (2 * 4.0 * 16))
    torch.testing.assert_close(k[i, j], expected)
    assert list(itertools.islice(k.diagonal().tolist(), 3)) == [1.0, 1.0, 1.0]
