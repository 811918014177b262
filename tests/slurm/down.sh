#!/usr/bin/env bash
# Stop exactly the daemons tests/slurm/up.sh started (listed in $ESVIT_SLURM_DIR/started), newest first.
# Idempotent; leaves the configs, the state and the logs in $ESVIT_SLURM_DIR for a later up.sh.
set -uo pipefail

DIR=${ESVIT_SLURM_DIR:-/tmp/esvit-slurm}
[ -f "$DIR/started" ] || { echo "slurm-down: nothing started here"; exit 0; }

pidfile() {
  case $1 in
    munged) echo "$DIR/munge/munged.pid" ;;
    mariadb) echo "$DIR/run/mysqld.pid" ;;
    *) echo "$DIR/run/$1.pid" ;;
  esac
}

# cancel the test jobs first, so no job step outlives its slurmd
command -v scancel >/dev/null && scancel --partition="${ESVIT_SLURM_PARTITION:-esvit}" >/dev/null 2>&1 || true

tac "$DIR/started" | while read -r name; do
  [ -n "$name" ] || continue
  pf=$(pidfile "$name")
  if [ -f "$pf" ] && pid=$(cat "$pf") && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "slurm-down: stopped $name ($pid)"
  elif [ ! -f "$pf" ]; then
    echo "slurm-down: warning: no pid file $pf for $name; stop it by hand if it still runs" >&2
  fi
  rm -f "$pf"
done
: >"$DIR/started"
