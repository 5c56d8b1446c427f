"""MLflow tracking: one run per training job, grouped under one parent run per Hydra sweep.

Everything goes through an explicit :class:`mlflow.MlflowClient` (no global "active run"), so
the jobs of a sequential multirun in one process can never leak into each other. Every metric
is written to the store as soon as it is logged, so a run that fails, diverges or is
interrupted keeps everything logged before that moment; its status says what happened
(``FINISHED``, ``FAILED``, ``KILLED``) and the tag ``failure_reason`` says why.

A SQLite store is created (or its schema migrated) under a file lock, ``<store>.lock``, so
that jobs started at the same moment on a fresh store never race in MLflow's migrations. Its
artifacts go next to it, ``<store folder>/mlruns/<experiment>/``, wherever a job runs from.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from experiments.errors import ConfigError
from experiments.interrupts import held_interrupts, signal_of
from experiments.sweep_progress import SweepProgress, job_number
from experiments.ui_links import run_line

log = logging.getLogger(__name__)

SWEEP_DIR_TAG = "sweep_dir"
SWEEP_ID_TAG = "sweep_id"
ROLE_TAG = "role"
FAILURE_TAG = "failure_reason"
PARENT_TAG = "mlflow.parentRunId"
# Tag of a sweep's parent run: the name of the shared Optuna study its trials belong to (set
# only with hydra.sweeper.storage; analysis.export_tuned then pools every worker's runs).
STUDY_TAG = "optuna_study"
# MLflow 3's experiment type: model training, not GenAI. MLflow 3.17's UI picks its view from a
# toggle of its own instead (experiments.ui_links); the tag still types the experiment for
# MLflow versions and tools that read it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
# The id of the parent run of the sweep a job belongs to, set by the launching process.
SWEEP_RUN_ENV = "BACKPROP_BENCH_SWEEP_RUN"
REPO_ROOT = Path(__file__).resolve().parents[1]
STORE_LOCK_TIMEOUT_S = 600
# Seconds an http(s) tracking server has to answer ``<uri>/health`` before a job starts.
STORE_WAIT_ENV = "BACKPROP_BENCH_STORE_TIMEOUT_S"
STORE_WAIT_DEFAULT_S = 5.0
# Schemes MLflow can track to (its tracking store registry), besides plain paths.
STORE_SCHEMES = frozenset(
    {"", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks"}
    | {"databricks-uc", "uc"}
)
SQLITE_HEADER = b"SQLite format 3\x00"


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` URI absolute (against the current directory).

    Hydra jobs, parallel workers and the MLflow UI must all open the same file, wherever they
    run; other URIs are returned unchanged.
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (made absolute), or ``None`` for other stores."""
    uri = resolve_tracking_uri(uri)
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix + ":memory:":
        return None
    return Path(uri[len(prefix) :].split("?", 1)[0])


def _store_error(uri: str, cause: str, fix: str) -> ConfigError:
    return ConfigError(f"mlflow.tracking_uri: {uri}: {cause}; {fix}")


