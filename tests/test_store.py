"""A tracking store that cannot be used is one line before any data is loaded (issue 13)."""

import http.server
import os
import socket
import sqlite3
import sys
import threading
import time

import pytest

from experiments.tracking import STORE_WAIT_ENV, check_store
from experiments.validation import ConfigError
from tests.test_cli import train

as_root = pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")


def store_error(uri):
    with pytest.raises(ConfigError) as caught:
        check_store(uri)
    message = str(caught.value)
    assert message.startswith("mlflow.tracking_uri: ") and "\n" not in message
    return message


def test_a_usable_sqlite_store_passes_new_or_existing(tmp_path):
    check_store(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'mlflow.db'}")  # folders created later
    path = tmp_path / "mlflow.db"
    sqlite3.connect(path).execute("create table t (x)").connection.close()
    check_store(f"sqlite:///{path}")
    (tmp_path / "empty.db").touch()  # SQLite makes an empty file a database
    check_store(f"sqlite:///{tmp_path / 'empty.db'}")
    check_store(str(tmp_path / "mlruns"))
    check_store(f"file://{tmp_path / 'mlruns'}")


def test_a_sqlite_path_that_is_a_folder(tmp_path):
    message = store_error(f"sqlite:///{tmp_path}")
    assert "is a folder, not a database file" in message
    assert f"sqlite:///{tmp_path}/mlflow.db" in message


def test_a_file_that_is_not_a_sqlite_database(tmp_path):
    (tmp_path / "notes.db").write_text("these are not the tables you are looking for\n")
    assert "is not a SQLite database" in store_error(f"sqlite:///{tmp_path / 'notes.db'}")


def test_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    message = store_error(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")
    assert f"{tmp_path / 'file'} is a file, not a folder" in message


@as_root
def test_a_read_only_folder_or_file(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert "is not writable" in store_error(f"sqlite:///{locked / 'mlflow.db'}")
    path = tmp_path / "mlflow.db"
    sqlite3.connect(path).close()
    path.chmod(0o400)
    assert "read-only" in store_error(f"sqlite:///{path}")


def test_an_unknown_scheme():
    message = store_error("sqlight:///mlflow.db")
    assert "unknown scheme 'sqlight'" in message and "sqlite:///<file>.db" in message


def test_an_unreachable_server_fails_within_the_bound(monkeypatch):
    monkeypatch.setenv(STORE_WAIT_ENV, "2")
    start = time.monotonic()
    message = store_error("http://127.0.0.1:9")
    assert time.monotonic() - start < 5
    assert "no answer from http://127.0.0.1:9/health within 2 s" in message


def test_a_server_that_never_answers_fails_within_the_bound(monkeypatch):
    monkeypatch.setenv(STORE_WAIT_ENV, "1")
    with socket.socket() as silent:  # accepts connections (the kernel's queue), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        start = time.monotonic()
        message = store_error(f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert time.monotonic() - start < 4
    assert "within 1 s (timed out)" in message


def test_a_server_that_answers_health_passes(monkeypatch):
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's API)
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_store(f"http://127.0.0.1:{server.server_port}")
        assert "HTTP 404" in store_error(f"http://127.0.0.1:{server.server_port}/nope")
    finally:
        server.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["folder", "not_sqlite", "scheme", "server"])
def test_a_bad_store_is_one_line_and_exit_2_before_data_loading(tmp_path, bad):
    (tmp_path / "notes.db").write_text("not a database\n")
    uri = {
        "folder": f"sqlite:///{tmp_path}",
        "not_sqlite": f"sqlite:///{tmp_path / 'notes.db'}",
        "scheme": "sqlight:///mlflow.db",
        "server": "http://127.0.0.1:9",
    }[bad]
    start = time.monotonic()
    result = train(tmp_path, uri, "data=digits", "train.epochs=1", experiment="bad_store")
    seconds = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: mlflow.tracking_uri: {uri}: ")
    assert seconds < 30
    print(f"{bad}: {len(lines)} line(s) on stderr, {seconds:.1f} s", file=sys.stderr)
