#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for submitit sweeps and their integration tests:
#   scripts/slurm.sh start   munged, a private MariaDB, slurmdbd, slurmctld and slurmd
#   scripts/slurm.sh env     print `export SLURM_CONF=...` (eval it: sbatch, squeue, sacct and
#                            Hydra's submitit launcher then talk to this cluster)
#   scripts/slurm.sh stop    cancel its jobs and stop every daemon it started
# Debian's packages (apt-get install slurm-wlm slurmdbd munge mariadb-server), no systemd:
# every daemon runs from $STATE with its own key, sockets, logs and ports, as root (needs root).
# Accounting (slurmdbd + MariaDB) is not optional here: submitit follows jobs through `sacct`,
# and without it a job that dies without a result leaves `job.result()` waiting forever.
# MariaDB listens on 127.0.0.1 without grant tables: a throwaway, never a lab's database.
# Settings (environment): SERVICES_DIR (<repo>/.services), SLURM_PORT_BASE (first of three
# ports for slurmctld, slurmd, slurmdbd; default 56817), MARIADB_PORT (53306).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${SERVICES_DIR:-$REPO/.services}/slurm"
BASE="${SLURM_PORT_BASE:-56817}"
CTLD_PORT="$BASE"; SLURMD_PORT=$((BASE + 1)); DBD_PORT=$((BASE + 2))
DB_PORT="${MARIADB_PORT:-53306}"
CONF="$STATE/slurm.conf"
MUNGE_SOCKET="$STATE/munge/munge.socket.2"
NODE="$(hostname -s)"
export SLURM_CONF="$CONF"

die() { echo "slurm.sh: $*" >&2; exit 1; }

# Wait up to $2 seconds for command $1 to succeed; else show log $3 and fail.
wait_for() {
    local deadline=$((SECONDS + $2))
    until eval "$1" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$3" >&2 || true; die "timed out: $1"; }
        sleep 0.5
    done
}

write_config() {
    local cpus memory
    cpus="$(nproc)"
    # What jobs may ask for: all but 1 GB of this machine's memory.
    memory=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    cat >"$CONF" <<CONF
ClusterName=bench
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s);
# the main and backfill schedulers run every 2 s instead of 60 s and 30 s: a test cluster with
# a handful of jobs, where a requeued job (docs/resume.md) should restart within seconds.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# No systemd and no cgroups: processes are tracked through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# scancel: SIGTERM first, SIGKILL this many seconds later (experiments/interrupts.py closes the
# run as KILLED on SIGTERM).
KillWait=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# The munge socket for talking to slurmdbd (AuthInfo covers only the cluster's own daemons).
AccountingStoragePass=$MUNGE_SOCKET
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
    cat >"$STATE/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$STATE/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$STATE/slurmdbd.conf"  # slurmdbd refuses a readable one (it may hold a password)
}

start() {
    [ "$(id -u)" = 0 ] || die "needs root (the daemons run as root here)"
    for binary in munged slurmctld slurmd slurmdbd mariadbd sbatch; do
        command -v "$binary" >/dev/null \
            || die "$binary absent (apt-get install slurm-wlm slurmdbd munge mariadb-server)"
    done
    mkdir -p "$STATE/munge" "$STATE/ctld" "$STATE/slurmd" "$STATE/mysql"
    chmod 755 "$STATE" "$STATE/munge"
    write_config

    if ! { [ -f "$STATE/munged.pid" ] && kill -0 "$(cat "$STATE/munged.pid")" 2>/dev/null; }; then
        [ -f "$STATE/munge.key" ] || { dd if=/dev/urandom of="$STATE/munge.key" bs=1024 count=1 status=none; chmod 400 "$STATE/munge.key"; }
        munged --force --key-file="$STATE/munge.key" --socket="$MUNGE_SOCKET" \
            --pid-file="$STATE/munged.pid" --log-file="$STATE/munged.log" \
            --seed-file="$STATE/munged.seed"
    fi

    if [ ! -d "$STATE/mysql/mysql" ]; then
        mariadb-install-db --datadir="$STATE/mysql" --user=root --auth-root-authentication-method=normal \
            >"$STATE/mariadb-install.log" 2>&1 || { tail "$STATE/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    if ! { [ -f "$STATE/mariadb.pid" ] && kill -0 "$(cat "$STATE/mariadb.pid")" 2>/dev/null; }; then
        setsid mariadbd --no-defaults --datadir="$STATE/mysql" --user=root --bind-address=127.0.0.1 \
            --port="$DB_PORT" --socket="$STATE/mariadb.sock" --pid-file="$STATE/mariadb.pid" \
            --log-error="$STATE/mariadb.log" --skip-grant-tables --innodb-buffer-pool-size=64M \
            </dev/null >/dev/null 2>&1 &
        wait_for "[ -S '$STATE/mariadb.sock' ]" 60 "$STATE/mariadb.log"
    fi

    # slurmdbd reads slurmdbd.conf from the folder of $SLURM_CONF.
    pgrep -F "$STATE/slurmdbd.pid" >/dev/null 2>&1 || slurmdbd
    wait_for "sacctmgr -n show cluster" 60 "$STATE/slurmdbd.log"
    sacctmgr -i -n show cluster format=cluster | grep -qw bench || sacctmgr -i add cluster bench >/dev/null
    pgrep -F "$STATE/slurmctld.pid" >/dev/null 2>&1 || slurmctld
    wait_for "scontrol ping | grep -q UP" 60 "$STATE/slurmctld.log"
    pgrep -F "$STATE/slurmd.pid" >/dev/null 2>&1 || slurmd
    wait_for "sinfo -h -o %T | grep -Eq '^(idle|mixed|allocated)'" 60 "$STATE/slurmd.log"
    echo "slurm.sh: cluster 'bench' up (node $NODE, partition local); use it with: eval \"\$(scripts/slurm.sh env)\""
}

stop_daemon() {  # name, pid file
    local pid
    [ -f "$2" ] || return 0
    pid="$(cat "$2")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
        echo "slurm.sh: stopped $1"
    fi
    rm -f "$2"
}

stop() {
    if [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
        scancel --full --signal=KILL --cluster=bench --state=RUNNING,PENDING --user="$(id -un)" 2>/dev/null || true
        scancel --user="$(id -un)" 2>/dev/null || true
    fi
    stop_daemon slurmd "$STATE/slurmd.pid"
    stop_daemon slurmctld "$STATE/slurmctld.pid"
    stop_daemon slurmdbd "$STATE/slurmdbd.pid"
    stop_daemon mariadbd "$STATE/mariadb.pid"
    stop_daemon munged "$STATE/munged.pid"
    # Job steps outlive slurmd: end those of this cluster (their spool folder is ours).
    for pid in $(pgrep -x slurmstepd || true); do
        if grep -qs "$STATE" "/proc/$pid/environ"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: scripts/slurm.sh start|stop|env" >&2; exit 2 ;;
esac
