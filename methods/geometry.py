"""Geometry of update directions: the one cosine and the one angle every diagnostic uses.

Both treat their inputs as flat vectors (any shapes with the same number of elements, e.g. a
method's update of a weight matrix and the backprop gradient of it) and compute in float64; a
vector compared with itself gives exactly 0 degrees.

An undefined geometry is NaN, never a finite stand-in: the cosine and the angle are NaN when
either vector holds a NaN or an infinite entry, or is the zero vector (its direction is
undefined). A NaN then shows up in MLflow and in the report as a missing point, where a clamped
or defaulted value (a NaN clamped into [-1, 1] reads as a perfect 0-degree alignment; a zero
vector defaulted to 90 degrees reads as orthogonality) would pass for a measurement.

This module depends on torch only, so that methods and the harness can both use it.
"""

from __future__ import annotations

import math

import torch


def _unit_vectors(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``a / ||a||`` and ``b / ||b||`` as flat float64 vectors; ``None`` where undefined.

    Undefined: a NaN or infinite entry in either, or a zero (or empty) vector.

    Raises:
        ValueError: if ``a`` and ``b`` differ in their number of elements.
    """
    if a.numel() != b.numel():
        raise ValueError(f"vectors of different sizes: {a.numel()} and {b.numel()} elements")
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    if a.numel() == 0 or not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return None
    # Divide by the largest entry first: float64 squares of finite entries above ~1e154 would
    # overflow the norm; the direction does not depend on the scale.
    a_max, b_max = a.abs().max(), b.abs().max()
    if a_max == 0 or b_max == 0:
        return None
    a, b = a / a_max, b / b_max
    return a / a.norm(), b / b.norm()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the angle between ``a`` and ``b`` seen as flat vectors.

    ``<a, b> / (||a|| ||b||)`` in float64, clamped to [-1, 1] (rounding can push it just past
    +-1 for parallel vectors).

    Args:
        a: any shape, ``n`` elements in all.
        b: any shape, the same number of elements ``n`` as ``a``.

    Returns:
        A float in [-1, 1]; NaN if either vector has a NaN or infinite entry, or is zero.

    Raises:
        ValueError: if ``a`` and ``b`` differ in their number of elements.
    """
    units = _unit_vectors(a, b)
    if units is None:
        return math.nan
    u, v = units
    return max(-1.0, min(1.0, float(u @ v)))


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in degrees between ``a`` and ``b`` seen as flat vectors.

    ``arccos(<A, B>_F / (||A||_F ||B||_F))``, the alignment measure of Meulemans, Carzaniga,
    Suykens, Sacramento & Grewe, "A theoretical framework for target propagation", NeurIPS 2020,
    Sec. 5 (there between a method's weight update and the backprop gradient). Computed in
    float64 as ``2 atan2(||u - v||, ||u + v||)`` for the unit vectors ``u``, ``v``, equal to the
    arccos but accurate near 0 and 180 degrees, where the arccos of a rounded cosine is off by
    ~1e-6 degrees: a vector gives exactly 0 with itself.

    Args:
        a: any shape, ``n`` elements in all.
        b: any shape, the same number of elements ``n`` as ``a``.

    Returns:
        Degrees in [0, 180] (0: same direction, 90: orthogonal, 180: opposite); NaN if either
        vector has a NaN or infinite entry, or is zero.

    Raises:
        ValueError: if ``a`` and ``b`` differ in their number of elements.
    """
    units = _unit_vectors(a, b)
    if units is None:
        return math.nan
    u, v = units
    return math.degrees(2.0 * math.atan2(float((u - v).norm()), float((u + v).norm())))
