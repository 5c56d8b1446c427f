"""Every hidden layer's HSIC-bottleneck objective of one batch, in one autograd Function.

Ma, Lewis & Kleijn 2020 (arXiv 1908.01580), Eq. 6: layer ``i`` minimises
``nHSIC(Z_i, X) - beta nHSIC(Z_i, Y)`` (or the same with the biased HSIC of Gretton et al.
2005, Eq. 4). :mod:`methods.hsic_estimators` computes each term with autograd, one layer and one
term at a time; this module computes the same values for all layers at once, with a written-out
backward pass: on the small networks of the benchmark the LU solves and the number of small
operations, not the FLOPs, were the cost (docs/performance.md, "HSIC, round 3" and "round 4").

**The symmetric form of the normalised estimator.** The authors' code computes
``R = K H (K H + c I)^-1`` (``H = I - 1 1^T / m``, ``c = epsilon m``) and
``nHSIC(A, B) = tr(R_A R_B)``. With ``K_c = H K H`` and ``M = K_c + c I``, ``H`` commutes with
``M`` and ``R = K H M^-1``, so ``tr(R_A R_B) = tr(S_A S_B) = sum(S_A * S_B)`` with the symmetric
``S = K_c M^-1 = I - c M^-1``: the same value, where ``M`` is symmetric positive definite and
is inverted by a Cholesky factorisation (one batched call for ``X`` and every layer) instead of
one LU solve per kernel and term. ``Y``'s ``S`` (one-hot labels: ``K_c`` of rank at most the
number of classes) has a closed form in the class counts (:func:`_label_form`). The
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


def _kernel_exponent(a: torch.Tensor, scale: float, out: torch.Tensor) -> torch.Tensor:
    """``-scale ||a_i - a_j||^2`` ``(m, m)`` of ``a`` ``(m, d)`` into ``out``, without autograd.

    The exponent of :func:`methods.hsic_estimators.gaussian_kernel` with
    ``scale = 1 / (2 sigma^2 d)``: the squared distances ``sq_i + sq_j - 2 a_i . a_j`` with the
    scale in the product's own factors (one fused product-and-sum, no pass to scale). The caller
    clamps it at 0 from above (where a squared distance rounds below zero) and exponentiates,
    all kernels at once.
    """
    sq = a.square().sum(dim=1)
    return torch.addmm(sq.unsqueeze(1) + sq, a, a.T, beta=-scale, alpha=2.0 * scale, out=out)


def _center(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` of each symmetric ``(m, m)`` matrix of ``k`` ``(n, m, m)``.

    For symmetric ``K`` with row sums ``r`` and total ``t``,
    ``(H K H)_ij = K_ij - (u_i + u_j) / m`` with ``u = r - t / (2 m)``.
    """
    m = k.shape[-1]
    rows = k.sum(dim=2)
    u = torch.sub(rows, rows.sum(dim=1, keepdim=True), alpha=0.5 / m)
    return torch.sub(k, u.unsqueeze(2) + u.unsqueeze(1), alpha=1.0 / m)


def _center_general(g: torch.Tensor) -> torch.Tensor:
    """``H G H`` of each ``(m, m)`` matrix of ``g`` ``(n, m, m)`` (not assumed symmetric).

    ``G_ij - (r_i + c_j - t / m) / m`` with row sums ``r``, column sums ``c`` and total ``t``.
    """
    m = g.shape[-1]
    rows = g.sum(dim=2, keepdim=True)
    rows = torch.sub(rows, rows.sum(dim=1, keepdim=True), alpha=1.0 / m)
    return torch.sub(g, rows + g.sum(dim=1, keepdim=True), alpha=1.0 / m)


def _failed(info: torch.Tensor) -> bool:
    """Whether any factorisation of a batched ``cholesky_ex``'s ``info`` ``(n,)`` failed.

    One conversion to a list (``bool(info.any())`` costs an ``any`` and a cast first).
    """
    return any(info.tolist())


