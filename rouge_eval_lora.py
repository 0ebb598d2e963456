"""ROUGE of the LoRA fine-tune's answers and reasoning, beside the untuned base model: rouge_eval.py's twin.

Reads   PREDICTIONS (default results/predictions_lora.jsonl, written by inference_lora.py) and BASE_PREDICTIONS
        (results/predictions_base.jsonl, written by inference.py --model_dir=<base>). Scores only: a missing file stops
        the script with the inference command that makes it (ADAPTER_DIR, its base model, TEST_FILE).
Writes  RESULTS_DIR/rouge_lora.json + rouge_lora.jsonl and rouge_base.json + rouge_base.jsonl, then rebuilds
        RESULTS_DIR/rouge.png, cot.png and README.md from every summary there, and saves
        RESULTS_DIR/rouge_eval_lora_config.json.

    python rouge_eval_lora.py

The metric: see rouge_eval.py.
"""
from pathlib import Path

from medsft import report, scoring
from medsft.config import configure, save_config
from medsft.files import check_writable, disk_errors

PREDICTIONS = "results/predictions_lora.jsonl"  # predictions of the LoRA fine-tune (made by inference_lora.py)
ADAPTER_DIR = "output/lora"  # the LoRA adapter: records its base; named in the command for a missing file
TEST_FILE = "data/test.jsonl"  # the split the predictions must be of
RESULTS_DIR = "results"  # scores, charts and README.md go here
EVAL_BASE = True  # also score the untuned base model, for comparison
BASE_PREDICTIONS = "results/predictions_base.jsonl"  # base model predictions (made by inference.py)
BASE_MODEL = ""  # base model spec named in the commands for missing files; "" = the one ADAPTER_DIR records
WORKERS = 2  # processes sharing the ROUGE work (1 = in this process); results do not depend on it


def main():
    cfg = configure(globals())
    # 1. Check the prediction files (each exactly TEST_FILE's questions, else stop with the command that makes or
    #    completes it) and that RESULTS_DIR is writable
    targets = scoring.targets(cfg, "lora")
    check_writable(cfg["RESULTS_DIR"], "results_dir")
    # 2. Score base and LoRA in the three views
    written = [path for t in targets for path in scoring.score_rouge(cfg, t)]
    # 3. Rebuild the charts and the report from every summary in RESULTS_DIR
    with disk_errors(RESULTS_DIR, None, "results_dir"):
        written += report.build(RESULTS_DIR)
        written.append(save_config(cfg, Path(RESULTS_DIR) / "rouge_eval_lora_config.json"))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
