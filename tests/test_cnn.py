"""The convolutional network (model=cnn) and the methods on it: equivalences with backprop in
float64, refusals, diagnostics on conv weights, image data, augmentation, tiny end-to-end runs."""

import math

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from experiments.data import Dataset
from experiments.data.augment import RandomCropFlip
from experiments.data.cifar10 import load_cifar10
from experiments.data.idx import load_fashion_mnist
from experiments.diagnostics import UpdateDiagnostics
from experiments.loop import fit
from experiments.train import build_model, run
from methods import MethodConfigError, build_method
from methods.losses import CrossEntropy
from methods.networks import CNN, build_cnn
from methods.networks.cnn import ConvBlock
from methods.numpy_conv import conv_backward, conv_forward, pool_backward
from tests.conftest import CONF_DIR
from tests.test_data import write_tiny_cifar, write_tiny_idx

SGD = {"_target_": "torch.optim.SGD", "lr": 0.1}
ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}


def small_cnn(pool="max", activation="elu", hidden=(7,)):
    """Two conv blocks on 2x12x12 images, a hidden linear layer, 5 classes; float64."""
    return build_cnn((2, 12, 12), 5, [3, 4], 3, 1, activation, pool, 3, 2, 1, list(hidden)).double()


def batch(n=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 12, 12, dtype=torch.float64, generator=generator)
    return x, torch.randint(0, 5, (n,), generator=generator)


def backprop_grads(model, x, y):
    return torch.autograd.grad(CrossEntropy()(model(x), y), list(model.parameters()))


def preset(name):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[f"model={name}"])


class Shapes:
    """Stands for a dataset in :func:`build_model`: only the shapes are read."""

    def __init__(self, input_shape, num_outputs=10):
        self.input_shape, self.num_outputs = input_shape, num_outputs


def test_lenet_preset_matches_ernoult_et_al():
    # 28 -> conv5 pad2 -> 28 -> pool3 stride2 pad1 -> 14 -> 14 -> 7; 64*7*7 = 3136 features.
    model = build_model(preset("cnn"), Shapes((1, 28, 28)))
    assert model.hidden_shapes == [(32, 14, 14), (64, 7, 7), (512,)]
    assert model.layers[2].linear.in_features == 3136
    assert isinstance(model.layers[0].activation, torch.nn.ELU)
    # Their CIFAR-10 LeNet: 64 * 8 * 8 = 4096 inputs to the 512-unit layer.
    assert build_model(preset("cnn"), Shapes((3, 32, 32))).layers[2].linear.in_features == 4096
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_vgg_preset_matches_ernoult_et_al_and_refuses_small_images():
    model = build_model(preset("cnn_vgg"), Shapes((3, 32, 32)))
    assert [shape[0] for shape in model.hidden_shapes] == [128, 128, 256, 256, 512]
    assert model.hidden_shapes[-1] == (512, 1, 1) and model.layers[-1].linear.in_features == 512
    with pytest.raises(Exception, match="model.channels: the 28x28 input shrinks to nothing"):
        build_model(preset("cnn_vgg"), Shapes((1, 28, 28)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"input_shape": (40,)}, "model.input_shape: model=cnn needs images"),
        ({"channels": []}, "model.channels: must list"),
        ({"pool": "median"}, "model.pool: must be one of"),
        ({"activation": "swish"}, "model.activation: unknown"),
        ({"kernel_size": 0}, "model.kernel_size"),
        ({"pool_padding": 2}, "model.pool_padding: at most half"),
    ],
)
def test_bad_model_options_are_named(options, message):
    kwargs = {"input_shape": (1, 8, 8), "output_size": 3, "channels": [2], "pool_size": 2}
    with pytest.raises(ValueError, match=message):
        build_cnn(**{**kwargs, **options})


def test_layer_parts_by_hand():
    torch.manual_seed(0)
    model = small_cnn(pool="max")
    x, _ = batch()
    parts = model.layers[0].forward_parts(x)
    torch.testing.assert_close(parts.pre, model.layers[0].conv(x), rtol=0, atol=0)
    torch.testing.assert_close(parts.post, F.elu(parts.pre), rtol=0, atol=0)
    torch.testing.assert_close(parts.output, model.layers[0](x), rtol=0, atol=0)
    # The switches undo the pooling: unpooled maxima sit where the activation had them.
    unpooled = F.max_unpool2d(parts.output, parts.indices, 3, 2, 1, output_size=(12, 12))
    kept = unpooled != 0
    torch.testing.assert_close(unpooled[kept], parts.post[kept], rtol=0, atol=0)
    outputs = model.forward_layers(x)
    assert [o.shape[1:] for o in outputs[:-1]] == [torch.Size(s) for s in model.hidden_shapes]
    torch.testing.assert_close(outputs[-1], model(x), rtol=0, atol=0)


