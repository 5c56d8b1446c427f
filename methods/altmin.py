"""Online alternating minimisation with auxiliary variables ("codes").

Choromanska, Cowen, Kumaravel, Luss, Rigotti, Rish, Kingsbury, DiAchille, Gurev, Tejwani &
Bouneffouf, "Beyond backprop: online alternating minimization with auxiliary variables", ICML
2019 (arXiv 1806.09077), Sec. 3 and Alg. 1-2, as in the authors' public code.

For the MLP the codes are the hidden pre-activations ``c_l = W_l h_{l-1} + b_l`` (l = 1..L-1,
``h_l = f(c_l)``, ``h_0 = x``). Per minibatch:

1. Forward pass; the codes start at their forward values ``c_l^0``.
2. Codes, top-down, each for ``code_steps`` steps of SGD (lr ``code_lr``, Nesterov momentum 0.9):
   top code ``c_{L-1}``:  ``L(W_L f(c_{L-1}), y) + mu * mse(c_{L-1}, c_{L-1}^0)``;
   lower ``c_l``:         ``mse(W_{l+1} f(c_l), c_{l+1}) + mse(c_l, c_l^0)``, with ``c_{l+1}``
   the code just updated (held fixed). (The authors' code divides the top loss by ``mu``; the
   minimiser is the same.)
3. Weights, each layer from its own loss on the updated codes (held fixed), no gradient crossing
   layers: the output layer on ``L(W_L f(c_{L-1}), y)``, hidden layer ``l`` on
   ``mse(W_l f(c_{l-1}), c_l)`` (``f(c_0) = x``). These gradients are written to ``.grad`` and
   applied by the configured optimiser (Adam, lr 0.008 in the authors' setup).

Logged per epoch: ``code_shift_layer{l}``, the mean ``||c_l - c_l^0||`` per example after the
code steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from experiments.losses import Loss
from experiments.models import MLP
from methods.base import EpochMeans, Method, MethodConfigError, make_optimizer, register_method


@register_method("altmin")
class AlternatingMinimization(Method):
    """Online alternating minimisation (Choromanska et al. 2019) on an MLP.

    Args:
        model: an :class:`~experiments.models.MLP`.
        loss: task loss.
        optimizer: optimiser config of the weights.
        mu: weight of the code-mismatch term in the top code's loss (> 0; 0.003).
        code_steps: optimisation steps per code per batch (>= 0; 5).
        code_lr: learning rate of the codes' SGD (> 0; 0.3).
        code_momentum: Nesterov momentum of the codes' SGD (in [0, 1); 0.9).
        lr_halving_epochs: halve the weights' learning rate every this many epochs (the
            authors': 8); ``None`` to keep it.

    Raises:
        MethodConfigError: for a non-MLP model or out-of-range options.
    """

    def __init__(
        self,
        model: MLP,
        loss: Loss,
        optimizer: Mapping[str, Any],
        mu: float = 0.003,
        code_steps: int = 5,
        code_lr: float = 0.3,
        code_momentum: float = 0.9,
        lr_halving_epochs: int | None = 8,
    ) -> None:
        super().__init__(model, loss)
        self.require_model(MLP, "mlp")
        values = {
            "mu": mu,
            "code_lr": code_lr,
            "code_momentum": code_momentum,
            "code_steps": code_steps,
            "lr_halving_epochs": lr_halving_epochs,
        }
        valid = {
            "mu": mu > 0,
            "code_lr": code_lr > 0,
            "code_momentum": 0 <= code_momentum < 1,
            "code_steps": isinstance(code_steps, int) and code_steps >= 0,
            "lr_halving_epochs": lr_halving_epochs is None
            or (isinstance(lr_halving_epochs, int) and lr_halving_epochs >= 1),
        }
        for key, ok in valid.items():
            if not ok:
                raise MethodConfigError(f"method.{key}: out of range, got {values[key]!r}")
        self.mu, self.code_steps, self.code_lr = mu, code_steps, code_lr
        self.code_momentum = code_momentum
        self.lr_halving_epochs = lr_halving_epochs
        self.optimizer = make_optimizer(model.parameters(), optimizer)
        self.means = EpochMeans()

    def forward_codes(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[c_1^0, ..., c_{L-1}^0]``: the hidden pre-activations, detached, ``(batch, n_l)``."""
        codes, h = [], x.flatten(1)
        with torch.no_grad():
            for layer in self.model.layers[:-1]:
                codes.append(layer(h))
                h = self.model.activation(codes[-1])
        return codes

    def _minimise(self, code: torch.Tensor, objective: Any) -> torch.Tensor:
        code = code.clone().requires_grad_(True)
        optimizer = torch.optim.SGD(
            [code], lr=self.code_lr, momentum=self.code_momentum, nesterov=self.code_momentum > 0
        )
        for _ in range(self.code_steps):
            optimizer.zero_grad()
            (grad,) = torch.autograd.grad(objective(code), code)
            code.grad = grad
            optimizer.step()
        return code.detach()

    def update_codes(self, codes: list[torch.Tensor], y: torch.Tensor) -> list[torch.Tensor]:
        """Step 2: the codes after ``code_steps`` steps each, top-down (weights fixed)."""
        layers, act = self.model.layers, self.model.activation
        updated = list(codes)
        top = len(codes) - 1
        updated[top] = self._minimise(
            codes[top],
            lambda c: self.loss(layers[-1](act(c)), y) + self.mu * F.mse_loss(c, codes[top]),
        )
        for i in range(top - 1, -1, -1):
            above, layer = updated[i + 1], layers[i + 1]
            updated[i] = self._minimise(
                codes[i],
                lambda c, i=i, above=above, layer=layer: (
                    F.mse_loss(layer(act(c)), above) + F.mse_loss(c, codes[i])
                ),
            )
        return updated

    def layer_updates(
        self, x: torch.Tensor, codes: list[torch.Tensor], y: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Step 3: ``[(dW_l, db_l)]`` for l = 1..L, each from layer ``l``'s own loss."""
        layers, act = self.model.layers, self.model.activation
        inputs = [x.flatten(1)] + [act(c) for c in codes]
        updates = []
        for layer, h_in, target in zip(layers[:-1], inputs[:-1], codes):
            local = F.mse_loss(layer(h_in.detach()), target.detach())
            updates.append(torch.autograd.grad(local, [layer.weight, layer.bias]))
        head = layers[-1]
        output_loss = self.loss(head(inputs[-1].detach()), y)
        updates.append(torch.autograd.grad(output_loss, [head.weight, head.bias]))
        return updates

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Update the codes, then write every layer's local-loss gradient into ``.grad``."""
        codes = self.forward_codes(x)
        with torch.no_grad():
            metrics = self.loss.metrics(self.model(x), y)
        updated = self.update_codes(codes, y)
        for layer, (grad_w, grad_b) in zip(self.model.layers, self.layer_updates(x, updated, y)):
            layer.weight.grad, layer.bias.grad = grad_w, grad_b
        for i, (old, new) in enumerate(zip(codes, updated), start=1):
            self.means.add(f"code_shift_layer{i}", (new - old).norm(dim=1).mean().item())
        return metrics

    def epoch_metrics(self) -> dict[str, float]:
        """Epoch means of ``code_shift_layer{l}``."""
        return self.means.pop()

    def on_epoch_end(self, epoch: int) -> None:
        """Halve the weights' learning rate every ``lr_halving_epochs`` epochs."""
        if self.lr_halving_epochs and epoch % self.lr_halving_epochs == 0:
            for group in self.optimizer.param_groups:
                group["lr"] /= 2
