"""Hydra entry point of every training job: ``python -m experiments.train [overrides]``.

One job = validate the config, seed everything, build data / model / method from the config,
train with the shared loop (:func:`experiments.loop.fit`) and track it in one MLflow run.
``python -m experiments.train -m key=a,b`` runs a sweep; its jobs share one parent MLflow run.
With ``train.objective`` set (a tuning study, ``experiment=tune``) a job trains once per tuning
seed (``train.objective_seeds``) and returns the objective's mean over them (:func:`objective`).

Failure handling (exit statuses: :func:`cli`):

* a bad config, or data that cannot be found, stops the job before any run is created, with a
  single ``error: <key>: <why>`` line on stderr (exit status 2); so does a misspelt key or
  group option caught by Hydra (the line lists the valid ones);
* a NaN/Inf loss ends the run as ``FAILED`` with a ``diverged_at_step`` metric and a
  ``failure_reason`` tag, and the job returns normally so a multirun goes on (a tuning trial
  raises :class:`TrialDiverged`, which the Optuna sweeper records as a failed trial; a study
  whose every trial failed ends with one line, exit status 1);
* Ctrl-C or SIGTERM ends the run as ``KILLED`` (everything logged before stays in the store)
  and the process with status 130 or 143 and one line; in a submitit SLURM job, the
  pre-emption signal (USR2) ends it ``KILLED`` too, then requeues a job with checkpoints,
  which resumes the same run when SLURM restarts it (:mod:`experiments.preemption`);
* a sweep's parent run is always closed: ``FINISHED``, or ``FAILED`` / ``KILLED`` with the
  reason; every job of a process starts from the same process state
  (:mod:`experiments.process_state`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import os
import random
import re
import signal
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_TAG,
    check_options,
    checkpoint_folder,
    comparable_config,
    resume_checkpoint,
    save_checkpoint,
)
from experiments.data import Dataset, DataUnavailableError, carve_validation
from experiments.dataset_input import training_input
from experiments.diagnostics import UpdateDiagnostics
from experiments.errors import NoCompletedTrial
from experiments.interrupts import deliver_interrupts, exit_status, held_interrupts, signal_of
from experiments.loop import Diverged, fit
from experiments.preemption import Preemption, restart_resume
from experiments.process_state import restore_baseline, set_blas_threads
from experiments.schema import DATA_HARNESS_KEYS, schema_keys, validate_config
from experiments.tracking import RunTracker, check_store, close_sweep, fail_sweep
from experiments.validation import ConfigError, check_tuned_choice, resolve_device
from methods import Method, MethodConfigError, build_method
from methods.base import locate
from methods.losses import loss_for_task

log = logging.getLogger(__name__)

# Absolute, so that the entry point works whether it runs as ``__main__`` or as the module.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return the generator that shuffles batches.

    Args:
        seed: non-negative integer.
        deterministic: also ask torch for deterministic kernels (``cudnn.benchmark`` off).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def _options(node: DictConfig, exclude: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in exclude}


def load_data(cfg: DictConfig) -> Dataset:
    """Load ``cfg.data`` through its ``_target_`` loader and carve the validation split.

    Raises:
        ConfigError: if the loader rejects its options.
        DataUnavailableError: if the files are missing and cannot be downloaded.
    """
    options = _options(cfg.data, DATA_HARNESS_KEYS)
    # A harness key the loader also takes (digits' split_seed fixes its train/test split too)
    # reaches it: stripping it would silently leave the loader on its own default.
    accepted = inspect.signature(locate(options["_target_"])).parameters
    options.update({k: cfg.data[k] for k in DATA_HARNESS_KEYS if k in accepted and k in cfg.data})
    try:
        dataset = instantiate(options)
    except DataUnavailableError:
        raise
    except Exception as error:
        cause = error.__cause__ or error
        if isinstance(cause, DataUnavailableError):
            raise cause from None
        raise ConfigError(f"data ({cfg.data.name}): {cause}") from None
    try:
        return carve_validation(dataset, cfg.data.val_fraction, cfg.data.split_seed)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def build_model(cfg: DictConfig, data: Dataset) -> torch.nn.Module:
    """Build ``cfg.model`` through its ``_target_`` for ``data``'s input shape and output size.

    Raises:
        ConfigError: if the builder rejects its options (the message names the key).
    """
    options = _options(cfg.model, ("name",))
    try:
        return instantiate(options, input_shape=data.input_shape, output_size=data.num_outputs)
    except Exception as error:
        cause = error.__cause__ or error
        raise ConfigError(str(cause) if "model." in str(cause) else f"model: {cause}") from None


def check_compatible(method: Method, data: Dataset, cfg: DictConfig) -> None:
    """Fail early on a model/data mismatch or a budget the method cannot use.

    Runs the model and loss on two training examples, and checks the budget with the method's
    pure :meth:`~methods.base.Method.check_budget` (no state is set: the loop alone starts
    training, :meth:`~methods.base.Method.on_train_start`, once).

    Raises:
        ConfigError: with the underlying error, before any run is created.
    """
    x, y = data.x_train[:2], data.y_train[:2]
    try:
        with torch.no_grad():
            method.loss.metrics(method.forward(x), y)
    except (ValueError, RuntimeError, IndexError) as error:
        raise ConfigError(
            f"model={cfg.model.name} cannot train on data={data.name}: {error}"
        ) from None
    batches = math.ceil(len(data.x_train) / cfg.train.batch_size)
    try:
        method.check_budget(cfg.train.epochs, batches)
    except MethodConfigError as error:
        raise ConfigError(str(error)) from None
    if cfg.train.lr_schedule != "none" and not method.persistent_optimizers:
        raise ConfigError(
            f"train.lr_schedule: method={cfg.method.name} replaces its optimisers during "
            "training with these options, so no schedule can follow them; use "
            "train.lr_schedule=none"
        )


def make_diagnostics(cfg: DictConfig, data: Dataset) -> UpdateDiagnostics | None:
    """The configured diagnostics on the first ``diagnostics.probe_size`` training examples."""
    if not cfg.diagnostics.every_steps:
        return None
    size = cfg.diagnostics.probe_size
    return UpdateDiagnostics(data.x_train[:size], data.y_train[:size], cfg.diagnostics.every_steps)


def tuned_note(cfg: DictConfig, choices: Mapping[str, str | None], tuned_dir: Path) -> str | None:
    """One log line when a method has tuned defaults, but not for this run's data.

    Tuned values are only valid where they were tuned (``conf/tuned/<method>_<model>_<data>``):
    elsewhere the method's own defaults apply, and the log says so.

    Args:
        cfg: the composed config.
        choices: Hydra's group choices (``hydra.runtime.choices``).
        tuned_dir: the folder of the tuned-defaults files (``conf/tuned/``).

    Returns:
        The line, or ``None`` when the run uses tuned defaults, opted out (``~tuned``), or the
        method and model have none on any dataset.
    """
    if cfg.tuned is not None or choices.get("tuned") is None:
        return None
    prefix = f"{cfg.method.name}_{cfg.model.name}_"
    elsewhere = sorted(p.stem.removeprefix(prefix) for p in tuned_dir.glob(f"{prefix}*.yaml"))
    if not elsewhere:
        return None
    return (
        f"no tuned defaults of method={cfg.method.name} model={cfg.model.name} for "
        f"data={cfg.data.name} (tuned on: {', '.join(elsewhere)}): the method's own defaults apply"
    )


def _hydra_info() -> dict[str, Any]:
    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"
    output_dir = hydra_cfg.runtime.output_dir
    return {
        "overrides": list(hydra_cfg.overrides.task),
        "sweep_dir": str(hydra_cfg.sweep.dir) if multirun else None,
        "output_dir": output_dir,
        "log_file": os.path.join(output_dir, f"{hydra_cfg.job.name}.log") if output_dir else None,
        "job_num": str(hydra_cfg.job.num) if multirun else None,
    }


def run(cfg: DictConfig) -> dict[str, float]:
    """Run one training job described by a composed config.

    The job starts from the process state recorded when the sweep (or the process's first
    job) started (:func:`experiments.process_state.restore_baseline`), so that the settings of
    an earlier job of the same process never leak into it.

    Returns:
        The last epoch's metrics, or ``{"diverged_at_step": step}`` for a diverged run.

    Raises:
        ConfigError: invalid config, or a tracking store that cannot be used
            (:func:`experiments.tracking.check_store`), before any data is loaded.
        DataUnavailableError: missing data (before any run is created).
        KeyboardInterrupt: re-raised after the run was marked ``KILLED``.
        NotRequeued: the pre-emption signal of a submitit SLURM job without checkpoints (the
            run is ``KILLED``; :mod:`experiments.preemption`).
        SystemExit: from submitit, once it requeued a pre-empted job that has checkpoints.
    """
    restore_baseline()
    if HydraConfig.initialized():
        check_tuned_choice(HydraConfig.get().runtime.choices, CONF_DIR / "tuned")
    validate_config(cfg)
    # A job SLURM requeued (pre-emption, time limit) goes on from its own checkpoint.
    cfg.resume = restart_resume(cfg.resume, cfg.train.checkpoint_every)
    check_options(cfg)
    check_store(cfg.mlflow.tracking_uri)
    if HydraConfig.initialized():
        note = tuned_note(cfg, HydraConfig.get().runtime.choices, CONF_DIR / "tuned")
        if note:
            log.info(note)
    device = resolve_device(cfg.device)
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
        set_blas_threads(cfg.cpu_threads)  # NumPy's BLAS (numpy_backprop) ignores torch's
    generator = seed_everything(cfg.seed, cfg.deterministic)
    data = load_data(cfg)
    # Hashed on the CPU copy, before the move; only the metadata is kept.
    logged_data = training_input(data, _options(cfg.data, ("name",)))
    data = data.to(device)
    torch.manual_seed(cfg.seed)  # model init must not depend on how the loader used the RNG
    model = build_model(cfg, data).to(device)
    loss = loss_for_task(data.task, data.tolerance)
    try:
        method = build_method(cfg.method.name, model, loss, _options(cfg.method, ("name",)))
    except MethodConfigError as error:
        raise ConfigError(str(error)) from None
    check_compatible(method, data, cfg)
    info = _hydra_info()
    folder = checkpoint_folder(cfg, info.get("output_dir"))
    resumed = resume_checkpoint(cfg, folder, device)
    path, checkpoint = resumed if resumed is not None else (None, None)
    tags = {
        "method": cfg.method.name,
        "data": cfg.data.name,
        "model": cfg.model.name,
        "seed": str(cfg.seed),
        "device": str(device),
        "torch_threads": str(torch.get_num_threads()),
        # Which conf/tuned/<method>_<model>_<data>.yaml set the hyperparameters (UI filtering).
        "tuned": cfg.tuned.name if cfg.tuned else "none",
        "run_name": cfg.mlflow.run_name or f"{cfg.method.name}-{cfg.data.name}-seed{cfg.seed}",
    }
    if info.get("job_num") is not None:
        tags["hydra_job_num"] = info["job_num"]
    log.info(
        "training %s on %s (%s, tuned defaults: %s) for %d epoch%s on %s",
        cfg.method.name,
        cfg.data.name,
        cfg.model.name,
        tags["tuned"],
        cfg.train.epochs,
        "" if cfg.train.epochs == 1 else "s",
        device,
    )
    resume_run_id = checkpoint["run_id"] if checkpoint is not None else None
    # In a submitit SLURM job: the run closes KILLED on the pre-emption signal, then the job is
    # requeued (with a checkpoint) or stops (experiments/preemption.py).
    preemption = Preemption(
        cfg.train.checkpoint_every, checkpoint["loop"]["epoch"] if checkpoint else None
    )
    with (
        preemption.requeue(),
        deliver_interrupts(*preemption.signals()),
        RunTracker(cfg, tags, info, resume_run_id, preemption.reason) as tracker,
    ):
        if checkpoint is None:
            tracker.log_dataset(logged_data)
            for filename, obj in method.artifacts().items():
                tracker.log_torch(obj, filename)
            path = folder / tracker.run_id / CHECKPOINT_FILE
        else:
            log.info(
                "resuming run %s after epoch %d (%s)",
                resume_run_id,
                checkpoint["loop"]["epoch"],
                path,
            )
        if cfg.train.checkpoint_every:
            tracker.set_tag(CHECKPOINT_TAG, str(path))
        config = comparable_config(cfg)

        def write_checkpoint(state: dict[str, Any]) -> None:
            with held_interrupts():  # a Ctrl-C then leaves no temporary file behind
                save_checkpoint({"loop": state, "run_id": tracker.run_id, "config": config}, path)
                preemption.saved(state["epoch"])

        try:
            final = fit(
                method,
                data,
                epochs=cfg.train.epochs,
                batch_size=cfg.train.batch_size,
                eval_batch_size=cfg.train.eval_batch_size,
                generator=generator,
                on_epoch=lambda epoch, metrics: tracker.log_metrics(metrics, step=epoch),
                diagnostics=make_diagnostics(cfg, data),
                on_diagnostics=lambda step, metrics: tracker.log_metrics(metrics, step=step),
                lr_schedule=cfg.train.lr_schedule,
                lr_step_epochs=cfg.train.lr_step_epochs,
                lr_step_factor=cfg.train.lr_step_factor,
                checkpoint_every=cfg.train.checkpoint_every,
                on_checkpoint=write_checkpoint,
                resume_from=checkpoint["loop"] if checkpoint is not None else None,
            )
        except Diverged as error:
            log.error("run diverged: %s", error)
            tracker.mark_diverged(error.step, str(error))
            return {"diverged_at_step": float(error.step)}
    summary = " ".join(f"{k}={v:.4g}" for k, v in final.items() if k.startswith(("test_", "val_")))
    log.info(
        "done: %s (MLflow run %s, experiment %r)",
        summary,
        tracker.run_id,
        cfg.mlflow.experiment_name,
    )
    return final


class TrialDiverged(RuntimeError):
    """A tuning trial diverged on one of its seeds; the sweeper records the trial as failed."""


def objective(cfg: DictConfig) -> float:
    """Mean final ``train.objective`` over the tuning seeds ``train.objective_seeds``.

    Each seed is a full training job (its own MLflow run, tagged with the trial's Hydra job
    number), so a hyperparameter is chosen on its mean over several seeds, none of which is an
    evaluation seed (tuning seeds are >= 1000). ``cfg.seed`` is ignored.

    Raises:
        TrialDiverged: as soon as one seed diverges (the remaining seeds are not run); Optuna's
            sweeper then records the trial as failed and the study goes on.
        ConfigError, DataUnavailableError: as :func:`run`.
    """
    values = []
    for seed in cfg.train.objective_seeds:
        seeded = copy.deepcopy(cfg)
        seeded.seed = seed
        final = run(seeded)
        if "diverged_at_step" in final:
            raise TrialDiverged(
                f"seed {seed} diverged at step {int(final['diverged_at_step'])}: trial failed"
            )
        values.append(float(final[cfg.train.objective]))
    mean = float(np.mean(values))
    log.info(
        "objective %s: %.4g (mean over seeds %s: %s)",
        cfg.train.objective,
        mean,
        list(cfg.train.objective_seeds),
        ", ".join(f"{v:.4g}" for v in values),
    )
    return mean


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, float] | float:
    """Hydra entry point; see the module docstring for the failure behaviour.

    Returns the final metrics, or with ``train.objective`` set, that metric's mean over the
    tuning seeds (:func:`objective`) for a sweeper such as Optuna.
    """
    try:
        if cfg.train.objective is None:
            return run(cfg)
        return objective(cfg)
    except (ConfigError, DataUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        info = _hydra_info()
        if info.get("sweep_dir"):  # this stops the whole sweep: close its parent run as failed
            fail_sweep(cfg, info["sweep_dir"], f"job {info['job_num']}: {error}")
        sys.exit(2)


def refuse_tuned_null(argv: list[str]) -> None:
    """Exit with one line for ``tuned=null``, which Hydra rejects with a traceback of its own.

    Hydra cannot set an optional, interpolated group (``tuned: ${method}_${model}``) to null;
    ``~tuned`` removes it.
    """
    if any(arg.lstrip("+") == "tuned=null" for arg in argv):
        print("error: tuned=null: write '~tuned' to run without tuned defaults", file=sys.stderr)
        sys.exit(2)


def composition_error_message(error: BaseException) -> str | None:
    """One line for a key or value that the schema rejected while Hydra composed the config.

    Covers a misspelt key on the command line (Hydra's own hint, ``+key=value``, only leads to
    a second error), a value of the wrong type, and either of them in a config file; the line
    names the key, the file it came from, and for an unknown key the valid ones.

    Returns:
        ``"<key>: unknown key; <parent> has only: a, b, ..."`` or ``"<key>: <why>"``, or
        ``None`` for other errors.
    """
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(error, ConfigCompositionException):
        return None
    text, cause = str(error), error.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key, why = str(cause.full_key), str(cause).splitlines()[0]
        parent_node = getattr(cause, "parent_node", None)
    else:  # an error inside a config file: Hydra keeps only the text
        found = re.search(r"full_key: (\S+)", text)
        if found is None or len(text.splitlines()) < 2:
            return None
        key, why, parent_node = found.group(1), text.splitlines()[1].strip(), None
    source = re.match(r"In '([^']+)': ", text)
    where = f" (in conf/{source.group(1)}.yaml)" if source else ""
    unknown = re.match(r"Key '[^']*' (?:not in '(\w+)'|is not in struct)", why)
    if unknown is None:
        return f"{key}: {why}{where}"
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    if parent_node is not None:
        valid = sorted(str(k) for k in parent_node if parent or k != "hydra")
    else:
        valid = schema_keys(unknown.group(1) or "")
    message = f"{key}: unknown key{where}"
    if valid is not None:
        message += f"; {parent or 'the top level'} has only: {', '.join(valid)}"
    if source and source.group(1).startswith("tuned/"):
        message += (
            f"; conf/{source.group(1)}.yaml holds the tuned defaults of another method: drop "
            "the tuned= override (the matching file is picked automatically) or opt out with "
            "~tuned"
        )
    if parent_node is not None and OmegaConf.get_type(parent_node) is dict:
        message += f" (a free-form block: add a key with +{key}=<value>)"
    return message


def describe_failure(error: Exception) -> tuple[str, int, bool]:
    """How the command line reports an error that ended it.

    Returns:
        ``(message, exit status, show traceback)``: 2 and no traceback for a bad config or
        command line (Hydra's composition errors, with the valid keys for a misspelt one; the
        Optuna sweeper's search space or storage); 1 and no traceback for a study whose every
        trial failed (:class:`~experiments.errors.NoCompletedTrial`); 1 with the traceback for
        anything else (a bug).
    """
    from hydra.errors import CompactHydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(error, NoCompletedTrial):
        return str(error), 1, False
    if isinstance(error, ConfigError):  # raised by the sweeper itself (search space, storage)
        return str(error), 2, False
    rejected = composition_error_message(error)
    if rejected is not None:
        return rejected, 2, False
    if isinstance(error, MissingConfigException) and error.options:
        first = str(error).splitlines()[0].removeprefix("In 'config': ")
        group = (error.missing_cfg_file or "").rsplit("/", 1)[0]
        return f"{first}; {group or 'the'} options: {', '.join(error.options)}", 2, False
    if isinstance(error, CompactHydraException):
        message = str(error)
        if isinstance(error.__cause__, OmegaConfBaseException):
            message += f"\n{error.__cause__}"
        return message, 2, False
    return f"{type(error).__name__}: {error}", 1, True


def _close_sweep(status: str, reason: str) -> None:
    # A second Ctrl-C while closing leaves the runs as they are.
    with contextlib.suppress(KeyboardInterrupt):
        close_sweep(status, reason)


def cli(argv: list[str] | None = None) -> None:
    """``python -m experiments.train``: run :func:`main`, and end with one line and a status.

    Exit status: 0 when every job returned (diverged runs included); 2 for a bad config or
    command line (one ``error:`` line); 130 for Ctrl-C (SIGINT) and 143 for SIGTERM (one
    ``interrupted`` line; the runs in progress are ``KILLED``); 1 for anything else (a study
    with no completed trial: one line; a bug: its traceback). A sweep launched here always
    ends closed: its parent run ``FINISHED``, ``FAILED`` or ``KILLED`` with the reason
    (:func:`experiments.tracking.close_sweep`), and no job that had not started is created.

    Args:
        argv: the command line without the program (default ``sys.argv[1:]``; Hydra reads
            ``sys.argv`` itself).
    """
    refuse_tuned_null(sys.argv[1:] if argv is None else argv)
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Hydra then raises every error here instead of printing it and exiting with status 1.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with deliver_interrupts():
        try:
            main()
        except KeyboardInterrupt as interrupt:
            name = signal.Signals(signal_of(interrupt)).name
            _close_sweep("KILLED", f"interrupted by {name}")
            print(f"interrupted by {name}: runs in progress are marked KILLED", file=sys.stderr)
            sys.exit(exit_status(interrupt))
        except SystemExit as stop:  # a job's config or data error (already reported)
            if stop.code not in (0, None):
                _close_sweep("FAILED", f"a job stopped the sweep with exit status {stop.code}")
            raise
        except Exception as error:
            message, status, show_traceback = describe_failure(error)
            _close_sweep("FAILED", message)
            if show_traceback or full_error:
                traceback.print_exception(error)
            else:
                print(f"error: {message}", file=sys.stderr)
            sys.exit(status)


if __name__ == "__main__":
    # Run the importable copy of this module, not ``__main__``: parallel launchers (joblib,
    # submitit) pickle the task function by reference, which only works for a real module.
    from experiments import train

    train.cli()
