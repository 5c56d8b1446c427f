"""The method contract, the registry and the two backprop methods."""

import math

import pytest
import torch

from methods import (
    Method,
    MethodConfigError,
    available_methods,
    build_method,
    get_method_class,
    make_optimizer,
)
from methods.losses import CrossEntropy, MeanSquaredError
from methods.networks import MLP

SGD = {"_target_": "torch.optim.SGD", "lr": 0.1}


def tiny_problem(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = MLP(5, [6, 4], 3, activation="tanh").to(dtype)
    x = torch.randn(8, 5, dtype=dtype)
    y = torch.randint(0, 3, (8,))
    return model, x, y


def test_registry_lists_and_finds_methods():
    assert {"backprop", "numpy_backprop"} <= set(available_methods())
    assert get_method_class("backprop").name == "backprop"
    with pytest.raises(MethodConfigError, match="unknown method 'nope'.*backprop"):
        get_method_class("nope")


def test_unknown_method_option_is_named():
    model, _, _ = tiny_problem()
    with pytest.raises(MethodConfigError, match="method.lr: method 'backprop' has no option"):
        build_method("backprop", model, CrossEntropy(), {"optimizer": SGD, "lr": 0.1})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"lr": 0.1}, "_target_ is missing"),
        ({"_target_": "torch.optim.Adamm", "lr": 0.1}, "cannot import"),
        ({"_target_": "torch.nn.Linear"}, "not a torch optimiser"),
        ({"_target_": "torch.optim.SGD", "lr": -1.0}, "Invalid learning rate"),
        ({"_target_": "torch.optim.Adam", "foo": 1}, r"\(torch.optim.Adam\): .*'foo'"),
    ],
)
def test_make_optimizer_errors_name_the_key(config, message):
    model, _, _ = tiny_problem()
    with pytest.raises(MethodConfigError, match=f"^method.feedback_optimizer.*{message}"):
        make_optimizer(model.parameters(), config, key="method.feedback_optimizer")


def test_make_optimizer_prefers_fused_kernels_unless_the_config_chooses():
    params = [torch.nn.Parameter(torch.randn(3, 4))]
    adam = {"_target_": "torch.optim.Adam", "lr": 0.1}
    assert make_optimizer(params, adam).defaults["fused"] is True
    assert make_optimizer(params, {**adam, "fused": False}).defaults["fused"] is False
    chosen = make_optimizer(params, {**adam, "foreach": True}).defaults
    assert chosen["foreach"] is True and not chosen["fused"]
    # Options the fused kernels refuse fall back to the default implementation.
    assert not make_optimizer(params, {**adam, "differentiable": True}).defaults["fused"]
    # No fused form: built as configured.
    assert "fused" not in make_optimizer(params, {"_target_": "torch.optim.RMSprop"}).defaults


def test_fused_adam_takes_the_same_steps_as_the_default_adam():
    torch.manual_seed(0)
    start = torch.randn(50, 20)
    results = []
    for fused in (True, False):
        param = torch.nn.Parameter(start.clone())
        optimizer = make_optimizer(
            [param], {"_target_": "torch.optim.Adam", "lr": 1e-2, "fused": fused}
        )
        for step in range(20):
            param.grad = torch.sin(param.detach() * (step + 1))
            optimizer.step()
        results.append(param.detach())
    assert not torch.equal(start, results[0])
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-6)


def test_backprop_grad_is_inspectable_before_the_update_and_equals_autograd():
    model, x, y = tiny_problem()
    method = build_method("backprop", model, CrossEntropy(), {"optimizer": SGD})
    before = [p.detach().clone() for p in model.parameters()]
    reference = torch.autograd.grad(CrossEntropy()(model(x), y), list(model.parameters()))
    metrics = method.compute_update(x, y)
    for p, b, g in zip(model.parameters(), before, reference):
        torch.testing.assert_close(p, b)  # nothing applied yet
        torch.testing.assert_close(p.grad, g)
    method.apply_update()
    for p, b, g in zip(model.parameters(), before, reference):
        torch.testing.assert_close(p, b - 0.1 * g)  # plain SGD step
    assert metrics["loss"] == pytest.approx(CrossEntropy()(model_from(before, model)(x), y).item())


def model_from(params, like):
    clone = MLP(like.input_size, like.hidden_sizes, like.output_size, like.activation_name)
    with torch.no_grad():
        for p, v in zip(clone.parameters(), params):
            p.copy_(v)
    return clone


def test_step_lowers_the_loss():
    model, x, y = tiny_problem()
    method = build_method("backprop", model, CrossEntropy(), {"optimizer": SGD})
    first = method.step(x, y)["loss"]
    for _ in range(20):
        last = method.step(x, y)["loss"]
    assert last < first


@pytest.mark.parametrize("loss", [CrossEntropy(), MeanSquaredError()])
def test_numpy_backprop_writes_the_same_gradient_as_backprop(loss):
    model_a, x, y = tiny_problem(torch.float64, seed=1)
    model_b, _, _ = tiny_problem(torch.float64, seed=1)
    if isinstance(loss, MeanSquaredError):
        y = torch.randn(8, 3, dtype=torch.float64)
    a = build_method("backprop", model_a, loss, {"optimizer": SGD})
    b = build_method("numpy_backprop", model_b, loss, {"optimizer": SGD})
    for _ in range(3):  # several steps: the parameters stay equal too
        ma, mb = a.compute_update(x, y), b.compute_update(x, y)
        assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-12)
        for pa, pb in zip(model_a.parameters(), model_b.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-10, atol=1e-14)
        a.apply_update()
        b.apply_update()


