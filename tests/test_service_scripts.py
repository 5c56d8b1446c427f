"""The service scripts' own checks, without starting any service (docs/cluster.md)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def test_mlflow_server_refuses_a_port_another_process_listens_on(tmp_path):
    # Before, /health answered by the other server made the script report ours as running, and
    # jobs wrote to the other one.
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {
            **os.environ,
            "MLFLOW_PORT": str(port),
            "SERVICES_DIR": str(tmp_path),
            "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
        }
        result = subprocess.run(
            [str(SCRIPTS / "mlflow_server.sh"), "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"mlflow_server.sh: port {port} on 127.0.0.1 is already in use (another server?); "
        "choose a free one: MLFLOW_PORT=<port> (make server MLFLOW_PORT=<port>)"
    )
    assert not (tmp_path / "mlflow" / "server.pid").exists()  # nothing was started
