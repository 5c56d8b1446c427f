"""Open the study of a tuning run: in memory, or shared by several workers through a database.

With ``hydra.sweeper.storage=<SQLAlchemy URL>`` and ``hydra.sweeper.study_name=<name>``, every
worker that runs the same command opens the same study (``load_if_exists``), asks it for
trials and tells it their values; Optuna's RDB storage gives each trial a study-wide number.
Workers that start at the same moment on an empty database race to create Optuna's schema
(PostgreSQL: ``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``
for the second ``CREATE TABLE``): :func:`open_study` retries after such an error, by which time
the first worker's schema exists.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import optuna
import sqlalchemy.exc

from experiments.errors import ConfigError

log = logging.getLogger(__name__)

# Errors of two workers creating the same schema or study at once; anything else (a wrong
# host, password or driver) is reported at once.
RACE_MARKERS = ("already exists", "duplicate key", "unique constraint", "database is locked")


def is_creation_race(error: BaseException) -> bool:
    """Whether ``error`` is another worker creating the same tables or rows at the same moment."""
    if isinstance(error, sqlalchemy.exc.IntegrityError):
        return True
    return isinstance(error, sqlalchemy.exc.DBAPIError) and any(
        marker in str(error).lower() for marker in RACE_MARKERS
    )


def safe_url(url: str) -> str:
    """``url`` with its password masked, for logs and error lines."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def open_study(
    storage: str | None,
    study_name: str | None,
    sampler: optuna.samplers.BaseSampler,
    directions: Sequence[str],
    attempts: int = 8,
    backoff_s: float = 0.25,
) -> optuna.Study:
    """Create the study, or load it when another worker already created it.

    Args:
        storage: a SQLAlchemy URL (``sqlite:////abs/path.db``, ``postgresql://user@host/db``)
            or ``None`` for an in-memory study private to this process.
        study_name: the study's name; required with a storage (workers find each other by it).
        sampler: this worker's sampler.
        directions: ``["maximize"]``, ``["minimize"]``, or one per objective.
        attempts: tries against a creation race (:func:`is_creation_race`), ``backoff_s`` x
            2^k (plus jitter, up to 8 s) apart.
        backoff_s: the first pause, in seconds.

    Raises:
        ConfigError: ``hydra.sweeper.storage: ...`` for a storage without a study name, or one
            that cannot be opened (the line names the URL, password hidden, and the cause).
    """
    if storage is None:
        return optuna.create_study(study_name=study_name, sampler=sampler, directions=directions)
    if not study_name:
        raise ConfigError(
            "hydra.sweeper.storage is set but hydra.sweeper.study_name is not: every worker of a "
            "shared study must name it (hydra.sweeper.study_name=<name>)"
        )
    for attempt in range(1, attempts + 1):
        try:
            rdb = optuna.storages.RDBStorage(storage)
            return optuna.create_study(
                storage=rdb,
                study_name=study_name,
                sampler=sampler,
                directions=directions,
                load_if_exists=True,
            )
        except Exception as error:
            if attempt < attempts and is_creation_race(error):
                pause = min(backoff_s * 2 ** (attempt - 1), 8.0) * (1 + random.random())
                log.info(
                    "another worker is creating study %r's tables (%s); retry in %.1f s",
                    study_name,
                    type(error).__name__,
                    pause,
                )
                time.sleep(pause)
                continue
            raise ConfigError(
                f"hydra.sweeper.storage: cannot open {safe_url(storage)}: {_first_line(error)}"
            ) from error
    raise AssertionError("unreachable")  # the loop returns or raises


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Counts of the study's trials by state (``{"COMPLETE": 6, "FAIL": 1}``), all workers'."""
    counts: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts
