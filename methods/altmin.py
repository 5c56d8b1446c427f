"""Online alternating minimisation with auxiliary variables ("codes").

Choromanska, Cowen, Kumaravel, Luss, Rigotti, Rish, Kingsbury, DiAchille, Gurev, Tejwani &
Bouneffouf, "Beyond backprop: online alternating minimization with auxiliary variables", ICML
2019 (arXiv 1806.09077), Sec. 3 and Alg. 1 (the online AM loop: codes, then weights, per
minibatch), in the form of the authors' public code (github.com/IBM/online-alt-min:
``altmin.py`` ``compute_codes_loss``, ``update_codes``, ``update_last_layer_``,
``update_hidden_weights_adam_``, as run by ``run_altmin_sgd.py``: weights by Adam).

For the MLP the codes are the hidden pre-activations ``c_l = W_l h_{l-1} + b_l`` (l = 1..L-1,
``h_l = f(c_l)``, ``h_0 = x``). Per minibatch:

1. Forward pass; the codes start at their forward values ``c_l^0``.
2. Codes, top-down, each for ``code_steps`` steps of SGD (lr ``code_lr``, Nesterov momentum 0.9),
   a fresh momentum buffer per code and batch (``torch.optim.SGD``'s update, written out):
   top code ``c_{L-1}`` (``top_code_loss``):
     ``scaled_loss`` (default, the authors' ``compute_codes_loss``):
     ``(1/mu) L(W_L f(c) + b_L, y) + mse(c, c^0)``;
     ``scaled_mismatch``: ``L(W_L f(c) + b_L, y) + mu * mse(c, c^0)``.
   Both have the same minimiser, but ``code_steps`` (5) SGD steps never reach it: the step
   sizes differ by ``1/mu`` (~333), and with ``scaled_mismatch`` the top code barely moves (on
   an MNIST-1D batch ~250x less than with ``scaled_loss``).
   Lower ``c_l``: ``mse(W_{l+1} f(c_l) + b_{l+1}, c_{l+1}) + mse(c_l, c_l^0)``, with ``c_{l+1}``
   the code just updated (held fixed); in the authors' code this is
   ``(1/mu) * mu * mse(...) + mse(c, c^0)``, for either option.
   ``L`` is the batch mean and ``mse`` (``F.mse_loss``) the mean over all ``batch x units``
   elements, as in the authors' code.
3. Weights, each layer from its own loss on the updated codes (held fixed), no gradient crossing
   layers: the output layer on ``L(W_L f(c_{L-1}) + b_L, y)``, hidden layer ``l`` on
   ``mse(W_l f(c_{l-1}) + b_l, c_l)`` (``f(c_0) = x``). These gradients are written to
   ``.grad`` and applied by the configured optimiser (Adam, lr 0.008 in the authors' setup; one
   Adam over all layers equals their Adam per layer, Adam being per-parameter).

Departures from the authors' network and code: :class:`AlternatingMinimization`.

Logged per epoch: ``code_shift_layer{l}``, the mean ``||c_l - c_l^0||`` per example after the
code steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
import torch.nn.functional as F

from methods import altmin_gradients as gradients
from methods import autograd_kernels as kernels
from methods.base import Method, make_optimizer, register_method
from methods.losses import Loss
from methods.networks import MLP
from methods.options import Bounds, OneOf, OptimizerConfig

TOP_CODE_LOSSES = ("scaled_loss", "scaled_mismatch")

# (f(c), layer(f(c))): a code step's forward products, ``(batch, n_l)`` and ``(batch, n_{l+1})``.
Forward = tuple[torch.Tensor, torch.Tensor]
# (c, forward products at c or None) -> d objective / dc.
Gradient = Callable[[torch.Tensor, Forward | None], torch.Tensor]


@register_method("altmin")
class AlternatingMinimization(Method):
    """Online alternating minimisation (Choromanska et al. 2019, Alg. 1) on an MLP.

    Departures from the authors' network and code, with the reason:

    * Network: theirs has bias-free hidden layers, each followed by batch norm (the codes are the
      normalised outputs), ReLU, 2 x 100 units; we train the harness's shared MLP (biases, no
      batch norm, the configured activation and widths) so that every method trains the same
      network.
    * Learning-rate halving every 8 epochs: not part of the method here; a schedule is a shared
      option of the loop, identical for every method (``train.lr_schedule=step
      train.lr_step_epochs=8`` is the authors' halving).
    * Proximity term ``mse(c, c^0)``: kept with its gradient, as the paper and
      ``compute_codes_loss`` write it. In the authors' ``update_codes`` that gradient is exactly
      zero: ``codes_initial`` is cloned after ``requires_grad_(True)``, so it stays in the
      autograd graph and the two gradients of ``mse(c, clone(c))`` cancel (checked by running
      their functions). Negligible at the default sizes: on an MNIST-1D batch (100 x 256-256)
      dropping the term changes the codes by ~1e-4 of their shift.
    * Not implemented (all off in the authors' Adam runs): the co-activation-memory weight
      update (their ``update_memory``/``BCD``), the L1 sparsity terms ``lambda_c``/``lambda_w``,
      the per-batch increase of ``mu`` (``d_mu`` = 0), the post-processing of the last layer.

    Args:
        model: an :class:`~methods.networks.MLP`.
        loss: task loss ``L`` (batch mean).
        optimizer: optimiser config of the weights.
        mu: the code-mismatch weight (> 0; 0.003): divides ``L`` in the top code's loss
            (``scaled_loss``) or multiplies the mismatch (``scaled_mismatch``).
        code_steps: optimisation steps per code per batch (>= 0; 5).
        code_lr: learning rate of the codes' SGD (> 0; 0.3).
        code_momentum: Nesterov momentum of the codes' SGD (in [0, 1); 0.9; 0 is plain SGD).
        top_code_loss: ``scaled_loss`` (the authors': ``(1/mu) L + mse(c, c^0)``) or
            ``scaled_mismatch`` (``L + mu * mse(c, c^0)``).

    Raises:
        MethodConfigError: for a non-MLP model or out-of-range options.
    """

    def __init__(
        self,
        model: MLP,
        loss: Loss,
        optimizer: OptimizerConfig,
        mu: Annotated[float, Bounds(gt=0)] = 0.003,
        code_steps: Annotated[int, Bounds(ge=0)] = 5,
        code_lr: Annotated[float, Bounds(gt=0)] = 0.3,
        code_momentum: Annotated[float, Bounds(ge=0, lt=1)] = 0.9,
        top_code_loss: Annotated[str, OneOf(*TOP_CODE_LOSSES)] = "scaled_loss",
    ) -> None:
        super().__init__(model, loss)
        self.require_model(
            MLP,
            "mlp",
            why="codes are written out for fully connected layers only (not for conv layers "
            "and their pooling, nor for recurrent cells)",
        )
        self.mu, self.code_steps, self.code_lr = mu, code_steps, code_lr
        self.code_momentum = code_momentum
        self.top_code_loss = top_code_loss
        self.optimizer = make_optimizer(model.parameters(), optimizer)
        # Whether the code gradients are written out (faster, same bits) or left to autograd.
        self._closed_form = kernels.supported(model.activation, loss)

    def forward_codes(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[c_1^0, ..., c_{L-1}^0]``: the hidden pre-activations, detached, ``(batch, n_l)``."""
        return self._forward_pass(x)[0]

    @torch.no_grad()
    def _forward_pass(
        self, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """``(codes, hidden, output)`` of the forward pass, detached.

        ``codes`` as :meth:`forward_codes`, ``hidden = [f(c_1^0), ..., f(c_{L-1}^0)]`` and
        ``output = W_L f(c_{L-1}^0) + b_L`` ``(batch, outputs)``, the output of ``model(x)``
        (the same operations). The code steps' first forward products are these values.
        """
        codes, hidden, h = [], [], x.flatten(1)
        for layer in self.model.layers[:-1]:
            codes.append(layer(h))
            h = self.model.activation(codes[-1])
            hidden.append(h)
        return codes, hidden, self.model.layers[-1](h)

    def _minimise(
        self, code: torch.Tensor, gradient: Gradient, first: Forward | None = None
    ) -> torch.Tensor:
        """``code_steps`` steps of SGD (Nesterov when ``code_momentum > 0``) from ``code``.

        ``gradient(c, forward)`` is the objective's gradient at ``c``; ``first``, if given, is the
        forward products ``(f(c), layer(f(c)))`` at the starting ``code``, passed to the first
        step (the codes' forward pass computed them already). The update is
        ``torch.optim.SGD``'s (dampening 0, no weight decay), written out with the same tensor
        operations in the same order, so the codes are bit-identical to SGD's: an optimiser
        object per code and batch cost more than the steps themselves.
        """
        momentum, lr = self.code_momentum, self.code_lr
        # As a tensor of the code's dtype: a Python number is converted on every mul_ (the
        # same float(momentum) either way, so the same products).
        momentum_t = torch.tensor(momentum, dtype=code.dtype, device=code.device)
        buffer: torch.Tensor | None = None
        for step in range(self.code_steps):
            grad = gradient(code, first if step == 0 else None)
            if momentum:
                if buffer is None:
                    # SGD's buffer is a clone of the first gradient and the step adds it to
                    # the gradient in place; the gradient itself is the buffer here and the
                    # step a new tensor: the same sum g + momentum * g, one copy fewer.
                    buffer = grad
                    grad = torch.add(grad, buffer, alpha=momentum)
                else:
                    buffer.mul_(momentum_t).add_(grad)
                    grad = grad.add_(buffer, alpha=momentum)  # a fresh tensor: in place
            if step == 0:  # a new tensor (the caller's code stays): SGD's clone and step in one
                code = torch.add(code, grad, alpha=-lr)
            else:
                code.add_(grad, alpha=-lr)
        return code if self.code_steps else code.clone()

    def top_code_objective(
        self, code0: torch.Tensor, y: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The top code's loss as a function of ``c`` ``(batch, n_{L-1})`` (see ``top_code_loss``).

        ``code0`` is ``c_{L-1}^0``, a constant; the output layer's weights are held fixed.
        """
        head, act = self.model.layers[-1], self.model.activation
        if self.top_code_loss == "scaled_loss":
            return lambda c: self.loss(head(act(c)), y) / self.mu + F.mse_loss(c, code0)
        return lambda c: self.loss(head(act(c)), y) + self.mu * F.mse_loss(c, code0)

    def lower_code_objective(
        self, index: int, code0: torch.Tensor, above: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Code ``c_l``'s loss (``l = index + 1``) as a function of ``c`` ``(batch, n_l)``.

        ``mse(W_{l+1} f(c) + b_{l+1}, above) + mse(c, code0)``; ``above`` is the updated
        ``c_{l+1}`` and ``code0`` is ``c_l^0``, both constants, as are the weights.
        """
        layer, act = self.model.layers[index + 1], self.model.activation
        return lambda c: F.mse_loss(layer(act(c)), above) + F.mse_loss(c, code0)

    def _by_autograd(self, objective: Callable[[torch.Tensor], torch.Tensor]) -> Gradient:
        """``(c, forward) -> d objective / dc`` by autograd, ``(batch, n_l) -> (batch, n_l)``.

        The fallback where :func:`methods.autograd_kernels.supported` is false (the written-out
        gradients of :mod:`methods.altmin_gradients` are the same bits as these); ``forward`` is
        ignored.
        """

        def by_autograd(c: torch.Tensor, forward: Forward | None = None) -> torch.Tensor:
            c = c.detach().requires_grad_(True)
            with torch.enable_grad():
                return torch.autograd.grad(objective(c), c)[0]

        return by_autograd

    def update_codes(
        self,
        codes: list[torch.Tensor],
        y: torch.Tensor,
        hidden: list[torch.Tensor] | None = None,
        output: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Step 2: the codes after ``code_steps`` steps each, top-down (weights fixed).

        Args:
            codes: ``[c_1^0, ..., c_{L-1}^0]`` as from :meth:`forward_codes`.
            y: the batch's targets.
            hidden: ``[f(c_1^0), ..., f(c_{L-1}^0)]`` from the same forward pass
                (:meth:`_forward_pass`), if computed. With ``output``, each code's first step
                reuses them, with ``c_{l+1}^0`` as layer ``l+1``'s output at ``c_l^0``: one
                GEMM through each hidden layer saved, the same bits.
            output: the output layer's output ``(batch, outputs)`` from that forward pass.

        Returns:
            The updated codes, detached, same shapes.
        """
        layers, act = self.model.layers, self.model.activation
        updated = list(codes)
        top = len(codes) - 1
        reuse = hidden is not None and output is not None
        with torch.no_grad():
            gradient: Gradient
            if self._closed_form:
                scaled_loss = self.top_code_loss == "scaled_loss"
                gradient = gradients.TopCodeGradient(
                    codes[top], y, layers[-1], act, self.loss, self.mu, scaled_loss
                )
            else:
                gradient = self._by_autograd(self.top_code_objective(codes[top], y))
            updated[top] = self._minimise(
                codes[top], gradient, (hidden[top], output) if reuse else None
            )
            for i in range(top - 1, -1, -1):
                if self._closed_form:
                    gradient = gradients.LowerCodeGradient(
                        codes[i], updated[i + 1], layers[i + 1], act
                    )
                else:
                    gradient = self._by_autograd(
                        self.lower_code_objective(i, codes[i], updated[i + 1])
                    )
                updated[i] = self._minimise(
                    codes[i], gradient, (hidden[i], codes[i + 1]) if reuse else None
                )
        return updated

    def layer_updates(
        self,
        x: torch.Tensor,
        codes: list[torch.Tensor],
        y: torch.Tensor,
        first_output: torch.Tensor | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Step 3: ``[(dW_l, db_l)]`` for l = 1..L, each from layer ``l``'s own loss.

        Args:
            x: the batch's inputs ``(batch, *shape)``.
            codes: the updated codes ``[c_1, ..., c_{L-1}]``, ``(batch, n_l)``.
            y: the batch's targets.
            first_output: layer 1's output ``W_1 x + b_1`` if already computed (it is
                ``c_1^0`` of :meth:`forward_codes`: the weights have not changed since).
        """
        layers, act = self.model.layers, self.model.activation
        inputs = [x.flatten(1)] + [act(c) for c in codes]
        if not self._closed_form:
            losses = [
                F.mse_loss(layer(h_in.detach()), target.detach())
                for layer, h_in, target in zip(layers[:-1], inputs[:-1], codes)
            ]
            losses.append(self.loss(layers[-1](inputs[-1].detach()), y))
            # One backward pass for all layers: the inputs are detached, so each parameter's
            # gradient comes from its own loss alone, with the same operations as one pass each.
            params = [p for layer in layers for p in (layer.weight, layer.bias)]
            grads = torch.autograd.grad(sum(losses), params)
            return [(grads[2 * i], grads[2 * i + 1]) for i in range(len(layers))]
        updates = []
        with torch.no_grad():
            for i, layer in enumerate(layers):
                h_in = inputs[i]
                reuse = i == 0 and first_output is not None
                output = first_output if reuse else layer(h_in)
                if i < len(codes):
                    grad_output = kernels.mse_gradient(output, codes[i])
                else:
                    grad_output = kernels.loss_gradient(self.loss, output, y)
                updates.append(
                    gradients.linear_parameter_gradients(grad_output, h_in, layer.weight)
                )
        return updates

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Update the codes, then write every layer's local-loss gradient into ``.grad``."""
        codes, hidden, output = self._forward_pass(x)
        metrics = self.loss.metrics(output, y)
        updated = self.update_codes(codes, y, hidden, output)
        layer_grads = self.layer_updates(x, updated, y, first_output=codes[0])
        for layer, (grad_w, grad_b) in zip(self.model.layers, layer_grads):
            layer.weight.grad, layer.bias.grad = grad_w, grad_b
        with torch.no_grad():
            # One conversion for all layers' shifts (the same float32 values as .item()).
            # vector_norm is what Tensor.norm(dim=1) calls, without torch.norm's Python wrapper.
            shifts = torch.stack(
                [
                    torch.linalg.vector_norm(new - old, 2, 1).mean()
                    for old, new in zip(codes, updated)
                ]
            )
        for i, shift in enumerate(shifts.tolist(), start=1):
            self.means.add(f"code_shift_layer{i}", shift)
        return metrics

    def epoch_metrics(self) -> dict[str, float]:
        """Epoch means of ``code_shift_layer{l}``."""
        return self.means.values()