@pytest.mark.parametrize("pool", ["max", "avg", "none"])
@pytest.mark.parametrize("activation", ["elu", "tanh", "relu"])
def test_conv_fa_with_symmetric_feedback_is_backprop(pool, activation):
    torch.manual_seed(0)
    model = small_cnn(pool, activation)
    x, y = batch()
    method = build_method("fa", model, CrossEntropy(), {"optimizer": SGD, "feedback": "symmetric"})
    grads, _ = method.updates(x, y)
    for got, expected in zip(grads, backprop_grads(model, x, y), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


def test_conv_fa_feedback_kernels_replace_the_weights():
    torch.manual_seed(0)
    model = small_cnn()
    x, y = batch()
    method = build_method("fa", model, CrossEntropy(), {"optimizer": SGD, "feedback_seed": 3})
    kernels = [tuple(b.shape) for b in method.feedback_weights]
    assert kernels == [(4, 3, 3, 3), (7, 36), (5, 7)]  # like W_2, W_3, W_4
    # Nokland's scaling: U(+-1/sqrt(C_out k^2)) for the kernel, U(+-1/sqrt(rows)) for matrices.
    assert method.feedback_weights[0].abs().max() <= 1 / math.sqrt(4 * 9)
    assert method.feedback_weights[0].abs().max() > 0.9 / math.sqrt(4 * 9)
    grads, _ = method.updates(x, y)
    expected = backprop_grads(model, x, y)
    # The output layer's update is backprop's; the layers below differ.
    for got, true in zip(grads[-2:], expected[-2:]):
        torch.testing.assert_close(got, true, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(grads[0], expected[0])
    # By hand, layer by layer: the error reaching each layer's output is the transposed map of
    # the layer above with B in place of W (conv2d_input for a kernel), then local autograd.
    inputs = [x]
    for layer in model.layers:
        inputs.append(layer(inputs[-1]).detach())
    logits = inputs[-1].requires_grad_(True)
    (error,) = torch.autograd.grad(CrossEntropy()(logits, y), logits)
    expected = []
    for k in range(len(model.layers), 0, -1):
        layer = model.layers[k - 1]
        h = inputs[k - 1].detach().requires_grad_(True)
        a = layer.pre(h)
        (delta,) = torch.autograd.grad(layer.after_affine(a), a, error)
        expected = list(torch.autograd.grad(a, list(layer.parameters()), delta)) + expected
        if k > 1:
            b = method.feedback_weights[k - 2]
            if isinstance(layer, ConvBlock):
                error = torch.nn.grad.conv2d_input(h.shape, b, delta, 1, 1)
            else:
                error = (delta @ b).reshape(h.shape)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_conv_dfa_projects_the_output_error_onto_each_layer_output():
    torch.manual_seed(0)
    model = small_cnn()
    x, y = batch()
    method = build_method("dfa", model, CrossEntropy(), {"optimizer": SGD, "feedback_seed": 1})
    assert [tuple(d.shape) for d in method.feedback_weights] == [(5, 108), (5, 36), (5, 7)]
    grads, logits = method.updates(x, y)
    (e,) = torch.autograd.grad(CrossEntropy()(logits.requires_grad_(), y), logits)
    # Layer 1 by hand: its output receives e D_1, shaped (3, 6, 6), then local autograd.
    h1 = model.layers[0](x)
    expected = torch.autograd.grad(
        h1, list(model.layers[0].parameters()), (e @ method.feedback_weights[0]).reshape(h1.shape)
    )
    for got, want in zip(grads[:2], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["dni", "cdni"])
def test_conv_oracle_synthetic_gradients_give_exactly_the_backprop_step(name):
    torch.manual_seed(0)
    model = small_cnn()
    x, y = batch()
    expected = backprop_grads(model, x, y)
    options = {"optimizer": SGD, "synthetic_optimizer": ADAM, "conv_hidden_channels": [4]}
    method = build_method(name, model, CrossEntropy(), options)
    kinds = [type(module).__name__ for module in method.synthetic_modules]
    assert kinds == ["ConvSyntheticGradientModule"] * 2 + ["SyntheticGradientModule"]
    h = model.forward_layers(x)[0]
    method.synthetic_modules.double()
    # Zero-initialised output conv: the modules start by predicting zero gradients.
    assert torch.count_nonzero(method.synthetic_gradient(1, h, y)) == 0
    true = method.true_hidden_gradients(x, y)
    method.synthetic_gradient = lambda i, h, labels: true[i - 1]  # the oracle M_i
    method.compute_update(x, y)
    for param, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-12, atol=1e-15)


def test_conv_hsic_updates_each_layer_from_its_own_objective():
    torch.manual_seed(0)
    model = small_cnn().float()
    x, y = batch(16)
    x = x.float()
    options = {"optimizer": ADAM, "format_optimizer": ADAM}
    method = build_method("hsic", model, CrossEntropy(), options)
    method.on_train_start(2, 1)
    method.compute_update(x, y)
    objectives = method.objectives(x, y)
    assert len(objectives) == 3  # two conv blocks and the hidden linear layer
    for layer, (objective, _, _) in zip(model.layers[:-1], objectives):
        expected = torch.autograd.grad(objective, list(layer.parameters()))
        for param, want in zip(layer.parameters(), expected):
            torch.testing.assert_close(param.grad, want)
    assert all(p.grad is None for p in model.layers[-1].parameters())  # format layer untouched


@pytest.mark.parametrize(
    ("name", "options", "why"),
    [
        ("altmin", {}, "not for conv layers"),
        ("bptt", {}, "needs model=rnn"),
    ],
)
def test_methods_without_a_conv_version_refuse_in_one_line(make_config, name, options, why):
    cfg = make_config(f"method={name}")
    method_options = {k: v for k, v in cfg.method.items() if k != "name"}
    with pytest.raises(MethodConfigError, match=why) as error:
        build_method(name, small_cnn(), CrossEntropy(), {**method_options, **options})
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(f"method={name} needs")


@pytest.mark.parametrize("pool", ["max", "avg", "none"])
@pytest.mark.parametrize("activation", ["elu", "relu", "tanh", "sigmoid"])
def test_numpy_conv_reference_equals_autograd(pool, activation):
    torch.manual_seed(0)
    model = small_cnn(pool, activation)
    x, y = batch()
    method = build_method("numpy_backprop", model, CrossEntropy(), {"optimizer": SGD})
    method.compute_update(x, y)
    for param, want in zip(model.parameters(), backprop_grads(model, x, y), strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-10, atol=1e-13)


def test_numpy_conv_pieces_by_hand():
    # A 1x1x3x3 image, a 2x2 kernel of ones, no padding: each output sums a 2x2 patch.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    a = conv_forward(x, np.ones((1, 1, 2, 2)), np.zeros(1), 0)
    np.testing.assert_array_equal(a[0, 0], [[8.0, 12.0], [20.0, 24.0]])
    # Every input pixel gets the number of windows covering it.
    *_, grad_x = conv_backward(x, np.ones((1, 1, 2, 2)), 0, np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(grad_x[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    # Max pooling 2x2 stride 1 sends each gradient to its window's maximum (bottom right).
    grad = pool_backward(x, "max", 2, 1, 0, np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(grad[0, 0], [[0, 0, 0], [0, 1, 1], [0, 1, 1]])


@pytest.mark.parametrize("name", ["backprop", "fa"])
def test_diagnostics_measure_conv_weights(name):
    torch.manual_seed(0)
    model = small_cnn()
    x, y = batch()
    options = {"optimizer": SGD} | ({"feedback": "symmetric"} if name == "fa" else {})
    metrics = UpdateDiagnostics(x, y, 1)(build_method(name, model, CrossEntropy(), options))
    for param_name, grad in zip(
        [n for n, _ in model.named_parameters()], backprop_grads(model, x, y)
    ):
        assert metrics[f"alignment/{param_name}"] == pytest.approx(0.0, abs=1e-5)
        assert metrics[f"grad_norm/{param_name}"] == pytest.approx(float(grad.norm()))
    assert "alignment/layers.0.conv.weight" in metrics


def test_random_feedback_angles_on_conv_weights_are_finite_and_nonzero():
    torch.manual_seed(0)
    model = small_cnn()
    x, y = batch()
    method = build_method("fa", model, CrossEntropy(), {"optimizer": SGD, "feedback_seed": 0})
    metrics = UpdateDiagnostics(x, y, 1)(method)
    angle = metrics["alignment/layers.0.conv.weight"]
    assert 1.0 < angle < 179.0
    assert metrics["alignment/layers.3.linear.weight"] == pytest.approx(0.0, abs=1e-5)


def test_random_crop_flip_by_brute_force():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    out = RandomCropFlip(padding=1)(x, torch.Generator().manual_seed(0))
    again = RandomCropFlip(padding=1)(x, torch.Generator().manual_seed(0))
    assert out.equal(again)  # seeded
    padded = F.pad(x, (1, 1, 1, 1))
    for i in range(2):
        candidates = [
            crop
            for dy in range(3)
            for dx in range(3)
            for crop in (padded[i, :, dy : dy + 5, dx : dx + 5],)
            for crop in (crop, crop.flip(-1))
        ]
        assert any(out[i].equal(c) for c in candidates)
    flips = [RandomCropFlip(padding=0)(x, torch.Generator().manual_seed(s)) for s in range(20)]
    assert any(f.equal(x) for f in flips) and any(f.equal(x.flip(-1)) for f in flips)


def test_loop_applies_the_dataset_transform_to_training_batches_only():
    seen = []

    def transform(x, generator):
        seen.append(len(x))
        return torch.zeros_like(x)

    x = torch.randn(10, 2, 12, 12)
    data = Dataset(
        "toy",
        "classification",
        5,
        x,
        torch.arange(10) % 5,
        x[:4],
        torch.arange(4),
        train_transform=transform,
    )
    model = small_cnn().float()
    method = build_method("backprop", model, CrossEntropy(), {"optimizer": SGD})
    fit(method, data, 2, 4, 100, torch.Generator().manual_seed(0), progress=False)
    assert seen == [4, 4, 2, 4, 4, 2]


def test_image_loaders_give_images_and_a_prefix_of_the_training_set(tmp_path):
    arrays = write_tiny_idx(tmp_path / "fm")
    data = load_fashion_mnist(root=str(tmp_path / "fm"), download=False, num_train=7)
    assert data.x_train.shape == (7, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert data.y_train.tolist() == arrays["train-labels-idx1-ubyte"][:7].tolist()
    with pytest.raises(
        ValueError, match=r"data.num_train: must be null or an integer in \[1, 12\]"
    ):
        load_fashion_mnist(root=str(tmp_path / "fm"), download=False, num_train=13)
    write_tiny_cifar(tmp_path / "c")
    cifar = load_cifar10(root=str(tmp_path / "c"), download=False, num_train=9, augment=True)
    assert cifar.x_train.shape == (9, 3, 32, 32)
    assert isinstance(cifar.train_transform, RandomCropFlip) and cifar.train_transform.padding == 4
    assert load_cifar10(root=str(tmp_path / "c"), download=False).train_transform is None


@pytest.mark.parametrize("name", ["backprop", "fa", "dfa", "dni", "cdni", "hsic"])
def test_every_conv_method_trains_end_to_end(make_config, tmp_path, name):
    write_tiny_idx(tmp_path, n_train=40, n_test=10)
    cfg = make_config(
        f"method={name}",
        "model=cnn",
        "model.channels=[3,4]",
        "model.hidden_sizes=[8]",
        "data=fashion_mnist",
        f"data.root={tmp_path}",
        "data.download=false",
        "train.epochs=2",
        "train.batch_size=10",
        "diagnostics.every_steps=4",
    )
    final = run(cfg)
    assert 0.0 <= final["test_accuracy"] <= 1.0 and math.isfinite(final["train_loss"])
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [logged] = mlflow.search_runs(
        experiment_names=[cfg.mlflow.experiment_name], output_format="list"
    )
    assert logged.data.tags["model"] == "cnn"
    assert "grad_norm/layers.0.conv.weight" in logged.data.metrics


def test_cifar10_with_augmentation_end_to_end(make_config, tmp_path):
    write_tiny_cifar(tmp_path)
    cfg = make_config(
        "model=cnn",
        "model.channels=[2]",
        "model.hidden_sizes=[]",
        "data=cifar10",
        f"data.root={tmp_path}",
        "data.download=false",
        "data.augment=true",
        "train.epochs=1",
        "train.batch_size=10",
    )
    assert math.isfinite(run(cfg)["test_loss"])


@pytest.mark.parametrize("padding", [0, 2])
def test_affine_backward_is_autograds_gradients_bit_for_bit(padding):
    """FA's backward pass through a layer: one call, exactly the values autograd gives for the
    layer's own parameters and, with another weight, for its input."""
    torch.manual_seed(5)
    model = CNN((1, 11, 11), 10, [3, 4], kernel_size=3, padding=padding, hidden_sizes=[6])
    x = torch.randn(5, 1, 11, 11)
    for layer, h in zip(model.layers[1:], model.forward_layers(x)[:-1]):
        weight = torch.randn_like(layer.affine.weight)
        h = h.detach().requires_grad_(True)
        grad = torch.randn_like(layer.pre(h))
        (expected_dh,) = torch.autograd.grad(layer.affine_with(h, weight), h, grad)
        expected = torch.autograd.grad(layer.pre(h), list(layer.parameters()), grad)
        dh, dw, db = layer.affine_backward(grad, h.detach(), weight)
        assert torch.equal(dh, expected_dh)
        assert torch.equal(dw, expected[0]) and torch.equal(db, expected[1])
        assert dw.stride() == expected[0].stride()
        assert layer.affine_backward(grad, h.detach(), weight, input_grad=False)[0] is None
