"""Throwaway services for the integration tests: an MLflow server on PostgreSQL, and SLURM.

A test module imports the fixtures it needs (``from tests.services import server_uri``).
Each fixture uses a service the caller started (CI: ``.ci/run``) when its environment variable
names one, else starts its own from the repository's scripts in a temporary folder, else skips
with the reason (binaries absent). Everything a fixture started is stopped at the session's end.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"
# The address of a running, empty MLflow tracking server (CI sets it after make server).
SERVER_ENV = "BACKPROP_BENCH_SERVER_URI"
# The PostgreSQL URI of that server's database (for Optuna storages), when CI started it.
DATABASE_ENV = "BACKPROP_BENCH_DATABASE_URI"

integration = pytest.mark.integration


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_binaries() -> bool:
    """Whether PostgreSQL's server binaries (Debian: ``apt-get install postgresql``) exist."""
    return bool(shutil.which("pg_ctl") or glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _script(name: str, action: str, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        [str(SCRIPTS / name), action],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/{name} {action} failed:\n{result.stdout}{result.stderr}")
    return result.stdout.strip()


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    """A temporary folder the services' own users (``postgres``) can enter; removed at the end."""
    folder = Path(tempfile.mkdtemp(prefix="backprop-bench-services-"))
    folder.chmod(0o755)  # PostgreSQL runs as `postgres` when the tests run as root
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def server(services_dir) -> Iterator[dict[str, str | None]]:
    """``{"uri": http://..., "database": postgresql://... or None}`` of an empty MLflow server.

    ``$BACKPROP_BENCH_SERVER_URI`` when set (it must answer ``/health`` and hold no experiment
    but MLflow's ``Default``), else a fresh PostgreSQL cluster and server from
    ``scripts/postgres.sh`` and ``scripts/mlflow_server.sh`` on free ports.
    """
    uri = os.environ.get(SERVER_ENV)
    if uri:
        if not _healthy(uri):
            pytest.fail(f"{SERVER_ENV}={uri}: no answer on /health (start it: make server)")
        from mlflow import MlflowClient

        names = [e.name for e in MlflowClient(uri).search_experiments() if e.name != "Default"]
        if names:
            pytest.fail(
                f"{SERVER_ENV}={uri}: the integration tests need an empty server, found {names}"
            )
        yield {"uri": uri, "database": os.environ.get(DATABASE_ENV)}
        return
    if not postgres_binaries():
        pytest.skip(
            f"PostgreSQL binaries absent (apt-get install postgresql) and {SERVER_ENV} unset"
        )
    pytest.importorskip("psycopg", reason="psycopg absent: pip install -e '.[server]'")
    env = {
        **os.environ,
        "SERVICES_DIR": str(services_dir),
        "PG_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "PYTHON": sys.executable,
    }
    try:
        _script("postgres.sh", "start", env)
        database = _script("postgres.sh", "url", env)
        _script("mlflow_server.sh", "start", env)
        yield {"uri": _script("mlflow_server.sh", "url", env), "database": database}
    finally:
        subprocess.run([str(SCRIPTS / "mlflow_server.sh"), "stop"], env=env, check=False)
        subprocess.run([str(SCRIPTS / "postgres.sh"), "stop"], env=env, check=False)


@pytest.fixture(scope="session")
def server_uri(server) -> str:
    """The ``http://`` address of the session's MLflow tracking server."""
    return server["uri"]


@pytest.fixture(scope="session")
def postgres(services_dir) -> Iterator[str]:
    """The ``postgresql://`` URI of a PostgreSQL database whose user may create databases.

    ``$BACKPROP_BENCH_DATABASE_URI`` when set (CI: the server's cluster), else a cluster of
    its own from ``scripts/postgres.sh`` on a free port (no MLflow server), else a skip.
    """
    uri = os.environ.get(DATABASE_ENV)
    if uri:
        yield uri
        return
    if not postgres_binaries():
        pytest.skip(
            f"PostgreSQL binaries absent (apt-get install postgresql) and {DATABASE_ENV} unset"
        )
    pytest.importorskip("psycopg", reason="psycopg absent: pip install -e '.[server]'")
    folder = services_dir / "postgres-only"
    folder.mkdir()
    folder.chmod(0o755)
    env = {**os.environ, "SERVICES_DIR": str(folder), "PG_PORT": str(free_port())}
    try:
        _script("postgres.sh", "start", env)
        yield _script("postgres.sh", "url", env)
    finally:
        subprocess.run([str(SCRIPTS / "postgres.sh"), "stop"], env=env, check=False)


@pytest.fixture
def fresh_database(postgres) -> Iterator[str]:
    """The URI of a new, empty PostgreSQL database on :func:`postgres`'s cluster, dropped after.

    One per test: a schema left by another Optuna version (2.10's half-created tables) breaks
    Optuna 5 (``column trial_values.value_type does not exist``).
    """
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(postgres)
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _slurm_answers(env: dict[str, str]) -> bool:
    try:
        result = subprocess.run(
            ["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "UP" in result.stdout


@pytest.fixture(scope="session")
def slurm_env(services_dir) -> Iterator[dict[str, str]]:
    """The environment (``SLURM_CONF``) of a single-node SLURM cluster with accounting.

    The cluster ``$SLURM_CONF`` names when its controller answers (CI: ``scripts/slurm.sh
    start``), else one started here by ``scripts/slurm.sh`` on free ports (needs root and
    Debian's slurm-wlm, slurmdbd, munge, mariadb-server), else a skip with the reason.
    """
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="hydra-submitit-launcher absent: pip install -e '.[slurm]'",
    )
    if os.environ.get("SLURM_CONF") and _slurm_answers(dict(os.environ)):
        yield {"SLURM_CONF": os.environ["SLURM_CONF"]}
        return
    missing = [
        b for b in ("munged", "slurmctld", "slurmd", "slurmdbd", "mariadbd") if not shutil.which(b)
    ]
    if missing:
        pytest.skip(
            f"SLURM absent ({', '.join(missing)}): "
            "apt-get install slurm-wlm slurmdbd munge mariadb-server"
        )
    if os.geteuid() != 0:
        pytest.skip(
            "scripts/slurm.sh starts the SLURM daemons as root; run as root or set SLURM_CONF"
        )
    env = {
        **os.environ,
        "SERVICES_DIR": str(services_dir),
        "SLURM_PORT_BASE": str(free_port()),
        "MARIADB_PORT": str(free_port()),
    }
    try:
        _script("slurm.sh", "start", env)
        conf = _script("slurm.sh", "env", env).removeprefix("export SLURM_CONF=")
        yield {"SLURM_CONF": conf}
    finally:
        subprocess.run([str(SCRIPTS / "slurm.sh"), "stop"], env=env, check=False)
