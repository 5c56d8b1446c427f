"""Every hidden layer's HSIC-bottleneck objective of one batch, in one autograd Function.

Ma, Lewis & Kleijn 2020 (arXiv 1908.01580), Eq. 6: layer ``i`` minimises
``nHSIC(Z_i, X) - beta nHSIC(Z_i, Y)`` (or the same with the biased HSIC of Gretton et al.
2005, Eq. 4). :mod:`methods.hsic_estimators` computes each term with autograd, one layer and one
term at a time; this module computes the same values for all layers at once, with a written-out
backward pass: on the small networks of the benchmark the LU solves and the number of small
operations, not the FLOPs, were the cost (docs/performance.md, "HSIC, round 3").

**The symmetric form of the normalised estimator.** The authors' code computes
``R = K H (K H + c I)^-1`` (``H = I - 1 1^T / m``, ``c = epsilon m``) and
``nHSIC(A, B) = tr(R_A R_B)``. With ``K_c = H K H`` and ``M = K_c + c I``, ``H`` commutes with
``M`` and ``R = K H M^-1``, so ``tr(R_A R_B) = tr(S_A S_B) = sum(S_A * S_B)`` with the symmetric
``S = K_c M^-1 = I - c M^-1``: the same value, where ``M`` is symmetric positive definite and
is inverted by a Cholesky factorisation (one batched call for ``X`` and every layer) instead of
one LU solve per kernel and term. ``Y``'s ``S`` (one-hot labels: ``K_c`` of rank at most the
number of classes) needs only a ``classes x classes`` inverse (:func:`_label_form`). The
backward pass of ``sum(S * T)``, ``T = S_X - beta S_Y``, with respect to ``K_c`` is
``c M^-1 T M^-1`` (``M^-1`` is kept from the forward pass), then ``H . H`` (the centring's own
adjoint; in exact arithmetic it changes nothing, but in float32 it removes errors that
``M^-1``'s eigenvalue ``1 / c`` along ``1`` amplifies 100-fold), then the Gaussian kernel's
and the squared distances' derivatives.

**Not bit-identical** to the autograd path of :mod:`methods.hsic_estimators`; they agree to
rounding (``tests/test_hsic_objective.py``: 1e-9 relative in float64 for values and gradients,
and finite differences). In float32 this form is the more accurate one: on a 40-256-256 MLP at
batch 100 its gradients are within about 2e-4 (relative) of a float64 computation, those of the
LU path within about 3e-2. One difference beyond rounding: autograd's ``clamp_min(0)`` of a
squared distance that rounds below zero passes no gradient; here every entry passes it. Such
entries are the diagonal (whose terms cancel exactly in the distance's gradient) and pairs of
(near-)identical rows, whose true gradient is zero anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch


class ObjectiveOptions(NamedTuple):
    """The constants of :func:`layer_objectives`.

    Attributes:
        estimator: ``"normalized"`` or ``"biased"`` (:data:`methods.hsic_estimators.ESTIMATORS`).
        beta: ``beta`` of Eq. 6.
        epsilon: the normalised estimator's regulariser (``c = epsilon m``).
    """

    estimator: str
    beta: float
    epsilon: float


def gaussian_kernel_(a: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``exp(-scale ||a_i - a_j||^2)`` ``(m, m)`` of ``a`` ``(m, d)``, without autograd.

    The value of :func:`methods.hsic_estimators.gaussian_kernel` with
    ``scale = 1 / (2 sigma^2 d)``, with one fused product-and-sum for the squared distances
    (clamped at 0) and the rest in place. Not differentiable: for :class:`_LayerObjectives`.
    """
    sq = a.square().sum(dim=1)
    distances = torch.addmm(sq.unsqueeze(1) + sq, a, a.T, alpha=-2.0)
    return distances.clamp_min_(0.0).mul_(-scale).exp_()


