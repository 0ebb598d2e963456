"""Chain-of-thought evaluation of the LoRA fine-tune, beside the untuned base model: evaluate.py's twin.

Reads   PREDICTIONS (default results/predictions_lora.jsonl, written by inference_lora.py) and BASE_PREDICTIONS
        (results/predictions_base.jsonl). A missing file is predicted here with the inference code: PREDICTIONS from
        ADAPTER_DIR on its base model, the base file once from that base model (then reused), both on TEST_FILE.
Writes  RESULTS_DIR/cot_lora.json + cot_lora.jsonl and cot_base.json + cot_base.jsonl, then rebuilds
        RESULTS_DIR/rouge.png, cot.png and README.md from every summary there, and saves
        RESULTS_DIR/evaluate_lora_config.json.

    python evaluate_lora.py
    OPENAI_API_KEY=... python evaluate_lora.py --judge=openai

What the scores mean and their baselines: see evaluate.py (precision = supported by the reference, not medically
verified).
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
TAU = 0.2  # step similarity (0-1) from which a step counts as matched
REPEAT_THRESHOLD = 0.8  # step similarity (0-1) from which a generated step repeats an earlier one
FLOOR_SEED = 0  # seed of the fixed permutation (no sample paired with itself) behind the chance floor
WORKERS = 2  # processes sharing the scoring (1 = in this process); results do not depend on it
JUDGE = "none"  # none (offline scores only) | openai (also an LLM judge through an OpenAI-compatible API)
JUDGE_BASE_URL = "https://api.openai.com/v1"  # OpenAI-compatible endpoint; /chat/completions is appended
JUDGE_MODEL = "gpt-4o-mini"  # judge model name at that endpoint
JUDGE_API_KEY_ENV = "OPENAI_API_KEY"  # environment variable holding the judge's API key (never logged or written)
JUDGE_RETRIES = 3  # extra tries of a judge call after an HTTP error or a malformed reply
JUDGE_WORKERS = 4  # judge requests in flight at once


def main():
    cfg = configure(globals())
    # 1. Check the prediction files (or the adapter and split that would make them) and the judge's key
    targets = evaluation.targets(cfg, "lora")
    api_key = evaluation.judge_key(cfg)
    # 2. Predict the missing files with the inference code (base first: every eval script reuses it)
    evaluation.produce_missing(targets, cfg)
    # 3. Score base and LoRA on the same split and IDF scale
    written = [path for t in targets for path in evaluation.score_cot(cfg, t, api_key)]
    # 4. Rebuild the charts and the report from every summary in RESULTS_DIR
    written += report.build(RESULTS_DIR)
    written.append(save_config(cfg, Path(RESULTS_DIR) / "evaluate_lora_config.json"))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
