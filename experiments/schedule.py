"""The shared learning-rate schedule: part of the budget, identical for every method.

A schedule is not a property of one learning rule: if only one method of a comparison decays
its learning rate, the comparison measures the schedule, not the rule. ``train.lr_schedule``
therefore applies one ``torch.optim.lr_scheduler`` per optimiser a method owns
(:meth:`methods.base.Method.optimizers`: the model's, and those of inverses, synthetic-gradient
modules or per-layer objectives), all stepped once at the end of every epoch:

* ``none``: constant learning rates (the default of every comparison);
* ``step``: multiply by ``lr_step_factor`` (0.5: halving) every ``lr_step_epochs`` epochs
  (``torch.optim.lr_scheduler.StepLR``), e.g. the halving every 8 epochs of Choromanska et al.
  2019's online alternating minimisation, available to every method;
* ``cosine``: cosine annealing from the configured rate to 0 over the run's epochs
  (``CosineAnnealingLR``, Loshchilov & Hutter 2017, without restarts).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR

SCHEDULES = ("none", "step", "cosine")


def make_schedulers(
    optimizers: Iterable[torch.optim.Optimizer],
    schedule: str,
    epochs: int,
    step_epochs: int = 8,
    step_factor: float = 0.5,
) -> list[LRScheduler]:
    """One scheduler per optimiser, to be stepped once per epoch.

    Args:
        optimizers: every optimiser of the method.
        schedule: ``none``, ``step`` or ``cosine`` (see the module docstring).
        epochs: the run's budget in epochs (the cosine's period).
        step_epochs: epochs between two steps of ``step`` (>= 1).
        step_factor: the factor of ``step`` (in (0, 1]).

    Returns:
        The schedulers (empty for ``none``).

    Raises:
        ValueError: for an unknown schedule or out-of-range values (the entry point checks them
            earlier and names the key).
    """
    if schedule not in SCHEDULES:
        raise ValueError(
            f"train.lr_schedule: must be one of {', '.join(SCHEDULES)}, got {schedule!r}"
        )
    if schedule == "none":
        return []
    if schedule == "step":
        if step_epochs < 1 or not 0 < step_factor <= 1:
            raise ValueError(
                f"train.lr_step_epochs >= 1 and train.lr_step_factor in (0, 1] needed, got "
                f"{step_epochs} and {step_factor}"
            )
        return [StepLR(opt, step_size=step_epochs, gamma=step_factor) for opt in optimizers]
    return [CosineAnnealingLR(opt, T_max=epochs) for opt in optimizers]
