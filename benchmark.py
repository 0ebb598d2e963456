"""Medical knowledge: accuracy on CMMLU's seven medical subjects (1,333 four-option questions), with 95% intervals.

The model gets each question with its options in Chinese, thinks, and ends with a line `答案：X`; the letter is read
after `</think>` (medsft/cmmlu.py). Run it once per model, each under its own NAME:

  python benchmark.py                                            # untuned Qwen/Qwen3-1.7B, CMMLU from ModelScope
  python benchmark.py --model_dir=output/full --name=full        # the full fine-tune
  python benchmark.py --model_dir=output/lora --name=lora        # a LoRA adapter, on the base it records
  python benchmark.py --dataset=/path/to/CMMLU/data/test         # offline: a folder of CMMLU <subject>.csv
  python benchmark.py --model_dir=tiny --limit=2 --dataset=...   # CPU smoke test (a random model: mostly no answer)
  python benchmark.py --score=results/benchmark_full.jsonl --name=full   # re-score answers, no model

Writes in RESULTS_DIR: benchmark_<NAME>.jsonl (per item: subject, index, question, choices, gold, output, pred,
correct, extracted_by, ...), benchmark_<NAME>.json (per subject and overall: accuracy, 95% Wilson interval,
unextractable, option-line and truncated counts, decoding settings, dataset revision), benchmark_<NAME>.config.json,
benchmark.png (every benchmark_*.json there), and rebuilds README.md there like the other evaluation stages, with
benchmark.pairs.json (each two models compared item by item: exact McNemar test). Resumable: rows are saved
after every batch and a re-run generates only what is missing.
"""

import re
from pathlib import Path

from tqdm import tqdm

from medsft import cmmlu, report
from medsft.adapters import check_adapter, lora_base
from medsft.chat import SYSTEM_PROMPT
from medsft.config import configure, save_config
from medsft.generate import check_decoding
from medsft.files import MedsftError, iter_jsonl, resume_rows, write_outputs
from medsft.model_checks import check_model, spec_key, weights_fingerprint
from medsft.models import hub_revision, pin_revision

DATASET = "opencompass/cmmlu"  # ModelScope id (one subset per subject, split test) or a local folder of <subject>.csv
DATASET_REVISION = ""  # ModelScope dataset version (branch, tag or commit) to load; "" = the hub's current (recorded)
MODEL_DIR = "Qwen/Qwen3-1.7B"  # model spec (ModelScope id, trained dir, tiny) or a LoRA adapter dir (on its base)
MODEL_REVISION = ""  # ModelScope revision of the model when it is a hub id (a tag, branch or commit id); "" = the hub's current (recorded)
NAME = "base"  # this model's label in file names, the chart and the report: base | full | lora
SUBJECTS = "anatomy,clinical_knowledge,college_medicine,genetics,nutrition,traditional_chinese_medicine,virology"  # CMMLU's
LIMIT = 0  # items per subject, the first in file order; 0 = all (1,333 for the seven medical subjects)
RESULTS_DIR = "results"  # benchmark_<NAME>.json(l), benchmark_<NAME>.config.json, benchmark.png
MAX_NEW_TOKENS = 2048  # a think (~900 tokens for the fine-tuned model, often more for the base) plus the 答案 line
BATCH_SIZE = 16  # questions generated together (prompts are short: ~150 tokens)
DO_SAMPLE = True  # Qwen3's thinking-mode sampling from the model's generation_config (its card warns against greedy)
ENABLE_THINKING = True  # false: Qwen3's hard switch (enable_thinking=False): the answer line without a think
SEED = 42  # sampling seed (same seed, settings and batches => same answers)
SCORE = ""  # re-score this predictions JSONL (rows with gold and output) without a model; "" = generate


