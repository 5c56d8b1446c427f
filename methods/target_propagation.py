"""Difference target propagation (DTP) and DTP with the difference reconstruction loss (DRL).

DTP: Lee, Zhang, Fischer & Bengio, "Difference target propagation", ECML-PKDD 2015
(arXiv 1412.7525), Sec. 2-3 and Alg. 1. DRL: Meulemans, Carzaniga, Suykens, Sacramento &
Grewe, "A theoretical framework for target propagation", NeurIPS 2020 (arXiv 2006.14331),
Sec. 4 (difference reconstruction loss), as in the authors' public code
(github.com/meulemansalex/theoretical_framework_for_target_propagation: ``lib/networks.py``
``DTPNetwork``, ``DTPDRLNetwork``; ``lib/dtpdrl_layers.py``; ``lib/train.py`` ``train_parallel``).

Notation, for an MLP with hidden layers ``h_1 .. h_H`` (``h_0 = x``) and a linear output layer
``h_{H+1} = o``; the target chain runs from its top layer ``K`` down to layer 1, with
``K = H`` (``top_target_layer=last_hidden``, Lee et al.) or ``K = H + 1``
(``top_target_layer=output``, Meulemans et al.)::

    h_i = f_i(h_{i-1}) = act(W_i h_{i-1} + b_i)        hidden layer i = 1..H
    o = h_{H+1} = f_{H+1}(h_H) = W_{H+1} h_H + b_{H+1}  output layer (linear, logits)
    g_i(h_i) = act_g(V_i h_i + c_i)                    learned inverse, i = 2..K
    h_hat_K = h_K - eta_hat dL/dh_K                    top target (Lee Sec. 3.1)
    h_hat_{i-1} = h_{i-1} + g_i(h_hat_i) - g_i(h_i)    difference correction (Lee Eq. 15)
    forward loss of layer i:  mean_n || f_i(h_{i-1}) - h_hat_i ||^2    (h_{i-1}, h_hat_i constant)
    DTP inverse loss of g_i:  mean_n || g_i(f_i(h_{i-1} + eps)) - (h_{i-1} + eps) ||^2,
                              eps ~ N(0, sigma^2 I)                 (Lee Sec. 3.2)

With ``K = H`` the output layer is trained on the task loss ``L`` directly (Lee et al.); with
``K = H + 1`` it is trained towards its target ``o_hat = o - eta_hat dL/do`` like every other
layer, which makes its update ``(2 eta_hat / batch) dL/dW_{H+1}`` (a rescaled backprop gradient).
``L`` is the batch mean, so ``dL/dh_K`` is the gradient of the batch-mean loss (as in both
authors' code). Every layer is updated from its own local loss only: each gradient is taken with
``torch.autograd.grad`` of that layer's loss with respect to that layer's parameters, on detached
inputs and targets.

Order within a batch (Lee et al. Alg. 1; Meulemans et al.'s ``train_parallel``): the targets are
computed with the current inverses and the forward updates written into ``.grad``; then the
inverses' gradients; the forward weights change in :meth:`Method.apply_update`, and so do the
inverses when they share its optimiser (:func:`shares_optimizer`), else they step before it.

DRL replaces the inverse loss of ``g_i`` (Meulemans et al. 2020, Sec. 4): the corrupted
``h_{i-1} + eps`` is propagated forward to ``h_K``, then back down through the
difference-corrected path ``h_{k-1} + g_k(.) - g_k(h_k)`` to layer ``i - 1``, and ``g_i`` is
trained to reconstruct the corrupted sample, the loss scaled by ``1 / sigma^2``; the upper
inverses on the path are held fixed. This aligns the propagated targets with Gauss-Newton targets
instead of layer-wise inverses.

On ``model=cnn`` every hidden layer is a conv block ``pool(act(conv(h)))`` or a linear layer, and
the affine part of ``g_i`` is a transposed convolution after max-unpooling with the forward pass's
switches, or a reshaping linear map (:mod:`methods.tp_feedback`, after Ernoult et al. 2022's
code); the equations above hold with ``h_i`` of shape ``(batch, C, H, W)`` and norms over all of a
sample's units.

Layer numbers in logged metrics are the 1-based layer numbers above (``H + 1`` is the output
layer, present when ``K = H + 1``): ``inverse_loss_layer{i}`` is the mean squared reconstruction
error ``||rec - (h_{i-1} + eps)||^2`` of ``g_i`` (not scaled by ``1/sigma^2``, so DTP and DRL
compare), and ``target_distance_layer{i}`` the mean of ``||h_i - h_hat_i||``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from methods.autograd_kernels import (
    activation_backward,
    activation_function,
    has_closed_form,
    loss_and_output_grad,
)
from methods.base import Method, MethodConfigError, make_optimizer, register_method
from methods.losses import Loss
from methods.networks import MLP

# The CNN's activations are the MLP's plus ELU (Ernoult et al.'s conv nets).
from methods.networks.cnn import CNN, CNN_ACTIVATIONS, ConvBlock
from methods.options import Bounds, OneOf, OptimizerConfig
from methods.tp_feedback import ConvFeedback, LinearFeedback
from methods.tp_grads import difference_grad, distance_grad, linear_grads, linear_input_grad

SCHEDULES = ("per_batch", "alternating")
INVERSE_INITS = ("orthogonal", "default")
TOP_TARGET_LAYERS = ("last_hidden", "output")


def shares_optimizer(forward: Mapping[str, Any], feedback: Mapping[str, Any]) -> bool:
    """Whether the inverses can join the forward weights' optimiser with unchanged updates.

    True when both optimiser configs (``{"_target_": ..., "lr": ..., ...}``) have the same keys
    and values, ``lr`` excepted: one ``torch.optim`` optimiser then updates every tensor from
    its own state with its parameter group's options (the inverses' group gets the feedback
    ``lr``), exactly as two optimisers would, bit for bit. Another class or option keeps two.
    """
    forward, feedback = dict(forward), dict(feedback)
    if forward.keys() != feedback.keys():
        return False
    return all(forward[key] == feedback[key] for key in forward if key != "lr")


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean_n ||a_n - b_n||^2`` for ``(batch, *shape)`` tensors: a 0-d tensor."""
    return (a - b).pow(2).flatten(1).sum(dim=1).mean()


