#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on localhost (Debian 12 "bookworm" packages, Slurm 22.05).
# Project copy of ../shared/recipes/slurm-localhost-up.sh, used by .ci/run so the `slurm` tests run in CI.
# Runs as root, needs no systemd. Idempotent-ish: safe to re-run after slurm-down.sh.
#   SLURM_CI_ACCOUNTING=1 (default) also starts MariaDB + slurmdbd so `sacct` works
#                         (submitit polls job state with sacct; without it job.state stays
#                         UNKNOWN and a job killed before writing its result makes .result() hang).
#   SLURM_CI_CPUS=N       advertise N CPUs (default: nproc). N > nproc uses SlurmdParameters=config_overrides.
set -euo pipefail
ACCT=${SLURM_CI_ACCOUNTING:-1}
CPUS=${SLURM_CI_CPUS:-$(nproc)}
NODE=$(hostname -s)
MEM=$(( $(free -m | awk '/^Mem:/{print $2}') * 9 / 10 ))   # RealMemory must not exceed what slurmd sees
t0=$(date +%s)

# ---- 1. packages (no daemon is started by apt: keep a policy-rc.d that forbids it) ----------
PKGS="slurmctld slurmd slurm-client munge"
[ "$ACCT" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
echo "[slurm-ci] packages ready ($(( $(date +%s) - t0 ))s): $(slurmd -V)"

# ---- 2. munge -----------------------------------------------------------------------------
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
[ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
# alive <pidfile> <comm>: true if the pid in the file is running AND is that program (pid files can go stale)
alive() { [ -s "$1" ] && [ "$(cat /proc/"$(cat "$1")"/comm 2>/dev/null)" = "$2" ]; }
alive /run/munge/munged.pid munged || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null

# ---- 3. accounting: MariaDB (socket only, no TCP) + slurmdbd --------------------------------
mkdir -p /etc/slurm /run/slurm /var/log/slurm /var/spool/slurmctld /var/spool/slurmd
wait_port() { for _ in $(seq 1 120); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.25; done; echo "port $1 never opened" >&2; return 1; }
if [ "$ACCT" = 1 ]; then
  mkdir -p /run/mysqld; chown mysql:root /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  if ! alive /run/mysqld/mysqld.pid mariadbd; then
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid --innodb-buffer-pool-size=128M >/var/log/slurm/mariadb.log 2>&1 </dev/null &
  fi
  for _ in $(seq 1 120); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.25; done
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmci';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<EOC
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmci
StorageLoc=slurm_acct_db
EOC
  chmod 600 /etc/slurm/slurmdbd.conf
  alive /run/slurm/slurmdbd.pid slurmdbd || slurmdbd
  wait_port 6819
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

# ---- 4. slurm.conf --------------------------------------------------------------------------
OVR=""; [ "$CPUS" -gt "$(nproc)" ] && OVR="SlurmdParameters=config_overrides"
cat > /etc/slurm/slurm.conf <<EOC
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
${ACCT_LINES}
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
${OVR}
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOC

# ---- 5. slurmctld + slurmd (both daemonize and write their pid files) -----------------------
alive /run/slurm/slurmctld.pid slurmctld || slurmctld
for _ in $(seq 1 120); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.25; done
alive /run/slurm/slurmd.pid slurmd || slurmd
for _ in $(seq 1 120); do sinfo -h -o %t 2>/dev/null | grep -qx idle && break; sleep 0.25; done
sinfo -h -o %t | grep -qx idle || { echo "[slurm-ci] node not idle:"; sinfo -R; tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; exit 1; }
[ "$ACCT" = 1 ] && for _ in $(seq 1 40); do sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx ci && break; sleep 0.25; done
srun -t 1 hostname >/dev/null
echo "[slurm-ci] cluster up in $(( $(date +%s) - t0 ))s"; sinfo