def test_forward_is_eval_mode_without_grad():
    model, x, _ = tiny_problem()
    method = build_method("backprop", model, CrossEntropy(), {"optimizer": SGD})
    out = method.forward(x)
    assert out.shape == (8, 3) and not out.requires_grad and not model.training


def test_step_after_evaluation_trains_in_training_mode():
    """``step`` skips ``train()`` when the model is in training mode already, never after eval."""
    model, x, y = tiny_problem()
    method = build_method("backprop", model, CrossEntropy(), {"optimizer": SGD})
    method.forward(x)
    assert not any(module.training for module in model.modules())
    method.step(x, y)
    assert all(module.training for module in model.modules())


def test_method_is_abstract():
    with pytest.raises(TypeError):
        Method(MLP(1, [1], 1), CrossEntropy())


def test_the_documented_example_method_plugs_in_unchanged(make_config):
    """docs/adding-a-method.md's module, as printed there, trains through the loop."""
    from pathlib import Path

    from experiments.train import run

    page = (Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md").read_text()
    code = page.split("# methods/sign_sgd.py\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "methods/sign_sgd.py", "exec"), {"__name__": "methods.sign_sgd"})
    assert "sign_sgd" in available_methods()
    # backprop's config renamed (the page's yaml is not in conf/), without backprop's tuned values
    cfg = make_config("data=digits", "train.epochs=1", "method.name=sign_sgd", "~tuned")
    final = run(cfg)
    assert final["test_accuracy"] > 0.5


def test_epoch_means_average_each_key_over_its_own_count():
    from methods import EpochMeans

    means = EpochMeans()
    for value in (1.0, 2.0, 6.0):
        means.add("every_step", value)
    means.add("once", 5.0)
    assert means.values() == {"every_step": 3.0, "once": 5.0}
    assert means.values() == {"every_step": 3.0, "once": 5.0}  # reading changes nothing
    means.reset()
    assert means.values() == {}  # reset for the next epoch


def _small_method(name):
    """A method of each kind with per-epoch metrics, on a tiny MLP or RNN, and a batch."""
    from methods.networks import RecurrentNetwork

    torch.manual_seed(0)
    adam = {"_target_": "torch.optim.Adam", "lr": 1e-2}
    if name in ("bptt", "tbptt", "dni_rnn"):
        model = RecurrentNetwork(2, 1, hidden_size=5)
        options = {"optimizer": adam, "truncation": 3} if name != "bptt" else {"optimizer": adam}
        if name == "dni_rnn":
            options["synthetic_optimizer"] = adam
        x, y = torch.randn(8, 7, 2), torch.randn(8, 1)
        return build_method(name, model, MeanSquaredError(), options), x, y
    options = {
        "dtp": {"forward_optimizer": adam, "feedback_optimizer": adam},
        "drl": {"forward_optimizer": adam, "feedback_optimizer": adam},
        "ldrl": {"forward_optimizer": adam, "feedback_optimizer": adam},
        "hsic": {"optimizer": adam, "format_optimizer": adam, "sigma": 1.0},
        "dni": {"optimizer": adam, "synthetic_optimizer": adam},
        "altmin": {"optimizer": adam},
    }[name]
    model, x, y = tiny_problem()
    return build_method(name, model, CrossEntropy(), options), x, y


WITH_EPOCH_METRICS = ["dtp", "drl", "ldrl", "hsic", "dni", "altmin", "bptt", "tbptt", "dni_rnn"]


@pytest.mark.parametrize("name", WITH_EPOCH_METRICS)
def test_epoch_metrics_is_a_pure_getter_and_the_reset_is_explicit(name):
    method, x, y = _small_method(name)
    method.on_train_start(epochs=4, batches_per_epoch=3)
    for _ in range(3):
        method.step(x, y)
    first = method.epoch_metrics()
    assert first  # every one of these methods reports something of its own
    assert method.epoch_metrics() == pytest.approx(first, nan_ok=True)  # reading changes nothing
    method.reset_epoch_metrics()
    assert method.means.values() == {}


def test_the_epoch_is_the_loops():
    method, x, y = _small_method("dtp")
    assert method.epoch == 1  # outside the loop: as in the first epoch
    method.on_epoch_start(3)
    assert method.epoch == 3


FEED_FORWARD = [
    "backprop",
    "numpy_backprop",
    "dtp",
    "drl",
    "ldrl",
    "dni",
    "cdni",
    "altmin",
    "fa",
    "dfa",
]


@pytest.mark.parametrize(
    "method", [*FEED_FORWARD, "hsic estimator=normalized", "hsic estimator=biased"]
)
def test_every_method_trains_when_the_last_batch_has_one_example(make_config, method):
    """Digits has 1437 training examples = 2 x 718 + 1: every epoch ends on a batch of one."""
    from experiments.train import run

    name, *options = method.split()
    final = run(
        make_config(
            "data=digits",
            f"method={name}",
            *(f"method.{option}" for option in options),
            "train.batch_size=718",
            "train.epochs=2",
        )
    )
    assert "diverged_at_step" not in final
    assert all(math.isfinite(value) for value in final.values())
