#!/usr/bin/env bash
# launch/local.sh: N processes of `jaxalign train` on this machine, joined as one multi-process
# job by jax.distributed over 127.0.0.1 (what a pod or a cluster runs, on one box: for testing
# multi-host code paths on CPU, or for several GPUs driven by one process each).
#
# Usage:
#   launch/local.sh N [--devices-per-process D] [--dry-run] -- <jaxalign train arguments>
#   launch/local.sh 2 --devices-per-process 2 -- --config=configs/clip.py:demo --workdir=runs/two
#
# Arguments:
#   N                      processes to start (required, >= 1)
#   --devices-per-process  devices each process drives: on CPU (JAX_PLATFORMS=cpu, the default)
#                          that many simulated devices; on GPUs, D consecutive GPUs per process
#                          (process k gets GPUs k*D .. k*D+D-1)
#   --dry-run              print every command (with its environment) and run nothing
#
# Variables (all optional):
#   PYTHON          the interpreter with jaxalign installed (default: python3)
#   JAX_PLATFORMS   cpu (default), cuda or gpu
#   JAXALIGN_PORT   the coordinator's port on 127.0.0.1 (default: 8476)
#   LOG_DIR         where processes 1 .. N-1 write their output, process_<k>.log (default:
#                   $TMPDIR/jaxalign-local-<port>); process 0 writes to this terminal; each
#                   process's pid is in process_<k>.pid (to signal one, e.g. to try preemption)
#   XLA_FLAGS       passed on to every process; on CPU with --devices-per-process, the device
#                   count flag is added after it
#
# Exit status: 0 when every process exits 0; otherwise the first failing process's status
# (143: preempted, resume by running the same command). When one process fails, the others are
# sent SIGTERM; a SIGTERM or Ctrl-C to this script is passed on to every process.
set -euo pipefail

usage() {
  awk '/^# Usage:/ {on = 1} on && /^#$/ {exit} on {sub(/^# ?/, ""); print}' "$0" >&2
  exit 2
}

[[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -ge 1 ]] || usage
processes=$1
shift
devices=""
dry_run=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --devices-per-process)
      [[ $# -ge 2 && $2 =~ ^[0-9]+$ && $2 -ge 1 ]] || usage
      devices=$2
      shift 2
      ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[[ $# -ge 1 ]] || usage

python=${PYTHON:-python3}
platforms=${JAX_PLATFORMS:-cpu}
port=${JAXALIGN_PORT:-8476}
log_dir=${LOG_DIR:-${TMPDIR:-/tmp}/jaxalign-local-$port}

# The environment of process $1, one NAME=value per line.
process_env() {
  echo "JAX_PLATFORMS=$platforms"
  echo "JAXALIGN_COORDINATOR=127.0.0.1:$port"
  echo "JAXALIGN_NUM_PROCESSES=$processes"
  echo "JAXALIGN_PROCESS_ID=$1"
  if [[ -n $devices && $platforms == cpu ]]; then
    echo "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices"
  elif [[ -n $devices ]]; then
    local first=$(($1 * devices)) ids=""
    for ((d = first; d < first + devices; d++)); do ids+="${ids:+,}$d"; done
    echo "JAXALIGN_LOCAL_DEVICE_IDS=$ids"
  fi
}

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}

for ((k = 0; k < processes; k++)); do
  mapfile -t env_k < <(process_env "$k")
  command=(env "${env_k[@]}" "$python" -m jaxalign train "$@")
  log="$log_dir/process_$k.log"
  if ((dry_run)); then
    line=$(printf '%q ' "${command[@]}")
    line=${line% }
    if ((k > 0)); then line+=" > $(printf '%q' "$log") 2>&1"; fi
    echo "$line"
    continue
  fi
  mkdir -p "$log_dir"
  if ((k == 0)); then
    "${command[@]}" &
  else
    "${command[@]}" >"$log" 2>&1 &
  fi
  pids+=($!)
  echo "$!" >"$log_dir/process_$k.pid"
done
((dry_run)) && exit 0

trap stop_all TERM INT
status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  finished=""
  wait -n -p finished "${running[@]}" && code=0 || code=$?
  [[ -n ${finished:-} ]] || continue # a signal interrupted the wait: the trap passed it on
  mapfile -t running < <(printf '%s\n' "${running[@]}" | grep -vx "$finished" || true)
  if ((code != 0 && status == 0)); then
    status=$code
    echo "launch/local.sh: process $finished exited with $code; stopping the others" >&2
    stop_all
  fi
done
exit "$status"
