"""Shared fixtures: composed Hydra configs and a throw-away MLflow store per test session."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import experiments.schema  # noqa: F401 (stores the schema that conf/config.yaml starts from)

# The integration tests' services (PostgreSQL + MLflow server, SLURM), registered once here so
# that a session starts each at most once.
from tests.services import (  # noqa: F401
    fresh_database,
    postgres,
    server,
    server_uri,
    services_dir,
    slurm_env,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO_ROOT / "conf")
# What a run leaves in its working directory; tests keep all of it in temporary folders.
RUN_OUTPUTS = ("mlruns", "mlartifacts", "mlflow.db", "mlflow.db.lock", "outputs", "multirun")


@pytest.fixture(scope="session", autouse=True)
def _nothing_written_to_the_checkout():
    """Fail the session if a test wrote a store, artifacts or Hydra outputs into the checkout."""
    watched = {folder / name for folder in {REPO_ROOT, Path.cwd()} for name in RUN_OUTPUTS}
    before = {path for path in watched if path.exists()}
    yield
    created = sorted(str(path) for path in watched if path.exists() and path not in before)
    assert not created, f"tests wrote into the working tree: {created}"


@pytest.fixture(autouse=True)
def _no_network_downloads(monkeypatch, tmp_path_factory):
    """Tests never download: point the data cache at an empty folder; URLs stay unreachable."""
    monkeypatch.setenv("BACKPROP_BENCH_DATA", str(tmp_path_factory.mktemp("data-cache")))


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One SQLite store for the session (schema creation takes seconds, so it is shared)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _store_in_a_temporary_folder(monkeypatch, tracking_uri):
    """Code that falls back to ``MLFLOW_TRACKING_URI`` finds the session's temporary store.

    Its artifacts go next to it (:func:`experiments.tracking.artifact_location`).
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)


@pytest.fixture
def make_config(tracking_uri, request) -> Callable[..., DictConfig]:
    """Compose ``conf/config.yaml`` with overrides, tracking into the session store.

    Each test gets its own MLflow experiment, named after the test.
    """

    def _make(*overrides: str) -> DictConfig:
        experiment = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(
                config_name="config",
                overrides=[
                    f"mlflow.tracking_uri={tracking_uri}",
                    f"mlflow.experiment_name={experiment}",
                    *overrides,
                ],
            )

    return _make