@register_method("dtp")
class DifferenceTargetPropagation(Method):
    """Difference target propagation with learned inverses (Lee et al. 2015, Alg. 1).

    Departures from the paper, with the reason:

    * Optimisers: Adam (as Meulemans et al. 2020; lr 1e-3) instead of the paper's centred
      RMSprop, which made the output layer diverge in this harness (``conf/method/dtp.yaml``).
    * Network: the harness's shared MLP (the paper's 7 x 240 tanh with orthogonal init is a model
      setting shared by every method, ``conf/experiment/tp_benchmark.yaml``).
    * ``schedule=per_batch`` (default) follows Alg. 1; the authors' code alternates an inverse
      epoch and a forward epoch (``schedule=alternating``).
    * The authors' script leaves two parameters (``W6``, ``B5``) out of its forward update; we
      update every layer, as the paper describes.

    Args:
        model: an :class:`~methods.networks.MLP` with at least one hidden layer, or a
            :class:`~methods.networks.cnn.CNN` with max or no pooling (conv feedback layers:
            :mod:`methods.tp_feedback`).
        loss: task loss ``L`` (batch mean).
        forward_optimizer: optimiser config for the forward weights (all ``model`` parameters).
        feedback_optimizer: optimiser config for the inverses ``V_i, c_i``.
        target_stepsize: ``eta_hat`` of the top target (> 0).
        noise_std: ``sigma`` of the corruption in the inverse loss (>= 0; > 0 for DRL).
        inverse_activation: ``act_g``: ``same`` (the model's activation, as in the paper where
            both are tanh) or one of ``relu, tanh, sigmoid, identity, elu``.
        inverse_init: ``orthogonal`` (the paper's) or ``default`` (PyTorch's) for ``V_i``;
            ``c_i`` starts at zero with ``orthogonal``.
        schedule: ``per_batch``: on every batch, targets and forward update, then one inverse
            update; ``alternating``: epochs alternate between an inverse pass and a forward pass
            over the data, as in the authors' code where each of its epochs is an inverse pass
            followed by a forward pass (so two of our epochs are one of theirs).
        feedback_pretrain_epochs: the first epochs train only the inverses (forward weights
            frozen); they count towards the run's epoch budget.
        top_target_layer: ``last_hidden`` (``K = H``: Lee et al.; the output layer is trained on
            ``L``) or ``output`` (``K = H + 1``: Meulemans et al.; an inverse ``g_{H+1}`` from the
            logits to ``h_H``, and the output layer trained towards ``o - eta_hat dL/do``).

    Raises:
        MethodConfigError: for another model, an average-pooled CNN, or out-of-range options.
    """

    # DRL divides its feedback loss by sigma^2, so it needs sigma > 0 (noise_reason says why).
    requires_noise = False
    # Fixed by the constructor, rebuilt from it (not checkpointed), read many times per step:
    # plain lists and values instead of ModuleList indexing and properties (~1 us each).
    transient_attributes = frozenset(
        {"_mlp", "_depth", "_top", "_layers", "_act_fn", "_inverse_act_fn", "_feedback_layers"}
        | {"_inverse_params", "_shared_optimizer"}
    )
    # Whether the inverses may share the forward weights' optimiser (see shares_optimizer);
    # L-DRL steps its feedback optimiser several times per batch on its own, so it cannot.
    can_share_optimizer = True
    noise_reason = "the loss is scaled by 1/sigma^2"

    def __init__(
        self,
        model: MLP | CNN,
        loss: Loss,
        forward_optimizer: OptimizerConfig,
        feedback_optimizer: OptimizerConfig,
        target_stepsize: Annotated[float, Bounds(gt=0)] = 0.327736,
        noise_std: Annotated[float, Bounds(ge=0)] = 0.359830,
        inverse_activation: Annotated[str, OneOf("same", *CNN_ACTIVATIONS)] = "same",
        inverse_init: Annotated[str, OneOf(*INVERSE_INITS)] = "orthogonal",
        schedule: Annotated[str, OneOf(*SCHEDULES)] = "per_batch",
        feedback_pretrain_epochs: Annotated[int, Bounds(ge=0)] = 0,
        top_target_layer: Annotated[str, OneOf(*TOP_TARGET_LAYERS)] = "last_hidden",
    ) -> None:
        super().__init__(model, loss)
        self.require_model((MLP, CNN), ("mlp", "cnn"))
        if isinstance(model, CNN) and model.pool_name == "avg":
            raise MethodConfigError(
                f"method={self.name} needs model.pool=max or none on model=cnn: its conv "
                "feedback layers unpool with the max-pooling switches"
            )
        # The one bound that differs between the classes sharing this signature.
        if self.requires_noise and not noise_std > 0:
            raise MethodConfigError(
                f"method.noise_std: must be > 0 ({self.noise_reason}), got {noise_std}"
            )
        self.target_stepsize = target_stepsize
        self.noise_std = noise_std
        self.schedule = schedule
        self.feedback_pretrain_epochs = feedback_pretrain_epochs
        self.top_target_layer = top_target_layer
        act_name = model.activation_name if inverse_activation == "same" else inverse_activation
        self.inverse_activation = CNN_ACTIVATIONS[act_name]()
        self._mlp = isinstance(model, MLP)
        self._depth = model.depth
        self._top = self._depth - 1 + (top_target_layer == "output")
        self._layers = list(model.layers)
        # The MLP's activation (the CNN's is in each block).
        self._act_fn = activation_function(model.activation) if self._mlp else None
        self._inverse_act_fn = activation_function(self.inverse_activation)
        # inverses[i - 2] is g_i's affine part, h_i -> h_{i-1}, for i = 2..K.
        shapes = self.layer_shapes()
        self.inverses = nn.ModuleList(
            ConvFeedback(model.layers[i - 1], shapes[i - 1])
            if isinstance(model.layers[i - 1], ConvBlock)
            else LinearFeedback(shapes[i], shapes[i - 1])
            for i in range(2, self.top + 1)
        ).to(next(model.parameters()))  # the model's device and dtype
        if inverse_init == "orthogonal":
            for inverse in self.inverses:
                nn.init.orthogonal_(inverse.weight)
                nn.init.zeros_(inverse.bias)
        self._feedback_layers = list(self.inverses)
        self._inverse_params = list(self.inverses.parameters())
        forward_params = list(model.parameters())
        self._shared_optimizer = (
            self.can_share_optimizer
            and bool(self._inverse_params)
            and shares_optimizer(forward_optimizer, feedback_optimizer)
        )
        self.feedback_optimizer = None
        if self._shared_optimizer:
            # One optimiser, so one optimizer.step() (about 50-90 us of Python and kernel
            # launch per step saved); torch.optim updates every tensor from its own state and
            # its group's options, so each weight moves exactly as with two optimisers.
            params = (
                [*forward_params, *self._inverse_params]
                if dict(forward_optimizer) == dict(feedback_optimizer)
                else [
                    {"params": forward_params},
                    {"params": self._inverse_params, "lr": feedback_optimizer["lr"]},
                ]
            )
            self.optimizer = make_optimizer(params, forward_optimizer, "method.forward_optimizer")
        else:
            self.optimizer = make_optimizer(
                forward_params, forward_optimizer, "method.forward_optimizer"
            )
            if self._inverse_params:
                self.feedback_optimizer = make_optimizer(
                    self._inverse_params, feedback_optimizer, "method.feedback_optimizer"
                )

    @property
    def num_hidden(self) -> int:
        """``H``, the number of hidden layers (conv blocks and hidden linear layers)."""
        return self._depth - 1

    def layer_shapes(self) -> list[tuple[int, ...]]:
        """One example's shape of ``h_0 .. h_{H+1}``, e.g. ``[(1, 28, 28), (32, 14, 14), ...]``."""
        model = self.model
        if isinstance(model, CNN):
            return [model.input_shape, *model.hidden_shapes, (model.output_size,)]
        return [(n,) for n in (model.input_size, *model.hidden_sizes, model.output_size)]

    def params_of(self, i: int) -> tuple[nn.Parameter, nn.Parameter]:
        """Layer ``i``'s (1-based) weight and bias."""
        layer = self._layers[i - 1]
        affine = layer if self._mlp else layer.affine
        return affine.weight, affine.bias

    @property
    def top(self) -> int:
        """``K``, the top layer of the target chain: ``H``, or ``H + 1`` (the output layer)."""
        return self._top

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The forward weights' optimiser and, when the inverses have their own, theirs.

        One optimiser when the inverses share the forward weights' (:func:`shares_optimizer`).
        """
        feedback = [self.feedback_optimizer] if self.feedback_optimizer is not None else []
        return [self.optimizer, *feedback]

    def inverse(
        self, i: int, h: torch.Tensor, switches: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``g_i(h) = act_g(V_i h + c_i)``: ``(batch, *shape_i) -> (batch, *shape_{i-1})``.

        ``i`` in 2..K. For a max-pooled conv block ``V_i`` unpools with ``switches`` (from the
        forward pass that gave the matching ``h_i``: :meth:`switches`) before its transposed
        convolution (:class:`~methods.tp_feedback.ConvFeedback`).
        """
        feedback = self._feedback_layers[i - 2]
        if self._mlp:
            # The same maps without the module calls, each of which costs as much as a 10-unit
            # layer's product (the MLP's h is already (batch, n)).
            return self._inverse_act_fn(F.linear(h, feedback.weight, feedback.bias))
        return self.inverse_activation(feedback(h, switches))

    def layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """``f_i(h)``: ``act(W_i h + b_i)`` for hidden layer ``i`` in 1..H, linear for ``H + 1``.

        A conv block is ``pool(act(conv(h)))``.
        """
        model = self.model
        if self._mlp:  # MLP.layer_forward's map, without the module calls
            layer = self._layers[i - 1]
            out = F.linear(h.flatten(1), layer.weight, layer.bias)
            return self._act_fn(out) if i < self._depth else out
        return model.layer_forward(i - 1, h)

    def layer_with_switches(
        self, i: int, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(f_i(h), its max-pooling switches)``; the switches are ``None`` if none."""
        layer = self._layers[i - 1]
        if isinstance(layer, ConvBlock) and layer.pool_kind == "max":
            parts = layer.forward_parts(h)
            return parts.output, parts.indices
        return self.layer(i, h), None

    @torch.no_grad()
    def switches(self, h: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """``[None, s_1, ..., s_{H+1}]``: each layer's max-pooling switches (``None`` if none).

        Recomputed from ``h`` (:meth:`activations`) for the max-pooled conv blocks only; the
        other layers have none, so their forward pass is not repeated.
        """
        return [
            None,
            *(
                self.layer_with_switches(i, h[i - 1])[1] if self.max_pooled(i) else None
                for i in range(1, len(h))
            ),
        ]

    def max_pooled(self, i: int) -> bool:
        """Whether layer ``i`` (1-based) is a max-pooled conv block (it has switches)."""
        layer = self._layers[i - 1]
        return isinstance(layer, ConvBlock) and layer.pool_kind == "max"

    @property
    def closed_form(self) -> bool:
        """Whether the local losses' gradients take the closed form (:mod:`methods.tp_grads`).

        True on the MLP (every layer and inverse linear) with an inverse activation whose
        derivative is a function of its output (not ELU); elsewhere autograd computes them.
        Both give bit-identical gradients.
        """
        return self._mlp and has_closed_form(self.inverse_activation)

    @torch.no_grad()
    def inverse_outputs(
        self, h: list[torch.Tensor], switches: list[torch.Tensor | None] | None = None
    ) -> list[torch.Tensor | None]:
        """``[None, None, g_2(h_2), ..., g_K(h_K)]``: the inverses at the forward pass, detached.

        The second term of every difference correction; computed once per batch and shared by
        the targets and DRL's reconstructions (the inverses do not change in between).

        Args:
            h: ``[h_0, ..., h_{H+1}]`` as from :meth:`activations`.
            switches: :meth:`switches` of ``h``, if already computed.
        """
        switches = self.switches(h) if switches is None else switches
        return [None, None, *(self.inverse(i, h[i], switches[i]) for i in range(2, self.top + 1))]

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[h_0, h_1, ..., h_H, h_{H+1} = o]``, detached.

        ``(batch, n_i)`` on the MLP (``h_0 = x`` flattened); ``(batch, C, H, W)`` for the input
        and the conv blocks' outputs on the CNN.
        """
        with torch.no_grad():
            if not self._mlp:
                return [x, *self.model.forward_layers(x)]
            # MLP.forward_layers' maps without its module calls (:meth:`layer`).
            h = [x.flatten(1)]
            for i in range(1, self._depth + 1):
                h.append(self.layer(i, h[-1]))
            return h

    @torch.no_grad()
    def propagate_targets(
        self,
        h: list[torch.Tensor],
        top_target: torch.Tensor,
        inverse_h: list[torch.Tensor | None] | None = None,
        switches: list[torch.Tensor | None] | None = None,
    ) -> list[torch.Tensor | None]:
        """Difference-corrected targets ``[None, h_hat_1, ..., h_hat_K]`` from ``h_hat_K``.

        Both terms of a difference unpool with the switches of ``h``'s forward pass.

        Args:
            h: ``[h_0, ..., h_{H+1}]`` as from :meth:`activations`.
            top_target: ``h_hat_K``, ``(batch, n_K)``.
            inverse_h: :meth:`inverse_outputs` of ``h`` with the current inverses, if computed.
            switches: :meth:`switches` of ``h``, if computed.
        """
        switches = self.switches(h) if switches is None else switches
        inverse_h = self.inverse_outputs(h, switches) if inverse_h is None else inverse_h
        targets: list[torch.Tensor | None] = [None] * (self.top + 1)
        targets[-1] = top_target
        for i in range(self.top, 1, -1):
            # In place on the fresh sum: the same values without one more (batch, n) tensor.
            corrected = h[i - 1] + self.inverse(i, targets[i], switches[i])
            targets[i - 1] = corrected.sub_(inverse_h[i])
        return targets

    def top_target(
        self, h: list[torch.Tensor], y: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """``h_hat_K = h_K - eta_hat dL/dh_K``, and the output layer's ``dL/dW, dL/db`` if K = H.

        Args:
            h: ``[h_0, ..., h_{H+1}]`` as from :meth:`activations`.
            y: the batch's targets.

        Returns:
            ``(h_hat_K, head_grads)``: ``h_hat_K`` ``(batch, n_K)``, detached; ``head_grads`` the
            gradients of ``L`` for the output layer when it is outside the chain, else ``None``.
        """
        return self.top_target_and_loss(h, y)[:2]

    def top_target_and_loss(
        self, h: list[torch.Tensor], y: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor]:
        """:meth:`top_target`, and the batch's task loss ``L`` (0-d, detached) it differentiated."""
        step = self.top_step(len(h[-1]))
        head = self.num_hidden + 1
        if self.top > self.num_hidden or self._mlp:
            output = h[-1].detach()
            # dL/do written out where it can be (bit-identical), else by autograd.
            closed = loss_and_output_grad(self.loss, output, y)
            if closed is None:
                output.requires_grad_(True)
                loss = self.loss(output, y)
                (grad,) = torch.autograd.grad(loss, [output])
            else:
                loss, grad = closed
            if self.top > self.num_hidden:
                return (output - step * grad).detach(), None, loss.detach()
            # The MLP's output layer is linear and h[-1] its output: its backward in closed
            # form (bit-identical to autograd's), without a graph through the layer.
            with torch.no_grad():
                weight, _ = self.params_of(head)
                top = h[self.top] - step * linear_input_grad(grad, weight)
                return top, linear_grads([grad], [h[self.top]]), loss.detach()
        h_top = h[self.top].detach().requires_grad_(True)
        loss = self.loss(self.layer(head, h_top), y)
        grad_h, grad_w, grad_b = torch.autograd.grad(loss, [h_top, *self.params_of(head)])
        return (h_top - step * grad_h).detach(), (grad_w, grad_b), loss.detach()

    def top_step(self, batch: int) -> float:
        """Factor on ``dL/dh_K`` (``L`` the batch mean) in the top target: ``eta_hat``.

        ``batch``: the batch size (a subclass that steps on the summed loss multiplies by it).
        """
        return self.target_stepsize

    def forward_update(
        self,
        h: list[torch.Tensor],
        targets: list[torch.Tensor | None],
        differences: list[torch.Tensor | None] | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Gradients of each chain layer's local loss ``mean_n ||f_i(h_{i-1}) - h_hat_i||^2``.

        Only layer ``i``'s parameters get layer ``i``'s gradient; inputs and targets are constants.
        On the MLP ``f_i(h_{i-1})`` is ``h_i`` itself and the gradient takes its closed form
        (:mod:`methods.tp_grads`, bit-identical to autograd's) from ``h_i - h_hat_i``
        (``differences[i]`` if given, as :meth:`forward_step` computes them for its metric); on
        the CNN autograd computes it.

        Returns:
            ``[(dW_1, db_1), ..., (dW_K, db_K)]``.
        """
        if not self._mlp:
            updates = []
            for i in range(1, self.top + 1):
                local = squared_distance(self.layer(i, h[i - 1].detach()), targets[i].detach())
                updates.append(torch.autograd.grad(local, list(self.params_of(i))))
            return updates
        if differences is None:
            differences = [None, *(h[i] - targets[i] for i in range(1, self.top + 1))]
        activation, updates = self.model.activation, []
        with torch.no_grad():
            for i in range(1, self.top + 1):
                grad = difference_grad(differences[i])
                if i <= self.num_hidden:
                    grad = activation_backward(activation, grad, h[i])
                updates.append(linear_grads([grad], [h[i - 1]]))
        return updates

    def forward_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        h: list[torch.Tensor] | None = None,
        inverse_h: list[torch.Tensor | None] | None = None,
        switches: list[torch.Tensor | None] | None = None,
    ) -> dict[str, float]:
        """Compute targets with the current inverses; write every forward update into ``.grad``.

        ``h``: :meth:`activations` of ``x`` if already computed at the current weights;
        ``inverse_h``, ``switches``: :meth:`inverse_outputs` and :meth:`switches` of ``h`` with
        the current inverses, if computed. Returns the task loss's metrics of the batch (before
        the update).
        """
        h = self.activations(x) if h is None else h
        top, head_grads, loss = self.top_target_and_loss(h, y)
        targets = self.propagate_targets(h, top, inverse_h, switches)
        with torch.no_grad():
            # h_i - h_hat_i, once for both the metric and the MLP's closed-form gradients.
            differences = [None, *(h[i] - targets[i] for i in range(1, self.top + 1))]
            # The kernel Tensor.norm(dim=1) calls, without its two Python wrappers.
            norms = [torch.linalg.vector_norm(d.flatten(1), 2, 1).mean() for d in differences[1:]]
            distances = torch.stack(norms)
        for i, update in enumerate(self.forward_update(h, targets, differences), start=1):
            weight, bias = self.params_of(i)
            weight.grad, bias.grad = update
        # One read of every layer's distance instead of one per layer (the values are equal).
        for i, distance in enumerate(distances.tolist(), start=1):
            self.means.add(f"target_distance_layer{i}", distance)
        if head_grads is not None:
            weight, bias = self.params_of(self.num_hidden + 1)
            weight.grad, bias.grad = head_grads
        return self.loss.metrics(h[-1], y, loss)

    # DRL's reconstruction adds h_{i-1} - g_i(h_i) to g_i's output (a difference correction).
    difference_reconstruction = False

    @torch.no_grad()
    def feedback_input(
        self,
        i: int,
        h: list[torch.Tensor],
        corrupted: torch.Tensor,
        switches: list[torch.Tensor | None],
        inverse_h: list[torch.Tensor | None] | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """DTP: ``(f_i(h_{i-1} + eps), its switches)``, what ``g_i`` reconstructs from.

        A conv feedback layer unpools with the switches of the corrupted sample's own pass.
        ``switches`` and ``inverse_h`` (:meth:`switches`, :meth:`inverse_outputs` of ``h``) are
        for DRL's override.
        """
        return self.layer_with_switches(i, corrupted)

    def reconstruction(
        self,
        i: int,
        h: list[torch.Tensor],
        corrupted: torch.Tensor,
        switches: list[torch.Tensor | None] | None = None,
        inverse_h: list[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """DTP: ``g_i(f_i(h_{i-1} + eps))``, differentiable in ``g_i``'s parameters only.

        The autograd form of the inverse loss (:meth:`feedback_step` uses a closed form of its
        gradient where it has one). ``switches``, ``inverse_h``: as for :meth:`feedback_input`.
        """
        upper, upper_switches = self.feedback_input(i, h, corrupted, switches, inverse_h)
        return self.inverse(i, upper, upper_switches)

    def feedback_loss_scale(self) -> float:
        """Factor on the summed inverse losses before their gradient (1 for DTP)."""
        return 1.0

    @torch.no_grad()
    def feedback_grads(
        self,
        i: int,
        h: list[torch.Tensor],
        corrupted: torch.Tensor,
        switches: list[torch.Tensor | None],
        inverse_h: list[torch.Tensor | None] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``(reconstruction error, (dV_i, dc_i))`` of ``g_i``'s loss, in closed form (MLP).

        The gradient of ``feedback_loss_scale() * squared_distance(reconstruction, corrupted)``
        with respect to ``g_i = act_g(V_i . + c_i)``, as :mod:`methods.tp_grads` computes it:
        bit-identical to autograd's, without a graph. For DRL ``g_i`` appears twice, in
        ``g_i(r_i)`` and in ``-g_i(h_i)`` (whose value is ``inverse_h[i]``).
        """
        upper, _ = self.feedback_input(i, h, corrupted, switches, inverse_h)
        out = self.inverse(i, upper)
        rec = (h[i - 1] + out).sub_(inverse_h[i]) if self.difference_reconstruction else out
        d, grad = distance_grad(rec, corrupted, self.feedback_loss_scale())
        act = self.inverse_activation
        grads, inputs = [activation_backward(act, grad, out)], [upper]
        if self.difference_reconstruction:
            grads.append(activation_backward(act, -grad, inverse_h[i]))
            inputs.append(h[i])
        return d.pow(2).flatten(1).sum(dim=1).mean(), linear_grads(grads, inputs)

    def feedback_step(
        self,
        x: torch.Tensor,
        h: list[torch.Tensor] | None = None,
        inverse_h: list[torch.Tensor | None] | None = None,
        switches: list[torch.Tensor | None] | None = None,
        defer_step: bool = False,
    ) -> dict[int, float]:
        """One update of every inverse on batch ``x``; returns ``{i: reconstruction error}``.

        Draws one noise sample per inverse, ``g_2`` first. ``h``: :meth:`activations` of ``x``
        if already computed (the inverses' update does not change the forward weights, so one
        forward pass serves both steps); ``inverse_h``, ``switches``: :meth:`inverse_outputs`
        and :meth:`switches` of ``h`` with the current inverses, if computed. ``defer_step``:
        with a shared optimiser (:func:`shares_optimizer`), leave the gradients in ``.grad``
        for :meth:`apply_update`'s one step of forward weights and inverses together
        (:meth:`compute_update`); otherwise, and without one, the inverses step here (the
        forward weights' ``.grad`` are then cleared, so they do not move).
        """
        if not self._inverse_params:
            return {}
        h = self.activations(x) if h is None else h
        switches = self.switches(h) if switches is None else switches
        if self.difference_reconstruction and inverse_h is None:
            inverse_h = self.inverse_outputs(h, switches)
        closed_form = self.closed_form
        losses, grads = {}, []
        for i in range(2, self.top + 1):
            corrupted = h[i - 1] + torch.randn_like(h[i - 1]).mul_(self.noise_std)
            if closed_form:
                losses[i], grads_i = self.feedback_grads(i, h, corrupted, switches, inverse_h)
                grads.extend(grads_i)
            else:
                rec = self.reconstruction(i, h, corrupted, switches, inverse_h)
                losses[i] = squared_distance(rec, corrupted)
        params = self._inverse_params
        if not closed_form:
            total = self.feedback_loss_scale() * sum(losses.values())
            grads = torch.autograd.grad(total, params)
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        if not self._shared_optimizer:
            self.feedback_optimizer.step()
        elif not defer_step:
            # The shared optimiser also holds the forward weights: they must not move here.
            for param in self.model_parameters:
                param.grad = None
            self.optimizer.step()
        errors = dict(zip(losses, torch.stack(list(losses.values())).tolist(), strict=True))
        for i, value in errors.items():
            self.means.add(f"inverse_loss_layer{i}", value)
        return errors

    def phase(self) -> str:
        """What the current :attr:`epoch` trains: ``feedback``, ``forward`` or ``both``."""
        done = self.epoch - 1  # epochs before the current one
        if done < self.feedback_pretrain_epochs:
            return "feedback"
        if self.schedule == "alternating":
            return "feedback" if (done - self.feedback_pretrain_epochs) % 2 == 0 else "forward"
        return "both"

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write the forward update into ``.grad`` and/or train the inverses (see ``schedule``).

        With both, the targets come from the inverses before this batch's inverse update
        (Lee et al. 2015, Alg. 1). In a feedback-only phase every model ``.grad`` is ``None``:
        the model is not updated. One forward pass, its switches and the inverses' outputs at
        it serve both steps. With a shared optimiser the inverses' gradients wait in ``.grad``
        for :meth:`apply_update`'s one step (nothing reads the inverses after their gradient).
        """
        self.zero_grad()
        phase = self.phase()
        h = self.activations(x)
        switches = self.switches(h)
        if phase == "feedback":
            self.feedback_step(x, h, switches=switches, defer_step=True)
            with torch.no_grad():
                return self.loss.metrics(h[-1], y)
        inverse_h = self.inverse_outputs(h, switches)
        metrics = self.forward_step(x, y, h, inverse_h, switches)
        if phase == "both":
            self.feedback_step(x, h, inverse_h, switches, defer_step=True)
        return metrics

    def zero_grad(self) -> None:
        """Clear ``.grad`` of every model parameter and, with a shared optimiser, the inverses'.

        The shared optimiser steps every parameter that holds a gradient, so the inverses'
        gradients of one batch must not reach a batch that does not train them (the forward
        epochs of ``schedule=alternating``).
        """
        super().zero_grad()
        if self._shared_optimizer:
            for param in self._inverse_params:
                param.grad = None

    def epoch_metrics(self) -> dict[str, float]:
        """Epoch means of ``inverse_loss_layer{i}`` and ``target_distance_layer{i}``."""
        return self.means.values()

    def check_budget(self, epochs: int, batches_per_epoch: int) -> None:
        """Check that the feedback pre-training leaves epochs to train the network.

        Raises:
            MethodConfigError: if ``feedback_pretrain_epochs >= epochs``.
        """
        if self.feedback_pretrain_epochs >= epochs:
            raise MethodConfigError(
                f"method.feedback_pretrain_epochs: {self.feedback_pretrain_epochs} pre-training "
                f"epochs leave none of the train.epochs={epochs} budget to train the network"
            )


@register_method("drl")
class DifferenceReconstructionLoss(DifferenceTargetPropagation):
    """DTP whose inverses are trained with the difference reconstruction loss.

    Meulemans et al. 2020, Sec. 4 and their ``DTPDRLNetwork``: the output layer is part of the
    target chain (``top_target_layer=output`` by default: ``o_hat = o - eta_hat dL/do``, an
    inverse ``g_{H+1}`` from the logits to ``h_H``, the output layer trained towards ``o_hat``).
    For ``g_i``, the corrupted ``h_{i-1} + eps`` is propagated forward to ``h_K`` and back through
    the difference-corrected inverses above ``i`` (held fixed), then through ``g_i``:
    ``rec = h_{i-1} + g_i(r_i) - g_i(h_i)``; the loss ``||rec - (h_{i-1} + eps)||^2`` is scaled
    by ``1 / sigma^2``. Options as for :class:`DifferenceTargetPropagation`.

    Departures from the authors' code, with the reason:

    * Reconstruction loss summed over units (mean over the batch), as DTP's; theirs averages over
      units too (``F.mse_loss``): a constant factor ``n_{i-1}`` per inverse, which Adam's
      per-parameter normalisation removes (it would matter with plain SGD).
    * Hyperparameters: DTP's defaults (Lee et al.'s sigma and target step, Adam 1e-3, orthogonal
      inverses) instead of their MNIST search results (sigma 0.057, target step 0.069,
      xavier-normal init, feedback weight decay), which were tuned for another dataset; every
      method gets its own search here (``conf/search/drl.yaml``).
    * Feedback-only training: they pre-train the inverses 6 epochs and add one feedback-only
      epoch after each epoch, outside the forward budget; here every epoch counts towards the
      same budget as the other methods (``feedback_pretrain_epochs`` spends some of it).

    Raises:
        MethodConfigError: also when ``noise_std`` is 0 (the loss is scaled by 1/sigma^2).
    """

    requires_noise = True

    # A bound default, not a copied constructor: the option check reads this signature.
    __init__ = functools.partialmethod(
        DifferenceTargetPropagation.__init__, top_target_layer="output"
    )

    difference_reconstruction = True

    @torch.no_grad()
    def feedback_input(
        self,
        i: int,
        h: list[torch.Tensor],
        corrupted: torch.Tensor,
        switches: list[torch.Tensor | None],
        inverse_h: list[torch.Tensor | None] | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(r_i, layer i's switches)``: the corrupted sample sent up to ``h_K`` and back down.

        ``r_i = h_i + g_{i+1}(r_{i+1}) - g_{i+1}(h_{i+1})`` from ``r_K = f_K(...f_i(h_{i-1} +
        eps))``, the inverses above ``i`` held fixed; the differences unpool with the switches of
        ``h``'s pass, as the targets do.

        Args:
            i: the inverse ``g_i``, 2..K.
            h: ``[h_0, ..., h_{H+1}]`` as from :meth:`activations`.
            corrupted: ``h_{i-1} + eps``, ``(batch, n_{i-1})``.
            switches: :meth:`switches` of ``h``.
            inverse_h: :meth:`inverse_outputs` of ``h`` with the current inverses.
        """
        r = corrupted
        for k in range(i, self.top + 1):
            r = self.layer(k, r)
        for k in range(self.top, i, -1):
            r = (h[k - 1] + self.inverse(k, r, switches[k])).sub_(inverse_h[k])
        return r, switches[i]

    def reconstruction(
        self,
        i: int,
        h: list[torch.Tensor],
        corrupted: torch.Tensor,
        switches: list[torch.Tensor | None] | None = None,
        inverse_h: list[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """``h_{i-1} + g_i(r_i) - g_i(h_i)``, ``r_i`` from :meth:`feedback_input`.

        The autograd form of the loss (:meth:`feedback_step` uses a closed form of its gradient
        where it has one).

        Args:
            i: the inverse ``g_i``, 2..K.
            h: ``[h_0, ..., h_{H+1}]`` as from :meth:`activations`.
            corrupted: ``h_{i-1} + eps``, ``(batch, n_{i-1})``.
            switches: :meth:`switches` of ``h``, if already computed.
            inverse_h: :meth:`inverse_outputs` of ``h``, if already computed.

        Returns:
            ``(batch, n_{i-1})``, differentiable in ``g_i``'s parameters only.
        """
        switches = self.switches(h) if switches is None else switches
        inverse_h = self.inverse_outputs(h, switches) if inverse_h is None else inverse_h
        r, s = self.feedback_input(i, h, corrupted, switches, inverse_h)
        return h[i - 1] + self.inverse(i, r, s) - self.inverse(i, h[i], s)

    def feedback_loss_scale(self) -> float:
        """``1 / sigma^2`` (Meulemans et al. 2020, difference reconstruction loss)."""
        return 1.0 / self.noise_std**2
