"""Hand-written gradients of the online alt-min code objectives, bit-identical to autograd's.

The code steps of :class:`~methods.altmin.AlternatingMinimization` (Choromanska et al. 2019,
Alg. 1; the authors' ``compute_codes_loss``) need, ``code_steps`` times per code and batch, the
gradient with respect to the code ``c`` ``(batch, units)`` of::

    top code:    (1/mu) L(W f(c) + b, y) + mse(c, c0)      (scaled_loss)
                 L(W f(c) + b, y) + mu * mse(c, c0)        (scaled_mismatch)
    lower code:  mse(W f(c) + b, a) + mse(c, c0)

Autograd spends most of a step's time on building and walking the graph of these few small
operations. The functions here call, in the same order, the same ATen backward kernels that
autograd's nodes call (the activations' and losses' from :mod:`methods.autograd_kernels`:
``mse_loss_backward``, ``threshold_backward``/``tanh_backward``/``sigmoid_backward``,
``nll_loss_backward``, ``_log_softmax_backward_data``; and ``addmm``'s input gradient as in
``mm_mat1_backward``), so the results are the same bits as ``torch.autograd.grad`` of the
objective (tested in ``tests/test_altmin.py``). The objective's
value is never needed, so it is not computed. :class:`TopCodeGradient` and
:class:`LowerCodeGradient` are built once per code and batch, so that each step runs the tensor
operations only; a step may also be handed the forward products it needs when they exist
already (the first step, from the codes' forward pass).

The weight updates (step 3) are written out the same way (:func:`linear_parameter_gradients`).

Only the activations of :data:`methods.networks.ACTIVATIONS` and the losses of
:mod:`methods.losses` are written out; :func:`methods.autograd_kernels.supported` says whether a
model and loss are, and the caller falls back to autograd otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods import autograd_kernels as kernels
from methods.losses import CrossEntropy, Loss


@torch.no_grad()
def linear_parameter_gradients(
    grad_output: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dW, db)`` of ``F.linear(inputs, W, b)`` from ``grad_output`` ``(batch, out)``.

    ``inputs`` is ``(batch, in)``, ``weight`` ``(out, in)``; as autograd's ``addmm`` backward
    (``mm_mat2_backward`` on ``W^T``, then the transpose's backward) and the bias's reduction
    over the batch (``sum_to``).
    """
    w_t = weight.t()  # (in, out); column-major for a contiguous W
    if w_t.stride(0) == 1 and w_t.stride(1) == w_t.shape[0]:
        grad_weight = grad_output.t().mm(inputs)
    else:
        grad_weight = inputs.t().mm(grad_output).t()
    return grad_weight, grad_output.sum(0, keepdim=True).view(-1)


def _linear_input_backward(
    grad: torch.Tensor, weight: torch.Tensor, inputs: torch.Tensor
) -> torch.Tensor:
    """``d/dh`` of ``F.linear(h, W, b)`` (ATen ``addmm(b, h, W^T)``) from ``grad`` ``(batch, out)``.

    As autograd's ``mm_mat1_backward``: a column-major ``h`` gets a column-major gradient.
    """
    rows = inputs.shape[0]
    if inputs.stride(0) == 1 and inputs.stride(1) == rows:
        return weight.t().mm(grad.t()).t()
    return grad.mm(weight)


