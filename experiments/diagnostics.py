"""Method-agnostic diagnostics: alignment with backprop and per-layer gradient norms.

This is the one home of every diagnostic that does not depend on the learning rule; a method
reports only what it alone knows (:meth:`methods.base.Method.epoch_metrics`, per epoch).

Every ``every_steps`` updates, on a fixed probe batch (the first ``probe_size`` training
examples), a deep copy of the method computes its update (:meth:`Method.compute_update` writes
it into ``.grad``), and torch autograd computes the true backprop gradient of the same loss at
the same parameters. Per parameter tensor (weights and biases separately) it reports:

* ``alignment/<param>``: the angle in degrees between the method's update direction and the
  backprop gradient, ``arccos(<A, B>_F / (||A||_F ||B||_F))`` (Meulemans et al. 2020, Sec. 5),
  by :func:`methods.geometry.angle_degrees`: float64, so backprop itself gives 0; NaN when
  either is zero or holds a NaN/Inf entry (the angle is undefined), never a finite stand-in;
* ``grad_norm/<param>``: the Frobenius norm of the backprop gradient (vanishing / exploding);
* ``update_norm/<param>``: the norm of the method's own update direction.

Norms are computed in float64 (a float32 sum of squares overflows to Inf for entries above
~1e19); a NaN entry gives a NaN norm, an Inf entry an Inf norm. MLflow's SQLite store keeps a
NaN as NaN but writes +-Inf as +-1.8e308; :mod:`analysis.runs` reads those back as +-Inf.

Parameters the method leaves without an update at that moment (e.g. frozen in a phase) are
skipped. Training is untouched: the copy is thrown away, and torch's random number generators
are forked so the probe's random draws (noise in target propagation, say) do not shift training's
stream: a run gives the same weights with diagnostics on or off. MLflow step = update count.
"""

from __future__ import annotations

import copy

import torch

from methods.base import Method
from methods.geometry import angle_degrees


def norm(tensor: torch.Tensor) -> float:
    """Euclidean (Frobenius) norm of ``tensor`` (any shape) in float64; NaN/Inf propagate."""
    return float(tensor.detach().double().norm())


class UpdateDiagnostics:
    """Compare a method's update with backprop on a probe batch (see the module docstring).

    Args:
        probe_x: probe inputs ``(probe_size, *features)`` on the training device.
        probe_y: probe targets.
        every_steps: compute every this many updates (>= 1).
    """

    def __init__(self, probe_x: torch.Tensor, probe_y: torch.Tensor, every_steps: int) -> None:
        if every_steps < 1:
            raise ValueError(f"diagnostics.every_steps must be >= 1, got {every_steps}")
        self.x, self.y, self.every_steps = probe_x, probe_y, every_steps

    def due(self, step: int) -> bool:
        """Whether update number ``step`` (1-based) is followed by a diagnostic."""
        return step % self.every_steps == 0

    def __call__(self, method: Method) -> dict[str, float]:
        """The metrics of the module docstring for ``method`` at its current parameters."""
        devices = [torch.cuda.current_device()] if self.x.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            clone = copy.deepcopy(method)
            clone.zero_grad()
            clone.model.train()
            clone.compute_update(self.x, self.y)
            updates = {name: p.grad for name, p in clone.model.named_parameters()}
        names, params = zip(*method.model.named_parameters())
        with torch.enable_grad():
            true = torch.autograd.grad(
                method.loss(method.model(self.x), self.y), list(params), allow_unused=True
            )
        metrics: dict[str, float] = {}
        for name, grad in zip(names, true):
            if grad is None:
                continue
            metrics[f"grad_norm/{name}"] = norm(grad)
            update = updates[name]
            if update is not None:
                metrics[f"update_norm/{name}"] = norm(update)
                metrics[f"alignment/{name}"] = angle_degrees(update, grad)
        return metrics
