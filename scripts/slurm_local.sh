#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, to test the cluster profile
# (workflow/profiles/slurm) for real: munge + slurmctld + slurmd, no systemd, no slurmdbd.
#
#   bash scripts/slurm_local.sh install   # apt-get install slurm-wlm munge (root, Debian/Ubuntu)
#   bash scripts/slurm_local.sh start     # write the config, start munged, slurmctld, slurmd
#   bash scripts/slurm_local.sh status
#   bash scripts/slurm_local.sh stop      # stop what `start` started
#
# `start` installs nothing: it exits 3 naming what is missing. It needs root (the daemons run as
# root, SlurmUser=root) and writes /etc/slurm/slurm.conf, the path every client (sbatch, squeue,
# and the srun that the executor plugin runs inside a job, which drops SLURM_CONF) reads; it
# refuses to replace a slurm.conf it did not write. State, logs and PIDs go to $SLURM_LOCAL_DIR
# (default /tmp/alice-slurm).
#
# The node is this machine, advertising (SlurmdParameters=config_overrides) SLURM_LOCAL_CPUS CPUs
# (default 64), SLURM_LOCAL_MEM_MB MB (default 524288) and SLURM_LOCAL_GPUS pretend GPUs (default
# 8: empty files as devices, no CUDA), so that the profile's paper-scale requests (cpus, mem_mb,
# gpu) are accepted; nothing enforces them (task/none), so bound concurrency with snakemake
# --jobs. Partitions `cpu` (default) and `gpu` match the profile's placeholder partition names.
# Job status: there is no accounting database, so `sacct` cannot see jobs; run the plugin with
# `--slurm-status-command squeue` (MinJobAge=3600 keeps finished jobs visible to squeue).
set -euo pipefail

STATE=${SLURM_LOCAL_DIR:-/tmp/alice-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by alice-harness scripts/slurm_local.sh"
CPUS=${SLURM_LOCAL_CPUS:-64}
MEM_MB=${SLURM_LOCAL_MEM_MB:-524288}
GPUS=${SLURM_LOCAL_GPUS:-8}

die() { echo "slurm_local: $*" >&2; exit "${2:-1}"; }

missing_tools() {
  local tool missing=()
  for tool in munged munge unmunge slurmctld slurmd sbatch squeue scontrol sinfo; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
  done
  echo "${missing[*]:-}"
}

write_conf() {
  local host
  host=$(hostname)
  if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script: refusing to replace it"
  fi
  mkdir -p "$STATE"/{ctld,d,log} /etc/slurm
  cat > "$CONF.tmp" <<EOF
$MARKER
ClusterName=alice-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# finished jobs stay visible to squeue (the status command without slurmdbd) for an hour
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
  # pretend GPUs: empty files as their devices, so --gpus requests are scheduled (no CUDA here)
  mkdir -p "$STATE/gpus"
  for i in $(seq 0 $((GPUS - 1))); do touch "$STATE/gpus/gpu$i"; done
  printf '%s\nNodeName=%s Name=gpu File=%s/gpus/gpu[0-%s]\n' "$MARKER" "$host" "$STATE" "$((GPUS - 1))" \
    > /etc/slurm/gres.conf
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_ok; then
    return 0  # a munged is already running (not ours: `stop` leaves it alone)
  fi
  [ -f /etc/munge/munge.key ] || die "/etc/munge/munge.key missing (the munge package creates it)"
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  runuser -u munge -- /usr/sbin/munged
  touch "$STATE/munged.ours"
  for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
  die "munged did not start"
}

start_daemon() {  # name, command...
  local name=$1
  shift
  "$@" > "$STATE/log/$name.out" 2>&1 &
  echo $! > "$STATE/$name.started"
}

wait_ready() {
  local host
  host=$(hostname)
  for _ in $(seq 150); do
    if scontrol ping 2>/dev/null | grep -q "UP" \
        && sinfo -h -n "$host" -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then
      return 0
    fi
    sleep 0.2
  done
  echo "--- slurmctld log" >&2; tail -n 20 "$STATE/log/slurmctld.log" >&2 || true
  echo "--- slurmd log" >&2; tail -n 20 "$STATE/log/slurmd.log" >&2 || true
  die "the cluster did not become ready within 30 s"
}

stop_pidfile() {  # file
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

case "${1:-}" in
  install)
    [ "$(id -u)" = 0 ] || die "install needs root"
    command -v apt-get >/dev/null || die "no apt-get on this machine"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
    ;;
  start)
    missing=$(missing_tools)
    [ -z "$missing" ] || die "missing: $missing (install: apt-get install -y slurm-wlm munge, or $0 install)" 3
    [ "$(id -u)" = 0 ] || die "start needs root (the daemons run as root)" 3
    if [ -f "$STATE/slurmctld.started" ] && kill -0 "$(cat "$STATE/slurmctld.started")" 2>/dev/null; then
      wait_ready
      echo "slurm_local: already running ($STATE)"
      exit 0
    fi
    write_conf
    start_munge
    start_daemon slurmctld slurmctld -D -c -f "$CONF"  # -c: a fresh cluster, no old jobs
    start_daemon slurmd slurmd -D -f "$CONF"
    wait_ready
    echo "slurm_local: running (config $CONF, state $STATE)"
    ;;
  status)
    scontrol ping && sinfo
    ;;
  stop)
    if [ -f "$STATE/slurmctld.started" ] && kill -0 "$(cat "$STATE/slurmctld.started")" 2>/dev/null; then
      # jobs left over by an interrupted run: cancel them so no slurmstepd outlives the cluster
      squeue -h -o %i | xargs -r scancel 2>/dev/null || true
      sleep 0.5
    fi
    stop_pidfile "$STATE/slurmd.started"
    stop_pidfile "$STATE/slurmctld.started"
    if [ -f "$STATE/munged.ours" ]; then
      runuser -u munge -- /usr/sbin/munged --stop >/dev/null 2>&1 || true
      rm -f "$STATE/munged.ours"
    fi
    echo "slurm_local: stopped"
    ;;
  *)
    die "usage: $0 install|start|status|stop" 2
    ;;
esac
