"""Chain-of-thought evaluation of the full fine-tune, beside the untuned base model (offline, deterministic).

Reads   PREDICTIONS (default results/predictions_full.jsonl, written by inference.py) and BASE_PREDICTIONS
        (results/predictions_base.jsonl, written by inference.py --model_dir=<base>). Scores only: a missing file stops
        the script with the inference command that makes it (MODEL_DIR, the run's base model, TEST_FILE).
Writes  RESULTS_DIR/cot_full.json + cot_full.jsonl and cot_base.json + cot_base.jsonl (summary, per-sample scores),
        then rebuilds RESULTS_DIR/rouge.png, cot.png and README.md from every summary there, and saves
        RESULTS_DIR/evaluate_config.json.

    python evaluate.py
    python evaluate.py --predictions=results/my_predictions.jsonl --eval_base=false
    OPENAI_API_KEY=... python evaluate.py --judge=openai --judge_model=gpt-4o-mini   # plus an LLM judge

Scores: reasoning steps (line breaks and sentence ends) of the generated think vs those of the reference think,
compared by IDF-weighted character-bigram Dice. Each generated step matches at most one reference step (greedy, most
similar pair first; matched = similarity >= TAU) and a step copying an earlier one of its think (similarity >= 0.9)
matches none, so repeated or copied steps count against precision and never for recall. Recall =
share of reference think steps matched; precision = share of generated steps matched: supported by the reference,
NOT medically verified; F1 is the headline. Each score is shown beside three baselines on the same split: chance (the
same metric against another question's reference), answer-as-think (the reference answer's sentences as the think)
and reference-as-think (the ceiling).
"""
from pathlib import Path

from medsft import report, scoring
from medsft.config import configure, save_config
from medsft.files import check_writable, disk_errors
from medsft.judge import public_url

PREDICTIONS = "results/predictions_full.jsonl"  # predictions of the full fine-tune (made by inference.py)
MODEL_DIR = "output/full"  # the full fine-tune: records its base; named in the command for a missing file
TEST_FILE = "data/test.jsonl"  # the split the predictions must be of
RESULTS_DIR = "results"  # scores, charts and README.md go here
EVAL_BASE = True  # also score the untuned base model, for comparison
BASE_PREDICTIONS = "results/predictions_base.jsonl"  # base model predictions (made by inference.py)
BASE_MODEL = ""  # base model spec named for a missing BASE_PREDICTIONS; "" = the one MODEL_DIR records
TAU = 0.2  # step similarity (0-1) from which a step counts as matched
REPEAT_THRESHOLD = 0.8  # step similarity (0-1) from which a generated step repeats an earlier one
FLOOR_SEED = 0  # seed of the fixed permutation (no sample paired with itself) behind the chance floor
WORKERS = 2  # processes sharing the scoring (1 = in this process); results do not depend on it
JUDGE = "none"  # none (offline scores only) | openai (also an LLM judge through an OpenAI-compatible API)
JUDGE_BASE_URL = "https://api.openai.com/v1"  # OpenAI-compatible endpoint: https (http: loopback only)
JUDGE_MODEL = "gpt-4o-mini"  # judge model name at that endpoint
JUDGE_API_KEY_ENV = "OPENAI_API_KEY"  # environment variable holding the judge's API key (never logged or written)
JUDGE_RETRIES = 3  # extra tries of a judge call after an HTTP error or a malformed reply
JUDGE_WORKERS = 4  # judge requests in flight at once


def main():
    cfg = configure(globals())
    # 1. Check the prediction files (each exactly TEST_FILE's questions, else stop with the command that makes or
    #    completes it), the judge key and URL, RESULTS_DIR
    targets = scoring.targets(cfg, "full", modes=True)
    api_key = scoring.judge_key(cfg)
    check_writable(cfg["RESULTS_DIR"], "results_dir")
    # 2. Score base and full fine-tune on the same split and IDF scale
    written = [path for t in targets for path in scoring.score_cot(cfg, t, api_key)]
    # 3. Rebuild the charts and the report from every summary in RESULTS_DIR
    with disk_errors(RESULTS_DIR, None, "results_dir"):
        written += report.build(RESULTS_DIR)
        # the URL without credentials or query string, which may carry a secret
        written.append(save_config({**cfg, "JUDGE_BASE_URL": public_url(cfg["JUDGE_BASE_URL"])},
                                   Path(RESULTS_DIR) / "evaluate_config.json"))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