def _check_folder(uri: str, folder: Path) -> None:
    """The nearest existing ancestor of ``folder`` (created on first use) is a writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _store_error(uri, f"{existing} is a file, not a folder", "choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _store_error(
            uri, f"folder {existing} is not writable", "choose a writable folder or fix its rights"
        )


def _wait_for_server(uri: str) -> None:
    import urllib.error
    import urllib.request

    raw = os.environ.get(STORE_WAIT_ENV, "")
    try:
        timeout = float(raw) if raw else STORE_WAIT_DEFAULT_S
    except ValueError:
        raise ConfigError(f"{STORE_WAIT_ENV}: must be a number of seconds, got {raw!r}") from None
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only)
            response.read(64)
    except urllib.error.HTTPError as error:
        raise _store_error(
            uri,
            f"the server answered {url} with HTTP {error.code}",
            "check that the address is an MLflow tracking server",
        ) from None
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise _store_error(
            uri,
            f"no answer from {url} within {timeout:g} s ({reason})",
            f"start the server (mlflow server ...), fix the address, or raise {STORE_WAIT_ENV}",
        ) from None


def check_store(uri: str) -> None:
    """Check that the tracking store ``uri`` can be used, before any data is loaded.

    Catches in a fraction of a second what MLflow would otherwise report after minutes of
    retries and a long traceback: an unknown scheme; a SQLite path that is a folder, is not a
    SQLite database (its 16-byte header), is read-only, or lies under a folder that is a file or
    not writable (missing folders are created on first use); a ``file:`` store that is a file;
    an http(s) server that does not answer ``<uri>/health`` within
    ``$BACKPROP_BENCH_STORE_TIMEOUT_S`` seconds (default 5). Other schemes (databases,
    Databricks) are left to MLflow. A full disk is not detected.

    Raises:
        ConfigError: one line, ``mlflow.tracking_uri: <uri>: <cause>; <fix>``.
    """
    from urllib.parse import urlparse

    uri = resolve_tracking_uri(uri)
    scheme = urlparse(uri).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter: a plain path
        scheme = ""
    if scheme not in STORE_SCHEMES:
        raise _store_error(
            uri,
            f"unknown scheme {scheme!r}",
            "use sqlite:///<file>.db, a folder, http(s)://<server> or a database URI "
            f"({', '.join(sorted(s for s in STORE_SCHEMES if s))})",
        )
    if scheme in ("http", "https"):
        _wait_for_server(uri)
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if path is None:
            return
        if path.is_dir():
            raise _store_error(
                uri,
                "is a folder, not a database file",
                f"name a file, e.g. sqlite:///{path}/mlflow.db",
            )
        _check_folder(uri, path.parent)
        if path.exists():
            if not os.access(path, os.R_OK | os.W_OK):
                raise _store_error(
                    uri, "the database file is read-only", "make it writable or use another file"
                )
            with path.open("rb") as file:
                header = file.read(len(SQLITE_HEADER))
            if header and header != SQLITE_HEADER:
                raise _store_error(
                    uri,
                    "the file is not a SQLite database",
                    "move it away or point to another file",
                )
    elif scheme in ("", "file"):
        parsed = urlparse(uri)
        path = Path(parsed.path if scheme else uri).expanduser()
        if path.exists() and not path.is_dir():
            raise _store_error(
                uri, "is a file, not a folder", "use sqlite:///<file>.db for a database file"
            )
        _check_folder(uri, path)


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` (an OS file lock) for a SQLite store; no-op for other stores.

    Raises:
        TimeoutError: naming the lock file if another process holds it for
            :data:`STORE_LOCK_TIMEOUT_S` seconds.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock
    from filelock import Timeout as LockTimeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock", timeout=STORE_LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except LockTimeout:
        raise TimeoutError(
            f"MLflow store {path}: another process held {lock.lock_file} for "
            f"{STORE_LOCK_TIMEOUT_S} s"
        ) from None
    try:
        yield
    finally:
        lock.release()


def make_client(tracking_uri: str) -> Any:
    """Client for ``tracking_uri``, with a relative SQLite path made absolute.

    MLflow creates or migrates a SQLite store when the client opens it; that happens under
    :func:`store_lock`, so concurrent first uses of a fresh store all succeed.
    """
    from mlflow import MlflowClient

    # alembic's INFO lines at store creation are noise in a training log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = resolve_tracking_uri(tracking_uri)
    with store_lock(uri), held_interrupts():
        return MlflowClient(tracking_uri=uri)


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``<store folder>/mlruns/<experiment>``.

    ``None`` (MLflow's default) for stores other than SQLite. Characters other than letters,
    digits, ``_.-`` become ``_``, and a short hash of the name is added when any did, so two
    names never share a folder.
    """
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
    if folder != experiment or folder in ("", ".", ".."):
        folder = f"{folder}-{uuid.uuid5(uuid.NAMESPACE_URL, experiment).hex[:8]}"
    return str(path.parent / "mlruns" / folder)


