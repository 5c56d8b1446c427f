"""Backpropagation through time, full and truncated, with per-time-step gradient diagnostics.

BPTT: Werbos, "Backpropagation through time: what it does and how to do it", Proc. IEEE 1990.
Truncated BPTT: Williams & Peng 1990 / Sutskever 2013, Sec. 2.6: the sequence is cut into
segments of ``truncation`` steps; the hidden state is carried from one segment to the next but
detached at the border, and the weights are updated after every segment. Gradient-norm clipping:
Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks", ICML 2013,
Alg. 1 (if ``||g|| > threshold``, ``g <- threshold g / ||g||``).

Diagnostics specific to recurrent networks (never part of training; computed on a fixed probe
batch, the first training batch, when the loop reads the epoch's metrics, every ``probe_every``
epochs of the loop's count, with ``torch.autograd.grad`` so no ``.grad`` is touched):

* ``dL_dh/t{t:03d}`` for t = 1..T: the norm of the full-BPTT gradient ``dL/dh_t`` of the batch
  loss with respect to the top layer's hidden state at step t (Pascanu et al. 2013, Eq. 3-5);
  one MLflow metric per step t, logged at step = epoch, so that analysis can draw norm-vs-t
  curves at any epoch (:func:`analysis.runs.load_time_step_norms`);
* ``w_hh_sigma_max_layer{l}``: the largest singular value of each layer's ``W_hh``;
* ``grad_norm`` (per training batch, averaged into ``train_grad_norm``; measured on the training
  batches, not the probe): the gradient norm before clipping (for ``tbptt``, the largest over
  the batch's segments), and for ``tbptt`` ``updates`` (``train_updates``): optimiser steps per
  batch. For GRU/LSTM, ``W_hh`` is the cell's stacked gate matrix ``(gates * hidden, hidden)``.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch

from methods.base import Method, make_optimizer, register_method
from methods.losses import IGNORE_INDEX, Loss
from methods.networks import RecurrentNetwork, State
from methods.options import Bounds, OptimizerConfig


def hidden_state_gradient_norms(
    model: RecurrentNetwork, loss: Loss, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """``||dL/dh_t||`` (Frobenius over the batch) for t = 1..T: a ``(T,)`` tensor.

    Full BPTT of the batch-mean loss through the whole sequence; parameters' ``.grad`` are not
    touched and nothing is updated.
    """
    outputs, hidden, _ = model.run(x)
    grads = torch.autograd.grad(loss(outputs, y), hidden, allow_unused=True)
    return torch.stack(
        [g.norm() if g is not None else torch.zeros((), device=x.device) for g in grads]
    ).detach()


def detach_state(state: State) -> State:
    """The same recurrent state cut from the graph (the truncation border)."""
    return [
        tuple(s.detach() for s in layer) if isinstance(layer, tuple) else layer.detach()
        for layer in state
    ]


@register_method("bptt")
class BPTT(Method):
    """Full backpropagation through time on a :class:`~methods.networks.RecurrentNetwork`.

    Args:
        model: the recurrent network.
        loss: task loss; with ``readout=every`` targets are ``(batch, T, ...)``.
        optimizer: optimiser config.
        clip_grad_norm: clipping threshold (> 0), or ``None`` for no clipping.
        probe_every: epochs between two diagnostic probes (>= 1).

    Raises:
        MethodConfigError: for a non-recurrent model or bad options.
    """

    def __init__(
        self,
        model: RecurrentNetwork,
        loss: Loss,
        optimizer: OptimizerConfig,
        clip_grad_norm: Annotated[float | None, Bounds(gt=0)] = None,
        probe_every: Annotated[int, Bounds(ge=1)] = 1,
    ) -> None:
        super().__init__(model, loss)
        self.require_model(RecurrentNetwork, "rnn")
        self.clip_grad_norm = clip_grad_norm
        self.probe_every = probe_every
        self.optimizer = make_optimizer(model.parameters(), optimizer)

    def clip(self) -> float:
        """Clip the gradient in ``.grad`` if configured; returns its norm before clipping."""
        threshold = self.clip_grad_norm if self.clip_grad_norm is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), threshold)
        return norm.item()

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write the (clipped) full-BPTT gradient into ``.grad``; metrics include ``grad_norm``."""
        self.keep_probe(x, y)
        self.zero_grad()
        outputs = self.model(x)
        loss = self.loss(outputs, y)
        loss.backward()
        return {**self.loss.metrics(outputs.detach(), y, loss.detach()), "grad_norm": self.clip()}

    def epoch_metrics(self) -> dict[str, float]:
        """Diagnostics of the module docstring, every ``probe_every`` epochs (from epoch 1)."""
        if self.probe is None or (self.epoch - 1) % self.probe_every != 0:
            return {}
        norms = hidden_state_gradient_norms(self.model, self.loss, *self.probe)
        metrics = {f"dL_dh/t{t:03d}": value for t, value in enumerate(norms.tolist(), start=1)}
        for layer, weight in enumerate(self.model.recurrent_weights(), start=1):
            sigma = torch.linalg.matrix_norm(weight.detach().float(), ord=2).item()
            metrics[f"w_hh_sigma_max_layer{layer}"] = sigma
        return metrics


