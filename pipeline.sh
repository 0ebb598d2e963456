#!/usr/bin/env bash
# The whole pipeline, in order, each stage handing over files on disk:
#   data → train (full) → train_lora → predictions base / full / LoRA, each thinking on and off (both switches)
#   → evaluate ×2 (chain of thought, mode adherence) → rouge_eval ×2 (+ charts)
#   → benchmark ×3 (CMMLU medical knowledge of base / full / LoRA) → export (the full fine-tune as GGUF, q8_0)
#   → optional, with GRPO_DATASET: train_grpo (RL on multiple-choice rows) → benchmark of the GRPO model
#
#   bash pipeline.sh              # the real run: Qwen/Qwen3-1.7B, dataset from ModelScope (GPU), in ./
#   MODEL=tiny bash pipeline.sh   # offline CPU demo (a few minutes): tiny random-init Qwen3 on demo/ data,
#                                 # in runs/tiny/ so it never touches a real run's data/, output/, results/
#
# Environment: MODEL (model spec), DATASET (data.py --dataset), RUN_DIR (where data/ output/ results/ go),
# CMMLU (benchmark.py --dataset: a ModelScope id or a folder of CMMLU <subject>.csv; the tiny demo skips the
# benchmark without a local copy), GRPO_DATASET (train_grpo.py --dataset: multiple-choice rows; unset = no GRPO;
# e.g. demo/grpo_mcq.jsonl with MODEL=tiny), PYTHON (interpreter; default .venv/bin/python if present). For other settings
# run the stages by hand (README).
# Re-running continues: training resumes from its newest checkpoint, predictions skip rows already written.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
MODEL="${MODEL:-Qwen/Qwen3-1.7B}"
PY="${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}"
if [ "$MODEL" = tiny ]; then
  DATASET="${DATASET:-$ROOT/demo/medical_demo.jsonl}"
  RUN_DIR="${RUN_DIR:-$ROOT/runs/tiny}"
  # a random 2-layer model learns visibly only with large steps; answers are short to keep the demo quick
  TINY=(--overwrite=true --max_steps=80 --batch_size=4 --grad_accum=1 --warmup=4 --logging_steps=4
        --eval_steps=8 --save_steps=40 --preview_max_new_tokens=64)
  TRAIN=("${TINY[@]}" --learning_rate=3e-3)
  LORA=("${TINY[@]}" --learning_rate=1e-2)
  GEN=(--max_new_tokens=256)
  # CMMLU may not be redistributed (CC BY-NC-SA), so the offline demo uses a local copy when one is beside the repo
  CMMLU="${CMMLU:-$ROOT/../shared/cmmlu-medical}"
  BENCH=(--limit=2 --max_new_tokens=64)
  GRPO=(--overwrite=true --max_steps=2 --heldout=4 --num_generations=2 --batch_size=2 --grad_accum=2
        --max_completion_length=16 --overlong_buffer=4)
else
  DATASET="${DATASET:-krisfu/delicate_medical_r1_data}"
  RUN_DIR="${RUN_DIR:-$ROOT}"
  TRAIN=(--resume=true)
  LORA=(--resume=true)
  GEN=()
  CMMLU="${CMMLU:-opencompass/cmmlu}"
  BENCH=()
  GRPO=(--resume=true)
fi
mkdir -p "$RUN_DIR" && cd "$RUN_DIR"
[[ "$DATASET" = /* || -e "$DATASET" || ! -e "$ROOT/$DATASET" ]] || DATASET="$ROOT/$DATASET"
[[ "$CMMLU" = /* || -e "$CMMLU" || ! -e "$ROOT/$CMMLU" ]] || CMMLU="$ROOT/$CMMLU"
step() { local script="$1"; shift; echo; echo "=== $script $*"; "$PY" "$ROOT/$script" "$@"; }

step data.py --dataset="$DATASET" --tokenizer="$MODEL"
step train.py --model="$MODEL" "${TRAIN[@]}"
step train_lora.py --model="$MODEL" "${LORA[@]}"
# each model in the three thinking modes: on (scored), /no_think and enable_thinking=False (mode adherence); the
# no-think predictions land beside each file as <stem>.no_think_soft.jsonl / <stem>.no_think_hard.jsonl
for SWITCH in "" --soft_switch=/no_think --enable_thinking=false; do
  step inference.py --model_dir="$MODEL" --input=data/test.jsonl --output=results/predictions_base.jsonl "${GEN[@]}" $SWITCH
  step inference.py --input=data/test.jsonl "${GEN[@]}" $SWITCH
  step inference_lora.py --input=data/test.jsonl "${GEN[@]}" $SWITCH
done
step evaluate.py
step evaluate_lora.py
step rouge_eval.py
step rouge_eval_lora.py
if [ "$MODEL" != tiny ] || [ -d "$CMMLU" ]; then
  step benchmark.py --dataset="$CMMLU" --model_dir="$MODEL" --name=base "${BENCH[@]}"
  step benchmark.py --dataset="$CMMLU" --model_dir=output/full --name=full "${BENCH[@]}"
  step benchmark.py --dataset="$CMMLU" --model_dir=output/lora --name=lora "${BENCH[@]}"
else
  echo; echo "=== benchmark.py skipped: no local CMMLU at $CMMLU (set CMMLU=/path/to/CMMLU/data/test)"
fi
if [ -n "${GRPO_DATASET:-}" ]; then
  [[ "$GRPO_DATASET" = /* || -e "$GRPO_DATASET" || ! -e "$ROOT/$GRPO_DATASET" ]] || GRPO_DATASET="$ROOT/$GRPO_DATASET"
  # questions of the test split and of the CMMLU subjects are dropped from the GRPO rows: RL never trains on them
  EVAL_CMMLU=$( [ "$MODEL" != tiny ] || [ -d "$CMMLU" ] && echo "$CMMLU" || echo "" )
  step train_grpo.py --model=output/full --dataset="$GRPO_DATASET" --eval_cmmlu="$EVAL_CMMLU" "${GRPO[@]}"
  if [ -n "$EVAL_CMMLU" ]; then
    step benchmark.py --dataset="$CMMLU" --model_dir=output/grpo --name=grpo "${BENCH[@]}"
  fi
fi
# the full fine-tune as one GGUF file + an Ollama Modelfile (q8_0), for Ollama, llama.cpp and LM Studio
step export.py --model_dir=output/full --output_dir=export/full
echo; echo "done: results in $RUN_DIR/results ($(cd results && ls README.md *.png | paste -sd, - | sed 's/,/, /g'))"
