#!/usr/bin/env bash
# GPU smoke test of the lean default through the real train.py: dry-run estimate, a reference run, the same run
# killed -9 after a checkpoint and resumed, then checks (bench/gpu_smoke.py does the work; docs/performance.md).
# On a GPU it then measures ours against TRL (and LLaMA-Factory / ms-swift where ../venvs holds them) with
# bench/peers.py: memory and tokens/s of each recipe on Qwen3-1.7B, bench/results/peers-<gpu>.json (<= 5 min).
#   bash bench/gpu_smoke.sh                     # one CUDA GPU: Qwen3-1.7B architecture, random weights (<= 11 min)
#   SMOKE_MODEL=tiny bash bench/gpu_smoke.sh    # no GPU: the same checks on the tiny model on CPU (about a minute)
#   bash bench/gpu_smoke.sh --config_dir=DIR    # any constant of bench/gpu_smoke.py (--help lists them)
#   SMOKE_PEERS=0 bash bench/gpu_smoke.sh       # without the peers' comparison; SMOKE_PEERS_ARGS="--tokenizer=DIR --data=FILE" without ../shared
# PYTHON picks the interpreter (default: .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
MODEL=${SMOKE_MODEL:-real}
status=0
"$PY" bench/gpu_smoke.py --model="$MODEL" "$@" || status=$?
if [ "$MODEL" = real ] && [ "${SMOKE_PEERS:-1}" = 1 ]; then
  # the masks need no GPU (the CPU run covers them); on the GPU: memory and speed, 3 steps of 2 x 512 tokens
  # shellcheck disable=SC2086  # SMOKE_PEERS_ARGS is a list of arguments
  timeout 300 "$PY" bench/peers.py --parts=speed ${SMOKE_PEERS_ARGS:-} || status=1
fi
exit $status
