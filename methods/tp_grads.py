"""Closed-form gradients of the target-propagation family's local losses on linear layers.

Every local loss of :mod:`methods.target_propagation` is a scaled squared distance
``scale * mean_n ||r_n - t_n||^2`` whose ``r`` is a sum of terms ``+-act(A u + c)``, each
computed from constants ``u`` by one linear map ``A`` (a forward layer's ``W_i`` or an
inverse's ``V_i``): the forward loss of a hidden or output layer, DTP's inverse loss and DRL's
difference reconstruction loss. Their gradients are::

    G = scale / batch * 2 (r - t)                    (batch, n_out)
    G_j = +-G * act'(A u_j + c)                      one per term, from act's output
    dA = sum_j G_j^T u_j,   dc = sum_j sum_n G_j

Autograd would rebuild the forward pass with a graph and walk it back. These functions run
exactly the kernels autograd runs for that graph (``mean`` -> divide, ``pow`` -> ``2 d`` times
the incoming gradient, ``threshold_backward`` / ``tanh_backward`` / ``sigmoid_backward`` on the
activation's output, ``mm`` with the transposed gradient, ``sum`` over the batch) in the same
order, so the results are bit-identical to ``torch.autograd.grad`` of the loss
(``tests/test_tp_grads.py`` checks ``torch.equal`` in float32 and float64), while reusing the
activations the method already holds instead of recomputing them.

The top target's ``dL/do`` is written out the same way for the harness's two task losses
(:func:`loss_and_output_grad`: ``nll_loss_backward`` after ``_log_softmax_backward_data`` for
cross-entropy, ``mse_loss_backward``), so the step builds no autograd graph at all on the MLP.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from methods.losses import IGNORE_INDEX, CrossEntropy, Loss, MeanSquaredError

_aten = torch.ops.aten
_MEAN = 1  # ATen's reduction enum value for "mean" (F.cross_entropy's and F.mse_loss's default)

# act_g -> its backward from the activation's *output*, the kernel autograd uses for each.
_BACKWARD_FROM_OUTPUT: dict[type[nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
_BACKWARD_FROM_OUTPUT = {
    nn.ReLU: lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0),
    nn.Tanh: torch.ops.aten.tanh_backward,
    nn.Sigmoid: torch.ops.aten.sigmoid_backward,
    nn.Identity: lambda grad, out: grad,
}


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# act -> the function its module's forward calls (same values; a module call costs ~3 us more).
_FORWARD: dict[type[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = {
    nn.ReLU: torch.relu,
    nn.Tanh: torch.tanh,
    nn.Sigmoid: torch.sigmoid,
    nn.Identity: _identity,
}


def activation_function(activation: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function ``activation``'s forward calls (``torch.relu`` for ``nn.ReLU()``, ...).

    Same values as calling the module, without ``nn.Module.__call__``; an in-place ReLU or any
    other activation (e.g. ELU) is returned as is.
    """
    if isinstance(activation, nn.ReLU) and activation.inplace:
        return activation
    return _FORWARD.get(type(activation), activation)


def has_closed_form(activation: nn.Module | None) -> bool:
    """Whether :func:`activation_backward` handles ``activation`` (``None``: no activation).

    ReLU, tanh, sigmoid and identity: their derivatives are functions of their outputs. ELU's
    autograd kernel reads its input instead, so ELU takes the autograd path.
    """
    return activation is None or type(activation) in _BACKWARD_FROM_OUTPUT


def activation_backward(
    activation: nn.Module | None, grad: torch.Tensor, output: torch.Tensor
) -> torch.Tensor:
    """``grad * act'(z)`` from ``output = act(z)``: ``(batch, n) -> (batch, n)``.

    Args:
        activation: an ``nn.ReLU``, ``nn.Tanh``, ``nn.Sigmoid`` or ``nn.Identity`` module, or
            ``None`` for a linear layer.
        grad: the gradient with respect to ``output``.
        output: the activation's output.

    Raises:
        TypeError: for another activation (check :func:`has_closed_form` first).
    """
    if activation is None:
        return grad
    backward = _BACKWARD_FROM_OUTPUT.get(type(activation))
    if backward is None:
        raise TypeError(f"no closed-form backward for {type(activation).__name__}")
    return backward(grad, output)


