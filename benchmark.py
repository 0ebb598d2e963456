"""Medical knowledge: multiple-choice accuracy on the benchmarks Chinese medical models are reported on, with 95%
intervals and paired tests between models.

BENCHMARKS picks from cmmlu (CMMLU's 7 medical subjects, 1,333 items), medqa_mcmle (MedQA's Mainland China test,
3,426 items, 5 options), cmb (CMB-Exam test, 11,200 items, up to 6 options, ~10% with several answers) and cmexam
(CMExam test, 6,811 items). Each is read at run time from its authors' layout (a local file or folder; CMMLU also from
ModelScope); their licenses differ and none is shipped (docs/metrics.md says where to get each). The model thinks,
then ends with `答案：X` (`答案：XY` for several answers); medsft/mcq.py reads the letters after `</think>`, only
where the answer commits to them. Run it once per model, each under its own NAME:

  python benchmark.py                                            # untuned Qwen/Qwen3-1.7B, LIMIT items of each
  python benchmark.py --model_dir=output/full --name=full        # the full fine-tune
  python benchmark.py --model_dir=output/lora --name=lora        # a LoRA adapter, on the base it records
  python benchmark.py --benchmarks=cmmlu,cmb=/data/CMB --limit=0 # every item of two benchmarks, CMB from a folder
  python benchmark.py --samples=4                                # 4 sampled answers per item: mean and majority
  python benchmark.py --model_dir=tiny --limit=2 --benchmarks=cmmlu=../shared/cmmlu-medical   # CPU smoke test
  python benchmark.py --score=results/benchmark_full.jsonl --name=full   # re-score answers, no model

Writes in RESULTS_DIR: benchmark_<NAME>.jsonl (per answer: benchmark, id, sample, question, choices, gold, output,
pred, correct, extracted_by, think_tokens, finished), benchmark_<NAME>.json (per benchmark: accuracy with its 95%
interval, single- and multi-answer apart, per subject or category, unextractable and cut-off shares, mean think
tokens, the majority over samples, which items were asked; decoding settings), benchmark_<NAME>.config.json,
benchmark.png (every benchmark_*.json there), benchmark.pairs.json (per benchmark, each two models item by item:
exact McNemar test) and README.md there. Resumable: rows are saved after every batch and a re-run generates only what
is missing.
"""

import re
from pathlib import Path

from tqdm import tqdm

from medsft import benchmarks, charts, mcq, report
from medsft.adapters import check_adapter, load_for_inference, lora_base
from medsft.chat import SYSTEM_PROMPT, split_output
from medsft.config import configure, save_config
from medsft.files import MedsftError, iter_jsonl, resume_rows, write_outputs
from medsft.generate import check_decoding, generate, generation_config, used_settings
from medsft.model_checks import check_model, spec_key, weights_fingerprint
from medsft.models import hub_revision, pin_revision

BENCHMARKS = "cmmlu,medqa_mcmle,cmb,cmexam"  # comma list of cmmlu | medqa_mcmle | cmb | cmexam, each optionally =<file or folder> (else its default source)
DATASET_REVISION = ""  # ModelScope version of CMMLU when read from there (branch, tag or commit); "" = the hub's current (recorded)
SUBJECTS = "anatomy,clinical_knowledge,college_medicine,genetics,nutrition,traditional_chinese_medicine,virology"  # CMMLU's
LIMIT = 250  # items per benchmark, a sample chosen by SEED (the same items for every model); 0 = all (22,770 for the four)
SAMPLES = 1  # sampled answers per item: accuracy is their mean (with its interval), beside the per-item majority
MODEL_DIR = "Qwen/Qwen3-1.7B"  # model spec (ModelScope id, trained dir, tiny) or a LoRA adapter dir (on its base)
MODEL_REVISION = ""  # ModelScope revision of the model when it is a hub id (a tag, branch or commit id); "" = the hub's current (recorded)
NAME = "base"  # this model's label in file names, the chart and the report: base | full | lora
RESULTS_DIR = "results"  # benchmark_<NAME>.json(l), benchmark_<NAME>.config.json, benchmark.png
MAX_NEW_TOKENS = 2048  # a think (~900 tokens for the fine-tuned model, often more for the base) plus the 答案 line
BATCH_SIZE = 16  # questions generated together (prompts are short: ~150-400 tokens)
DO_SAMPLE = True  # Qwen3's thinking-mode sampling from the model's generation_config (T 0.6, top_p 0.95, top_k 20; greedy loops)
ENABLE_THINKING = True  # false: Qwen3's hard switch (enable_thinking=False): the answer line without a think
SEED = 42  # seed of the item sample and of sampling (same seed, settings and batches => same answers)
SCORE = ""  # re-score this predictions JSONL (rows with gold and output) without a model; "" = generate