def _prepare(
    kernels: torch.Tensor, options: ObjectiveOptions, out: torch.Tensor
) -> torch.Tensor | None:
    """Each kernel's symmetric form ``P`` into ``out`` ``(n, m, m)``; for ``normalized``, ``M^-1``.

    ``normalized``: ``P = S = I - c M^-1``, ``M = H K H + c I``; ``biased``:
    ``P = H K H / (m - 1)`` (divisor 1 for ``m = 1``), so that the estimate of a pair is
    ``sum(P_A * P_B)`` in both cases.
    """
    m = kernels.shape[-1]
    centered = _center(kernels)
    if options.estimator == "biased":
        torch.div(centered, max(m - 1, 1), out=out)
        return None
    c = options.epsilon * m
    centered.diagonal(dim1=1, dim2=2).add_(c)
    # The upper factor (M = U^T U): MKL's upper-triangle Cholesky and inverse of torch's
    # column-major copy run about a quarter faster than the lower ones at m = 100.
    factor, info = torch.linalg.cholesky_ex(centered, upper=True)
    # The LU inverse where M is not numerically positive definite (an epsilon far below the
    # default, in float32), as the authors' code would use. Cholesky's inverse is exactly
    # symmetric (LAPACK computes one triangle, torch mirrors it) and column-major: its
    # transpose is the same matrix, row-major, for the products that follow.
    inverse = (
        torch.linalg.inv(centered)
        if _failed(info)
        else torch.cholesky_inverse(factor, upper=True).mT
    )
    torch.add(torch.eye(m, dtype=out.dtype, device=out.device), inverse, alpha=-c, out=out)
    return inverse


def _label_form(
    onehot: torch.Tensor, scale: float, options: ObjectiveOptions, out: torch.Tensor
) -> torch.Tensor:
    """``P`` of :func:`_prepare` ``(m, m)`` of the one-hot labels' Gaussian kernel, into ``out``.

    Two one-hot rows are at squared distance 0 or 2, so with ``a = exp(-2 scale)`` the kernel is
    ``a 1 1^T + (1 - a) Y Y^T`` and ``H K H = (1 - a) Y_c Y_c^T`` with ``Y_c = H Y``
    ``(m, classes)``: of rank at most ``classes``. Then (push-through identity)
    ``S = H K H (H K H + c I)^-1 = Y_c G Y_c^T`` with the ``(classes, classes)``
    ``G = (Y_c^T Y_c + r I)^-1``, ``r = c / (1 - a)``; biased: ``G = (1 - a) / (m - 1) I``.
    ``1 - a`` is computed as ``-expm1(-2 scale)``, more accurate than from the kernel's entries
    near 1 (the autograd path's rounding).

    ``G`` in closed form, without a factorisation: with the class counts ``n``,
    ``Y_c^T Y_c = diag(n) - n n^T / m``, and by the Sherman-Morrison formula, with
    ``D = diag(1 / (n + r))``, ``G = D + D n n^T D / (m - n^T D n)``; since ``Y_c D n = -r Y_c D 1``
    and ``m - n^T D n = r n^T D 1``, ``S = Y_c D Y_c^T + r u u^T / (n^T D 1)`` with
    ``u = Y_c D 1``: no cancellation, and defined for any ``r > 0``.
    """
    m = onehot.shape[0]
    spread = -math.expm1(-2.0 * scale)
    counts = onehot.sum(dim=0)
    centered = torch.sub(onehot, counts, alpha=1.0 / m)
    if options.estimator == "biased":
        return torch.mm(centered * (spread / max(m - 1, 1)), centered.T, out=out)
    ridge = options.epsilon * m / spread
    inverse = counts.add(ridge).reciprocal_()
    projection = torch.mm(centered * inverse, centered.T, out=out)
    u = centered @ inverse
    return projection.addr_(u, u / counts.dot(inverse), alpha=ridge)