def _center(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` of each symmetric ``(m, m)`` matrix of ``k`` ``(n, m, m)``.

    For symmetric ``K`` with row means ``r`` and mean ``mu``,
    ``(H K H)_ij = K_ij - (r_i - mu / 2) - (r_j - mu / 2)``.
    """
    rows = k.mean(dim=2)
    u = rows.sub_(rows.mean(dim=1, keepdim=True).mul_(0.5))
    return k - (u.unsqueeze(2) + u.unsqueeze(1))


def _center_general(g: torch.Tensor) -> torch.Tensor:
    """``H G H`` of each ``(m, m)`` matrix of ``g`` ``(n, m, m)`` (not assumed symmetric)."""
    return (
        g
        - g.mean(dim=2, keepdim=True)
        - g.mean(dim=1, keepdim=True)
        + g.mean(dim=(1, 2), keepdim=True)
    )


def _prepare(
    kernels: torch.Tensor, options: ObjectiveOptions
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each kernel's symmetric form ``P`` ``(n, m, m)`` and, for ``normalized``, ``M^-1``.

    ``normalized``: ``P = S = I - c M^-1``, ``M = H K H + c I``; ``biased``:
    ``P = H K H / (m - 1)`` (divisor 1 for ``m = 1``), so that the estimate of a pair is
    ``sum(P_A * P_B)`` in both cases.
    """
    m = kernels.shape[-1]
    centered = _center(kernels)
    if options.estimator == "biased":
        return centered.div_(max(m - 1, 1)), None
    c = options.epsilon * m
    centered.diagonal(dim1=1, dim2=2).add_(c)
    factor, info = torch.linalg.cholesky_ex(centered)
    # Not numerically positive definite (an epsilon far below the default, in float32): the
    # LU inverse, as the authors' code would use.
    failed = bool(info.any())
    inverse = torch.linalg.inv(centered) if failed else torch.cholesky_inverse(factor)
    projection = inverse.mul(-c)
    projection.diagonal(dim1=1, dim2=2).add_(1.0)
    return projection, inverse


def _label_form(
    onehot: torch.Tensor, scale: float | torch.Tensor, options: ObjectiveOptions
) -> torch.Tensor:
    """``P`` of :func:`_prepare` ``(m, m)`` of the Gaussian kernel of one-hot labels, closed form.

    Two one-hot rows are at squared distance 0 or 2, so with ``a = exp(-2 scale)`` the kernel is
    ``a 1 1^T + (1 - a) Y Y^T`` and ``H K H = (1 - a) Y_c Y_c^T`` with ``Y_c = H Y``
    ``(m, classes)``: of rank at most ``classes``. Then (push-through identity)
    ``S = H K H (H K H + c I)^-1 = Y_c G Y_c^T`` with the ``(classes, classes)``
    ``G = (1 - a) ((1 - a) Y_c^T Y_c + c I)^-1``, instead of an ``(m, m)`` inverse; biased:
    ``G = (1 - a) / (m - 1) I``. ``1 - a`` is computed as ``-expm1(-2 scale)``, more accurate
    than from the kernel's entries near 1 (the autograd path's rounding).
    """
    m, classes = onehot.shape
    spread = -(
        math.expm1(-2.0 * scale) if isinstance(scale, float | int) else torch.expm1(-2.0 * scale)
    )
    centered = onehot - onehot.mean(dim=0, keepdim=True)
    if options.estimator == "biased":
        return (centered * (spread / max(m - 1, 1))) @ centered.T
    gram = centered.T @ centered
    gram.mul_(spread).diagonal().add_(options.epsilon * m)
    factor, info = torch.linalg.cholesky_ex(gram)
    inverse = torch.linalg.inv(gram) if bool(info.any()) else torch.cholesky_inverse(factor)
    return (centered @ inverse.mul_(spread)) @ centered.T


def _distance_backward(grad_distance: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Gradient ``(m, width)`` of ``sum(G * D)`` with respect to ``z`` ``(m, width)``.

    ``G = grad_distance`` ``(m, m)`` is symmetric (to rounding: it is in exact arithmetic);
    ``D`` are the squared distances of the rows of ``z``, ``D = sq_i + sq_j - 2 z_i . z_j``, so
    ``dz = 2 (rowsum(G + G^T) z - (G + G^T) z) = 4 (rowsum(G) z - G z)``.
    """
    weighted = grad_distance.sum(dim=1, keepdim=True) * z
    return torch.addmm(weighted, grad_distance, z, alpha=-1.0).mul_(4.0)


class _LayerObjectives(torch.autograd.Function):
    """Every layer's objective ``(layers,)`` and ``HSIC(Z_i, X), HSIC(Z_i, Y)`` ``(layers, 2)``.

    Only the objective is differentiable, with respect to the ``Z_i`` only.
    """

    @staticmethod
    def forward(ctx, options, scales, x, onehot, *zs):  # noqa: D102 (see the class)
        # Per layer, not batched: stacking the layers' outputs costs a copy, and the official
        # shape (6 layers of 1024 units, batch 256) ran 7% slower batched.
        kernels = torch.stack(
            [gaussian_kernel_(a, s) for a, s in zip((x, *zs), (scales[0], *scales[2:]))]
        )
        layer_kernels = kernels[1:]
        prepared, inverse = _prepare(kernels, options)
        targets = torch.stack([prepared[0], _label_form(onehot, scales[1], options)])
        estimates = torch.mm(prepared[1:].flatten(1), targets.flatten(1).T)  # (layers, 2)
        objective = torch.sub(estimates[:, 0], estimates[:, 1], alpha=options.beta)
        ctx.mark_non_differentiable(estimates)
        ctx.set_materialize_grads(False)
        if any(ctx.needs_input_grad[4:]):
            target = torch.sub(targets[0], targets[1], alpha=options.beta)
            ctx.options, ctx.scales = options, scales[2:]
            layer_inverse = inverse[1:] if inverse is not None else None
            # Kept on ctx, not by save_for_backward (which autograd frees after one backward
            # pass): each layer's objective can then be differentiated on its own, one
            # autograd.grad call after the other, as with one graph per layer. None of these
            # is an output, so this makes no reference cycle.
            ctx.saved = (target, layer_kernels, layer_inverse, [z.detach() for z in zs])
        return objective, estimates

    @staticmethod
    def backward(ctx, grad_objective, _grad_estimates):  # noqa: D102 (see the class)
        if grad_objective is None:  # only the (non-differentiable) estimates were used
            return (None,) * (4 + len(ctx.scales))
        target, layer_kernels, inverse, zs = ctx.saved
        options = ctx.options
        m = target.shape[0]
        if options.estimator == "biased":
            # d sum(P_Z * T) / d K_c = T / (m - 1)
            grad_centered = target.expand_as(layer_kernels)
            coefficient = 1.0 / max(m - 1, 1)
        else:
            # d sum((I - c M^-1) * T) / d M = c M^-1 T M^-1 (M^-1 and T symmetric)
            grad_centered = torch.matmul(torch.matmul(inverse, target), inverse)
            coefficient = options.epsilon * m
        # K = exp(-scale D): dD = -scale K * dK; the constant factors and the incoming
        # gradients are applied together, in one pass.
        grad_distance = _center_general(grad_centered).mul_(layer_kernels)
        factors = grad_objective.view(-1, 1, 1) * -coefficient
        grads = [
            _distance_backward(g.mul_(factor * scale), z)
            for g, factor, scale, z in zip(grad_distance, factors, ctx.scales, zs, strict=True)
        ]
        return (None, None, None, None, *grads)


def layer_objectives(
    x: torch.Tensor,
    onehot: torch.Tensor,
    zs: Sequence[torch.Tensor],
    scales: Sequence[float | torch.Tensor],
    options: ObjectiveOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6's objective of every hidden layer, and its two HSIC terms.

    Args:
        x: the flattened input ``X`` ``(m, input features)``, not differentiated.
        onehot: the one-hot labels ``Y`` ``(m, classes)``, same dtype, not differentiated; each
            row must be one-hot (its kernel is used in closed form).
        zs: each hidden layer's output ``Z_i`` ``(m, width_i)``, the gradient's only inputs.
        scales: ``1 / (2 sigma^2 d)`` of each kernel, in the order ``x``, ``onehot``, ``zs``
            (``sigma`` a number, or the detached 0-d tensor of the median heuristic).
        options: the estimator and its constants.

    Returns:
        ``(objective, estimates)``: ``estimates`` ``(layers, 2)`` holds ``HSIC(Z_i, X)`` and
        ``HSIC(Z_i, Y)``, not differentiable; ``objective = HSIC(Z_i, X) - beta HSIC(Z_i, Y)``
        ``(layers,)`` is differentiable with respect to ``zs``.

    Raises:
        ValueError: for inputs with different numbers of rows, or a wrong number of scales.
    """
    if len(scales) != len(zs) + 2:
        raise ValueError(f"need {len(zs) + 2} kernel scales (x, y, layers), got {len(scales)}")
    rows = {len(a) for a in (x, onehot, *zs)}
    if len(rows) != 1:
        raise ValueError(f"x, y and the layer outputs need the same number of rows, got {rows}")
    return _LayerObjectives.apply(options, tuple(scales), x, onehot, *zs)