def main():
    cfg = configure(globals())
    results = Path(RESULTS_DIR)
    config_path = results / f"benchmark_{NAME}.config.json"
    # 1. Checks that need neither a model nor the data
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(NAME)):
        raise MedsftError(f"--name={NAME}: use letters, digits, _ or - (it names the files), e.g. base, full, lora")
    if BATCH_SIZE < 1:
        raise MedsftError(f"--batch_size={BATCH_SIZE}: must be at least 1")
    check_decoding(MAX_NEW_TOKENS, DO_SAMPLE)

    # 2. --score: re-score an existing predictions file with today's extraction, no model
    if SCORE:
        rows = read_predictions(SCORE)
        old = cmmlu.load_summaries(Path(SCORE).parent).get(Path(SCORE).stem.removeprefix("benchmark_"), {})
        meta = {k: v for k, v in old.items() if k not in cmmlu.SCORED}
        meta = {"model": rows[0].get("model"), "adapter": rows[0].get("adapter"), **meta, "name": NAME,
                "scored_from": str(SCORE)}
        finish(rows, meta, cfg, config_path)
        return

    # 3. The model, the items and what an earlier run left (all before loading a model)
    adapter = str(MODEL_DIR) if (Path(str(MODEL_DIR)).expanduser() / "adapter_config.json").is_file() else None
    if adapter:
        model = lora_base(check_adapter(adapter, flag="--model_dir"))
    else:
        model = check_model(MODEL_DIR, flag="--model_dir", producer="train.py")
    pin_revision(model, MODEL_REVISION)
    items = cmmlu.load_items(DATASET, cmmlu.parse_subjects(SUBJECTS), LIMIT, DATASET_REVISION)
    rows_path = results / f"benchmark_{NAME}.jsonl"
    done = load_done(rows_path, items, model, adapter)
    previous = cmmlu.load_summaries(results).get(NAME) if rows_path.is_file() else None
    weights = weights_fingerprint(model, adapter)
    requested = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": DO_SAMPLE, "enable_thinking": ENABLE_THINKING}
    if DO_SAMPLE:  # under sampling an answer depends on its seed and batch too
        requested.update(seed=SEED, batch_size=BATCH_SIZE)
    if previous is not None:
        old = previous.get("decoding") or {}
        diff = [f"{k}={old.get(k)!r} (now {v!r})" for k, v in requested.items() if k in old and old[k] != v]
        if previous.get("dataset_revision", DATASET_REVISION) != DATASET_REVISION:
            diff.append(f"dataset_revision={previous['dataset_revision']!r} (now {DATASET_REVISION!r})")
        if previous.get("weights", weights) != weights:
            diff.append("other weights (retrained since?)")
        if diff:
            raise MedsftError(f"{rows_path} was started with {', '.join(diff)}: rerun with those, or pass another "
                              "--name / --results_dir")
    todo = [it for it in items if (it["subject"], it["index"]) not in done]
    print(f"{DATASET}: {len(items)} items; {len(done)} already in {rows_path}, {len(todo)} to generate")

    # 4. Generate what is missing, saving the rows and the summary after every batch
    meta = {"name": NAME, "model": model, "model_revision": hub_revision(model), "adapter": adapter, "weights": weights,
            "dataset": str(DATASET),
            "dataset_revision": DATASET_REVISION, "split": "test", "limit": LIMIT, "n_items": len(items),
            "system": SYSTEM_PROMPT, "prompt": cmmlu.PROMPT}
    decoding = (previous or {}).get("decoding")
    if todo or decoding is None:
        used, run = cmmlu.load_generator(model, adapter, max_new_tokens=MAX_NEW_TOKENS, do_sample=DO_SAMPLE,
                                             seed=SEED, batch_size=BATCH_SIZE, enable_thinking=ENABLE_THINKING)
        decoding = {**used, "seed": SEED, "batch_size": BATCH_SIZE, "enable_thinking": ENABLE_THINKING}
    bar = tqdm(total=len(items), initial=len(done), desc="benchmark", unit="q")

    def save(new_rows):
        done.update({(r["subject"], r["index"]): r for r in new_rows})
        rows = in_order()  # no chart after every batch: a chart costs more than the rows
        write_outputs(results, f"benchmark_{NAME}", cmmlu.summarize(rows, {**meta, "complete": False,
                                                                         "decoding": decoding}), rows)
        bar.update(len(new_rows))

    def in_order():
        return [done[k] for k in ((it["subject"], it["index"]) for it in items) if k in done]

    if todo:
        run(todo, save)
    bar.close()

    # 5. Final summary, chart and config
    finish(in_order(), {**meta, "complete": len(done) == len(items), "decoding": decoding}, cfg, config_path)


def read_predictions(path) -> list[dict]:
    """Rows of a predictions file (at least gold and output), re-scored; a bad row raises with file:line."""
    rows = []
    for lineno, obj, err in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if err:
            raise MedsftError(f"{where}: {err}; fix or remove that line")
        for key in ("gold", "output"):
            if not isinstance(obj.get(key), str):
                raise MedsftError(f"{where}: missing '{key}'; each row needs gold (A-D) and output (the model's text)")
        if obj["gold"].strip() not in cmmlu.LETTERS:
            raise MedsftError(f"{where}: gold {obj['gold']!r} is not one of A, B, C, D")
        rows.append(cmmlu.rescored({"subject": "all", "index": lineno, **obj, "gold": obj["gold"].strip()}))
    if not rows:
        raise MedsftError(f"{path}: no rows")
    return rows


def load_done(path, items: list[dict], model: str, adapter: str | None) -> dict:
    """Rows already generated in ``path`` by this model, keyed by (subject, index); other items or models raise."""
    wanted = {(it["subject"], it["index"]): it for it in items}
    done = {}
    for lineno, obj in resume_rows(path, ("output",), "a benchmark row", "generated"):
        where, key = f"{path}:{lineno}", (obj.get("subject"), obj.get("index"))
        if wanted.get(key, {}).get("question") != obj.get("question"):
            raise MedsftError(f"{where}: item {key[0]}#{key[1]} is not in this selection (or its question differs): "
                              "the file was made with other --dataset/--subjects/--limit; pass those, or another "
                              "--name/--results_dir")
        if (spec_key(obj.get("model")), spec_key(obj.get("adapter"))) != (spec_key(model), spec_key(adapter)):
            by = " + ".join(str(obj[k]) for k in ("model", "adapter") if obj.get(k))
            raise MedsftError(f"{where}: generated by {by}, not by this model; pass another --name so two models' "
                              "answers are never mixed")
        done[key] = cmmlu.rescored({**obj, "gold": wanted[key]["gold"]})
    return done


def finish(rows, meta, cfg, config_path):
    written = write_outputs(RESULTS_DIR, f"benchmark_{NAME}", cmmlu.summarize(rows, meta), rows)
    written.append(report.write_benchmark_chart(RESULTS_DIR))
    written += report.build(RESULTS_DIR)  # results/README.md, as every stage that adds results rebuilds it
    written.append(save_config(cfg, config_path))
    overall = cmmlu.summarize(rows, meta)["overall"]
    lo, hi = overall["ci95"]
    print(f"{NAME}: accuracy {overall['accuracy']:.1%} (95% CI {lo:.1%}-{hi:.1%}) on {overall['n']} items; "
          f"{overall['unextractable']} unextractable, {overall['option_line']} read from a bare option line, "
          f"{overall['truncated']} truncated at max_new_tokens")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
