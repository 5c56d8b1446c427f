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
the incoming gradient, ``mm`` with the transposed gradient, ``sum`` over the batch) in the same
order, and the caller adds ``act'`` between them by the kernels of
:func:`methods.autograd_kernels.activation_backward` (``threshold_backward`` / ``tanh_backward``
/ ``sigmoid_backward`` on the activation's output), so the results are bit-identical to
``torch.autograd.grad`` of the loss (``tests/test_tp_grads.py`` checks ``torch.equal`` in
float32 and float64), while reusing the activations the method already holds instead of
recomputing them.

The top target's ``dL/do`` is written out the same way for the harness's two task losses
(:func:`methods.autograd_kernels.loss_and_output_grad`), so the step builds no autograd graph
at all on the MLP.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch


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
        # In place on the fresh first term: the same sum without one more (m, n) tensor.
        weight = dw if weight is None else weight.add_(dw)
        bias = db if bias is None else bias.add_(db)
    return weight, bias


def linear_input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``G A``: the gradient with respect to the input ``u`` of ``u -> A u + c``.

    ``grad`` ``(batch, m)``, ``weight`` ``A`` ``(m, n)``; returns ``(batch, n)``, as autograd
    computes it for a row-major input (``grad.mm(A)``).
    """
    return grad.mm(weight)