def main():
    cfg = configure(globals())
    results = Path(RESULTS_DIR)
    config_path = results / f"benchmark_{NAME}.config.json"
    # 1. Checks that need neither a model nor the data
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(NAME)):
        raise MedsftError(f"--name={NAME}: use letters, digits, _ or - (it names the files), e.g. base, full, lora")
    if BATCH_SIZE < 1 or SAMPLES < 1:
        raise MedsftError(f"--batch_size={BATCH_SIZE} --samples={SAMPLES}: each must be at least 1")
    check_decoding(MAX_NEW_TOKENS, DO_SAMPLE)
    suite = benchmarks.parse_suite(BENCHMARKS)
    subjects = [s.strip() for s in str(SUBJECTS).split(",") if s.strip()]
    if not subjects or any(s not in benchmarks.CMMLU_SUBJECTS for s in subjects) or len(set(subjects)) < len(subjects):
        raise MedsftError(f"--subjects={SUBJECTS}: expected distinct CMMLU medical subjects of "
                          f"{','.join(benchmarks.CMMLU_SUBJECTS)}")

    # 2. --score: re-score an existing predictions file with today's reader, no model
    if SCORE:
        rows = read_predictions(SCORE)
        old = benchmarks.load_summaries(Path(SCORE).parent).get(Path(SCORE).stem.removeprefix("benchmark_"), {})
        meta = {**{k: v for k, v in old.items() if k != "benchmarks"}, "model": rows[0].get("model"),
                "adapter": rows[0].get("adapter"), "name": NAME, "scored_from": str(SCORE)}
        keep = ("title", "split", "license", "source", "revision", "limit", "seed", "n_items", "selection")
        info = {b: {k: v for k, v in s.items() if k in keep} for b, s in (old.get("benchmarks") or {}).items()}
        finish(rows, meta, info, cfg, config_path)
        return

    # 3. The model, every benchmark's items (each row checked; a seeded sample) and what an earlier run left
    adapter = str(MODEL_DIR) if (Path(str(MODEL_DIR)).expanduser() / "adapter_config.json").is_file() else None
    model = lora_base(check_adapter(adapter, flag="--model_dir")) if adapter else \
        check_model(MODEL_DIR, flag="--model_dir", producer="train.py")
    pin_revision(model, MODEL_REVISION)
    items, info = [], {}
    for bench, source in suite.items():
        b = benchmarks.BENCHMARKS[bench]
        print(f"{bench}: {b.title}, {b.split} split, from {source} (license: {b.license})")
        found, bad = benchmarks.load(bench, source, subjects=subjects,
                                     revision=DATASET_REVISION if bench == "cmmlu" else "")
        chosen = benchmarks.sample(found, LIMIT, SEED)
        items += chosen
        info[bench] = {"title": b.title, "split": b.split, "license": b.license, "source": str(source),
                       "revision": DATASET_REVISION if bench == "cmmlu" else "", "items_read": len(found),
                       "bad_rows": len(bad), "bad": bad[:20], "limit": LIMIT, "seed": SEED, "n_items": len(chosen),
                       "selection": benchmarks.selection(chosen)}
    rows_path = results / f"benchmark_{NAME}.jsonl"
    weights = weights_fingerprint(model, adapter)
    done = load_done(rows_path, items, model, adapter)
    previous = benchmarks.load_summaries(results).get(NAME) if rows_path.is_file() else None
    requested = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": DO_SAMPLE, "enable_thinking": ENABLE_THINKING}
    if DO_SAMPLE:  # under sampling an answer depends on its seed and batch too
        requested.update(seed=SEED, batch_size=BATCH_SIZE)
    if previous is not None:
        old = previous.get("decoding") or {}
        diff = [f"{k}={old.get(k)!r} (now {v!r})" for k, v in requested.items() if k in old and old[k] != v]
        if previous.get("weights", weights) != weights:
            diff.append("other weights (retrained since?)")
        if diff:
            raise MedsftError(f"{rows_path} was started with {', '.join(diff)}: rerun with those, or pass another "
                              "--name / --results_dir")
    todo = [(it, s) for s in range(SAMPLES) for it in items if (it["benchmark"], it["id"], s) not in done]
    print(f"{len(items)} items x {SAMPLES} sample(s); {len(done)} answers already in {rows_path}, {len(todo)} to "
          "generate")

    # 4. Generate what is missing, saving the rows and the summary after every batch
    meta = {"name": NAME, "model": model, "model_revision": hub_revision(model), "adapter": adapter, "weights": weights,
            "system": SYSTEM_PROMPT, "prompt": mcq.PROMPT}
    decoding = (previous or {}).get("decoding")
    bar = tqdm(total=len(items) * SAMPLES, initial=len(done), desc="benchmark", unit="answer")

    def save(new_rows):
        done.update({(r["benchmark"], r["id"], r["sample"]): r for r in new_rows})
        write_outputs(results, f"benchmark_{NAME}", summary(in_order(), meta, info, decoding, complete=False),
                      in_order())  # no chart after every batch: a chart costs more than the rows
        bar.update(len(new_rows))

    def in_order():
        return [done[k] for it in items for s in range(SAMPLES) if (k := (it["benchmark"], it["id"], s)) in done]

    if todo or decoding is None:
        net, tokenizer = load_for_inference(model, adapter)
        used = used_settings(generation_config(net, tokenizer, max_new_tokens=MAX_NEW_TOKENS, do_sample=DO_SAMPLE))
        decoding = {**used, "seed": SEED, "batch_size": BATCH_SIZE, "enable_thinking": ENABLE_THINKING,
                    "samples": SAMPLES}
        mode = "think" if ENABLE_THINKING else "no_think_hard"
        for s in range(SAMPLES):  # each sample its own seed: k answers per item, not k copies of one
            batch = [it for it, k in todo if k == s]
            generate(net, tokenizer, [mcq.prompt(it, it["subject"]) for it in batch], max_new_tokens=MAX_NEW_TOKENS,
                     do_sample=DO_SAMPLE, seed=SEED + 1_000_003 * s, batch_size=BATCH_SIZE, progress=False,
                     modes=[mode] * len(batch), on_batch=lambda pairs, batch=batch, s=s: save(
                         [make_row(batch[i], s, r, tokenizer, model, adapter) for i, r in pairs]))
    bar.close()

    # 5. Final summary, chart, report and config
    finish(in_order(), {**meta, "complete": len(done) == len(items) * SAMPLES}, info, cfg, config_path, decoding)