@register_method("tbptt")
class TruncatedBPTT(BPTT):
    """Truncated BPTT: one update per segment of ``truncation`` steps (Sutskever 2013, 2.6).

    The hidden state is carried across segments and detached at each border. A segment without
    a scored target makes no update (:meth:`segment_loss`). Training (:meth:`step`) applies one
    optimiser step per segment with a loss, so the weights change *within* a batch; that is why
    this class overrides :meth:`Method.step` rather than relying on
    :meth:`compute_update` + :meth:`apply_update`, whose contract is that the model's weights do
    not change until :meth:`apply_update`. :meth:`compute_update` (what diagnostics inspect, on a
    copy) writes the *truncated gradient* instead: the sum over segments of each segment's
    (clipped) gradient at the current weights, states detached at the borders. It is the first
    order of the batch's total update (exact for plain SGD as the learning rate goes to 0), and
    its angle to the full BPTT gradient measures what truncation discards. With
    ``truncation >= T`` both are exactly :class:`BPTT`.

    Departure, with the reason: only Sutskever's TBPTT(k1, k2) with ``k1 = k2`` (disjoint
    segments, no overlapping backward windows): one truncation length, the same segments as
    :class:`~methods.dni_rnn.RecurrentDNI`, whose exact baseline this is.

    Args:
        truncation: segment length ``k`` in steps (>= 1).
        (others as :class:`BPTT`)
    """

    def __init__(
        self,
        model: RecurrentNetwork,
        loss: Loss,
        optimizer: OptimizerConfig,
        truncation: Annotated[int, Bounds(ge=1)] = 10,
        clip_grad_norm: Annotated[float | None, Bounds(gt=0)] = None,
        probe_every: Annotated[int, Bounds(ge=1)] = 1,
    ) -> None:
        super().__init__(model, loss, optimizer, clip_grad_norm, probe_every)
        self.truncation = truncation

    def segment_loss(
        self, outputs: torch.Tensor, y: torch.Tensor, start: int, stop: int, length: int
    ) -> torch.Tensor | None:
        """The loss terms inside steps ``[start, stop)`` of a ``length``-step sequence, or None.

        ``None`` when the segment holds no scored target: with ``readout=last`` every segment
        but the last; with ``readout=every`` a segment whose targets are all ``IGNORE_INDEX``
        (e.g. the delay of the copy task).
        """
        if self.model.readout == "every":
            targets = y[:, start:stop]
            if not targets.is_floating_point() and bool((targets == IGNORE_INDEX).all()):
                return None
            return self.loss(outputs, targets)
        return self.loss(outputs, y) if stop == length else None

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write the truncated gradient (class docstring) into ``.grad``; weights unchanged.

        Args:
            x: ``(batch, T, features)`` or what :meth:`RecurrentNetwork.as_sequence` accepts.
            y: ``(batch,)`` / ``(batch, outputs)``, or ``(batch, T, ...)`` with ``readout=every``.
        """
        return self.run_segments(x, y, step_each=False)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Train on a batch: one optimiser step after each segment that has a loss."""
        self.model.train()
        return self.run_segments(x, y, step_each=True)

    def end_segment(self, step_each: bool, total: list[torch.Tensor | None]) -> None:
        """A segment's (clipped) gradient is in ``.grad``: apply it now, or add it to ``total``.

        Args:
            step_each: train (:meth:`step`) or only write the direction (:meth:`compute_update`).
            total: running sum per model parameter, updated in place (``None``: no gradient yet).
        """
        if step_each:
            self.optimizer.step()
            return
        for index, param in enumerate(self.model.parameters()):
            if param.grad is not None:
                total[index] = param.grad if total[index] is None else total[index] + param.grad

    def write_total(self, step_each: bool, total: list[torch.Tensor | None]) -> None:
        """After the last segment: leave the summed direction in ``.grad`` (direction only)."""
        if step_each:
            self.zero_grad()  # every segment was applied; nothing is left for apply_update
            return
        for param, grad in zip(self.model.parameters(), total):
            param.grad = grad

    def run_segments(self, x: torch.Tensor, y: torch.Tensor, step_each: bool) -> dict[str, float]:
        """Forward and backward over the segments; see :meth:`step` and :meth:`compute_update`."""
        self.keep_probe(x, y)
        x = self.model.as_sequence(x)
        length = x.shape[1]
        state, norms, outputs_seen = None, [], []
        total: list[torch.Tensor | None] = [None] * len(list(self.model.parameters()))
        for start in range(0, length, self.truncation):
            stop = min(start + self.truncation, length)
            self.zero_grad()
            outputs, _, state = self.model.run(x[:, start:stop], state)
            loss = self.segment_loss(outputs, y, start, stop, length)
            if loss is not None:
                loss.backward()
                norms.append(self.clip())
                self.end_segment(step_each, total)
            outputs_seen.append(outputs.detach())
            state = detach_state(state)
        self.write_total(step_each, total)
        return self.segment_metrics(outputs_seen, y, norms)

    def segment_metrics(
        self, outputs: list[torch.Tensor], y: torch.Tensor, norms: list[float]
    ) -> dict[str, float]:
        """Batch metrics from the segments' outputs and their gradient norms before clipping.

        ``grad_norm`` is the largest segment norm; ``updates`` the number of optimiser steps
        (segments with a loss term) for this batch.
        """
        if self.model.readout == "every":
            metrics = self.loss.metrics(torch.cat(outputs, dim=1), y)
        else:
            metrics = self.loss.metrics(outputs[-1], y)
        return {**metrics, "grad_norm": max(norms, default=0.0), "updates": float(len(norms))}
