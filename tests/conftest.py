"""Shared fixtures: composed Hydra configs and a throw-away MLflow store per test session."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture(autouse=True)
def _no_network_downloads(monkeypatch, tmp_path_factory):
    """Tests never download: point the data cache at an empty folder; URLs stay unreachable."""
    monkeypatch.setenv("BACKPROP_BENCH_DATA", str(tmp_path_factory.mktemp("data-cache")))


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One SQLite store for the session (schema creation takes seconds, so it is shared)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


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
