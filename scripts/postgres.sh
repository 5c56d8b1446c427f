#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the MLflow tracking server (and Optuna studies):
#   scripts/postgres.sh start   initdb into $STATE (first time), start it on 127.0.0.1:$PG_PORT
#   scripts/postgres.sh url     print its URI: postgresql://mlflow@127.0.0.1:$PG_PORT/mlflow
#   scripts/postgres.sh stop    stop it (the data stays; `rm -rf $STATE` forgets it)
# No systemd and no system-wide cluster: Debian's binaries (apt-get install postgresql) run
# straight from a folder. Local connections are trusted (no password), so it listens on
# 127.0.0.1 only; a shared database for a lab needs its own users and passwords.
# Settings (environment): SERVICES_DIR (default <repo>/.services), PG_PORT (default 55432).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${SERVICES_DIR:-$REPO/.services}/postgres"
PORT="${PG_PORT:-55432}"
DB=mlflow
URL="postgresql://$DB@127.0.0.1:$PORT/$DB"

bindir() {
    if command -v pg_ctl >/dev/null; then dirname "$(readlink -f "$(command -v pg_ctl)")"; return; fi
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$found" ] || { echo "postgres.sh: no PostgreSQL binaries (apt-get install postgresql)" >&2; exit 3; }
    echo "$found"
}

# PostgreSQL refuses to run as root: as root, run it as the `postgres` user Debian creates.
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
    local bin; bin="$(bindir)"
    mkdir -p "$STATE"
    [ "$(id -u)" = 0 ] && chown postgres: "$STATE"
    if [ ! -f "$STATE/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$STATE/data" -U "$DB" --auth=trust -E UTF8 >"$STATE/initdb.log"
    fi
    if ! as_owner "$bin/pg_ctl" -D "$STATE/data" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$STATE/data" -l "$STATE/server.log" -w -t 60 start \
            -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$STATE" \
            >/dev/null || { tail -n 20 "$STATE/server.log" >&2; exit 1; }
    fi
    if ! as_owner "$bin/psql" -h 127.0.0.1 -p "$PORT" -U "$DB" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
        as_owner "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U "$DB" "$DB"
    fi
    echo "postgres.sh: running ($URL), data in $STATE/data"
}

stop() {
    local bin; bin="$(bindir)"
    if [ -f "$STATE/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$STATE/data" -m fast -w stop >/dev/null && echo "postgres.sh: stopped"
    else
        echo "postgres.sh: not running"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) echo "$URL" ;;
    *) echo "usage: scripts/postgres.sh start|stop|url" >&2; exit 2 ;;
esac