@functools.lru_cache(maxsize=64)
def _gradient_factor(scale: float, batch: int, dtype: torch.dtype) -> float:
    """``2 * (scale / batch)`` as autograd rounds it: ``scale`` cast to ``dtype``, then divided.

    Exactly representable in ``dtype``, so multiplying by this Python float equals multiplying
    by autograd's tensor. The factor 2 (exact) folds ``pow``'s derivative in.
    """
    return 2.0 * (torch.tensor(scale, dtype=dtype) / batch).item()


def distance_grad(
    output: torch.Tensor, target: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, G)``: ``d = output - target`` and the gradient ``G`` of ``scale * mean_n ||d_n||^2``.

    Shapes ``(batch, n)``. ``G = d * (2 scale / batch)``, rounded as autograd's
    ``(2 d) * (scale / batch)`` (the factor 2 is exact, so both are one rounding of the same
    product; ``scale / batch`` computed in the tensor's dtype, as autograd does).
    """
    d = output - target
    return d, difference_grad(d, scale)


def difference_grad(d: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """:func:`distance_grad`'s ``G`` from ``d = output - target`` already computed.

    ``(batch, n) -> (batch, n)``; the same bits as :func:`distance_grad`.
    """
    return d * _gradient_factor(scale, len(d), d.dtype)


def loss_and_output_grad(
    loss: Loss, output: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(L, dL/d output)`` without autograd, or ``None`` where not written out here.

    ``output`` ``(batch, outputs)``. For :class:`~methods.losses.CrossEntropy` with class
    indices ``(batch,)`` and :class:`~methods.losses.MeanSquaredError` with a target shaped like
    ``output``, it runs the kernels ``F.cross_entropy`` / ``F.mse_loss`` run (``_log_softmax``
    then ``nll_loss_forward``; ``mse_loss``) and those autograd's nodes run for
    ``torch.autograd.grad(L, output)`` (``nll_loss_backward`` then
    ``_log_softmax_backward_data``; ``mse_loss_backward``) on a gradient of ones, so both
    results are the same bits as ``loss(output, target)`` and autograd's gradient
    (``tests/test_tp_grads.py``). ``L`` is a 0-d tensor. Other losses and shapes (per-step
    outputs, subclasses): ``None``, and the caller uses autograd.
    """
    if type(loss) is CrossEntropy and output.ndim == 2 and target.ndim == 1:
        if target.is_floating_point():  # class probabilities: autograd
            return None
        log_probs = torch._log_softmax(output, 1, False)
        value, total = _aten.nll_loss_forward(log_probs, target, None, _MEAN, IGNORE_INDEX)
        one = torch.ones((), dtype=output.dtype, device=output.device)
        grad = _aten.nll_loss_backward(one, log_probs, target, None, _MEAN, IGNORE_INDEX, total)
        return value, _aten._log_softmax_backward_data(grad, log_probs, 1, output.dtype)
    if type(loss) is MeanSquaredError and (output.shape, output.dtype) == (
        target.shape,
        target.dtype,
    ):
        one = torch.ones((), dtype=output.dtype, device=output.device)
        value = _aten.mse_loss(output, target, _MEAN)
        return value, _aten.mse_loss_backward(one, output, target, _MEAN)
    return None


def linear_grads(
    grads: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dA, dc)`` of a linear map ``u -> A u + c`` applied to each ``u_j``.

    Args:
        grads: ``G_j``, the gradients with respect to each application's output ``(batch, m)``.
        inputs: the matching inputs ``u_j``, ``(batch, n)``.

    Returns:
        ``dA = sum_j G_j^T u_j`` ``(m, n)`` and ``dc = sum_j sum_n G_j`` ``(m,)``, summed in
        the order given (autograd's two-term sums are order-free: IEEE addition commutes).
    """
    weight = bias = None
    for grad, u in zip(grads, inputs, strict=True):
        dw, db = grad.t().mm(u), grad.sum(0)
        weight = dw if weight is None else weight + dw
        bias = db if bias is None else bias + db
    return weight, bias


def linear_input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``G A``: the gradient with respect to the input ``u`` of ``u -> A u + c``.

    ``grad`` ``(batch, m)``, ``weight`` ``A`` ``(m, n)``; returns ``(batch, n)``, as autograd
    computes it for a row-major input (``grad.mm(A)``).
    """
    return grad.mm(weight)
