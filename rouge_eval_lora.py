"""ROUGE of the LoRA fine-tune's answers and reasoning, beside the untuned base model: rouge_eval.py's twin.

Reads   PREDICTIONS (default results/predictions_lora.jsonl, written by inference_lora.py) and BASE_PREDICTIONS
        (results/predictions_base.jsonl). A missing file is predicted here with the inference code: PREDICTIONS from
        ADAPTER_DIR on its base model, the base file once from that base model (then reused), both on TEST_FILE.
Writes  RESULTS_DIR/rouge_lora.json + rouge_lora.jsonl and rouge_base.json + rouge_base.jsonl, then rebuilds
        RESULTS_DIR/rouge.png, cot.png and README.md from every summary there, and saves
        RESULTS_DIR/rouge_eval_lora_config.json.

    python rouge_eval_lora.py

The metric: see rouge_eval.py.
"""
from pathlib import Path

from medsft import evaluation, report
from medsft.config import configure, save_config

PREDICTIONS = "results/predictions_lora.jsonl"  # predictions of the LoRA fine-tune (made from ADAPTER_DIR if missing)
ADAPTER_DIR = "output/lora"  # the LoRA adapter; only used to predict a missing PREDICTIONS and to find its base
TEST_FILE = "data/test.jsonl"  # split predicted when a predictions file is missing
RESULTS_DIR = "results"  # scores, charts and README.md go here
EVAL_BASE = True  # also score the untuned base model, for comparison
BASE_PREDICTIONS = "results/predictions_base.jsonl"  # base model predictions (made once if missing, then reused)
BASE_MODEL = ""  # base model spec; "" = the one ADAPTER_DIR records (adapter_config.json)
MAX_NEW_TOKENS = 2048  # tokens per answer at most, for predictions made here
DO_SAMPLE = True  # predictions made here: Qwen3's thinking-mode sampling (true) or greedy (false)
SEED = 42  # sampling seed for predictions made here
BATCH_SIZE = 8  # questions generated together, for predictions made here
WORKERS = 2  # processes sharing the ROUGE work (1 = in this process); results do not depend on it


def main():
    cfg = configure(globals())
    # 1. Check the prediction files (or the adapter and split that would make them)
    targets = evaluation.targets(cfg, "lora")
    # 2. Predict the missing files with the inference code (base first: every eval script reuses it)
    evaluation.produce_missing(targets, cfg)
    # 3. Score base and LoRA in the three views
    written = [path for t in targets for path in evaluation.score_rouge(cfg, t)]
    # 4. Rebuild the charts and the report from every summary in RESULTS_DIR
    written += report.build(RESULTS_DIR)
    written.append(save_config(cfg, Path(RESULTS_DIR) / "rouge_eval_lora_config.json"))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
