"""The shared training loop. It knows nothing method-specific.

Every method sees the same batches in the same order (one seeded generator per run), the same
budget in epochs and the same evaluation; a method only turns a batch into an update
(:meth:`methods.base.Method.step`) and reports scalar metrics. The loop drives the method's
lifecycle (budget, epoch count, per-epoch metrics and their reset) as the contract in
:mod:`methods.base` lays down.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from experiments.checkpoint import capture_rng, restore_rng
from experiments.data import Dataset, minibatches
from experiments.diagnostics import UpdateDiagnostics
from experiments.schedule import make_schedulers
from methods.base import Method

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """The training loss (or an evaluation loss) became NaN or infinite.

    Attributes:
        step: 1-based index of the update whose batch loss was non-finite (for an evaluation
            loss: the number of updates done when it was measured).
        value: the offending value.
        where: ``"train"`` or the evaluated split's name.
    """

    def __init__(self, step: int, value: float, where: str) -> None:
        super().__init__(f"{where} loss became {value} at step {step}")
        self.step, self.value, self.where = step, value, where


@torch.no_grad()
def evaluate(method: Method, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Example-weighted mean of the loss's metrics over a whole split.

    Args:
        method: provides the forward pass.
        x: ``(n, *features)`` inputs.
        y: targets.
        batch_size: evaluation batch size (memory only; the result does not depend on it).

    Returns:
        ``{"loss": ..., "accuracy": ...}`` for classification, ``{"loss": ...}`` for regression.
    """
    totals: dict[str, float] = defaultdict(float)
    for xb, yb in minibatches(x, y, batch_size):
        for key, value in method.loss.metrics(method.forward(xb), yb).items():
            totals[key] += value * len(xb)
    return {key: total / len(x) for key, total in totals.items()}


