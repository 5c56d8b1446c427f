"""Synthetic gradients for recurrent networks: truncated BPTT with a synthetic future gradient.

Jaderberg et al., "Decoupled neural interfaces using synthetic gradients", ICML 2017, Sec. 3.1
(Fig. 3): the sequence is cut into segments of ``truncation`` steps as in truncated BPTT, and at
each segment's end the gradient of all future losses with respect to the hidden state, which
truncation throws away, is replaced by a synthetic gradient ``M(h_end)``. For every segment::

    update  = dL_segment/dtheta + synthetic_scale * (dh_end/dtheta)^T M(h_end)
    delta   = dL_segment/dh_start + (dh_end/dh_start)^T M(h_end)

``delta``, the gradient that arrives at the segment's start, is the (bootstrapped, detached)
regression target of ``M`` at the previous border; no synthetic gradient is used past the end of
the sequence. ``synthetic_scale`` is the paper's 0.1. ``M`` is linear or a small MLP with a
zero-initialised output layer (:class:`methods.dni.SyntheticGradientModule`).

Supported: one recurrent layer of ``model.cell=rnn`` or ``gru`` (the hidden state is then the
whole recurrent state). Logged per epoch beside the BPTT diagnostics: ``sg_loss`` (mean MSE of
``M``) and ``sg_cosine``: the cosine between ``M(h_t)`` and the true full-BPTT ``dL/dh_t`` at the
segment borders of the probe batch (a diagnostic only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F

from methods.base import MethodConfigError, make_optimizer, register_method
from methods.bptt import TruncatedBPTT
from methods.dni import SyntheticGradientModule
from methods.geometry import cosine
from methods.losses import Loss
from methods.networks import RecurrentNetwork
from methods.options import Bounds, OptimizerConfig


@register_method("dni_rnn")
class RecurrentDNI(TruncatedBPTT):
    """Truncated BPTT with a synthetic gradient at every segment border (Jaderberg et al. 2017).

    Departures from the paper, with the reason:

    * Cell: one recurrent layer of ``rnn`` or ``gru`` (the paper's LSTM): ``M`` predicts the
      gradient of a single state vector, and an LSTM's state is the pair ``(h, c)``.
    * Optimiser: tbptt's (``conf/method/tbptt.yaml``), so the two differ only in the synthetic
      gradient.

    Args:
        model: a one-layer :class:`~methods.networks.RecurrentNetwork` with ``cell=rnn|gru``.
        loss: task loss.
        optimizer: optimiser config of the network.
        synthetic_optimizer: optimiser config of the synthetic-gradient module.
        truncation: segment length in steps (>= 1).
        synthetic_scale: factor on the synthetic gradient in the network's update (>= 0; 0.1
            in the paper).
        hidden_sizes: hidden layers of ``M`` (``[]``: linear).
        clip_grad_norm, probe_every: as :class:`~methods.bptt.BPTT`.

    Raises:
        MethodConfigError: for an unsupported model or bad options.
    """

    def __init__(
        self,
        model: RecurrentNetwork,
        loss: Loss,
        optimizer: OptimizerConfig,
        synthetic_optimizer: OptimizerConfig,
        truncation: Annotated[int, Bounds(ge=1)] = 10,
        synthetic_scale: Annotated[float, Bounds(ge=0)] = 0.1,
        hidden_sizes: Annotated[Sequence[int], Bounds(ge=1)] = (),
        clip_grad_norm: Annotated[float | None, Bounds(gt=0)] = None,
        probe_every: Annotated[int, Bounds(ge=1)] = 1,
    ) -> None:
        super().__init__(model, loss, optimizer, truncation, clip_grad_norm, probe_every)
        if model.num_layers != 1 or model.cell_name not in ("rnn", "gru"):
            raise MethodConfigError(
                "method=dni_rnn supports one recurrent layer of model.cell=rnn or gru "
                f"(got num_layers={model.num_layers}, cell={model.cell_name})"
            )
        self.synthetic_scale = synthetic_scale
        self.synthetic_module = SyntheticGradientModule(model.hidden_size, 0, hidden_sizes).to(
            next(model.parameters())
        )
        self.synthetic_optimizer = make_optimizer(
            self.synthetic_module.parameters(), synthetic_optimizer, "method.synthetic_optimizer"
        )

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The network's optimiser and the synthetic-gradient modules' optimiser."""
        return [*super().optimizers(), self.synthetic_optimizer]

    def run_segments(self, x: torch.Tensor, y: torch.Tensor, step_each: bool) -> dict[str, float]:
        """Run the segments with synthetic future gradients, then train ``M`` on the borders.

        As in :class:`~methods.bptt.TruncatedBPTT`: one optimiser step per segment with an update
        when training (``step_each``), the sum of the segments' updates otherwise.
        """
        self.keep_probe(x, y)
        x = self.model.as_sequence(x)
        length = x.shape[1]
        params = list(self.model.parameters())
        state = self.model.initial_state(len(x), x)
        borders, deltas, outputs_seen, norms = [], [], [], []
        total: list[torch.Tensor | None] = [None] * len(params)
        for start in range(0, length, self.truncation):
            stop = min(start + self.truncation, length)
            self.zero_grad()
            h_start = state[0].detach().requires_grad_(start > 0)
            outputs, _, state = self.model.run(x[:, start:stop], [h_start])
            h_end = state[0]
            wrt = params + ([h_start] if start > 0 else [])
            loss = self.segment_loss(outputs, y, start, stop, length)
            real = self._gradients(loss, wrt, retain=stop < length)
            synthetic = [None] * len(wrt)
            if stop < length:  # a synthetic gradient for the future beyond this segment
                with torch.no_grad():
                    predicted = self.synthetic_module(h_end.detach())
                synthetic = self._gradients((h_end * predicted).sum(), wrt, retain=False)
                borders.append(h_end.detach())
            if start > 0:  # the gradient arriving at this segment's start: M's target
                deltas.append(_add(real[-1], synthetic[-1], 1.0, like=h_start).detach())
            for param, r, g in zip(params, real, synthetic):
                # A segment with no loss and a zero-scaled synthetic gradient makes no update.
                no_update = r is None and (g is None or self.synthetic_scale == 0)
                param.grad = None if no_update else _add(r, g, self.synthetic_scale, like=param)
            if any(param.grad is not None for param in params):
                norms.append(self.clip())
                self.end_segment(step_each, total)
            outputs_seen.append(outputs.detach())
            state = [h_end.detach()]
        self.write_total(step_each, total)
        self._train_synthetic(borders, deltas)
        return self.segment_metrics(outputs_seen, y, norms)

    @staticmethod
    def _gradients(
        objective: torch.Tensor | None, wrt: list[torch.Tensor], retain: bool
    ) -> list[torch.Tensor | None]:
        if objective is None:
            return [None] * len(wrt)
        return list(torch.autograd.grad(objective, wrt, retain_graph=retain, allow_unused=True))

    def _train_synthetic(self, borders: list[torch.Tensor], deltas: list[torch.Tensor]) -> None:
        """One step of ``M`` on every (border state, arriving gradient) pair of the batch."""
        if not borders:
            return
        predictions = self.synthetic_module(torch.cat(borders))
        loss = F.mse_loss(predictions, torch.cat(deltas))
        params = list(self.synthetic_module.parameters())
        for param, grad in zip(params, torch.autograd.grad(loss, params)):
            param.grad = grad
        self.synthetic_optimizer.step()
        self.means.add("sg_loss", loss.item())

    def epoch_metrics(self) -> dict[str, float]:
        """BPTT diagnostics plus ``sg_loss`` and the probe-batch ``sg_cosine``."""
        metrics = {**super().epoch_metrics(), **self.means.values()}
        if self.probe is not None:
            x, y = self.probe
            outputs, hidden, _ = self.model.run(x)
            borders = list(range(self.truncation, len(hidden), self.truncation))
            if borders:
                true = torch.autograd.grad(
                    self.loss(outputs, y), [hidden[t - 1] for t in borders], allow_unused=True
                )
                with torch.no_grad():
                    predicted = torch.cat([self.synthetic_module(hidden[t - 1]) for t in borders])
                actual = torch.cat(
                    [g if g is not None else torch.zeros_like(hidden[0]) for g in true]
                )
                metrics["sg_cosine"] = cosine(predicted, actual)
        return metrics


def _add(
    real: torch.Tensor | None, synthetic: torch.Tensor | None, scale: float, like: torch.Tensor
) -> torch.Tensor:
    """``real + scale * synthetic``, either possibly ``None`` (then zero)."""
    total = torch.zeros_like(like) if real is None else real
    return total if synthetic is None else total + scale * synthetic
