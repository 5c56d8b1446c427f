"""Addresses of runs in the MLflow UI, printed after each job so a run is one click away.

MLflow 3.17's UI has two views, chosen by a toggle in its sidebar ("GenAI" / "Model
training"), kept per browser (``localStorage["mlflow.workflowType"]``) and ``genai`` until
clicked; the experiment tag ``mlflow.experimentKind`` no longer decides it (checked in the
bundled UI code, ``server/js/build``, and in headless Chromium: docs/mlflow-ui.md). The query
``?workflowType=machine_learning`` selects the training view for the page it opens, so every
address printed here carries it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

# The query that opens the UI's "Model training" view (the runs table, not traces).
TRAINING_VIEW = "workflowType=machine_learning"
# Where `mlflow ui` (and `make ui`) serves by default.
LOCAL_UI = "http://127.0.0.1:5000"
REPO_STORE = Path(__file__).resolve().parents[1] / "mlflow.db"


def ui_base(tracking_uri: str) -> tuple[str, str | None]:
    """Base address of the UI that shows the store ``tracking_uri``, and how to start it.

    Args:
        tracking_uri: an absolute tracking URI (as from
            :func:`experiments.tracking.resolve_tracking_uri`).

    Returns:
        ``(base, hint)``: for an http(s) tracking server, its own address and no hint; for any
        other store (SQLite, a folder, a database), :data:`LOCAL_UI` and the command that serves
        it there: ``make ui`` for the checkout's ``mlflow.db``, else ``mlflow ui
        --backend-store-uri <uri> --workers 1``.
    """
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/"), None
    sqlite = "sqlite:///"
    if tracking_uri.startswith(sqlite) and Path(tracking_uri[len(sqlite) :]) == REPO_STORE:
        return LOCAL_UI, "make ui"
    return LOCAL_UI, f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --workers 1"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """``<ui>/#/experiments/<experiment_id>/runs/<run_id>?workflowType=machine_learning``."""
    base, _ = ui_base(tracking_uri)
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def run_line(tracking_uri: str, experiment_id: str, run_id: str, label: str = "run") -> str:
    """The log line naming a run's address: ``run: <url>``, plus ``(serve it with: ...)``.

    The hint is given for stores that need a local UI (:func:`ui_base`).
    """
    _, hint = ui_base(tracking_uri)
    line = f"{label}: {run_url(tracking_uri, experiment_id, run_id)}"
    return f"{line} (serve it with: {hint})" if hint else line
