#!/usr/bin/env bash
# One command that measures jaxalign on an accelerator (benchmarks/accelerator.py's docstring):
# the train step's images/s and model FLOPs utilisation, the largest loss batch per impl, the
# input pipeline's images/s. Writes a Markdown table to stdout and to --out (default
# accelerator.md, in $OUT when that is set). --cpu-smoke runs the same code on tiny shapes on
# CPU in under a minute (CI runs it).
#
#   bash benchmarks/accelerator.sh                # on a GPU host, in an environment with jaxalign
#   bash benchmarks/accelerator.sh --cpu-smoke
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/accelerator.md"
exec "${PYTHON:-python}" benchmarks/accelerator.py --out "$out" "$@"
