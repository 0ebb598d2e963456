#!/usr/bin/env bash
# The whole pipeline, in order, each stage handing over files on disk:
#   data → (later stages are added here as they land)
#
#   bash pipeline.sh                 # the real thing: Qwen/Qwen3-1.7B, dataset from ModelScope (GPU)
#   MODEL=tiny bash pipeline.sh      # offline CPU demo: tiny random-init Qwen3 on the project's demo data
#
# Extra arguments are not forwarded; override a stage's constants by running it directly (see README).
set -euo pipefail
cd "$(dirname "$0")"
MODEL="${MODEL:-Qwen/Qwen3-1.7B}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if [ "$MODEL" = tiny ]; then
  DATASET="${DATASET:-demo/medical_demo.jsonl}"
else
  DATASET="${DATASET:-krisfu/delicate_medical_r1_data}"
fi
step() { echo; echo "=== $*"; "$PY" "$@"; }

step data.py --dataset="$DATASET" --tokenizer="$MODEL"
