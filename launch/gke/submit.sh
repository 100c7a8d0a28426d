#!/usr/bin/env bash
# launch/gke/submit.sh: renders a JobSet manifest (jobset-gpu.yaml or jobset-tpu.yaml, beside
# this script) from the variables below and applies it with kubectl. The cluster needs the
# JobSet controller (https://jobset.sigs.k8s.io) and a GPU or TPU node pool; IMAGE must hold
# jaxalign, its configs and its dependencies (jax[cuda12] or jax[tpu]).
#
# Usage:
#   ACCELERATOR=gpu NAME=clip IMAGE=... CONFIG=... WORKDIR=gs://... NODES=2 GPUS=8 \
#     launch/gke/submit.sh [--dry-run]
#
# Variables (required):
#   ACCELERATOR      gpu or tpu
#   NAME             the JobSet's name (a DNS label: lower case, digits, -)
#   IMAGE            the container image
#   CONFIG           the config inside the image, e.g. configs/clip.py:vit_b16
#   WORKDIR          the run's directory, on storage every pod reaches (gs://, a shared volume)
#   NODES            pods (nodes, or TPU VM hosts of the slice)
#   GPUS             (gpu) GPUs per node
#   TPU_ACCELERATOR  (tpu) e.g. tpu-v5p-slice
#   TPU_TOPOLOGY     (tpu) e.g. 2x2x2
#   CHIPS            (tpu) chips per host, e.g. 4
# Variables (optional):
#   MAX_RESTARTS     restarts of the whole JobSet after a failure (default: 10)
#
# --dry-run prints the rendered manifest and the kubectl command, and applies nothing.
set -euo pipefail

dry_run=0
if [[ ${1:-} == --dry-run ]]; then dry_run=1; shift; fi
[[ $# -eq 0 ]] || { echo "usage: see the top of launch/gke/submit.sh" >&2; exit 2; }

required=(ACCELERATOR NAME IMAGE CONFIG WORKDIR NODES)
case ${ACCELERATOR:-} in
  gpu) required+=(GPUS) ;;
  tpu) required+=(TPU_ACCELERATOR TPU_TOPOLOGY CHIPS) ;;
  "") ;;
  *) echo "launch/gke/submit.sh: ACCELERATOR=$ACCELERATOR: use gpu or tpu" >&2; exit 2 ;;
esac
missing=()
for name in "${required[@]}"; do
  [[ -n ${!name:-} ]] || missing+=("$name")
done
if ((${#missing[@]})); then
  echo "launch/gke/submit.sh: set ${missing[*]} (see the top of this script)" >&2
  exit 2
fi
export MAX_RESTARTS=${MAX_RESTARTS:-10}
export NAME IMAGE CONFIG WORKDIR NODES GPUS TPU_ACCELERATOR TPU_TOPOLOGY CHIPS

# ${VAR} -> its value (string.Template: a placeholder without a value is an error).
manifest=$(python3 -c '
import os, string, sys
print(string.Template(open(sys.argv[1]).read()).substitute(os.environ), end="")
' "$(dirname "$0")/jobset-$ACCELERATOR.yaml")

if ((dry_run)); then
  printf '%s\n' "$manifest"
  echo "+ kubectl apply -f -"
  exit 0
fi
printf '%s\n' "$manifest" | kubectl apply -f -