def summary(rows, meta, info, decoding, complete) -> dict:
    """The model's summary: its settings, then per benchmark where the items came from and its scores."""
    per = {b: [r for r in rows if r.get("benchmark", "all") == b] for b in dict.fromkeys(
        [*info, *(r.get("benchmark", "all") for r in rows)])}
    return {**meta, "complete": complete, "decoding": decoding,
            "benchmarks": {b: {**info.get(b, {}), **benchmarks.summarize(rs)} for b, rs in per.items() if rs}}


def make_row(item: dict, sample: int, result: dict, tokenizer, model: str, adapter: str | None) -> dict:
    think = split_output(result["output"])[0]
    row = benchmarks.rescored({**item, "sample": sample, "output": result["output"], "new_tokens": result.get(
        "new_tokens"), "think_tokens": len(tokenizer(think, add_special_tokens=False)["input_ids"]) if think else 0,
        "finished": result.get("finished"), "model": model})
    return {**row, "adapter": adapter} if adapter else row


def read_predictions(path) -> list[dict]:
    """Rows of a predictions file (at least gold and output), re-scored; a bad row raises with file:line."""
    rows = []
    for lineno, obj, err in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if err:
            raise MedsftError(f"{where}: {err}; fix or remove that line")
        for key in ("gold", "output"):
            if not isinstance(obj.get(key), str):
                raise MedsftError(f"{where}: missing '{key}'; each row needs gold (letters) and output (the model's "
                                  "text)")
        gold = mcq.LETTERS[:len(obj.get("choices") or "ABCDEF")]
        if not re.fullmatch(f"[{gold}]+", obj["gold"].strip()):
            raise MedsftError(f"{where}: gold {obj['gold']!r} is not option letters {', '.join(gold)}")
        rows.append(benchmarks.rescored({"benchmark": "cmmlu" if "subject" in obj else "all", "group": obj.get(
            "subject", "all"), "id": f"{obj.get('subject')}:{obj['index']}" if "index" in obj else str(lineno),
            "sample": 0, **obj, "gold": obj["gold"].strip()}))
    if not rows:
        raise MedsftError(f"{path}: no rows")
    return rows


