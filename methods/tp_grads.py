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
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

# act_g -> its backward from the activation's *output*, the kernel autograd uses for each.
_BACKWARD_FROM_OUTPUT: dict[type[nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
_BACKWARD_FROM_OUTPUT = {
    nn.ReLU: lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0),
    nn.Tanh: torch.ops.aten.tanh_backward,
    nn.Sigmoid: torch.ops.aten.sigmoid_backward,
    nn.Identity: lambda grad, out: grad,
}


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
    return d, d * _gradient_factor(scale, len(output), output.dtype)


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