class _CodeGradient:
    """What the two code objectives share: the layer above ``c`` and ``f``, fixed per batch.

    Built once per code and batch, so that each of the ``code_steps`` calls runs the tensor
    operations only (the lookups and constants are done here).
    """

    def __init__(self, code0: torch.Tensor, layer: nn.Linear, activation: nn.Module) -> None:
        self.code0 = code0
        self.weight, self.bias = layer.weight, layer.bias
        self.activation = kernels.activation_function(activation)  # the function, not the module
        self.activation_backward = kernels.backward_from_output(activation)
        self.one = torch.ones((), dtype=code0.dtype, device=code0.device)  # autograd.grad's seed

    def forward(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(c), layer(f(c)))``, the same operations as the modules' calls."""
        hidden = self.activation(code)
        return hidden, F.linear(hidden, self.weight, self.bias)

    def through_layer(self, grad_output: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``d/dc`` through ``layer(f(c))`` from ``d/d layer(f(c))`` and ``hidden = f(c)``."""
        grad_hidden = _linear_input_backward(grad_output, self.weight, hidden)
        return self.activation_backward(grad_hidden, hidden)


class TopCodeGradient(_CodeGradient):
    """``c -> d/dc`` of the top code's objective, ``(batch, units)`` like ``c``.

    ``(1/mu) L(W f(c) + b, y) + mse(c, c0)`` (``scaled_loss``) or
    ``L(W f(c) + b, y) + mu * mse(c, c0)``. Call it under ``torch.no_grad()`` (the weights
    require gradients).

    Args:
        code0: ``c0`` ``(batch, units)``, the forward value of the code.
        target: the batch's targets.
        head: the output layer ``W, b`` (held fixed).
        activation: ``f``.
        loss: ``L`` (one of :mod:`methods.losses`; see :func:`supported`).
        mu: the mismatch weight.
        scaled_loss: ``(1/mu) L + mse`` if true, ``L + mu mse`` otherwise.
    """

    def __init__(
        self,
        code0: torch.Tensor,
        target: torch.Tensor,
        head: nn.Linear,
        activation: nn.Module,
        loss: Loss,
        mu: float,
        scaled_loss: bool,
    ) -> None:
        super().__init__(code0, head, activation)
        self.target = target
        one = self.one
        self.grad_loss, self.grad_mismatch = (one / mu, one) if scaled_loss else (one, one * mu)
        self.cross_entropy = type(loss) is CrossEntropy
        self.loss_backward = kernels.loss_backward(loss)
        self.total_weight: torch.Tensor | None = None  # nll_loss's, from the first call

    def __call__(
        self, code: torch.Tensor, forward: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The gradient at ``code`` ``(batch, units)``.

        ``forward`` is ``(f(c), head(f(c)))`` if already computed for this ``c`` (the codes'
        forward pass gives them for ``c = c0``); computed here otherwise.
        """
        hidden, output = forward if forward is not None else self.forward(code)
        if self.cross_entropy:
            log_probs = kernels.log_softmax(output)
            if self.total_weight is None:
                self.total_weight = kernels.nll_forward(log_probs, self.target)[1]
            grad_output = kernels.cross_entropy_from_log_probs(
                self.grad_loss, log_probs, self.target, self.total_weight
            )
        else:
            grad_output = self.loss_backward(self.grad_loss, output, self.target)
        through = self.through_layer(grad_output, hidden)
        return through.add_(kernels.mse_backward(self.grad_mismatch, code, self.code0))


class LowerCodeGradient(_CodeGradient):
    """``c -> d/dc`` of ``mse(layer(f(c)), above) + mse(c, c0)``, ``(batch, units)`` like ``c``.

    ``code0`` is ``c0`` ``(batch, units)``; ``above`` is the updated code of the next layer
    ``(batch, units above)`` and ``layer`` the layer between them, both held fixed. Call it
    under ``torch.no_grad()``.
    """

    def __init__(
        self, code0: torch.Tensor, above: torch.Tensor, layer: nn.Linear, activation: nn.Module
    ) -> None:
        super().__init__(code0, layer, activation)
        self.above = above

    def __call__(
        self, code: torch.Tensor, forward: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The gradient at ``code`` ``(batch, units)``.

        ``forward`` is ``(f(c), layer(f(c)))`` if already computed for this ``c`` (for
        ``c = c0`` the codes' forward pass gave ``f(c0)``, and ``layer(f(c0))`` is ``c0`` of
        the layer above); computed here otherwise.
        """
        hidden, output = forward if forward is not None else self.forward(code)
        grad_output = kernels.mse_backward(self.one, output, self.above)
        through = self.through_layer(grad_output, hidden)
        return through.add_(kernels.mse_backward(self.one, code, self.code0))
