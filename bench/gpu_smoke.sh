#!/usr/bin/env bash
# GPU smoke test of the lean default through the real train.py: dry-run estimate, a reference run, the same run
# killed -9 after a checkpoint and resumed, then checks (bench/gpu_smoke.py does the work; docs/performance.md).
#   bash bench/gpu_smoke.sh                     # one CUDA GPU: Qwen3-1.7B architecture, random weights (<= 6 min)
#   SMOKE_MODEL=tiny bash bench/gpu_smoke.sh    # no GPU: the same checks on the tiny model on CPU (about a minute)
#   bash bench/gpu_smoke.sh --config_dir=DIR    # any constant of bench/gpu_smoke.py (--help lists them)
# PYTHON picks the interpreter (default: .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" bench/gpu_smoke.py --model="${SMOKE_MODEL:-real}" "$@"
