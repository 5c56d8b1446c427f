"""Synthetic gradients (DNI, cDNI): oracle equivalence, decoupling, and learning the gradient."""

import math

import mlflow
import pytest
import torch

from experiments.train import run
from methods import MethodConfigError, build_method
from methods.dni import SyntheticGradientModule, cosine
from methods.losses import CrossEntropy, MeanSquaredError
from methods.networks import MLP

SGD = {"_target_": "torch.optim.SGD", "lr": 0.1}
ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}


def make(model, loss=None, name="dni", **options):
    options = {"optimizer": SGD, "synthetic_optimizer": ADAM, **options}
    return build_method(name, model, loss or CrossEntropy(), options)


def test_zero_initialised_modules_start_with_zero_gradients():
    module = SyntheticGradientModule(6, context_size=3, hidden_sizes=[8])
    assert torch.count_nonzero(module(torch.randn(4, 6), torch.randn(4, 3))) == 0


@pytest.mark.parametrize("name", ["dni", "cdni"])
def test_oracle_synthetic_gradients_give_exactly_the_backprop_step(name):
    torch.manual_seed(0)
    model = MLP(5, [7, 6, 4], 3, activation="tanh").double()
    reference = MLP(5, [7, 6, 4], 3, activation="tanh").double()
    reference.load_state_dict(model.state_dict())
    method = make(model, name=name)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    true = method.true_hidden_gradients(x, y)
    method.synthetic_gradient = lambda i, h, labels: true[i - 1]  # the oracle M_i
    method.compute_update(x, y)
    expected = torch.autograd.grad(CrossEntropy()(reference(x), y), list(reference.parameters()))
    for param, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(param.grad, grad, rtol=1e-12, atol=1e-14)
    method.apply_update()
    for param, ref, grad in zip(model.parameters(), reference.parameters(), expected):
        torch.testing.assert_close(param, ref - 0.1 * grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("interfaces", [[1], [2], [3], [1, 3]])
def test_oracle_gradients_at_some_cuts_give_exactly_the_backprop_step(interfaces):
    """With cuts after some hidden layers only, a block spans several layers; oracle modules
    at the cuts still give exactly backprop's gradient for every parameter."""
    torch.manual_seed(3)
    model = MLP(5, [7, 6, 4], 3, activation="tanh").double()
    reference = MLP(5, [7, 6, 4], 3, activation="tanh").double()
    reference.load_state_dict(model.state_dict())
    method = make(model, interfaces=interfaces, hidden_sizes=[8])
    assert len(method.synthetic_modules) == len(interfaces)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    true = method.true_hidden_gradients(x, y)
    calls = []

    def oracle(i, h, labels):
        calls.append(i)
        return true[i - 1]

    method.synthetic_gradient = oracle
    method.compute_update(x, y)
    assert calls == interfaces
    expected = torch.autograd.grad(CrossEntropy()(reference(x), y), list(reference.parameters()))
    for param, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(param.grad, grad, rtol=1e-12, atol=1e-14)


def test_a_single_cut_regresses_its_module_on_the_true_gradient():
    """koz4k/dni-pytorch's setup: one module after the last hidden layer, trained towards the
    true dL/dh_H; the layers below it share its synthetic gradient (no bootstrapping)."""
    torch.manual_seed(4)
    model = MLP(5, [7, 6], 3, activation="tanh").double()
    method = make(model, interfaces=[2], hidden_sizes=[8])
    method.synthetic_modules.double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    seen = {}
    method.train_synthetic = lambda hidden, targets, labels, predictions: seen.update(
        hidden=hidden, targets=targets
    )
    method.compute_update(x, y)
    [h2] = seen["hidden"]
    [target] = seen["targets"]
    activations = model.forward_layers(x)
    torch.testing.assert_close(h2, activations[1])
    [true] = torch.autograd.grad(CrossEntropy()(activations[-1], y), [activations[1]])
    torch.testing.assert_close(target, true, rtol=1e-12, atol=1e-14)
    # M_2 predicts zero at the start, so both hidden layers get a zero update.
    for param in [*model.layers[0].parameters(), *model.layers[1].parameters()]:
        assert torch.count_nonzero(param.grad) == 0


def test_training_the_modules_leaves_the_base_network_alone():
    torch.manual_seed(1)
    model = MLP(5, [7, 6], 3, activation="tanh")
    method = make(model, hidden_sizes=[16])
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    for _ in range(3):  # make the modules non-zero first
        method.step(x, y)
    weights = [p.detach().clone() for p in model.parameters()]
    modules = [p.detach().clone() for p in method.synthetic_modules.parameters()]
    # The update the base network must get: from the modules as they were before this step.
    hidden = model.forward_layers(x)[:-1]
    with torch.no_grad():
        predicted = [
            method.synthetic_gradient(i, h.detach(), y) for i, h in enumerate(hidden, start=1)
        ]
    expected = torch.autograd.grad(
        hidden[0], list(model.layers[0].parameters()), grad_outputs=predicted[0]
    )
    method.compute_update(x, y)
    assert any(
        not torch.equal(p, m) for p, m in zip(method.synthetic_modules.parameters(), modules)
    )  # the modules did learn
    for p, w in zip(model.parameters(), weights):
        assert torch.equal(p, w)  # nothing applied to the base network yet
    for p, g in zip(model.layers[0].parameters(), expected):
        torch.testing.assert_close(p.grad, g)  # its update is the synthetic gradient's alone


def test_synthetic_gradient_is_learned_on_a_tiny_regression():
    """Linear network and teacher: dL/dh_1 is linear in h_1, so a linear M_1 can match it."""
    torch.manual_seed(2)
    teacher = torch.randn(4, 2)
    x = torch.randn(64, 4)
    y = x @ teacher
    model = MLP(4, [4], 2, activation="identity")
    method = make(
        model,
        MeanSquaredError(),
        optimizer={"_target_": "torch.optim.SGD", "lr": 1e-3},
        synthetic_optimizer={"_target_": "torch.optim.Adam", "lr": 1e-2},
    )
    method.probe = (x, y)
    # zero-initialised modules predict a zero vector: the cosine is undefined, not 0
    assert math.isnan(method.epoch_metrics()["sg_cosine_layer1"])
    for _ in range(50):
        method.step(x, y)
    early = method.epoch_metrics()
    for _ in range(550):
        method.step(x, y)
    late = method.epoch_metrics()
    assert late["sg_loss_layer1"] < 0.1 * early["sg_loss_layer1"]
    assert late["sg_cosine_layer1"] > 0.9


def test_cosine_helper():
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])) == pytest.approx(1.0)
    assert math.isnan(cosine(torch.zeros(2), torch.ones(2)))


