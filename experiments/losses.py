"""Task losses shared by every method and by evaluation.

A :class:`Loss` is a callable returning the batch-mean loss plus the metrics the loop reports for
that task, so the loop never branches on the task type.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F


class Loss(ABC):
    """A task loss: ``loss(output, target)`` is a 0-d tensor, the mean over the batch."""

    name: str

    @abstractmethod
    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean loss of ``output`` ``(batch, outputs)`` against ``target``."""

    @abstractmethod
    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Batch-mean metrics, always including ``"loss"``."""


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits: ``-mean_n log softmax(o_n)[y_n]`` (nats).

    ``output`` is ``(batch, classes)`` logits, ``target`` ``(batch,)`` integer class indices.
    Also reports ``accuracy`` (fraction in [0, 1] of argmax predictions equal to the target).
    """

    name = "cross_entropy"

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean cross-entropy (differentiable)."""
        return F.cross_entropy(output, target)

    @torch.no_grad()
    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """``{"loss": nats, "accuracy": fraction}`` of the batch."""
        return {
            "loss": F.cross_entropy(output, target).item(),
            "accuracy": (output.argmax(dim=1) == target).float().mean().item(),
        }


class MeanSquaredError(Loss):
    """Mean squared error over all elements: ``mean_{n,k} (o_nk - t_nk)^2``.

    ``output`` and ``target`` are both ``(batch, outputs)``.
    """

    name = "mse"

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean squared error (differentiable)."""
        return F.mse_loss(output, target)

    @torch.no_grad()
    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """``{"loss": mean squared error}`` of the batch."""
        return {"loss": F.mse_loss(output, target).item()}


LOSSES: dict[str, type[Loss]] = {"classification": CrossEntropy, "regression": MeanSquaredError}


def loss_for_task(task: str) -> Loss:
    """Return the loss of a task: ``"classification"`` (cross-entropy) or ``"regression"`` (MSE).

    Raises:
        ValueError: for any other task name.
    """
    try:
        return LOSSES[task]()
    except KeyError:
        raise ValueError(
            f"data.task: unknown task {task!r}; expected one of {', '.join(LOSSES)}"
        ) from None