def get_or_create_experiment(client: Any, name: str) -> str:
    """Id of the experiment called ``name``, creating it if needed (safe under concurrency).

    A new experiment of a SQLite store keeps its artifacts at :func:`artifact_location`. The
    experiment is tagged ``mlflow.experimentKind = custom_model_development`` (model training)
    when created, or when first used without that tag; a kind set otherwise is left alone.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=artifact_location(client.tracking_uri, name),
                tags={EXPERIMENT_KIND_TAG: TRAINING_KIND},
            )
        except MlflowException:
            # Another worker created it between our lookup and our create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
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


HOST_TAG = "host"
PID_TAG = "pid"
PID_START_TAG = "pid_start"
# How many times a run was resumed (resume=), set on the run when it is reopened.
RESUMED_TAG = "resumed"


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat`` field 22).

    With the pid it identifies one process even after the pid is reused. ``None`` where
    there is no such process or no ``/proc``.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_tags() -> dict[str, str]:
    """Tags naming the process that owns a run: ``host``, ``pid``, ``pid_start``.

    :mod:`experiments.reap` closes the ``RUNNING`` runs whose process is gone (kill -9).
    """
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        PID_START_TAG: process_start(os.getpid()) or "unknown",
    }


def _sweep_filter(sweep_dir: str) -> str:
    escaped = sweep_dir.replace("'", "\\'")
    return f"tags.{SWEEP_DIR_TAG} = '{escaped}' and tags.{ROLE_TAG} = 'sweep'"


def find_sweep_run(client: Any, experiment_id: str, sweep_dir: str) -> str | None:
    """Id of the newest ``RUNNING`` parent run of a sweep writing to ``sweep_dir``, or ``None``.

    Only a fallback (see :func:`job_sweep_run`): a sweep folder can be reused, so the folder
    does not identify one sweep.
    """
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"{_sweep_filter(sweep_dir)} and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def create_sweep_run(client: Any, experiment_id: str, sweep_dir: str) -> str:
    """Create the parent run of one sweep invocation; returns its id.

    Tagged ``role=sweep``, ``sweep_dir``, a fresh ``sweep_id`` (uuid4): two invocations
    writing to the same folder get two parents; and the launching process
    (:func:`process_tags`).
    """
    run = client.create_run(
        experiment_id,
        run_name=f"sweep {Path(sweep_dir).name}",
        tags={
            SWEEP_DIR_TAG: sweep_dir,
            SWEEP_ID_TAG: uuid.uuid4().hex,
            ROLE_TAG: "sweep",
            **git_state(),
            **process_tags(),
        },
    )
    return run.info.run_id


def job_sweep_run(client: Any, experiment_id: str, sweep_dir: str) -> str:
    """Id of the parent run a job of the sweep writing to ``sweep_dir`` nests under.

    The parent that :class:`SweepParentRun` created for this invocation, passed to the jobs in
    the environment variable :data:`SWEEP_RUN_ENV` (inherited by joblib and submitit workers),
    when it belongs to the job's experiment. Otherwise (no callback, or a sweep over
    ``mlflow.experiment_name``) the newest ``RUNNING`` parent of that folder in the job's
    experiment, created if there is none.
    """
    from mlflow.exceptions import MlflowException

    run_id = os.environ.get(SWEEP_RUN_ENV)
    if run_id:
        try:
            if client.get_run(run_id).info.experiment_id == experiment_id:
                return run_id
        except MlflowException:
            pass
    existing = find_sweep_run(client, experiment_id, sweep_dir)
    return existing or create_sweep_run(client, experiment_id, sweep_dir)


# The sweep this process launched (set by SweepParentRun.on_multirun_start): {uri, run_id},
# and "summary", the dotted name of the function that writes its summary, if any.
_launched: dict[str, str] = {}


def _write_summary(summary: str, uri: str, run_id: str) -> None:
    """Call ``summary(uri, run_id)`` (a dotted function name); log, never raise, a failure."""
    from hydra.utils import get_method

    try:
        get_method(summary)(uri, run_id)
    except Exception as error:
        log.warning("could not write the summary of the sweep's parent run %s: %s", run_id, error)


def _close(client: Any, run_id: str, status: str, reason: str | None) -> None:
    if reason:
        client.set_tag(run_id, FAILURE_TAG, truncate(reason, 5000))
    client.set_terminated(run_id, status)


@held_interrupts()
def close_sweep(status: str, reason: str | None = None) -> str | None:
    """Close the parent run of the sweep this process launched, if it is still ``RUNNING``.

    For any status but ``FINISHED``, its job runs still ``RUNNING`` (a joblib worker killed
    with the sweep, a job stopped between two writes) become ``KILLED`` with the reason.
    Tracking problems are logged, never raised.

    Before it is closed, unless the sweep was interrupted (``KILLED``: the process must end
    promptly), the function named by :class:`SweepParentRun`'s ``summary`` writes its summary
    (:func:`analysis.sweep_note.write_sweep_note`), and its address is logged
    (``sweep run: <url>``, :func:`experiments.ui_links.run_line`).

    Args:
        status: ``FINISHED``, ``FAILED`` or ``KILLED``.
        reason: the ``failure_reason`` tag (for ``FAILED`` / ``KILLED``).

    Returns:
        The parent's id, or ``None`` when there is no open sweep in this process.
    """
    if not _launched:
        return None
    uri, run_id = _launched["uri"], _launched["run_id"]
    summary = _launched.get("summary")
    _launched.clear()
    os.environ.pop(SWEEP_RUN_ENV, None)
    try:
        client = make_client(uri)
        parent = client.get_run(run_id)
        if status != "FINISHED":
            jobs = client.search_runs(
                [parent.info.experiment_id],
                f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = 'RUNNING'",
                max_results=10_000,
            )
            for job in jobs:
                _close(client, job.info.run_id, "KILLED", f"the sweep stopped first: {reason}")
        if summary and status != "KILLED":
            _write_summary(summary, uri, run_id)
        if parent.info.status == "RUNNING":
            _close(client, run_id, status, reason)
        log.info(run_line(uri, parent.info.experiment_id, run_id, "sweep run"))
    except Exception as error:
        log.warning("could not close the sweep's parent MLflow run %s: %s", run_id, error)
    return run_id


class SweepParentRun(Callback):
    """Hydra callback that creates one parent run per sweep invocation, and closes it.

    Created in the launching process before the launcher fans jobs out, so parallel workers
    find one parent instead of racing to create several; its id reaches the jobs through
    :data:`SWEEP_RUN_ENV`. The sweep's start also records the process state every job starts
    from (:mod:`experiments.process_state`). Each job starts with the line ``job k of n (sweep
    <parent id>): ~<time> left`` (:mod:`experiments.sweep_progress`). A sweep that stops early
    (interrupt, error) is closed by the entry point (:func:`close_sweep`). Registered in
    ``conf/config.yaml`` under ``hydra.callbacks``.

    Args:
        summary: dotted name of ``f(tracking_uri, parent_run_id)``, called when the sweep ends
            to write its summary into the parent run (``conf/config.yaml`` names
            :func:`analysis.sweep_note.write_sweep_note`); ``None`` writes none.
    """

    def __init__(self, summary: str | None = None) -> None:
        self.summary = summary
        self.progress: SweepProgress | None = None

    @held_interrupts()
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Create the experiment and this invocation's parent run."""
        from experiments.process_state import capture_baseline

        capture_baseline()
        label = Path(str(config.hydra.sweep.dir)).name
        try:
            self.progress = SweepProgress.start(config, label)
        except Exception as error:  # progress lines are a convenience, never a reason to stop
            log.warning("no job count for this sweep: %s", error)
        try:
            uri = config.mlflow.tracking_uri
            check_store(uri)  # a bad store: each job then stops with one line
            client = make_client(uri)
            experiment_id = get_or_create_experiment(client, config.mlflow.experiment_name)
            run_id = create_sweep_run(client, experiment_id, str(config.hydra.sweep.dir))
        except Exception as error:  # a tracking problem must not stop the sweep itself
            log.warning("could not create the sweep's parent MLflow run: %s", error)
            return
        _launched.update(uri=uri, run_id=run_id)
        if self.summary:
            _launched["summary"] = self.summary
        if self.progress is not None:
            self.progress = replace(self.progress, label=run_id[:8])
        os.environ[SWEEP_RUN_ENV] = run_id
        log.info(
            "sweep parent MLflow run %s in experiment %r", run_id, config.mlflow.experiment_name
        )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Log ``job k of n (sweep <id>): ~<time> left`` (:meth:`SweepProgress.line`)."""
        job = job_number(config)
        if self.progress is not None and job is not None:
            log.info(self.progress.line(job))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the sweep's summary into its parent run, and mark it FINISHED."""
        close_sweep("FINISHED")


