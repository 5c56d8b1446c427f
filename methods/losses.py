"""Task losses shared by every method and by evaluation.

A :class:`Loss` is a callable returning the batch-mean loss plus the metrics the loop reports for
that task, so the loop never branches on the task type.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

# Targets equal to this are not scored (loss or accuracy), as in ``F.cross_entropy``.
IGNORE_INDEX = -100


class Loss(ABC):
    """A task loss: ``loss(output, target)`` is a 0-d tensor, the mean over the batch."""

    name: str

    @abstractmethod
    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean loss of ``output`` ``(batch, outputs)`` against ``target``."""

    @abstractmethod
    def metrics(
        self, output: torch.Tensor, target: torch.Tensor, loss: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Batch-mean metrics, always including ``"loss"``.

        ``loss``: this batch's ``self(output, target)`` if the caller computed it already (e.g.
        for its backward pass); it is reported as is instead of being computed a second time,
        which on a small network costs about 1% of a training step.
        """


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits: ``-mean_n log softmax(o_n)[y_n]`` (nats).

    ``output`` is ``(batch, classes)`` logits, ``target`` ``(batch,)`` integer class indices;
    per-step outputs ``(batch, T, classes)`` with targets ``(batch, T)`` average over steps too.
    Targets equal to ``IGNORE_INDEX`` are skipped. Also reports ``accuracy`` (fraction in
    [0, 1] of scored argmax predictions equal to the target).

    Raises:
        ValueError: on per-step targets without per-step outputs.
    """

    name = "cross_entropy"

    @staticmethod
    def _flat(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if output.ndim == 3:
            return output.flatten(0, 1), target.flatten()
        if target.ndim != 1:
            raise ValueError(
                f"targets of shape {tuple(target.shape)} need one output per step "
                f"(got outputs {tuple(output.shape)}; with model=rnn set model.readout=every)"
            )
        return output, target

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean cross-entropy (differentiable)."""
        return F.cross_entropy(*self._flat(output, target))

    @torch.no_grad()
    def metrics(
        self, output: torch.Tensor, target: torch.Tensor, loss: torch.Tensor | None = None
    ) -> dict[str, float]:
        """``{"loss": nats, "accuracy": fraction}`` of the batch (``nan`` if nothing is scored)."""
        output, target = self._flat(output, target)
        if loss is None:
            loss = F.cross_entropy(output, target)
        # Per batch in the training loop, so every small op counts (each costs microseconds on a
        # step of well under a millisecond). An argmax is a class index >= 0, never IGNORE_INDEX
        # (< 0): an ignored target never counts as correct, so the hits need no mask; and only a
        # batch with a negative target can hold ignored ones. count_nonzero is the cheaper count.
        n_scored = target.numel()
        if n_scored and target.min().item() < 0:
            n_scored -= torch.count_nonzero(target == IGNORE_INDEX).item()
        correct = torch.count_nonzero(output.argmax(dim=1) == target).item() if n_scored else 0
        return {
            "loss": loss.item(),
            "accuracy": correct / n_scored if n_scored else math.nan,
        }


class MeanSquaredError(Loss):
    """Mean squared error over all elements: ``mean_{n,k} (o_nk - t_nk)^2``.

    ``output`` and ``target`` are both ``(batch, outputs)``.

    Args:
        tolerance: if given, ``metrics`` also reports ``accuracy``: the fraction of examples
            whose squared error (mean over outputs) is below it, e.g. 0.04 for the adding
            problem (Hochreiter & Schmidhuber 1997).
    """

    name = "mse"

    def __init__(self, tolerance: float | None = None) -> None:
        self.tolerance = tolerance

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean squared error (differentiable)."""
        return F.mse_loss(output, target)

    @torch.no_grad()
    def metrics(
        self, output: torch.Tensor, target: torch.Tensor, loss: torch.Tensor | None = None
    ) -> dict[str, float]:
        """``{"loss": mean squared error}`` of the batch, and ``accuracy`` with a tolerance."""
        if loss is None:
            loss = F.mse_loss(output, target)
        metrics = {"loss": loss.item()}
        if self.tolerance is not None:
            errors = (output - target).pow(2).flatten(1).mean(dim=1)
            metrics["accuracy"] = (errors < self.tolerance).float().mean().item()
        return metrics


LOSSES: dict[str, type[Loss]] = {"classification": CrossEntropy, "regression": MeanSquaredError}


def loss_for_task(task: str, tolerance: float | None = None) -> Loss:
    """Return the loss of a task: ``"classification"`` (cross-entropy) or ``"regression"`` (MSE).

    Args:
        task: the dataset's task.
        tolerance: regression only: squared error under which an example counts as solved.

    Raises:
        ValueError: for any other task name.
    """
    if task == "regression":
        return MeanSquaredError(tolerance)
    try:
        return LOSSES[task]()
    except KeyError:
        raise ValueError(
            f"data.task: unknown task {task!r}; expected one of {', '.join(LOSSES)}"
        ) from None
