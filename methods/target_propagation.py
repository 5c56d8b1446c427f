"""Difference target propagation (DTP) and DTP with the difference reconstruction loss (DRL).

DTP: Lee, Zhang, Fischer & Bengio, "Difference target propagation", ECML-PKDD 2015
(arXiv 1412.7525), Sec. 2-3 and Alg. 1. DRL: Meulemans, Carzaniga, Suykens, Sacramento &
Grewe, "A theoretical framework for target propagation", NeurIPS 2020 (arXiv 2006.14331),
Sec. 4 (difference reconstruction loss).

Notation, for an MLP with hidden layers ``h_1 .. h_H`` (``h_0 = x``) and a linear output layer::

    h_i = f_i(h_{i-1}) = act(W_i h_{i-1} + b_i)                    forward layer i = 1..H
    g_i(h_i) = act_g(V_i h_i + c_i)                                learned inverse, i = 2..H
    h_hat_H = h_H - eta_hat dL/dh_H                                top target (Sec. 3.1)
    h_hat_{i-1} = h_{i-1} + g_i(h_hat_i) - g_i(h_i)                difference correction (Eq. 15)
    forward loss of layer i:  mean_n || f_i(h_{i-1}) - h_hat_i ||^2    (h_{i-1}, h_hat_i constant)
    DTP inverse loss of g_i:  mean_n || g_i(f_i(h_{i-1} + eps)) - (h_{i-1} + eps) ||^2,
                              eps ~ N(0, sigma^2 I)                 (Sec. 3.2)

The output layer ``W_{H+1}`` is trained on the task loss ``L`` directly; ``L`` is the batch mean,
so ``dL/dh_H`` is the gradient of the batch-mean loss (as in the authors' code). Every layer is
updated from its own local loss only: each gradient is taken with ``torch.autograd.grad`` of that
layer's loss with respect to that layer's parameters, on detached inputs and targets.

DRL replaces the inverse loss of ``g_i`` (Meulemans et al. 2020, Sec. 4): the corrupted
``h_{i-1} + eps`` is propagated forward to ``h_H``, then back down through the
difference-corrected path ``h_{k-1} + g_k(.) - g_k(h_k)`` to layer ``i - 1``, and ``g_i`` is
trained to reconstruct the corrupted sample, the loss scaled by ``1 / sigma^2``; the upper
inverses on the path are held fixed. This aligns the propagated targets with Gauss-Newton targets
instead of layer-wise inverses.

Layer numbers in logged metrics are the 1-based hidden-layer numbers above:
``inverse_loss_layer{i}`` is the mean squared reconstruction error ``||rec - (h_{i-1} + eps)||^2``
of ``g_i`` (not scaled by ``1/sigma^2``, so DTP and DRL compare), and
``target_distance_layer{i}`` the mean of ``||h_i - h_hat_i||``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from experiments.losses import Loss
from experiments.models import ACTIVATIONS, MLP
from methods.base import EpochMeans, Method, MethodConfigError, make_optimizer, register_method

SCHEDULES = ("per_batch", "alternating")
INVERSE_INITS = ("orthogonal", "default")


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean_n ||a_n - b_n||^2`` for ``(batch, units)`` tensors: a 0-d tensor."""
    return (a - b).pow(2).sum(dim=1).mean()


