#!/usr/bin/env bash
# The whole pipeline, in order, each stage handing over files on disk:
#   data → train (full) → train_lora → predictions base / full / LoRA, each thinking on and off (both switches)
#   → evaluate ×2 (chain of thought, mode adherence) → rouge_eval ×2 (+ charts)
#   → benchmark ×3 (the medical multiple-choice suite, base / full / LoRA) → export (the full fine-tune as GGUF, q8_0)
#   → optional, with GRPO_DATASET: train_grpo (RL on multiple-choice rows) → benchmark of the GRPO model
#
#   bash pipeline.sh              # the real run: Qwen/Qwen3-1.7B, dataset from ModelScope (GPU), in ./
#   MODEL=tiny bash pipeline.sh   # offline CPU demo (a few minutes): tiny random-init Qwen3 on demo/ data,
#                                 # in runs/tiny/ so it never touches a real run's data/, output/, results/
#
# Environment: MODEL (model spec), DATASET (data.py --dataset), RUN_DIR (where data/ output/ results/ go),
# BENCHMARKS (benchmark.py --benchmarks, also what data.py and train_grpo.py check for overlap: names, each optionally
# =file or folder; the tiny demo uses the local copies in ../shared when there and demo/benchmarks' stand-ins),
# GRPO_DATASET (train_grpo.py --dataset: multiple-choice rows; unset = no GRPO;
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
  # the benchmarks may not be redistributed: the offline demo uses the local copies beside the repo when there (MedQA's
  # dev split standing in for its test split) and the project's made-up stand-ins in CMB's and CMExam's layouts
  if [ -z "${BENCHMARKS:-}" ]; then
    BENCHMARKS="cmb=$ROOT/demo/benchmarks/cmb,cmexam=$ROOT/demo/benchmarks/cmexam"
    [ ! -d "$ROOT/../shared/cmmlu-medical" ] || BENCHMARKS="cmmlu=$ROOT/../shared/cmmlu-medical,$BENCHMARKS"
    [ ! -f "$ROOT/../shared/medmcq/medqa_mcmle_dev.jsonl" ] ||
      BENCHMARKS="${BENCHMARKS/cmb=/medqa_mcmle=$ROOT/../shared/medmcq/medqa_mcmle_dev.jsonl,cmb=}"
  fi
  BENCH=(--limit=2 --max_new_tokens=64)
  GRPO=(--overwrite=true --max_steps=2 --heldout=4 --num_generations=2 --batch_size=2 --grad_accum=2
        --max_completion_length=16 --overlong_buffer=4)
else
  DATASET="${DATASET:-krisfu/delicate_medical_r1_data}"
  RUN_DIR="${RUN_DIR:-$ROOT}"
  TRAIN=(--resume=true)
  LORA=(--resume=true)
  GEN=()
  BENCHMARKS="${BENCHMARKS:-cmmlu,medqa_mcmle,cmb,cmexam}"
  BENCH=()
  GRPO=(--resume=true)
fi
mkdir -p "$RUN_DIR" && cd "$RUN_DIR"
[[ "$DATASET" = /* || -e "$DATASET" || ! -e "$ROOT/$DATASET" ]] || DATASET="$ROOT/$DATASET"
step() { local script="$1"; shift; echo; echo "=== $script $*"; "$PY" "$ROOT/$script" "$@"; }

step data.py --dataset="$DATASET" --tokenizer="$MODEL" --benchmarks="$BENCHMARKS"
step train.py --model="$MODEL" "${TRAIN[@]}"
step train_lora.py --model="$MODEL" "${LORA[@]}"
# each model in the three thinking modes, one model load each: on (scored), /no_think and enable_thinking=False (mode
# adherence); the no-think predictions land beside each file as <stem>.no_think_soft.jsonl / <stem>.no_think_hard.jsonl
MODES=--modes=think,no_think_soft,no_think_hard
step inference.py --model_dir="$MODEL" --input=data/test.jsonl --output=results/predictions_base.jsonl "${GEN[@]}" $MODES
step inference.py --input=data/test.jsonl "${GEN[@]}" $MODES
step inference_lora.py --input=data/test.jsonl "${GEN[@]}" $MODES
step evaluate.py
step evaluate_lora.py
step rouge_eval.py
step rouge_eval_lora.py
step benchmark.py --benchmarks="$BENCHMARKS" --model_dir="$MODEL" --name=base "${BENCH[@]}"
step benchmark.py --benchmarks="$BENCHMARKS" --model_dir=output/full --name=full "${BENCH[@]}"
step benchmark.py --benchmarks="$BENCHMARKS" --model_dir=output/lora --name=lora "${BENCH[@]}"
if [ -n "${GRPO_DATASET:-}" ]; then
  [[ "$GRPO_DATASET" = /* || -e "$GRPO_DATASET" || ! -e "$ROOT/$GRPO_DATASET" ]] || GRPO_DATASET="$ROOT/$GRPO_DATASET"
  # questions of the test split and every item of the benchmarks are dropped from the GRPO rows: RL never trains on them
  step train_grpo.py --model=output/full --dataset="$GRPO_DATASET" --eval_benchmarks="$BENCHMARKS" "${GRPO[@]}"
  step benchmark.py --benchmarks="$BENCHMARKS" --model_dir=output/grpo --name=grpo "${BENCH[@]}"
fi
# the full fine-tune as one GGUF file + an Ollama Modelfile (q8_0), for Ollama, llama.cpp and LM Studio
step export.py --model_dir=output/full --output_dir=export/full
echo; echo "done: results in $RUN_DIR/results ($(cd results && ls README.md *.png | paste -sd, - | sed 's/,/, /g'))"
