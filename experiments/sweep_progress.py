"""``job k of n`` with an estimate of the time left, logged as each job of a sweep starts.

The Hydra callback :class:`experiments.tracking.SweepParentRun` makes a :class:`SweepProgress`
when the sweep starts (:func:`SweepProgress.start`) and logs :meth:`SweepProgress.line` at each
job's start. Parallel launchers (joblib, submitit) get a copy of the callback, made after the
sweep started, with the callback's state in each worker; no process talks to another.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf


def count_jobs(config: DictConfig) -> int | None:
    """Number of jobs the sweep of ``config`` (the multirun config, ``hydra`` node included) runs.

    Hydra's basic sweeper: the product of the numbers of values of every swept key, from the
    command line and ``hydra.sweeper.params``, counted with the sweeper's own
    ``BasicSweeper.split_arguments`` (Hydra 1.3). The Optuna sweeper: ``hydra.sweeper.n_trials``
    (this worker's trials, when several workers share a study).

    Returns:
        The count, or ``None`` for another sweeper or overrides this cannot expand (a ``glob``
        choice sweep needs Hydra's config loader).
    """
    sweeper = config.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    if "optuna" in target.lower():
        trials = sweeper.get("n_trials")
        return int(trials) if trials is not None else None
    if not target.endswith("BasicSweeper"):
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = sweeper.get("params")
        params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
        arguments = [f"{key}={value}" for key, value in params.items()]
        arguments += list(config.hydra.overrides.task)
        overrides = OverridesParser.create().parse_overrides(arguments)
        [jobs] = BasicSweeper.split_arguments(overrides, None)
    except Exception:  # an override this cannot expand: no count rather than no sweep
        return None
    return len(jobs)


def parallel_workers(config: DictConfig) -> int:
    """How many jobs of the sweep of ``config`` run at the same time.

    The launcher's ``n_jobs`` (joblib; a negative value counts as ``cpu_count + 1 + n_jobs``,
    joblib's rule) or ``array_parallelism`` (submitit), capped by the sweeper's batch size
    ``n_jobs`` (Optuna); 1 for Hydra's basic launcher.
    """
    launcher = config.hydra.get("launcher") or {}
    workers = launcher.get("n_jobs") or launcher.get("array_parallelism") or 1
    if workers < 0:
        workers = max(1, (os.cpu_count() or 1) + 1 + workers)
    batch = (config.hydra.get("sweeper") or {}).get("n_jobs")
    if batch:
        workers = min(workers, int(batch))
    return max(1, int(workers))


def format_duration(seconds: float) -> str:
    """``"40 s"`` below 90 s, ``"4 min"`` below 90 min, else ``"2.5 h"`` (rounded)."""
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class SweepProgress:
    """What a sweep's jobs need to say where the sweep stands.

    Attributes:
        total: number of jobs (:func:`count_jobs`), or ``None`` when unknown.
        workers: jobs running at once (:func:`parallel_workers`).
        started: when the sweep started, seconds since the epoch (``time.time()``: the same
            clock in every process of the machine).
        label: what names the sweep in the line (the start of its parent run's id).
    """

    total: int | None
    workers: int
    started: float
    label: str

    @classmethod
    def start(cls, config: DictConfig, label: str) -> SweepProgress:
        """Progress of the sweep described by ``config`` (the multirun config), starting now."""
        return cls(count_jobs(config), parallel_workers(config), time.time(), label)

    def seconds_left(self, job: int, now: float) -> float | None:
        """Estimated seconds until the sweep ends, as job number ``job`` (from 1) starts.

        Jobs run in waves of :attr:`workers`; ``floor((job - 1) / workers)`` waves have ended
        when job ``job`` starts, so one job takes ``elapsed / waves`` on average, and the
        ``total - job + 1`` jobs left take that many times ``1 / workers`` of it. Exact for a
        sequential sweep of equal jobs (the mean duration of the finished jobs times the jobs
        left); approximate with parallel workers.

        Returns:
            Seconds, or ``None`` before a first wave has ended or when :attr:`total` is unknown.
        """
        waves = (job - 1) // self.workers
        if self.total is None or waves < 1:
            return None
        per_job = (now - self.started) / waves
        return per_job * max(self.total - job + 1, 0) / self.workers

    def line(self, job: int, now: float | None = None) -> str:
        """``job 3 of 12 (sweep 1a2b3c4d): ~4 min left`` (see :meth:`seconds_left`).

        Before an estimate exists: ``...: time left known once a job has ended``. With parallel
        workers the estimate says ``(approximate, 2 jobs at a time)``.
        """
        of = f" of {self.total}" if self.total is not None else ""
        left = self.seconds_left(job, time.time() if now is None else now)
        if left is None:
            estimate = "time left known once a job has ended"
        else:
            estimate = f"~{format_duration(left)} left"
            if self.workers > 1:
                estimate += f" (approximate, {self.workers} jobs at a time)"
        return f"job {job}{of} (sweep {self.label}): {estimate}"


def job_number(config: DictConfig) -> int | None:
    """The job's number in its sweep, from 1 (``hydra.job.num + 1``), or ``None`` outside one."""
    hydra: Any = config.get("hydra")
    mode = None if hydra is None else hydra.get("mode")
    if getattr(mode, "name", str(mode)) != "MULTIRUN" or hydra.job.get("num") is None:
        return None
    return int(hydra.job.num) + 1