def load_done(path, items: list[dict], model: str, adapter: str | None) -> dict:
    """Answers already generated in ``path`` by this model, keyed by (benchmark, id, sample); other items or models
    raise."""
    wanted = {(it["benchmark"], it["id"]): it for it in items}
    done = {}
    for lineno, obj in resume_rows(path, ("output",), "a benchmark row", "generated"):
        where, key = f"{path}:{lineno}", (obj.get("benchmark"), obj.get("id"))
        if wanted.get(key, {}).get("question") != obj.get("question"):
            raise MedsftError(f"{where}: item {key[0]}#{key[1]} is not in this selection (or its question differs): "
                              "the file was made with other --benchmarks/--subjects/--limit/--seed; pass those, or "
                              "another --name/--results_dir")
        if (spec_key(obj.get("model")), spec_key(obj.get("adapter"))) != (spec_key(model), spec_key(adapter)):
            by = " + ".join(str(obj[k]) for k in ("model", "adapter") if obj.get(k))
            raise MedsftError(f"{where}: generated by {by}, not by this model; pass another --name so two models' "
                              "answers are never mixed")
        done[(*key, obj.get("sample", 0))] = benchmarks.rescored({**obj, "gold": wanted[key]["gold"]})
    return done


def finish(rows, meta, info, cfg, config_path, decoding=None):
    decoding = decoding or meta.pop("decoding", None)
    final = summary(rows, meta, info, decoding, complete=meta.pop("complete", True))
    written = write_outputs(RESULTS_DIR, f"benchmark_{NAME}", final, rows)
    written.append(charts.write_benchmark_chart(RESULTS_DIR))
    written += report.build(RESULTS_DIR)  # results/README.md, as every stage that adds results rebuilds it
    written.append(save_config(cfg, config_path))
    for bench, s in final["benchmarks"].items():
        o = s["overall"]
        lo, hi = o["ci95"]
        print(f"{NAME} {bench}: accuracy {o['accuracy']:.1%} (95% CI {lo:.1%}-{hi:.1%}) on {o['n']} items; "
              f"{o['unextractable']} unextractable, {o['cut_off']} cut off at max_new_tokens"
              + (f"; majority of {s['samples']}: {s['majority']['accuracy']:.1%}" if "majority" in s else ""))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
