#!/usr/bin/env bash
# The MLflow tracking server every job of a sweep writes to (on any node):
#   scripts/mlflow_server.sh start   start it in the background, wait until /health answers
#   scripts/mlflow_server.sh url     print its address (what jobs put in MLFLOW_TRACKING_URI)
#   scripts/mlflow_server.sh stop    stop it
# Backend store: $MLFLOW_BACKEND_STORE_URI, else the throwaway PostgreSQL of
# scripts/postgres.sh (start that first). Artifacts are proxied by the server into
# $SERVICES_DIR/mlflow/artifacts, so jobs need no access to the artifact folder.
# It listens on 127.0.0.1 unless MLFLOW_HOST says otherwise: the server has no authentication,
# so open it to other machines only on a trusted network or behind an authenticating proxy
# (docs/cluster.md).
# Settings (environment): MLFLOW_HOST (127.0.0.1), MLFLOW_PORT (5000), SERVICES_DIR
# (<repo>/.services), PYTHON (the interpreter that has mlflow; default python3),
# MLFLOW_SERVER_TIMEOUT_S (seconds to wait for /health; default 120).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${SERVICES_DIR:-$REPO/.services}/mlflow"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
PYTHON="${PYTHON:-python3}"
TIMEOUT="${MLFLOW_SERVER_TIMEOUT_S:-120}"
# The address jobs use: a server listening on every interface is reached through this host's name.
if [ "$HOST" = 0.0.0.0 ]; then URL="http://$(hostname -f):$PORT"; else URL="http://$HOST:$PORT"; fi

running() { [ -f "$STATE/server.pid" ] && kill -0 "$(cat "$STATE/server.pid")" 2>/dev/null; }
# Something (another MLflow server: CI's, a colleague's) already listens on the port. Its /health
# would answer for ours, and jobs would silently write to it.
port_taken() {
    local probe="$HOST"; [ "$probe" = 0.0.0.0 ] && probe=127.0.0.1
    (exec 3<>"/dev/tcp/$probe/$PORT") 2>/dev/null
}

start() {
    if running; then echo "mlflow_server.sh: already running ($URL)"; return; fi
    if port_taken; then
        echo "mlflow_server.sh: port $PORT on $HOST is already in use (another server?);" \
            "choose a free one: MLFLOW_PORT=<port> (make server MLFLOW_PORT=<port>)" >&2
        exit 1
    fi
    local backend="${MLFLOW_BACKEND_STORE_URI:-$("$REPO/scripts/postgres.sh" url)}"
    mkdir -p "$STATE/artifacts"
    # Job execution (MLflow's background job workers, ~2 GB) is not used by this project.
    # setsid: the server and its workers form one process group, stopped together.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$PYTHON" -m mlflow server \
        --host "$HOST" --port "$PORT" --workers 1 \
        --backend-store-uri "$backend" \
        --artifacts-destination "$STATE/artifacts" \
        >"$STATE/server.log" 2>&1 </dev/null &
    echo $! >"$STATE/server.pid"
    local deadline=$((SECONDS + TIMEOUT))
    until curl -fsS -m 2 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
        if ! running; then
            echo "mlflow_server.sh: the server exited; its log ($STATE/server.log) ends:" >&2
            tail -n 20 "$STATE/server.log" >&2; rm -f "$STATE/server.pid"; exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "mlflow_server.sh: no answer on /health within $TIMEOUT s; see $STATE/server.log" >&2
            stop; exit 1
        fi
        sleep 0.5
    done
    if ! running; then  # /health answered, but not from ours (the port was taken meanwhile)
        echo "mlflow_server.sh: the server exited; its log ($STATE/server.log) ends:" >&2
        tail -n 20 "$STATE/server.log" >&2; rm -f "$STATE/server.pid"; exit 1
    fi
    echo "mlflow_server.sh: running ($URL), backend ${backend%%@*}@..., artifacts in $STATE/artifacts"
}

stop() {
    if ! running; then echo "mlflow_server.sh: not running"; rm -f "$STATE/server.pid"; return; fi
    local pid; pid="$(cat "$STATE/server.pid")"
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$STATE/server.pid"
    echo "mlflow_server.sh: stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) echo "$URL" ;;
    *) echo "usage: scripts/mlflow_server.sh start|stop|url" >&2; exit 2 ;;
esac