@held_interrupts()
def fail_sweep(cfg: DictConfig, sweep_dir: str, reason: str) -> None:
    """Mark the parent run of the job's sweep ``FAILED`` with a reason tag.

    Called when a job stops the whole sweep (a config or data error), so that the parent does
    not stay ``RUNNING`` forever; works in a launcher's worker process too. Tracking problems
    here are logged, never raised.
    """
    try:
        check_store(cfg.mlflow.tracking_uri)  # not minutes of retries on a bad store
        client = make_client(cfg.mlflow.tracking_uri)
        experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
        if experiment is None:
            return
        run_id = os.environ.get(SWEEP_RUN_ENV) or find_sweep_run(
            client, experiment.experiment_id, sweep_dir
        )
        if run_id is not None and client.get_run(run_id).info.status == "RUNNING":
            _close(client, run_id, "FAILED", reason)
    except Exception as error:
        log.warning("could not mark the sweep's parent run failed: %s", error)


class RunTracker:
    """One MLflow run for one training job; use as a context manager.

    On entry it creates the run (nested under the sweep's parent in a multirun) and logs the
    flattened config as params, the resolved config and Hydra's overrides as artifacts, and the
    tags (with the process's :func:`process_tags`). On exit it sets the status: ``FINISHED``;
    ``KILLED`` for ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM converted by
    :mod:`experiments.interrupts`), with the signal as the reason; ``FAILED`` for any other
    exception, with a ``failure_reason`` tag. Exceptions are never
    swallowed. An interrupt that arrives during a write to the store takes effect once the
    write is done, so the store stays consistent.

    Args:
        cfg: the composed run config (the ``hydra`` node is ignored if present).
        tags: extra tags (method, data, model, seed, device, ...).
        hydra_info: ``{"overrides": [...], "sweep_dir": str | None, "output_dir": str | None}``.
        resume_run_id: reopen this existing run instead of creating one (``resume=``, see
            docs/resume.md): it becomes ``RUNNING`` again, owned by this process (its
            :func:`process_tags`), counted in its ``resumed`` tag, its ``failure_reason`` tag
            is removed, and its params, artifacts and other tags stay as they are. A metric
            the run already holds at a step (logged after the checkpoint, before the kill) is
            not logged again at that step: MLflow cannot delete values, and a second one would
            make two values of one step.
        interrupt_reason: ``f(interrupt)``, the ``failure_reason`` of a run ended by that
            interrupt, or ``None`` for the default ``interrupted by <signal>`` (a submitit
            job's pre-emption: :meth:`experiments.preemption.Preemption.reason`).
    """

    def __init__(
        self,
        cfg: DictConfig,
        tags: Mapping[str, str],
        hydra_info: Mapping[str, Any],
        resume_run_id: str | None = None,
        interrupt_reason: Callable[[KeyboardInterrupt], str | None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.tags = dict(tags)
        self.hydra_info = dict(hydra_info)
        self.resume_run_id = resume_run_id
        self.interrupt_reason = interrupt_reason
        # On a reopened run: {metric: steps it already holds}, not logged again.
        self.logged: dict[str, set[int]] = {}
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
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
        if self.resume_run_id is not None:
            self._reopen(self.resume_run_id)
            return
        experiment_id = get_or_create_experiment(self.client, self.cfg.mlflow.experiment_name)
        tags = {ROLE_TAG: "job", **git_state(), **process_tags(), **self.tags}
        sweep_dir = self.hydra_info.get("sweep_dir")
        if sweep_dir:
            tags[SWEEP_DIR_TAG] = sweep_dir
            tags[PARENT_TAG] = job_sweep_run(self.client, experiment_id, sweep_dir)
        if self.hydra_info.get("output_dir"):
            tags["hydra_output_dir"] = self.hydra_info["output_dir"]
        run = self.client.create_run(experiment_id, run_name=self.tags.get("run_name"), tags=tags)
        self.run_id = run.info.run_id
        self.experiment_id = experiment_id
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

    def _reopen(self, run_id: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise ConfigError(
                f"resume: no run {run_id} in the store {self.cfg.mlflow.tracking_uri}"
            ) from None
        self.run_id = run_id
        self.experiment_id = run.info.experiment_id  # for the run's UI address
        self.client.update_run(run_id, status="RUNNING")
        if FAILURE_TAG in run.data.tags:
            self.client.delete_tag(run_id, FAILURE_TAG)
        self.logged = {
            key: {m.step for m in self.client.get_metric_history(run_id, key)}
            for key in run.data.metrics
        }
        resumes = int(run.data.tags.get(RESUMED_TAG, "0")) + 1
        for key, value in {**process_tags(), RESUMED_TAG: str(resumes)}.items():
            self.client.set_tag(run_id, key, value)
        log.info("MLflow run %s reopened (resume number %d)", run_id, resumes)

    @held_interrupts()
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step`` (epoch number for per-epoch metrics).

        On a reopened run, metrics it already holds at ``step`` are skipped (see the class).
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if step not in self.logged.get(k, ())
        ]
        if batch:
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
    def log_dataset(self, dataset: Any) -> None:
        """Log ``dataset`` as the run's input with the context ``training``.

        ``dataset`` comes from :func:`experiments.dataset_input.training_input`; the UI's
        Datasets column shows its name and digest.
        """
        from experiments.dataset_input import dataset_input

        self.client.log_inputs(self.run_id, datasets=[dataset_input(dataset)])

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
        log.info(run_line(self.client.tracking_uri, self.experiment_id, self.run_id))

    def mark_diverged(self, step: int, reason: str) -> None:
        """Record a divergence: ``diverged_at_step`` metric, reason tag, status ``FAILED``."""
        self.log_metrics({"diverged_at_step": step}, step=step)
        self.end("FAILED", reason)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            self.end("FINISHED")
        elif isinstance(exc, KeyboardInterrupt):
            reason = self.interrupt_reason(exc) if self.interrupt_reason else None
            self.end("KILLED", reason or f"interrupted by {signal.Signals(signal_of(exc)).name}")
        else:
            self.end("FAILED", f"{type(exc).__name__}: {exc}")
        return False


def run_config(cfg: DictConfig) -> DictConfig:
    """The run's own config: ``cfg`` without Hydra's ``hydra`` node."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
