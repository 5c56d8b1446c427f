"""Hilbert-Schmidt independence criterion (HSIC) estimators with Gaussian kernels.

Gretton, Bousquet, Smola & Schoelkopf, "Measuring statistical dependence with Hilbert-Schmidt
norms", ALT 2005 (biased estimator, Eq. 4); the normalised variant and the kernel-width scaling
are those of Ma, Lewis & Kleijn, "The HSIC bottleneck", AAAI 2020 (Sec. 3) and the authors'
code. All functions work on ``(m, features)`` tensors on any device, with no loop over samples.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import torch


def pairwise_squared_distances(a: torch.Tensor) -> torch.Tensor:
    """``D_ij = ||a_i - a_j||^2`` for ``a`` of shape ``(m, d)``; ``(m, m)``, clamped at 0."""
    sq = a.pow(2).sum(dim=1, keepdim=True)
    return (sq + sq.T - 2.0 * a @ a.T).clamp_min(0.0)


def median_sigma(a: torch.Tensor) -> torch.Tensor:
    """The median heuristic, as a ``sigma`` for :func:`gaussian_kernel`.

    Returns the ``sigma`` whose kernel width ``sigma * sqrt(d)`` equals the median pairwise
    distance of the rows of ``a`` ``(m, d)`` (at least 1e-2 / sqrt(d), so that identical rows do
    not give a zero width). A 0-d tensor, detached.
    """
    m, d = a.shape
    distances = pairwise_squared_distances(a.detach())
    off_diagonal = distances[~torch.eye(m, dtype=torch.bool, device=a.device)].sqrt()
    median = off_diagonal.median() if off_diagonal.numel() else a.new_tensor(1.0)
    return median.clamp_min(1e-2) / d**0.5


def gaussian_kernel(a: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """``K_ij = exp(-||a_i - a_j||^2 / (2 sigma^2 d))``: ``(m, d) -> (m, m)``.

    The width grows as ``sqrt(d)`` with the feature dimension ``d`` (the HSIC-bottleneck
    authors' scaling), so one ``sigma`` suits layers of different widths.

    Raises:
        ValueError: if ``a`` is not 2-D or ``sigma`` is not positive.
    """
    if a.ndim != 2:
        raise ValueError(f"expected (m, features), got shape {tuple(a.shape)}")
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be > 0, got {float(sigma)}")
    return torch.exp(-pairwise_squared_distances(a) / (2.0 * sigma**2 * a.shape[1]))


def centering_matrix(m: int, like: torch.Tensor) -> torch.Tensor:
    """``H = I - 1 1^T / m``, ``(m, m)``, with ``like``'s dtype and device.

    The matrix is cached per size, dtype and device (every batch of a run has the same size):
    do not modify it in place.
    """
    return _centering_matrix(m, like.dtype, like.device)


@lru_cache(maxsize=16)
def _centering_matrix(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.eye(m, dtype=dtype, device=device) - 1.0 / m


@lru_cache(maxsize=16)
def _ridge(c: float, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``c * I`` ``(m, m)`` (``c = epsilon * m``), cached like :func:`centering_matrix`."""
    return c * torch.eye(m, dtype=dtype, device=device)


def centered(kx: torch.Tensor) -> torch.Tensor:
    """``H K H``, the doubly centred kernel matrix, ``(m, m)``."""
    return kx - kx.mean(dim=0, keepdim=True) - kx.mean(dim=1, keepdim=True) + kx.mean()


def regularized_projection(kx: torch.Tensor, epsilon: float = 1e-5) -> torch.Tensor:
    """``R = K H (K H + epsilon m I)^-1``, ``(m, m)``: one side of the normalised HSIC.

    Raises:
        ValueError: if ``epsilon <= 0``.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    m = kx.shape[0]
    kh = kx @ centering_matrix(m, kx)
    ridge = _ridge(epsilon * m, m, kx.dtype, kx.device)
    # K H and (K H + c I)^-1 commute, so the right inverse is a linear solve.
    return torch.linalg.solve(kh + ridge, kh)


class Estimator(NamedTuple):
    """An HSIC estimator split in two, so that fixed kernels (``X``, ``Y``) are prepared once.

    ``pair(prepare(K), prepare(L))`` is the estimate for kernel matrices ``K`` and ``L``.
    """

    prepare: Callable[[torch.Tensor], torch.Tensor]
    pair: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def biased_estimator() -> Estimator:
    """``(m - 1)^-2 tr(K H L H) = (m - 1)^-2 sum((H K H) * (H L H))`` (``H`` is idempotent).

    For ``m = 1`` (a last minibatch of one example) the centred kernels are zero and so is the
    estimate: one example carries no evidence of dependence (the divisor is taken as 1).
    """
    return Estimator(centered, lambda a, b: (a * b).sum() / max(a.shape[0] - 1, 1) ** 2)


def normalized_estimator(epsilon: float = 1e-5) -> Estimator:
    """``tr(R_K R_L) = sum(R_K * R_L^T)`` with :func:`regularized_projection`."""
    return Estimator(lambda k: regularized_projection(k, epsilon), lambda a, b: (a * b.T).sum())


def hsic_biased(kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """Biased empirical HSIC ``(m - 1)^-2 tr(K H L H)`` of kernel matrices ``K = kx``, ``L = ky``.

    Gretton et al. 2005, Eq. 4. Non-negative for positive semi-definite kernels; a 0-d tensor,
    0 for ``m = 1`` (:func:`biased_estimator`).

    Raises:
        ValueError: if the matrices are not square of the same size, or empty.
    """
    _check_pair(kx, ky)
    estimator = biased_estimator()
    return estimator.pair(estimator.prepare(kx), estimator.prepare(ky))


def normalized_hsic(kx: torch.Tensor, ky: torch.Tensor, epsilon: float = 1e-5) -> torch.Tensor:
    """Normalised HSIC ``tr(R_K R_L)``, ``R = K H (K H + epsilon m I)^-1``, ``K = kx``, ``L = ky``.

    Ma et al. 2020 and the authors' code (``hsic_normalized_cca``): ``R`` is a regularised
    "projection" onto the centred kernel's range, so the value lies in ``[0, rank]`` (tested);
    ``epsilon`` trades bias for numerical stability. A 0-d tensor, 0 for ``m = 1`` (the
    centred kernel of one example is zero).

    Raises:
        ValueError: if the matrices are not square of the same size, empty, or
            ``epsilon <= 0``.
    """
    _check_pair(kx, ky)
    estimator = normalized_estimator(epsilon)
    return estimator.pair(estimator.prepare(kx), estimator.prepare(ky))


def _check_pair(kx: torch.Tensor, ky: torch.Tensor) -> int:
    if kx.ndim != 2 or kx.shape[0] != kx.shape[1] or kx.shape != ky.shape:
        raise ValueError(
            f"need two (m, m) kernel matrices, got {tuple(kx.shape)} and {tuple(ky.shape)}"
        )
    if kx.shape[0] < 1:
        raise ValueError("HSIC needs at least 1 sample")
    return kx.shape[0]


ESTIMATORS = {"normalized": normalized_estimator, "biased": biased_estimator}