def test_bad_options():
    with pytest.raises(MethodConfigError, match="method.hidden_sizes"):
        make(MLP(4, [4], 2), hidden_sizes=[0])
    for interfaces in ([], [2, 1], [1, 1]):
        with pytest.raises(MethodConfigError, match=r"method.interfaces: must list"):
            make(MLP(4, [4, 4], 2), interfaces=interfaces)
    with pytest.raises(MethodConfigError, match=r"method.interfaces: .*hidden layers 1\.\.2"):
        make(MLP(4, [4, 4], 2), interfaces=[3])
    with pytest.raises(MethodConfigError, match="method.interfaces"):
        make(MLP(4, [4, 4], 2), interfaces=[0])


@pytest.mark.parametrize("name", ["dni", "cdni"])
def test_end_to_end_logs_synthetic_gradient_metrics(make_config, name):
    cfg = make_config(f"method={name}", "data=digits", "train.epochs=2")
    final = run(cfg)
    assert final["test_accuracy"] > 0.2
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    for key in ("sg_loss_layer1", "sg_loss_layer2", "sg_cosine_layer1", "sg_cosine_layer2"):
        assert key in logged.data.metrics
    assert logged.data.tags["method"] == name


def test_end_to_end_with_one_cut_logs_only_that_layer(make_config):
    cfg = make_config("method=dni", "data=digits", "train.epochs=1", "method.interfaces=[2]")
    final = run(cfg)
    assert final["test_accuracy"] > 0.2
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    assert {k for k in logged.data.metrics if k.startswith("sg_")} == {
        "sg_loss_layer2",
        "sg_cosine_layer2",
    }
