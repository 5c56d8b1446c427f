"""Backprop computed by the from-scratch NumPy reference, plugged into the torch harness.

Each step copies the MLP's weights into a :class:`~methods.numpy_reference.NumpyMLP` (float64),
computes the gradient there by hand-written backpropagation, and writes it into the torch
parameters' ``.grad`` for the configured optimiser. It must match ``method=backprop`` to float
round-off: a live check of the autograd path on the exact data and model of a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from methods.base import Method, MethodConfigError, make_optimizer, register_method
from methods.losses import CrossEntropy, Loss, MeanSquaredError
from methods.networks import MLP
from methods.numpy_reference import NumpyMLP


@register_method("numpy_backprop")
class NumpyBackprop(Method):
    """Backprop by :class:`NumpyMLP`; only for :class:`~methods.networks.MLP` models.

    Args:
        model: an ``MLP`` whose activation the NumPy reference supports.
        loss: :class:`CrossEntropy` (softmax output) or :class:`MeanSquaredError`.
        optimizer: optimiser config as for ``backprop``.

    Raises:
        MethodConfigError: for a non-MLP model or an unsupported loss.
    """

    def __init__(self, model: MLP, loss: Loss, optimizer: Mapping[str, Any]) -> None:
        super().__init__(model, loss)
        self.require_model(
            MLP, "mlp", why="the NumPy reference has no convolution (it is fully connected only)"
        )
        if isinstance(loss, CrossEntropy):
            output_activation, loss_name = "softmax", "cross_entropy"
        elif isinstance(loss, MeanSquaredError):
            output_activation, loss_name = "identity", "mse"
        else:
            raise MethodConfigError(f"method=numpy_backprop does not support loss {loss.name}")
        self.reference = NumpyMLP(
            model.input_size,
            model.hidden_sizes,
            model.output_size,
            activation=model.activation_name,
            output_activation=output_activation,
            loss=loss_name,
        )
        self.optimizer = make_optimizer(model.parameters(), optimizer)

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write the NumPy backprop gradient into ``.grad``; returns batch ``loss``/``accuracy``."""
        layers = self.model.layers
        self.reference.weights = [layer.weight.detach().cpu().double().numpy() for layer in layers]
        self.reference.biases = [layer.bias.detach().cpu().double().numpy() for layer in layers]
        inputs = x.detach().flatten(1).cpu().double().numpy()
        targets = y.detach().cpu().numpy()
        grad_w, grad_b = self.reference.backward(inputs, targets)
        for layer, gw, gb in zip(layers, grad_w, grad_b):
            layer.weight.grad = torch.as_tensor(gw, dtype=layer.weight.dtype, device=self.device)
            layer.bias.grad = torch.as_tensor(gb, dtype=layer.bias.dtype, device=self.device)
        with torch.no_grad():
            return self.loss.metrics(self.model(x), y)
