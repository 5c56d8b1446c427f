"""Backprop computed by the from-scratch NumPy reference, plugged into the torch harness.

Each step copies the network's weights into the NumPy reference (float64): a
:class:`~methods.numpy_reference.NumpyMLP` for the MLP, a :class:`~methods.numpy_conv.NumpyCNN`
(im2col convolutions, hand-written pooling gradients) for the CNN; computes the gradient there by
hand-written backpropagation, and writes it into the torch parameters' ``.grad`` for the
configured optimiser. It must match ``method=backprop`` to float round-off: a live check of the
autograd path on the exact data and model of a run.
"""

from __future__ import annotations

import torch

from methods.base import Method, MethodConfigError, make_optimizer, register_method
from methods.losses import CrossEntropy, Loss, MeanSquaredError
from methods.networks import CNN, MLP
from methods.numpy_conv import ConvSpec, NumpyCNN
from methods.numpy_reference import NumpyMLP
from methods.options import OptimizerConfig


@register_method("numpy_backprop")
class NumpyBackprop(Method):
    """Backprop by :class:`NumpyMLP` (MLP) or :class:`~methods.numpy_conv.NumpyCNN` (CNN).

    Args:
        model: an ``MLP`` or ``CNN`` whose activation the NumPy reference supports.
        loss: :class:`CrossEntropy` (softmax output) or :class:`MeanSquaredError`.
        optimizer: optimiser config as for ``backprop``.

    Raises:
        MethodConfigError: for a model that is neither an MLP nor a CNN, or an unsupported loss.
    """

    # The NumPy network is overwritten from the model at every step: nothing to save.
    transient_attributes = frozenset({"reference"})

    def __init__(self, model: MLP | CNN, loss: Loss, optimizer: OptimizerConfig) -> None:
        super().__init__(model, loss)
        self.require_model((MLP, CNN), ("mlp", "cnn"))
        if isinstance(loss, CrossEntropy):
            output_activation, loss_name = "softmax", "cross_entropy"
        elif isinstance(loss, MeanSquaredError):
            output_activation, loss_name = "identity", "mse"
        else:
            raise MethodConfigError(f"method=numpy_backprop does not support loss {loss.name}")
        self.optimizer = make_optimizer(model.parameters(), optimizer)
        if isinstance(model, CNN):
            convs = [
                ConvSpec(block.conv.padding[0], block.pool_kind, *block.pool_args)
                for block in model.layers[: model.conv_depth]
            ]
            self.reference: NumpyMLP | NumpyCNN = NumpyCNN(convs, model.activation_name, loss_name)
            return
        self.reference = NumpyMLP(
            model.input_size,
            model.hidden_sizes,
            model.output_size,
            activation=model.activation_name,
            output_activation=output_activation,
            loss=loss_name,
        )

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write the NumPy backprop gradient into ``.grad``; returns batch ``loss``/``accuracy``."""
        layers = [getattr(layer, "affine", layer) for layer in self.model.layers]
        self.reference.weights = [layer.weight.detach().cpu().double().numpy() for layer in layers]
        self.reference.biases = [layer.bias.detach().cpu().double().numpy() for layer in layers]
        images = isinstance(self.model, CNN)
        inputs = (x.detach() if images else x.detach().flatten(1)).cpu().double().numpy()
        targets = y.detach().cpu().numpy()
        grad_w, grad_b = self.reference.backward(inputs, targets)
        for layer, gw, gb in zip(layers, grad_w, grad_b):
            layer.weight.grad = torch.as_tensor(gw, dtype=layer.weight.dtype, device=self.device)
            layer.bias.grad = torch.as_tensor(gb, dtype=layer.bias.dtype, device=self.device)
        with torch.no_grad():
            return self.loss.metrics(self.model(x), y)
