"""An Optuna study run by ask-and-tell around Hydra's job function (``hydra/sweeper=optuna``).

Replaces hydra-optuna-sweeper, which pins Optuna < 3 (2.10.1, whose RDB storage fails under
SQLAlchemy 2: docs/cluster.md). Per batch of ``n_jobs`` trials: ask the study, turn each
trial's sampled values into overrides, launch the jobs through the configured Hydra launcher
(basic, joblib, submitit/SLURM), tell the study each job's return value. A job that raised
(a diverged tuning trial: :class:`experiments.train.TrialDiverged`) or returned a non-finite
or non-numeric value is told ``FAIL``, and the study goes on.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import Trial, TrialState

from experiments.errors import ConfigError, NoCompletedTrial
from experiments.tracking import STUDY_TAG, SWEEP_RUN_ENV, make_client
from experiments.tuning.search_space import parse_search_space, trial_overrides
from experiments.tuning.storage import open_study, safe_url, study_summary

log = logging.getLogger(__name__)

# Hydra's default job folder name: replaced by the trial's study-wide number.
DEFAULT_SUBDIR = "${hydra.job.num}"


def suggest(trial: Trial, name: str, distribution: optuna.distributions.BaseDistribution) -> Any:
    """Sample ``name`` from ``distribution`` with the trial's public ``suggest_*`` methods."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    assert isinstance(distribution, optuna.distributions.FloatDistribution)
    return trial.suggest_float(
        name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
    )


def job_output_dir(ret: JobReturn) -> str | None:
    """The job's output folder (``hydra.runtime.output_dir``), or ``None`` when unknown."""
    try:
        return str(ret.hydra_cfg.hydra.runtime.output_dir)
    except Exception:  # a launcher that returns no Hydra config
        return None


def objective_values(ret: JobReturn, directions: int) -> list[float]:
    """The finite float(s) a job returned, one per direction.

    Raises:
        Exception: the job's own exception when it raised (``ret.return_value`` re-raises it);
            ``ValueError`` for a value that is not ``directions`` finite numbers.
    """
    value = ret.return_value  # re-raises a failed job's exception
    try:
        values = [float(value)] if directions == 1 else [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"the job returned {value!r}, not {directions} number(s)") from None
    if len(values) != directions or not all(math.isfinite(v) for v in values):
        raise ValueError(f"the job returned {value!r}, not {directions} finite number(s)")
    return values


