#!/usr/bin/env bash
# Bring up a real two-node Slurm cluster on this machine, on loopback, for the Slurm tests:
#   munge -> mariadb (private datadir) -> slurmdbd -> slurmctld -> slurmd n1 + slurmd n2,
# then wait until both nodes are idle. Idempotent: daemons already running from an earlier call are kept.
# Installs Debian's slurm + munge + mariadb packages when missing (root with apt-get only).
# Everything it starts is listed in $ESVIT_SLURM_DIR/started; tests/slurm/down.sh stops exactly that.
#
# Settings (environment): ESVIT_SLURM_DIR (scratch: state, logs, pid files; default /tmp/esvit-slurm),
# ESVIT_SLURM_PARTITION (default esvit), ESVIT_SLURM_DB_PORT (default 13306).
# It writes /etc/slurm/slurm.conf and slurmdbd.conf, and refuses to touch ones it did not write.
set -euo pipefail

DIR=${ESVIT_SLURM_DIR:-/tmp/esvit-slurm}
PARTITION=${ESVIT_SLURM_PARTITION:-esvit}
DB_PORT=${ESVIT_SLURM_DB_PORT:-13306}
CLUSTER=esvit
MARK="# written by esvit tests/slurm/up.sh"
ETC=/etc/slurm
HOST=$(hostname -s)
t0=$(date +%s)

say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (it starts munged, slurmctld and slurmd); run it as root or with sudo"

# -- packages ------------------------------------------------------------------------------------------------
pkgs=(slurmctld slurmd slurm-client munge slurmdbd slurm-wlm-mysql-plugin mariadb-server)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "no apt-get: install Slurm 22.05+, munge and mariadb by hand (${missing[*]})"
  say "apt-get install ${missing[*]} (a few minutes the first time)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p "$DIR"/{state,spool,log,run,db}
touch "$DIR/started"
started() { grep -qx "$1" "$DIR/started" || echo "$1" >>"$DIR/started"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "$what did not come up in ${limit}s; logs in $DIR/log"
}

# -- munge ---------------------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  say "creating /etc/munge/munge.key"
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  mkdir -p "$DIR/munge" && chown munge:munge "$DIR/munge"   # munged writes its pid file as the munge user
  runuser -u munge -- munged --pid-file="$DIR/munge/munged.pid"
  started munged
  wait_for 20 munged sh -c "munge -n | unmunge"
  wait_for 10 "munged's pid file" test -s "$DIR/munge/munged.pid"
fi

# -- configs -------------------------------------------------------------------------------------------------
write_conf() {  # write_conf PATH MODE (content on stdin); refuses a file it did not write
  local path=$1 mode=$2 tmp
  if [ -f "$path" ] && ! head -1 "$path" | grep -qxF "$MARK"; then
    die "$path exists and was not written by this script; move it away to run the test cluster here"
  fi
  tmp=$(mktemp "$path.XXXX")
  { echo "$MARK"; cat; } >"$tmp"
  chmod "$mode" "$tmp" && mv "$tmp" "$path"
}
mkdir -p "$ETC"
DB_PASS_FILE="$DIR/db.pass"
[ -s "$DB_PASS_FILE" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DB_PASS_FILE")
DB_PASS=$(cat "$DB_PASS_FILE")

write_conf "$ETC/slurmdbd.conf" 600 <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
EOF

write_conf "$ETC/slurm.conf" 644 <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=bf_interval=5,sched_interval=5
JobRequeue=1
KillWait=30
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldPort=6817
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001 CPUs=2 RealMemory=8000 State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17002 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=$PARTITION Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
EOF

# -- mariadb (private datadir and socket, loopback port) -------------------------------------------------------
SOCK="$DIR/run/mysqld.sock"
if ! alive "$DIR/run/mysqld.pid"; then
  if [ ! -d "$DIR/db/mysql" ]; then
    say "initialising mariadb in $DIR/db"
    mariadb-install-db --user=root --datadir="$DIR/db" --auth-root-authentication-method=socket \
      --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $DIR/log/mariadb-install.log"
  fi
  say "starting mariadb on 127.0.0.1:$DB_PORT"
  mariadbd --user=root --datadir="$DIR/db" --socket="$SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --pid-file="$DIR/run/mysqld.pid" --log-error="$DIR/log/mariadb.log" --skip-name-resolve \
    </dev/null >>"$DIR/log/mariadb.log" 2>&1 &
  started mariadb
  wait_for 60 mariadb mariadb --socket="$SOCK" -uroot -e "SELECT 1"
fi
mariadb --socket="$SOCK" -uroot <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF

# -- slurmdbd, then the cluster in the accounting database, then slurmctld and the two nodes ----------------
if ! alive "$DIR/run/slurmdbd.pid"; then
  say "starting slurmdbd"
  slurmdbd
  started slurmdbd
  wait_for 60 slurmdbd sacctmgr -n show cluster
fi
sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null

if ! alive "$DIR/run/slurmctld.pid"; then
  say "starting slurmctld"
  slurmctld
  started slurmctld
  wait_for 60 slurmctld scontrol ping
fi
for n in n1 n2; do
  if ! alive "$DIR/run/slurmd-$n.pid"; then
    say "starting slurmd -N $n"
    slurmd -N "$n"
    started "slurmd-$n"
  fi
done

idle() { [ "$(sinfo -h -N -p "$PARTITION" -o '%N %t' | sort -u | grep -c ' idle$')" = 2 ]; }
for n in n1 n2; do scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true; done
wait_for 90 "two idle nodes" idle
say "up in $(( $(date +%s) - t0 ))s: $(sinfo -h -N -p "$PARTITION" -o '%N %t' | sort -u | tr '\n' ' ')(partition $PARTITION)"