@register_method("dtp")
class DifferenceTargetPropagation(Method):
    """Difference target propagation with learned inverses (Lee et al. 2015, Alg. 1).

    Args:
        model: an :class:`~experiments.models.MLP` with at least one hidden layer.
        loss: task loss ``L``.
        forward_optimizer: optimiser config for the forward weights (all ``model`` parameters).
        feedback_optimizer: optimiser config for the inverses ``V_i, c_i``.
        target_stepsize: ``eta_hat`` of the top target (> 0).
        noise_std: ``sigma`` of the corruption in the inverse loss (>= 0; > 0 for DRL).
        inverse_activation: ``act_g``: ``same`` (the model's activation, as in the paper where
            both are tanh) or one of ``relu, tanh, sigmoid, identity``.
        inverse_init: ``orthogonal`` (the paper's) or ``default`` (PyTorch's) for ``V_i``;
            ``c_i`` starts at zero with ``orthogonal``.
        schedule: ``per_batch``: on every batch, one inverse update then one forward update;
            ``alternating``: epochs alternate between an inverse pass and a forward pass over the
            data, as in the authors' code where each of its epochs is an inverse pass followed by
            a forward pass (so two of our epochs are one of theirs).
        feedback_pretrain_epochs: the first epochs train only the inverses (forward weights
            frozen); they count towards the run's epoch budget.

    Raises:
        MethodConfigError: for a non-MLP model or out-of-range options.
    """

    # DRL divides its feedback loss by sigma^2, so it needs sigma > 0.
    requires_noise = False

    def __init__(
        self,
        model: MLP,
        loss: Loss,
        forward_optimizer: Mapping[str, Any],
        feedback_optimizer: Mapping[str, Any],
        target_stepsize: float = 0.327736,
        noise_std: float = 0.359830,
        inverse_activation: str = "same",
        inverse_init: str = "orthogonal",
        schedule: str = "per_batch",
        feedback_pretrain_epochs: int = 0,
    ) -> None:
        super().__init__(model, loss)
        self.require_model(MLP, "mlp")
        if not target_stepsize > 0:
            raise MethodConfigError(f"method.target_stepsize: must be > 0, got {target_stepsize}")
        if not (noise_std > 0 if self.requires_noise else noise_std >= 0):
            bound = "> 0 (the loss is scaled by 1/sigma^2)" if self.requires_noise else ">= 0"
            raise MethodConfigError(f"method.noise_std: must be {bound}, got {noise_std}")
        if inverse_activation != "same" and inverse_activation not in ACTIVATIONS:
            raise MethodConfigError(
                f"method.inverse_activation: must be 'same' or one of {', '.join(ACTIVATIONS)}, "
                f"got {inverse_activation!r}"
            )
        if inverse_init not in INVERSE_INITS:
            raise MethodConfigError(
                f"method.inverse_init: must be one of {INVERSE_INITS}, got {inverse_init!r}"
            )
        if schedule not in SCHEDULES:
            raise MethodConfigError(
                f"method.schedule: must be one of {', '.join(SCHEDULES)}, got {schedule!r}"
            )
        if not isinstance(feedback_pretrain_epochs, int) or feedback_pretrain_epochs < 0:
            raise MethodConfigError("method.feedback_pretrain_epochs: must be an integer >= 0")
        self.target_stepsize = target_stepsize
        self.noise_std = noise_std
        self.schedule = schedule
        self.feedback_pretrain_epochs = feedback_pretrain_epochs
        self.epochs_done = 0
        hidden = model.hidden_sizes
        act_name = model.activation_name if inverse_activation == "same" else inverse_activation
        self.inverse_activation = ACTIVATIONS[act_name]()
        # inverses[i - 2] is g_i: h_i -> h_{i-1}, for hidden layers i = 2..H.
        self.inverses = nn.ModuleList(
            nn.Linear(hidden[i], hidden[i - 1]) for i in range(1, len(hidden))
        ).to(next(model.parameters()))  # the model's device and dtype
        if inverse_init == "orthogonal":
            for inverse in self.inverses:
                nn.init.orthogonal_(inverse.weight)
                nn.init.zeros_(inverse.bias)
        self.optimizer = make_optimizer(
            model.parameters(), forward_optimizer, "method.forward_optimizer"
        )
        self.feedback_optimizer = (
            make_optimizer(
                self.inverses.parameters(), feedback_optimizer, "method.feedback_optimizer"
            )
            if len(self.inverses)
            else None
        )
        self.means = EpochMeans()

    @property
    def num_hidden(self) -> int:
        """``H``, the number of hidden layers."""
        return len(self.model.hidden_sizes)

    def inverse(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """``g_i(h) = act_g(V_i h + c_i)``: ``(batch, n_i) -> (batch, n_{i-1})``, ``i`` in 2..H."""
        return self.inverse_activation(self.inverses[i - 2](h))

    def layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """``f_i(h) = act(W_i h + b_i)`` for hidden layer ``i`` in 1..H."""
        return self.model.activation(self.model.layers[i - 1](h))

    def hidden_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[h_0 = flattened x, h_1, ..., h_H]``, detached, each ``(batch, width)``."""
        with torch.no_grad():
            return [x.flatten(1), *self.model.forward_layers(x)[:-1]]

    @torch.no_grad()
    def propagate_targets(
        self, h: list[torch.Tensor], top_target: torch.Tensor
    ) -> list[torch.Tensor | None]:
        """Difference-corrected targets ``[None, h_hat_1, ..., h_hat_H]`` from ``h_hat_H``.

        Args:
            h: ``[h_0, ..., h_H]`` as from :meth:`hidden_activations`.
            top_target: ``h_hat_H``, ``(batch, n_H)``.
        """
        targets: list[torch.Tensor | None] = [None] * (self.num_hidden + 1)
        targets[-1] = top_target
        for i in range(self.num_hidden, 1, -1):
            targets[i - 1] = h[i - 1] + self.inverse(i, targets[i]) - self.inverse(i, h[i])
        return targets

    def top_target(self, h_top: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``h_hat_H = h_H - eta_hat dL/dh_H``; also returns the output layer's ``dL/dW``, ``L``.

        Returns:
            ``(h_hat_H, (dL/dW_out, dL/db_out), output)``, with ``output`` the detached logits.
        """
        h_top = h_top.detach().requires_grad_(True)
        head = self.model.layers[-1]
        output = head(h_top)
        grad_h, grad_w, grad_b = torch.autograd.grad(
            self.loss(output, y), [h_top, head.weight, head.bias]
        )
        return (h_top - self.target_stepsize * grad_h).detach(), (grad_w, grad_b), output.detach()

    def forward_update(
        self, h: list[torch.Tensor], targets: list[torch.Tensor | None]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Gradients of each hidden layer's local loss ``mean_n ||f_i(h_{i-1}) - h_hat_i||^2``.

        Only layer ``i``'s parameters get layer ``i``'s gradient; inputs and targets are constants.

        Returns:
            ``[(dW_1, db_1), ..., (dW_H, db_H)]``.
        """
        updates = []
        for i in range(1, self.num_hidden + 1):
            layer = self.model.layers[i - 1]
            local = squared_distance(self.layer(i, h[i - 1].detach()), targets[i].detach())
            updates.append(torch.autograd.grad(local, [layer.weight, layer.bias]))
        return updates

    def forward_step(
        self, x: torch.Tensor, y: torch.Tensor, h: list[torch.Tensor] | None = None
    ) -> dict[str, float]:
        """Compute targets and write every forward parameter's update into ``.grad``.

        ``h``: :meth:`hidden_activations` of ``x`` if already computed at the current weights.
        """
        h = self.hidden_activations(x) if h is None else h
        top, head_grads, output = self.top_target(h[-1], y)
        targets = self.propagate_targets(h, top)
        for i, update in enumerate(self.forward_update(h, targets), start=1):
            layer = self.model.layers[i - 1]
            layer.weight.grad, layer.bias.grad = update
            distance = (h[i] - targets[i]).norm(dim=1).mean().item()
            self.means.add(f"target_distance_layer{i}", distance)
        head = self.model.layers[-1]
        head.weight.grad, head.bias.grad = head_grads
        return self.loss.metrics(output, y)

    def reconstruction(
        self, i: int, h: list[torch.Tensor], corrupted: torch.Tensor
    ) -> torch.Tensor:
        """DTP: ``g_i(f_i(h_{i-1} + eps))``, differentiable in ``g_i``'s parameters only."""
        with torch.no_grad():
            upper = self.layer(i, corrupted)
        return self.inverse(i, upper)

    def feedback_loss_scale(self) -> float:
        """Factor on the summed inverse losses before their gradient (1 for DTP)."""
        return 1.0

    def feedback_step(
        self, x: torch.Tensor, h: list[torch.Tensor] | None = None
    ) -> dict[int, float]:
        """One update of every inverse on batch ``x``; returns ``{i: reconstruction error}``.

        ``h``: :meth:`hidden_activations` of ``x`` if already computed (the inverses' update
        does not change the forward weights, so one forward pass serves both steps).
        """
        if self.feedback_optimizer is None:
            return {}
        h = self.hidden_activations(x) if h is None else h
        losses = {}
        for i in range(2, self.num_hidden + 1):
            corrupted = h[i - 1] + self.noise_std * torch.randn_like(h[i - 1])
            losses[i] = squared_distance(self.reconstruction(i, h, corrupted), corrupted)
        total = self.feedback_loss_scale() * sum(losses.values())
        params = list(self.inverses.parameters())
        for param, grad in zip(params, torch.autograd.grad(total, params)):
            param.grad = grad
        self.feedback_optimizer.step()
        for i, value in losses.items():
            self.means.add(f"inverse_loss_layer{i}", value.item())
        return {i: value.item() for i, value in losses.items()}

    def phase(self) -> str:
        """What the current epoch trains: ``feedback``, ``forward`` or ``both``."""
        epoch = self.epochs_done
        if epoch < self.feedback_pretrain_epochs:
            return "feedback"
        if self.schedule == "alternating":
            return "feedback" if (epoch - self.feedback_pretrain_epochs) % 2 == 0 else "forward"
        return "both"

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Train the inverses and/or write the forward update into ``.grad`` (see ``schedule``).

        In a feedback-only phase every model ``.grad`` is ``None``: the model is not updated.
        """
        self.zero_grad()
        phase = self.phase()
        h = self.hidden_activations(x)
        if phase in ("feedback", "both"):
            self.feedback_step(x, h)
        if phase in ("forward", "both"):
            return self.forward_step(x, y, h)
        with torch.no_grad():
            return self.loss.metrics(self.model(x), y)

    def epoch_metrics(self) -> dict[str, float]:
        """Epoch means of ``inverse_loss_layer{i}`` and ``target_distance_layer{i}``; resets."""
        return self.means.pop()

    def on_train_start(self, epochs: int, batches_per_epoch: int) -> None:
        """Check that the feedback pre-training leaves epochs to train the network.

        Raises:
            MethodConfigError: if ``feedback_pretrain_epochs >= epochs``.
        """
        if self.feedback_pretrain_epochs >= epochs:
            raise MethodConfigError(
                f"method.feedback_pretrain_epochs: {self.feedback_pretrain_epochs} pre-training "
                f"epochs leave none of the train.epochs={epochs} budget to train the network"
            )

    def on_epoch_end(self, epoch: int) -> None:
        """Advance the schedule (pre-training, alternation)."""
        self.epochs_done = epoch


@register_method("drl")
class DifferenceReconstructionLoss(DifferenceTargetPropagation):
    """DTP whose inverses are trained with the difference reconstruction loss.

    Meulemans et al. 2020, Sec. 4: for ``g_i``, the corrupted ``h_{i-1} + eps`` is propagated
    forward to ``h_H`` and back through the difference-corrected inverses above ``i`` (held
    fixed), then through ``g_i``:
    ``rec = h_{i-1} + g_i(r_i) - g_i(h_i)``; the loss ``||rec - (h_{i-1} + eps)||^2`` is scaled
    by ``1 / sigma^2``. Options as for :class:`DifferenceTargetPropagation`.

    Raises:
        MethodConfigError: also when ``noise_std`` is 0 (the loss is scaled by 1/sigma^2).
    """

    requires_noise = True

    def reconstruction(
        self, i: int, h: list[torch.Tensor], corrupted: torch.Tensor
    ) -> torch.Tensor:
        """``h_{i-1} + g_i(r_i) - g_i(h_i)``, ``r_i`` the corrupted sample sent up and back down."""
        with torch.no_grad():
            upward = corrupted
            for k in range(i, self.num_hidden + 1):
                upward = self.layer(k, upward)
            r = upward
            for k in range(self.num_hidden, i, -1):
                r = h[k - 1] + self.inverse(k, r) - self.inverse(k, h[k])
        return h[i - 1] + self.inverse(i, r) - self.inverse(i, h[i])

    def feedback_loss_scale(self) -> float:
        """``1 / sigma^2`` (Meulemans et al. 2020, difference reconstruction loss)."""
        return 1.0 / self.noise_std**2
