"""MLflow tracking: one run per training job, grouped under one parent run per Hydra sweep.

Everything goes through an explicit :class:`mlflow.MlflowClient` (no global "active run"), so
the jobs of a sequential multirun in one process can never leak into each other. Every metric
is written to the store as soon as it is logged, so a run that fails, diverges or is
interrupted keeps everything logged before that moment; its status says what happened
(``FINISHED``, ``FAILED``, ``KILLED``) and the tag ``failure_reason`` says why.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from experiments.interrupts import held_interrupts

log = logging.getLogger(__name__)

SWEEP_DIR_TAG = "sweep_dir"
ROLE_TAG = "role"
FAILURE_TAG = "failure_reason"
REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` URI absolute (against the current directory).

    Hydra jobs, parallel workers and the MLflow UI must all open the same file, wherever they
    run; other URIs are returned unchanged.
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def make_client(tracking_uri: str) -> Any:
    """Client for ``tracking_uri``, with a relative SQLite path made absolute."""
    from mlflow import MlflowClient

    # alembic's INFO lines at store creation are noise in a training log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def get_or_create_experiment(client: Any, name: str) -> str:
    """Id of the experiment called ``name``, creating it if needed (safe under concurrency)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        # Another worker created it between our lookup and our create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to ``{"a.b.c": value}``; lists stay whole values."""
    if not isinstance(node, Mapping):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def truncate(value: Any, limit: int) -> str:
    """``str(value)``, cut to ``limit`` characters with a trailing ``...`` marker if longer."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def git_state() -> dict[str, str]:
    """``{"git_commit": sha, "git_dirty": "true"|"false"}`` of this checkout, or ``unknown``."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def _sweep_filter(sweep_dir: str) -> str:
    escaped = sweep_dir.replace("'", "\\'")
    return f"tags.{SWEEP_DIR_TAG} = '{escaped}' and tags.{ROLE_TAG} = 'sweep'"


def find_sweep_run(client: Any, experiment_id: str, sweep_dir: str) -> str | None:
    """Id of the parent run of the sweep writing to ``sweep_dir``, or ``None``."""
    runs = client.search_runs(
        [experiment_id], filter_string=_sweep_filter(sweep_dir), max_results=1
    )
    return runs[0].info.run_id if runs else None


def get_or_create_sweep_run(client: Any, experiment_id: str, sweep_dir: str) -> str:
    """Id of the parent run that groups the jobs of the sweep writing to ``sweep_dir``."""
    existing = find_sweep_run(client, experiment_id, sweep_dir)
    if existing is not None:
        return existing
    run = client.create_run(
        experiment_id,
        run_name=f"sweep {Path(sweep_dir).name}",
        tags={SWEEP_DIR_TAG: sweep_dir, ROLE_TAG: "sweep", **git_state()},
    )
    return run.info.run_id