class OptunaStudySweeper:
    """The implementation behind ``hydra_plugins.backprop_bench_sweeper``'s ``OptunaSweeper``.

    Args:
        sampler: a sampler factory (the config's ``sampler`` with ``_partial_: true``), called
            as ``sampler(seed=...)`` when it has a ``seed``: each worker seeds its sampler with
            ``seed + <number of its first trial>``, so a single worker draws exactly as a
            sampler seeded ``seed`` would, and workers sharing a study never draw the same
            start-up trials (the numbers are unique across the study).
        direction: ``maximize`` / ``minimize``, or a list of them (one per objective).
        storage: a SQLAlchemy URL shared by several workers, or ``None`` (in memory).
        study_name: the study's name (required with ``storage``).
        n_trials: trials this worker runs (with several workers: per worker).
        n_jobs: trials launched at once (one batch through the launcher).
        max_failure_rate: when a larger fraction of a batch failed, the sweep stops with the
            first failed job's exception (1.0: never).
        params: the search space, ``{key: override value}`` (``conf/search/*.yaml``).
    """

    def __init__(
        self,
        sampler: Callable[..., optuna.samplers.BaseSampler],
        direction: str | Sequence[str],
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | None,
    ) -> None:
        self.make_sampler = sampler
        self.directions = [direction] if isinstance(direction, str) else [str(d) for d in direction]
        self.storage = storage or None
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = params
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep the multirun config and instantiate the configured launcher."""
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def _sampler(self, first_trial: int | None) -> optuna.samplers.BaseSampler:
        seed = getattr(self.make_sampler, "keywords", {}).get("seed")
        if seed is None or first_trial is None:
            return self.make_sampler()
        return self.make_sampler(seed=int(seed) + first_trial)

    def _job_subdir(self, number: int) -> list[str]:
        # Folder <sweep dir>/<trial number>: unique across workers that share the study (and,
        # when they start in the same second, the sweep folder); for one worker it is the job
        # number as before.
        assert self.config is not None
        subdir = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir")
        return [f"hydra.sweep.subdir={number}"] if subdir == DEFAULT_SUBDIR else []

    def sweep(self, arguments: list[str]) -> None:
        """Run ``n_trials`` trials in batches of ``n_jobs``; write ``optimization_results.yaml``.

        Raises:
            ConfigError: a bad search space or storage (one line naming the key).
            NoCompletedTrial: when the study holds no ``COMPLETE`` trial at the end.
            Exception: a failed job's own exception, when a batch's failure rate exceeds
                ``max_failure_rate``.
        """
        assert self.config is not None and self.launcher is not None
        # Checked here, not in __init__, where Hydra would wrap the line in its own message.
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ConfigError(
                f"hydra.sweeper.max_failure_rate: {self.max_failure_rate} not in [0, 1]"
            )
        for key in ("n_trials", "n_jobs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"hydra.sweeper.{key}: {getattr(self, key)} is not >= 1")
        preset = [f"{key}={value}" for key, value in (self.params or {}).items()]
        space, fixed = parse_search_space([*preset, *arguments])
        study = open_study(self.storage, self.study_name, self._sampler(None), self.directions)
        log.info(
            "Optuna %s study %r, storage %s, %d trials in batches of %d, directions %s",
            optuna.__version__,
            study.study_name,
            safe_url(self.storage) if self.storage else "in memory",
            self.n_trials,
            self.n_jobs,
            self.directions,
        )
        if self.storage:
            self._tag_parent_run(study.study_name)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        job_idx, left = 0, self.n_trials
        while left > 0:
            trials = [study.ask() for _ in range(min(self.n_jobs, left))]
            if job_idx == 0:
                study.sampler = self._sampler(trials[0].number)
            self._run_batch(study, trials, space, fixed, job_idx, worker)
            job_idx += len(trials)
            left -= len(trials)
        self._finish(study)

    def _tag_parent_run(self, study_name: str) -> None:
        # Each worker has its own parent MLflow run; the tag says they belong to one study.
        assert self.config is not None
        run_id = os.environ.get(SWEEP_RUN_ENV)
        if not run_id:
            return
        try:
            make_client(self.config.mlflow.tracking_uri).set_tag(run_id, STUDY_TAG, study_name)
        except Exception as error:  # tracking problems never stop a study
            log.warning("could not tag the sweep's parent run with its study: %s", error)

    def _run_batch(
        self,
        study: optuna.Study,
        trials: list[Trial],
        space: dict[str, optuna.distributions.BaseDistribution],
        fixed: dict[str, str],
        job_idx: int,
        worker: str,
    ) -> None:
        told: set[int] = set()
        try:
            overrides = []
            for trial in trials:
                params = {name: suggest(trial, name, d) for name, d in space.items()}
                trial.set_user_attr("worker", worker)
                if os.environ.get(SWEEP_RUN_ENV):
                    trial.set_user_attr("mlflow_sweep_run", os.environ[SWEEP_RUN_ENV])
                overrides.append([*trial_overrides(params, fixed), *self._job_subdir(trial.number)])
            returns = self.launcher.launch(overrides, initial_job_idx=job_idx)
            failures = []
            for trial, ret in zip(trials, returns):
                output_dir = job_output_dir(ret)
                if output_dir:  # the job's folder, also its MLflow runs' hydra_output_dir tag
                    trial.set_user_attr("hydra_output_dir", output_dir)
                try:
                    values = objective_values(ret, len(self.directions))
                except Exception as error:
                    failures.append(error)
                    trial.set_user_attr("failure", str(error)[:500])
                    study.tell(trial, state=TrialState.FAIL)
                    log.warning("trial %d failed: %s", trial.number, error)
                else:
                    study.tell(trial, values)
                told.add(trial.number)
        finally:
            # Interrupted, or the launcher raised: trials left RUNNING would stay so forever
            # in a shared study.
            for trial in trials:
                if trial.number not in told:
                    try:
                        study.tell(trial, state=TrialState.FAIL)
                    except Exception as error:  # the study may be unreachable now
                        log.warning("could not mark trial %d failed: %s", trial.number, error)
        if len(failures) / len(returns) > self.max_failure_rate:
            log.error(
                "%d of %d trials of the batch failed (max_failure_rate=%s)",
                len(failures),
                len(returns),
                self.max_failure_rate,
            )
            for ret in returns:
                if ret.status == JobStatus.FAILED:
                    ret.return_value  # noqa: B018 -- re-raises the job's exception
            raise failures[0]

    def _finish(self, study: optuna.Study) -> None:
        assert self.config is not None
        counts = study_summary(study)
        log.info("study %r: trials by state %s (every worker)", study.study_name, counts)
        if not counts.get("COMPLETE"):
            raise NoCompletedTrial(
                "the study completed no trial: every trial failed (each trial's MLflow run says "
                "why in its failure_reason tag)"
            )
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": safe_url(self.storage) if self.storage else None,
            "trials": counts,
        }
        if len(self.directions) == 1:
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("best trial %d: value %s, params %s", best.number, best.value, best.params)
        else:
            results["solutions"] = [
                {"number": t.number, "params": t.params, "values": t.values}
                for t in study.best_trials
            ]
        path = Path(str(self.config.hydra.sweep.dir)) / "optimization_results.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), path)