def fit(
    method: Method,
    data: Dataset,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    generator: torch.Generator,
    on_epoch: Callable[[int, Mapping[str, float]], None] | None = None,
    progress: bool | None = None,
    diagnostics: UpdateDiagnostics | None = None,
    on_diagnostics: Callable[[int, Mapping[str, float]], None] | None = None,
    lr_schedule: str = "none",
    lr_step_epochs: int = 8,
    lr_step_factor: float = 0.5,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume_from: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Train ``method`` on ``data`` for ``epochs`` passes and evaluate after each.

    Per epoch, the metrics passed to ``on_epoch(epoch, metrics)`` (epoch is 1-based) are:
    ``train_<m>`` (example-weighted mean over the epoch's batches of each metric the method
    returned, measured before each update), ``test_<m>`` and, with a validation split,
    ``val_<m>`` (after the epoch), ``epoch_seconds`` (wall time of the epoch's updates, excluding
    evaluation and diagnostics), ``samples_per_second`` and the method's own
    :meth:`~Method.epoch_metrics`, whose accumulators the loop clears
    (:meth:`~Method.reset_epoch_metrics`) once ``on_epoch`` has logged them.
    Before training the method gets its budget (:meth:`~Method.check_budget`, then
    :meth:`~Method.on_train_start`, once); before each epoch its number
    (:meth:`~Method.on_epoch_start`).
    Namespaced metrics (a ``/`` in the key, e.g. per-time-step norms ``dL_dh/t001``) are detailed
    diagnostics: tracked, but left out of the per-epoch log line.

    Args:
        method: the learning rule, built around a model on ``data``'s device.
        data: the dataset.
        epochs: number of passes over the training split (>= 1).
        batch_size: training batch size (>= 1); the last batch of an epoch may be smaller.
        eval_batch_size: evaluation batch size.
        generator: seeded CPU generator that shuffles each epoch and drives the dataset's
            training-batch augmentation (:attr:`~experiments.data.Dataset.train_transform`).
        on_epoch: called once per epoch with the metrics above.
        progress: show progress bars; ``None`` shows them only on a terminal.
        diagnostics: if given, run after every ``diagnostics.every_steps`` updates (off the
            training path, see :mod:`experiments.diagnostics`).
        on_diagnostics: called with ``(update count, diagnostic metrics)``.
        lr_schedule: the shared learning-rate schedule, applied identically to every optimiser
            of the method (:mod:`experiments.schedule`); with one, ``lr`` (the first
            optimiser's rate during the epoch) is logged per epoch.
        lr_step_epochs: epochs between two steps of the ``step`` schedule.
        lr_step_factor: the ``step`` schedule's factor.
        checkpoint_every: with ``on_checkpoint``, call it every this many epochs (0: never).
        on_checkpoint: called with the loop's state (:func:`loop_state`) once an epoch is
            logged and its accumulators cleared, i.e. as the next epoch would start.
        resume_from: a state :func:`loop_state` returned in an earlier process for the same
            method, data and options: training goes on with the epoch after it and ends with
            the same weights and metrics as a run never interrupted (the method is built
            afresh, gets :meth:`~Method.on_train_start`, then its saved state).

    Returns:
        The last epoch's metrics.

    Raises:
        Diverged: as soon as a training or evaluation loss is NaN or infinite.
        MethodConfigError: if the method cannot use this budget (:meth:`~Method.check_budget`).
    """
    metrics: dict[str, float] = {}
    step = 0
    disable = None if progress is None else not progress
    n_batches = math.ceil(len(data.x_train) / batch_size)
    method.check_budget(epochs, n_batches)
    method.on_train_start(epochs, n_batches)
    schedulers = make_schedulers(
        method.optimizers(), lr_schedule, epochs, lr_step_epochs, lr_step_factor
    )
    done = 0
    if resume_from is not None:
        done, step, metrics = restore_loop_state(resume_from, method, schedulers, generator)
    for epoch in tqdm(
        range(done + 1, epochs + 1), desc="epochs", disable=disable, unit="epoch", initial=done
    ):
        method.on_epoch_start(epoch)
        sums: dict[str, float] = defaultdict(float)
        probing = 0.0  # diagnostics time, not counted as training time
        start = time.perf_counter()
        batches = minibatches(data.x_train, data.y_train, batch_size, generator)
        for x, y in tqdm(
            batches,
            total=n_batches,
            desc=f"epoch {epoch}",
            leave=False,
            disable=disable,
            unit="batch",
        ):
            step += 1
            if data.train_transform is not None:  # the dataset's augmentation, if any
                x = data.train_transform(x, generator)
            batch_metrics = method.step(x, y)
            loss = float(batch_metrics["loss"])
            if not math.isfinite(loss):
                raise Diverged(step, loss, "train")
            for key, value in batch_metrics.items():
                sums[key] += float(value) * len(x)
            if diagnostics is not None and diagnostics.due(step):
                probe_start = time.perf_counter()
                result = diagnostics(method)
                if on_diagnostics is not None:
                    on_diagnostics(step, result)
                probing += time.perf_counter() - probe_start
        if data.x_train.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start - probing
        metrics = {f"train_{key}": total / len(data.x_train) for key, total in sums.items()}
        splits = {"test": (data.x_test, data.y_test)}
        if data.x_val is not None:
            splits["val"] = (data.x_val, data.y_val)
        for split, (x_split, y_split) in splits.items():
            result = evaluate(method, x_split, y_split, eval_batch_size)
            if not math.isfinite(result["loss"]):
                raise Diverged(step, result["loss"], split)
            metrics.update({f"{split}_{key}": value for key, value in result.items()})
        metrics["epoch_seconds"] = seconds
        metrics["samples_per_second"] = len(data.x_train) / max(seconds, 1e-9)
        metrics.update(method.epoch_metrics())
        if schedulers:
            metrics["lr"] = schedulers[0].get_last_lr()[0]
        with warnings.catch_warnings():
            # An optimiser idle for a whole epoch (a phase of dtp or hsic) still follows the
            # shared schedule; torch warns about that order, which is intended here.
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            for scheduler in schedulers:
                scheduler.step()
        summary = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" not in k)
        log.info("epoch %d/%d %s", epoch, epochs, summary)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        method.reset_epoch_metrics()
        if on_checkpoint is not None and checkpoint_every and epoch % checkpoint_every == 0:
            on_checkpoint(loop_state(epoch, step, metrics, method, schedulers, generator))
    return metrics


def loop_state(
    epoch: int,
    step: int,
    metrics: Mapping[str, float],
    method: Method,
    schedulers: list[Any],
    generator: torch.Generator,
) -> dict[str, Any]:
    """Everything :func:`fit` needs to go on after ``epoch`` as if it had never stopped.

    The epoch and update count, that epoch's metrics (returned if nothing is left to train),
    the model's and the method's state (:meth:`~methods.base.Method.state_dict`), the
    schedulers', the batch generator's and the global random states
    (:func:`experiments.checkpoint.capture_rng`): plain data and tensors only.
    """
    return {
        "epoch": epoch,
        "step": step,
        "metrics": dict(metrics),
        "model": method.model.state_dict(),
        "method": method.state_dict(),
        "schedulers": [scheduler.state_dict() for scheduler in schedulers],
        "generator": generator.get_state(),
        "rng": capture_rng(),
    }


def restore_loop_state(
    state: Mapping[str, Any],
    method: Method,
    schedulers: list[Any],
    generator: torch.Generator,
) -> tuple[int, int, dict[str, float]]:
    """Load a :func:`loop_state` into a freshly built method, its schedulers and generator.

    Returns:
        ``(epochs done, update count, last metrics)``.

    Raises:
        ValueError: if the schedulers or the method's state do not match the saved ones.
    """
    if len(state["schedulers"]) != len(schedulers):
        raise ValueError(
            f"the checkpoint has {len(state['schedulers'])} learning-rate schedulers, "
            f"this run {len(schedulers)}"
        )
    method.model.load_state_dict(state["model"])
    method.load_state_dict(state["method"])
    for scheduler, saved in zip(schedulers, state["schedulers"]):
        scheduler.load_state_dict(saved)
    generator.set_state(state["generator"].cpu())
    restore_rng(state["rng"])
    return int(state["epoch"]), int(state["step"]), dict(state["metrics"])
