#!/usr/bin/env bash
# A CPU demo that the GRPO reward signal moves a model: the small demo model (`small`, 2.9M params, SFT'd by
# demo/learn.sh's recipe; its runs/learn/output/full is reused when present) answers multiple-choice prompts built
# from demo/grpo_mcq.jsonl (28 questions written for the demo topics, no CMMLU content) in the 6 orders of their
# distractors (the gold option keeps its letter); a short format warm-up (demo/grpo_rows.py: a fixed think and a
# RANDOM letter, never the gold one) teaches the 答案：X shape, then train_grpo.py (TRL GRPOTrainer) rewards the right
# letter. Held-out prompts are distractor orders never trained on (of trained questions), sampled in all three modes
# before and after GRPO. STATUS: the goal below is NOT met yet (issue 25 notes: numbers of every recipe tried).
#
#   bash demo/grpo.sh             # in runs/grpo/ (+ runs/learn/ for the SFT model when missing)
#
# It ends with exactly two lines (goal: after >= 0.5 and >= before + 0.25; each adherence >= 0.8):
#   reward before=<f> after=<f>                                   # mean correctness reward, held-out prompts
#   adherence think-on=<f> no-think-soft=<f> no-think-hard=<f>    # after GRPO: share in the shape each mode asks
# Outputs in $RUN_DIR: grpo_data/ (all option orders, held-out ids), grpo_warm/ (warm-up rows), output/warm,
# output/grpo (models), results/ (train_grpo.json: per-step rewards and the held-out measure; README.md).
# Environment: RUN_DIR (default runs/grpo), LEARN_DIR (default runs/learn), PYTHON, SWANLAB_MODE (default disabled).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}"
RUN_DIR="${RUN_DIR:-$ROOT/runs/grpo}"
LEARN_DIR="${LEARN_DIR:-$ROOT/runs/learn}"
export SWANLAB_MODE="${SWANLAB_MODE:-disabled}"  # a demo should not ask for, or wait on, a SwanLab account
# The recipe (found by experiment; the issue 25 notes list what did not work). HELDOUT must match grpo_rows.py's.
HELDOUT=56
ROWS=(--rows="$ROOT/demo/grpo_mcq.jsonl" --orders=distractors --heldout=$HELDOUT --warm_per_mode=4)
WARM=(--data_dir=grpo_warm --output_dir=output/warm --results_dir=results/warm --no_think_ratio=0 --overwrite=true
      --max_steps=150 --batch_size=8 --grad_accum=1 --learning_rate=1e-3 --warmup=10 --max_length=512 --precision=fp32
      --gradient_checkpointing=false --loss=plain --logging_steps=20 --eval_steps=400 --save_steps=1000
      --preview_questions=0)
GRPO=(--model=output/warm --dataset=grpo_data/mcq.jsonl --eval_data="$LEARN_DIR/data/test.jsonl" --heldout=$HELDOUT
      --eval_samples=2 --max_completion_length=48 --overlong_buffer=8 --batch_size=8 --grad_accum=4
      --num_generations=8 --num_iterations=2 --learning_rate=1e-3 --beta=0.04 --no_think_ratio=0.5 --max_steps=50
      --save_steps=1000
      --output_dir=output/grpo --results_dir=results --overwrite=true)

step() { local script="$1"; shift; echo; echo "=== $script $*"; "$PY" "$ROOT/$script" "$@"; }
if [ ! -f "$LEARN_DIR/output/full/model.safetensors" ]; then
  echo "=== no SFT model in $LEARN_DIR/output/full: running demo/learn.sh first (~6 min)"
  RUN_DIR="$LEARN_DIR" PYTHON="$PY" bash "$ROOT/demo/learn.sh"
fi
mkdir -p "$RUN_DIR" && cd "$RUN_DIR"
start=$(date +%s)
step demo/grpo_rows.py "${ROWS[@]}"
step train.py --model="$LEARN_DIR/output/full" "${WARM[@]}"
step train_grpo.py "${GRPO[@]}"
echo "GRPO part (warm-up + GRPO + measures): $(( $(date +%s) - start )) s"

"$PY" - <<'EOF'
import json, sys
m = json.load(open("results/train_grpo.json", encoding="utf-8")).get("heldout_eval") or {}
if not {"before", "after"} <= set(m):
    sys.exit("results/train_grpo.json has no held-out measure before and after: rerun bash demo/grpo.sh")
b, a = m["before"], m["after"]
rows = "\n".join(f"| {k} | {b[k]['correct']:.2f} | {a[k]['correct']:.2f} | {b[k]['shape']:.2f} | {a[k]['shape']:.2f} |"
                 for k in ("think", "no_think_soft", "no_think_hard", "all"))
open("results/README.md", "w", encoding="utf-8").write(f"""# GRPO CPU demo (demo/grpo.sh)

Held-out: {a['think']['n']} sampled completions per mode (unseen distractor orders of the 28 trained questions),
before GRPO (the warm-up model) and after. Goal: after >= 0.5 and >= before + 0.25; each shape share >= 0.8.

| mode | reward before | reward after | shape before | shape after |
|---|---|---|---|---|
{rows}

What this shows: whether the correctness reward moves the letters a 2.9M-parameter model writes, on prompts it
never trained on, while the three thinking switches keep their shapes. The warm-up before GRPO picks letters at
random (never by the gold one), so a gain over ~0.25 comes from the reward alone.
What it cannot show: any medical skill. The held-out prompts reorder the distractors of questions trained on and
the gold option keeps its letter, so a model that memorised question -> letter passes. A model this size, trained
on 32 rows, knows no medicine and does not read the options; train_grpo.py on Qwen3 with a GPU, scored by
benchmark.py on CMMLU, is what measures that.
""")
print("reward before={:.2f} after={:.2f}".format(b["all"]["correct"], a["all"]["correct"]))
print("adherence think-on={:.2f} no-think-soft={:.2f} no-think-hard={:.2f}".format(
    a["think"]["shape"], a["no_think_soft"]["shape"], a["no_think_hard"]["shape"]))
EOF