def _distance_backward(grad_distance: torch.Tensor, z: torch.Tensor, factor: float) -> torch.Tensor:
    """Gradient ``(m, width)`` of ``factor * sum(G * D)`` with respect to ``z`` ``(m, width)``.

    ``G = grad_distance`` ``(m, m)`` is symmetric (to rounding: it is in exact arithmetic);
    ``D`` are the squared distances of the rows of ``z``, ``D = sq_i + sq_j - 2 z_i . z_j``, so
    ``dz = 2 (rowsum(G + G^T) z - (G + G^T) z) = 4 (rowsum(G) z - G z)``.
    """
    weighted = grad_distance.sum(dim=1, keepdim=True) * z
    return torch.addmm(weighted, grad_distance, z, beta=4.0 * factor, alpha=-4.0 * factor)


class _LayerObjectives(torch.autograd.Function):
    """Every layer's objective ``(layers,)`` and ``HSIC(Z_i, X), HSIC(Z_i, Y)`` ``(layers, 2)``.

    Only the objective is differentiable, with respect to the ``Z_i`` only. The kernel scales
    are numbers.
    """

    @staticmethod
    def forward(ctx, options, scales, x, onehot, *zs):  # noqa: D102 (see the class)
        # The layers' kernels, then X's, in one buffer for the batched centring, Cholesky and
        # inverse. Per layer, not batched over layers: stacking the layers' outputs costs a
        # copy, and the official shape (6 layers of 1024 units, batch 256) ran 7% slower.
        layers, m = len(zs), len(x)
        kernels = x.new_empty(layers + 1, m, m)
        for a, scale, out in zip((*zs, x), (*scales[2:], scales[0]), kernels, strict=True):
            _kernel_exponent(a, scale, out)
        kernels.clamp_max_(0.0).exp_()
        # The symmetric forms in the order Z_1 .. Z_L, X, Y: the layers' and the two targets'
        # are then two contiguous blocks of one buffer.
        forms = x.new_empty(layers + 2, m, m)
        inverse = _prepare(kernels, options, forms[:-1])
        _label_form(onehot, scales[1], options, forms[-1])
        estimates = torch.mm(forms[:layers].flatten(1), forms[layers:].flatten(1).T)
        objective = torch.sub(estimates[:, 0], estimates[:, 1], alpha=options.beta)
        ctx.mark_non_differentiable(estimates)
        ctx.set_materialize_grads(False)
        if any(ctx.needs_input_grad[4:]):
            target = torch.sub(forms[layers], forms[layers + 1], alpha=options.beta)
            ctx.options, ctx.scales = options, scales[2:]
            layer_inverse = inverse[:layers] if inverse is not None else None
            # Kept on ctx, not by save_for_backward (which autograd frees after one backward
            # pass): each layer's objective can then be differentiated on its own, one
            # autograd.grad call after the other, as with one graph per layer. None of these
            # is an output, so this makes no reference cycle.
            ctx.saved = (target, kernels[:layers], layer_inverse, [z.detach() for z in zs])
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
        # K = exp(-scale D): dD = -scale K * dK. The constant factors and the incoming
        # gradients (numbers, one conversion) enter the last product's own factors.
        grad_distance = _center_general(grad_centered).mul_(layer_kernels)
        grads = [
            _distance_backward(g, z, -coefficient * weight * scale)
            for g, z, weight, scale in zip(
                grad_distance, zs, grad_objective.tolist(), ctx.scales, strict=True
            )
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
            (``sigma`` a number, or the detached 0-d tensor of the median heuristic: such
            tensors are read as numbers, all in one conversion).
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
    return _LayerObjectives.apply(options, _numbers(scales), x, onehot, *zs)


def _numbers(scales: Sequence[float | torch.Tensor]) -> tuple[float, ...]:
    """``scales`` as Python floats; the 0-d tensors among them read in one conversion."""
    tensors = [s.detach() for s in scales if isinstance(s, torch.Tensor)]
    read = iter(torch.stack(tensors).tolist() if tensors else ())
    return tuple(next(read) if isinstance(s, torch.Tensor) else float(s) for s in scales)
