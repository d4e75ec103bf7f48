#!/usr/bin/env bash
# Tear down what slurm-up.sh started: cancel jobs, then stop each daemon by the PID in its pid file.
# Project copy of ../shared/recipes/slurm-localhost-down.sh.
set -u
scancel --user="$(id -un)" 2>/dev/null || true
for _ in $(seq 1 40); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.25; done
stop() {  # stop <pidfile> <comm>: TERM, wait up to 15 s, then KILL; only if the pid really is <comm>
  local f=$1 p; [ -s "$f" ] || return 0; p=$(cat "$f")
  [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ] || { rm -f "$f"; return 0; }
  kill -TERM "$p"; for _ in $(seq 1 60); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$p" 2>/dev/null && kill -KILL "$p"; rm -f "$f"
}
stop /run/slurm/slurmd.pid slurmd
stop /run/slurm/slurmctld.pid slurmctld
stop /run/slurm/slurmdbd.pid slurmdbd
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid munged
# optional: forget job state / accounting DB so the next run starts clean
if [ "${SLURM_CI_WIPE:-0}" = 1 ]; then rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*; fi
echo "[slurm-ci] stopped"