class SweepParentRun(Callback):
    """Hydra callback that creates a sweep's parent run before any job starts, and closes it.

    Created in the launching process, before the launcher fans jobs out, so parallel workers
    find one parent instead of racing to create several. Registered in ``conf/config.yaml``
    under ``hydra.callbacks``.
    """

    def _parent(self, config: DictConfig) -> tuple[Any, str] | None:
        try:
            client = make_client(config.mlflow.tracking_uri)
            experiment_id = get_or_create_experiment(client, config.mlflow.experiment_name)
            sweep_dir = str(config.hydra.sweep.dir)
            return client, get_or_create_sweep_run(client, experiment_id, sweep_dir)
        except Exception as error:  # a tracking problem must not stop the sweep itself
            log.warning("could not create the sweep's parent MLflow run: %s", error)
            return None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Create the experiment and the sweep's parent run."""
        parent = self._parent(config)
        if parent is not None:
            log.info(
                "sweep parent MLflow run %s in experiment %r",
                parent[1],
                config.mlflow.experiment_name,
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Mark the parent run FINISHED once every job has returned."""
        parent = self._parent(config)
        if parent is not None:
            client, run_id = parent
            client.set_terminated(run_id, "FINISHED")


def fail_sweep(cfg: DictConfig, sweep_dir: str, reason: str) -> None:
    """Mark the parent run of the sweep in ``sweep_dir`` ``FAILED`` with a reason tag.

    Called when a job stops the whole sweep (a config or data error), so that the parent does
    not stay ``RUNNING`` forever. Tracking problems here are logged, never raised.
    """
    try:
        client = make_client(cfg.mlflow.tracking_uri)
        experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
        if experiment is None:
            return
        run_id = find_sweep_run(client, experiment.experiment_id, sweep_dir)
        if run_id is not None:
            client.set_tag(run_id, FAILURE_TAG, truncate(reason, 5000))
            client.set_terminated(run_id, "FAILED")
    except Exception as error:
        log.warning("could not mark the sweep's parent run failed: %s", error)


class RunTracker:
    """One MLflow run for one training job; use as a context manager.

    On entry it creates the run (nested under the sweep's parent in a multirun) and logs the
    flattened config as params, the resolved config and Hydra's overrides as artifacts, and the
    tags. On exit it sets the status: ``FINISHED``; ``KILLED`` for ``KeyboardInterrupt`` (Ctrl-C,
    or SIGTERM converted by the entry point); ``FAILED`` for any other exception, with a
    ``failure_reason`` tag. Exceptions are never swallowed. An interrupt that arrives during
    a write to the store takes effect once the write is done, so the store stays consistent.

    Args:
        cfg: the composed run config (the ``hydra`` node is ignored if present).
        tags: extra tags (method, data, model, seed, device, ...).
        hydra_info: ``{"overrides": [...], "sweep_dir": str | None, "output_dir": str | None}``.
    """

    def __init__(
        self, cfg: DictConfig, tags: Mapping[str, str], hydra_info: Mapping[str, Any]
    ) -> None:
        self.cfg = cfg
        self.tags = dict(tags)
        self.hydra_info = dict(hydra_info)
        self.client: Any = None
        self.run_id: str | None = None
        self.ended = False

    def __enter__(self) -> RunTracker:
        try:
            self._start()
        except BaseException as error:
            if self.run_id is not None:  # ``with`` never calls __exit__ when __enter__ raises
                self.__exit__(type(error), error, None)
            raise
        return self

    @held_interrupts()  # a context manager from @contextmanager also decorates
    def _start(self) -> None:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        self.client = make_client(self.cfg.mlflow.tracking_uri)
        experiment_id = get_or_create_experiment(self.client, self.cfg.mlflow.experiment_name)
        tags = {ROLE_TAG: "job", **git_state(), **self.tags}
        sweep_dir = self.hydra_info.get("sweep_dir")
        if sweep_dir:
            tags[SWEEP_DIR_TAG] = sweep_dir
            tags["mlflow.parentRunId"] = get_or_create_sweep_run(
                self.client, experiment_id, sweep_dir
            )
        if self.hydra_info.get("output_dir"):
            tags["hydra_output_dir"] = self.hydra_info["output_dir"]
        run = self.client.create_run(experiment_id, run_name=self.tags.get("run_name"), tags=tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        config = run_config(self.cfg)
        params = [
            Param(k, truncate(v, MAX_PARAM_VAL_LENGTH))
            for k, v in flatten_config(OmegaConf.to_container(config, resolve=True)).items()
        ]
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = params[start : start + MAX_PARAMS_TAGS_PER_BATCH]
            self.client.log_batch(self.run_id, params=chunk)
        self.client.log_text(
            self.run_id, OmegaConf.to_yaml(config, resolve=True), "config/config.yaml"
        )
        overrides = list(self.hydra_info.get("overrides", []))
        self.client.log_text(
            self.run_id, OmegaConf.to_yaml(OmegaConf.create(overrides)), "config/overrides.yaml"
        )
        log.info("MLflow run %s in experiment %r", self.run_id, self.cfg.mlflow.experiment_name)

    @held_interrupts()
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step`` (epoch number for per-epoch metrics)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    @held_interrupts()
    def log_torch(self, obj: Any, filename: str) -> None:
        """Save ``obj`` with ``torch.save`` as the artifact ``filename`` of the run."""
        import tempfile

        import torch

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / filename
            torch.save(obj, path)
            self.client.log_artifact(self.run_id, str(path))

    @held_interrupts()
    def set_tag(self, key: str, value: str) -> None:
        """Set one tag on the run."""
        self.client.set_tag(self.run_id, key, value)

    @held_interrupts()
    def end(self, status: str, reason: str | None = None) -> None:
        """Close the run with ``status`` (``FINISHED``/``FAILED``/``KILLED``) and a reason tag."""
        if self.ended or self.run_id is None:
            return
        if reason:
            self.set_tag(FAILURE_TAG, truncate(reason, 5000))
        log_file = self.hydra_info.get("log_file")
        if log_file and Path(log_file).is_file():
            self.client.log_artifact(self.run_id, log_file, "logs")
        self.client.set_terminated(self.run_id, status)
        self.ended = True

    def mark_diverged(self, step: int, reason: str) -> None:
        """Record a divergence: ``diverged_at_step`` metric, reason tag, status ``FAILED``."""
        self.log_metrics({"diverged_at_step": step}, step=step)
        self.end("FAILED", reason)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            self.end("FINISHED")
        elif isinstance(exc, KeyboardInterrupt):
            self.end("KILLED", "interrupted (KeyboardInterrupt or SIGTERM)")
        else:
            self.end("FAILED", f"{type(exc).__name__}: {exc}")
        return False


def run_config(cfg: DictConfig) -> DictConfig:
    """The run's own config: ``cfg`` without Hydra's ``hydra`` node."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
