"""ROUGE of the full fine-tune's answers and reasoning, beside the untuned base model.

Reads   PREDICTIONS (default results/predictions_full.jsonl, written by inference.py) and BASE_PREDICTIONS
        (results/predictions_base.jsonl, written by inference.py --model_dir=<base>). Scores only: a missing file stops
        the script with the inference command that makes it (MODEL_DIR, the run's base model, TEST_FILE).
Writes  RESULTS_DIR/rouge_full.json + rouge_full.jsonl and rouge_base.json + rouge_base.jsonl (summary, per-sample
        scores), then rebuilds RESULTS_DIR/rouge.png, cot.png and README.md from every summary there, and saves
        RESULTS_DIR/rouge_eval_config.json.

    python rouge_eval.py
    python rouge_eval.py --predictions=results/my_predictions.jsonl --eval_base=false --workers=4

ROUGE-1/2/L precision, recall and F (x100, macro-averaged) on jieba words, as ROUGE-1.5.5 and Google's rouge-score
define them (clipped n-gram counts: repeating an answer k times divides its precision by about k; ROUGE-L from the
longest common subsequence), in three views: answer vs reference answer (the headline), think vs reference think,
whole output vs reference think + answer. An empty prediction scores 0 and is counted, never skipped. rouge-chinese's
old numbers (n-gram sets) are kept in the summary as rouge_chinese_exclusive, for comparison only.
"""
from pathlib import Path

from medsft import report, scoring
from medsft.config import configure, save_config
from medsft.files import check_writable, disk_errors

PREDICTIONS = "results/predictions_full.jsonl"  # predictions of the full fine-tune (made by inference.py)
MODEL_DIR = "output/full"  # the full fine-tune: records its base; named in the command for a missing file
TEST_FILE = "data/test.jsonl"  # the split the predictions must be of
RESULTS_DIR = "results"  # scores, charts and README.md go here
EVAL_BASE = True  # also score the untuned base model, for comparison
BASE_PREDICTIONS = "results/predictions_base.jsonl"  # base model predictions (made by inference.py)
BASE_MODEL = ""  # base model spec named for a missing BASE_PREDICTIONS; "" = the one MODEL_DIR records
WORKERS = 2  # processes sharing the ROUGE work (1 = in this process); results do not depend on it


def main():
    cfg = configure(globals())
    # 1. Check the prediction files (each exactly TEST_FILE's questions, else stop with the command that makes or
    #    completes it) and that RESULTS_DIR is writable
    targets = scoring.targets(cfg, "full")
    check_writable(cfg["RESULTS_DIR"], "results_dir")
    # 2. Score base and full fine-tune in the three views
    written = [path for t in targets for path in scoring.score_rouge(cfg, t)]
    # 3. Rebuild the charts and the report from every summary in RESULTS_DIR
    with disk_errors(RESULTS_DIR, None, "results_dir"):
        written += report.build(RESULTS_DIR)
        written.append(save_config(cfg, Path(RESULTS_DIR) / "rouge_eval_config.json"))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
