#!/usr/bin/env bash
# launch/tpu_pod.sh: trains on a Cloud TPU VM slice (a pod slice: several hosts) until the run
# finishes, recreating the slice when it is preempted. Run it from the repository root of the
# commit to train; the slice gets that commit's tree (git archive HEAD).
#
# Usage:
#   launch/tpu_pod.sh [--dry-run] [-- <more jaxalign train arguments>]
#
# Variables (required):
#   PROJECT           the Google Cloud project
#   ZONE              e.g. us-east5-a
#   TPU_NAME          the slice's node name (its queued resource is "$TPU_NAME-qr")
#   ACCELERATOR_TYPE  e.g. v5p-32 (4 hosts of 4 chips)
#   RUNTIME_VERSION   the TPU VM image, e.g. v2-alpha-tpuv5
#   CONFIG            the config, relative to the repository root: configs/clip.py:vit_b16
#   WORKDIR           the run's directory on a bucket every host reaches: gs://bucket/runs/x
# Variables (optional):
#   SPOT              1 (default): a spot slice, recreated when preempted; 0: on demand
#   MAX_ATTEMPTS      how many times to (re)start the run before giving up (default: 20)
#   POLL_SECONDS      how often to ask whether the queued resource is ACTIVE (default: 60)
#
# What it runs, in a loop until the trainer exits 0 on every host:
#   1. the slice: reuse it if its queued resource is ACTIVE; otherwise delete what is left of
#      it and create it again (queued resources, --spot), then wait until ACTIVE;
#   2. on a new slice: copy the repository (git archive HEAD) to every worker and pip install it
#      with jax[tpu];
#   3. on every worker at once: python3 -m jaxalign train --distributed (JAX finds the pod's
#      hosts itself); the work directory on the bucket holds the checkpoints, so each attempt
#      resumes the last one (a preempted run saves one first when it gets the time: exit 143).
# --dry-run prints the commands of the first attempt on a slice that does not exist yet, and
# runs nothing.
set -euo pipefail

dry_run=0
if [[ ${1:-} == --dry-run ]]; then dry_run=1; shift; fi
if [[ $# -gt 0 ]]; then
  [[ $1 == -- ]] || { echo "usage: launch/tpu_pod.sh [--dry-run] [-- <train arguments>]" >&2; exit 2; }
  shift
fi

missing=()
for name in PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION CONFIG WORKDIR; do
  [[ -n ${!name:-} ]] || missing+=("$name")
done
if ((${#missing[@]})); then
  echo "launch/tpu_pod.sh: set ${missing[*]} (see the top of this script)" >&2
  exit 2
fi
spot=${SPOT:-1}
max_attempts=${MAX_ATTEMPTS:-20}
poll=${POLL_SECONDS:-60}
queued="$TPU_NAME-qr"
where=(--project="$PROJECT" --zone="$ZONE")

run() {
  if ((dry_run)); then
    local line
    line=$(printf '%q ' "$@")
    echo "+ ${line% }"
  else
    "$@"
  fi
}

state() {
  ((dry_run)) && { echo MISSING; return; }
  gcloud compute tpus queued-resources describe "$queued" "${where[@]}" \
    --format='value(state.state)' 2>/dev/null || echo MISSING
}

ensure_slice() { # prints nothing; returns 0 if the slice was (re)created, 1 if reused
  local current
  current=$(state)
  [[ $current == ACTIVE ]] && return 1
  if [[ $current != MISSING ]]; then
    echo "launch/tpu_pod.sh: queued resource $queued is $current: recreating it" >&2
    run gcloud compute tpus queued-resources delete "$queued" "${where[@]}" --force --quiet
  fi
  local create=(gcloud compute tpus queued-resources create "$queued" "${where[@]}"
    --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE"
    --runtime-version="$RUNTIME_VERSION")
  ((spot)) && create+=(--spot)
  run "${create[@]}"
  until [[ $(state) == ACTIVE || $dry_run == 1 ]]; do sleep "$poll"; done
  return 0
}

install() {
  run git archive --format=tar.gz -o /tmp/jaxalign.tar.gz HEAD
  run gcloud compute tpus tpu-vm scp /tmp/jaxalign.tar.gz "$TPU_NAME:" "${where[@]}" --worker=all
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command \
    "rm -rf jaxalign && mkdir jaxalign && tar -xzf jaxalign.tar.gz -C jaxalign && pip install -q -e './jaxalign' 'jax[tpu]'"
}

train_args=(--distributed "--config=$CONFIG" "--workdir=$WORKDIR" "$@")
remote="cd jaxalign && python3 -m jaxalign train$(printf ' %q' "${train_args[@]}")"
for ((attempt = 1; attempt <= max_attempts; attempt++)); do
  if ensure_slice; then install; fi
  if run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command "$remote"; then
    echo "launch/tpu_pod.sh: the run finished (attempt $attempt)" >&2
    exit 0
  fi
  echo "launch/tpu_pod.sh: attempt $attempt did not finish; resuming from the last checkpoint" >&2
done
echo "launch/tpu_pod.sh: $max_attempts attempts did not finish the run" >&2
exit 1
