"""Standard backpropagation: the true gradient of the task loss by reverse-mode autograd.

Rumelhart, Hinton & Williams, "Learning representations by back-propagating errors", Nature
1986. The gradient is written into ``param.grad`` and applied by any ``torch.optim`` optimiser
chosen in ``conf/method/backprop.yaml`` (``optimizer._target_``).
"""

from __future__ import annotations

import torch
from torch import nn

from methods.base import Method, make_optimizer, register_method
from methods.losses import Loss
from methods.options import OptimizerConfig


@register_method("backprop")
class Backprop(Method):
    """Autograd backprop with a configurable optimiser.

    Args:
        model: network mapping ``(batch, *features)`` to ``(batch, outputs)``.
        loss: task loss.
        optimizer: optimiser config, e.g. ``{"_target_": "torch.optim.Adam", "lr": 1e-3}``.

    Raises:
        MethodConfigError: if the optimiser config is invalid.
    """

    def __init__(self, model: nn.Module, loss: Loss, optimizer: OptimizerConfig) -> None:
        super().__init__(model, loss)
        self.optimizer = make_optimizer(model.parameters(), optimizer)

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write ``dL/dtheta`` into ``.grad``; returns the batch ``loss`` (and ``accuracy``)."""
        self.zero_grad()
        output = self.model(x)
        loss = self.loss(output, y)
        loss.backward()
        return self.loss.metrics(output.detach(), y, loss.detach())
