"""Stage 1 — data: the medical R1 dataset → cleaned, validated, seeded 8:1:1 train/val/test JSONL.

Reads   DATASET: the ModelScope dataset krisfu/delicate_medical_r1_data (default), or a local .jsonl/.json/
        .parquet/.csv file, or a directory of them. Rows need non-empty `question`, `think`, `answer` strings.
Writes  DATA_DIR/train.jsonl, val.jsonl, test.jsonl (rows: id, question, think, answer + the source's other fields),
        DATA_DIR/stats.json (counts, every skipped row with file:line and reason, token lengths) and
        DATA_DIR/data_config.json (the resolved constants).

    python data.py                                          # download from ModelScope, write data/
    python data.py --dataset=demo/medical_demo.jsonl        # offline: the project's 40-row demo set
    python data.py --dataset=my_rows.jsonl --data_dir=data_mine --seed=7

Bad rows are reported one line each (file:line: reason), counted and skipped; good rows are kept. A row whose
question, think or answer holds the text of a chat control token (`<|im_end|>`, `<|im_start|>`, `<tool_call>`…:
medsft.chat.CONTROL_TOKENS, plus the added tokens of TOKENIZER when one is given) is one of them: it would be
trained as a real turn (stats: rows_control_tokens); stray think tags are removed instead. The stage
fails only when no usable row is left, or when a file is not UTF-8 as a whole (one message with the iconv command
to convert it). A UTF-8 byte-order mark is ignored. Questions that differ only in spacing, character width, case,
punctuation, a leading item number or options written after them (mcq.question_key) count as duplicates (stats:
near_duplicates_merged). DATASET must not be DATA_DIR or hold it (a re-run would read this stage's own files as
rows). The five output files are published as one unit: after a failure at any point DATA_DIR holds the previous
run's files. Same input and SEED give byte-identical files.
"""

import hashlib
import json
import os
import random
import statistics
from pathlib import Path

from tqdm import tqdm

from medsft import benchmarks, mcq, models, rows
from medsft.chat import THINK_CLOSE, THINK_OPEN, control_tokens, find_control_token, tokenize_example
from medsft.config import configure
from medsft.files import MedsftError, check_writable, disk_errors, dumps_json, dumps_jsonl, publish_files, visible

DATASET = "krisfu/delicate_medical_r1_data"  # ModelScope id, or a local .jsonl/.json/.parquet/.csv file or directory
SUBSET = "default"  # ModelScope subset name (ignored for local files)
SPLIT = "train"  # ModelScope split to read (ignored for local files)
DATASET_REVISION = ""  # ModelScope dataset revision (a tag, branch or commit id); "" = the hub's current one
DATA_DIR = "data"  # output directory for train/val/test.jsonl and stats.json
SEED = 42  # shuffle seed: same input + same seed ⇒ byte-identical splits
VAL_RATIO = 0.1  # share of rows in val.jsonl (at least 1 row)
TEST_RATIO = 0.1  # share of rows in test.jsonl (at least 1 row); train gets the rest
TOKENIZER = ""  # for length stats, its added tokens rejected too: model spec or dir; "" = $MEDSFT_TOKENIZER or none
MAX_LENGTH = 2048  # tokens; stats count rows longer than this (train.py skips them)
BENCHMARKS = "cmmlu,medqa_mcmle,cmb,cmexam"  # benchmark.py's --benchmarks: rows asking one of their items are counted (stats: benchmark_overlap); "" = none

FIELDS = ("question", "think", "answer")
THINK = (THINK_OPEN, THINK_CLOSE)
SUFFIXES = rows.SUFFIXES  # the local files read (rows.read_records, the project's one row reader)


def clean(row: dict, counts: dict) -> dict:
    """Strip fields, turn literal two-character '\\n' into line breaks, drop stray think tags."""
    out = dict(row)
    for k in FIELDS:
        v = out[k]
        if "\\n" in v:
            v = v.replace("\\r\\n", "\n").replace("\\n", "\n")
            counts["literal_newlines"] += 1
        if "<think>" in v or "</think>" in v:
            v = v.replace("<think>", "").replace("</think>", "")
            counts["think_tags"] += 1
        out[k] = v.strip()
    return out


def problem(row: dict) -> str | None:
    for k in FIELDS:
        if k not in row:
            return f"missing field '{k}'"
        if not isinstance(row[k], str):
            return f"field '{k}' is {type(row[k]).__name__}, expected a string"
        if not row[k].strip():
            return f"field '{k}' is empty"
    return None


def nesting(value) -> int:
    """How deep lists and objects nest in ``value`` (1: none), counted level by level: no recursion limit."""
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [x for v in level if isinstance(v, (dict, list)) for x in (v.values() if isinstance(v, dict) else v)]
    return depth


def unwritable(row: dict) -> str | None:
    """Why ``row`` cannot be written as a UTF-8 JSON line: a field (or its name) holding a lone surrogate (a JSON
    "\\ud800" escape without its pair), or nested deeper than Python writes from any depth of the stack."""
    for k, v in row.items():
        if nesting(v) > 100:  # a row's fields nest a few levels; json.dumps fails near 1,000, less the callers'
            return f"field {k!r} nests lists or objects over 100 levels deep; flatten it in the source"
        try:
            json.dumps({k: v}, ensure_ascii=False, default=str).encode("utf-8")  # as the row will be written
        except UnicodeEncodeError:
            return (f"field {k!r} holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which is no "
                    "text a UTF-8 file can hold; fix or remove it in the source")
    return None


def row_id(question: str) -> str:
    """Stable across runs and orderings: derived from the (unique) question text."""
    return "med-" + hashlib.sha1(question.encode("utf-8")).hexdigest()[:12]


def validate(source, counts: dict, tokens=control_tokens()) -> tuple[list, list, list, int]:
    """Check, clean and de-duplicate rows; print each bad row. Returns (kept, skipped, duplicates, rows read).
    ``tokens``: the control-token texts a row must not hold (counted in ``counts["control_tokens"]``)."""
    kept, skipped, duplicates, seen = [], [], [], {}
    n_read = 0
    for where, row in source:
        n_read += 1
        err = row if isinstance(row, str) else problem(row) or unwritable(row)  # a string: why the row is unusable
        if not err:  # checked before and after cleaning: removing a think tag can join the rest into a token
            found = dict.fromkeys(counts, 0)
            cleaned = clean(row, found)
            hit = find_control_token(row, FIELDS, tokens) or find_control_token(cleaned, FIELDS, tokens + THINK)
            if hit:
                counts["control_tokens"] = counts.get("control_tokens", 0) + 1
                err = (f"field '{hit[0]}' holds (or forms, once stray think tags are removed) the chat control token {hit[1]!r}, "
                       "which would be trained as a real turn; remove it from the row (or drop the row) in the source")
            row = cleaned
            err = err or problem(row)  # a field of only tags/whitespace is empty after cleaning
            for k, n in (() if err else found.items()):  # what was cleaned, counted for kept rows only
                counts[k] += n
        if err:
            print(visible(f"skip {where}: {err}"))  # a file's name may hold terminal escapes
            skipped.append({"where": where, "reason": err})
            continue
        key = mcq.question_key(row["question"])
        if key in seen:  # the same question again: keep the first, count the rest
            first_where, first_question = seen[key]
            duplicates.append({"where": where, "first": first_where, "exact": row["question"] == first_question})
            continue
        seen[key] = where, row["question"]
        kept.append({"id": row_id(row["question"]), **{k: row[k] for k in FIELDS},
                     **{k: v for k, v in row.items() if k not in FIELDS and k != "id"}})
    return kept, skipped, duplicates, n_read


def length_stats(rows: list[dict], tok, tokenizer_spec: str, max_length: int) -> dict:
    lengths = [len(tokenize_example(tok, r, max_length=10**9)["input_ids"])
               for r in tqdm(rows, desc="token lengths", unit="row")]
    q = statistics.quantiles(lengths, n=100, method="inclusive") if len(lengths) > 1 else lengths * 99
    return {"tokenizer": tokenizer_spec, "mean": round(statistics.fmean(lengths), 1), "p50": q[49], "p95": q[94],
            "max": max(lengths), f"rows_over_{max_length}": sum(n > max_length for n in lengths)}


def main():
    cfg = configure(globals())
    out_dir = Path(DATA_DIR)
    try:
        local = Path(DATASET).expanduser()
    except RuntimeError:  # ~name of no such user
        raise MedsftError(f"--dataset={DATASET}: no home folder for '{DATASET.split('/')[0]}'; pass the full path") \
            from None
    is_local = local.exists() or DATASET.endswith(SUFFIXES) or DATASET.startswith((".", "/", "~"))
    if is_local and not local.exists():
        raise MedsftError(f"{DATASET}: file not found; pass --dataset=FILE (.jsonl/.json/.parquet/.csv) or a "
                          "ModelScope id")
    src, out = local.resolve(), out_dir.resolve()
    if is_local and (out.is_relative_to(src) or src.parent == out and src.name in ("train.jsonl", "val.jsonl",
                                                                                 "test.jsonl")):
        raise MedsftError(f"--dataset={DATASET} and --data_dir={DATA_DIR} overlap: a re-run would read the files "
                          "this stage writes there (train/val/test.jsonl, stats.json, data_config.json) as rows, test "
                          "rows leaking into train; keep the source rows in a folder apart from --data_dir")
    if not 0 < VAL_RATIO < 1 or not 0 < TEST_RATIO < 1 or VAL_RATIO + TEST_RATIO >= 1:
        raise MedsftError(f"--val_ratio={VAL_RATIO} --test_ratio={TEST_RATIO}: each must be in (0, 1), sum < 1")
    check_writable(out_dir, "data_dir")  # before a download and a pass over every row, not after
    suite = benchmarks.parse_suite(BENCHMARKS)
    # the hub asked now, in the background (seconds when it is silent): answered while the rows are read
    dataset_probe = None if is_local else models.hub_probe(DATASET, "dataset")
    probes = benchmarks.hub_probes(suite)

    # 1. Load: every row with where it came from (file:line), keeping decode errors as bad rows; the tokenizer
    # first, as its own added tokens are control tokens too
    tokenizer_spec = TOKENIZER or os.environ.get("MEDSFT_TOKENIZER", "")
    tok = models.load_tokenizer(tokenizer_spec, option="tokenizer") if tokenizer_spec else None
    source = rows.read_records(local) if is_local else rows.read_hub(
        DATASET, split=SPLIT, subset=SUBSET, revision=DATASET_REVISION, probe=dataset_probe,
        fix="use a local copy instead: --dataset=path/to/rows.jsonl (or .json/.parquet/.csv, or a directory of them), "
            "or --dataset=demo/medical_demo.jsonl for the offline demo")
    print(f"reading {DATASET}" + (f" at revision {DATASET_REVISION}" if DATASET_REVISION and not is_local else ""))

    # 2. Validate, clean and de-duplicate; report each bad row on one line, keep the good ones
    counts = {"literal_newlines": 0, "think_tags": 0}
    kept, skipped, duplicates, n_read = validate(source, counts, control_tokens(tok))
    n_control = counts.pop("control_tokens", 0)
    near = sum(not d["exact"] for d in duplicates)
    print(f"read {n_read} rows: {len(kept)} kept, {len(skipped)} bad ({n_control} holding chat control tokens), "
          f"{len(duplicates)} duplicate questions dropped "
          f"({near} differing only in spacing, character width, case, punctuation, a leading item number or options "
          f"written after the question); cleaned {counts['literal_newlines']} rows "
          f"with literal \\n, {counts['think_tags']} with stray think tags")
    if not kept:
        raise MedsftError(f"{DATASET}: no usable rows (each row needs non-empty question, think and answer "
                          "strings); see the skipped rows above")

    # 3. Shuffle with SEED and split 8:1:1; every question is in exactly one split (duplicates were dropped)
    random.Random(SEED).shuffle(kept)
    n = len(kept)
    n_val, n_test = max(1, round(n * VAL_RATIO)), max(1, round(n * TEST_RATIO))
    if n - n_val - n_test < 1:
        raise MedsftError(f"{n} usable rows cannot fill train, val and test (val {n_val}, test {n_test}): add rows "
                          "(at least 3) or lower --val_ratio/--test_ratio")
    splits = {"train": kept[n_val + n_test:], "val": kept[:n_val], "test": kept[n_val:n_val + n_test]}

    # 4. Token-length stats in the exact training format, when a tokenizer is at hand
    lengths = length_stats(kept, tok, tokenizer_spec, MAX_LENGTH) if tokenizer_spec else None
    if lengths is None:
        print("token-length stats skipped (no tokenizer): pass --tokenizer=DIR_OR_MODEL to get them")

    # 5. Rows that ask a benchmark's item: counted, so a score is never read on what the model trained on
    # (mcq.question_key: across widths, spacing, punctuation, item numbers and appended options); a benchmark that
    # cannot be read here is listed as not checked, with the reason, and never stops the stage
    keys, checked, not_checked = benchmarks.suite_keys(suite, probes=probes)
    hits = [{"id": r["id"], "benchmark": keys[k]} for r in kept if (k := mcq.question_key(r["question"])) in keys]
    overlap = {"rows": len(hits), "checked": checked, "not_checked": not_checked, "examples": hits[:20]}
    print(f"benchmark items among the rows: {overlap['rows']} (checked: "
          f"{', '.join(f'{b} {n}' for b, n in overlap['checked'].items()) or 'none'}"
          + (f"; not checked: {', '.join(overlap['not_checked'])}" if overlap["not_checked"] else "") + ")")

    # 6. Publish the splits, stats and config as one unit: a failure leaves the previous run's files untouched
    stats = {"dataset": DATASET, "dataset_revision": None if is_local else DATASET_REVISION, "seed": SEED,
             "rows_read": n_read, "rows_kept": n, "rows_bad": len(skipped), "rows_control_tokens": n_control,
             "duplicates_dropped": len(duplicates), "near_duplicates_merged": near, "cleaned": counts,
             "splits": {k: len(v) for k, v in splits.items()}, "token_lengths": lengths,
             "benchmark_overlap": overlap,
             "skipped": skipped, "duplicates": duplicates}
    # an extra field JSON cannot hold (a parquet timestamp, bytes, decimal) is kept as its text
    files = {f"{name}.jsonl": dumps_jsonl(rows, default=str).encode("utf-8") for name, rows in splits.items()}
    files["stats.json"] = dumps_json(stats).encode("utf-8")
    files["data_config.json"] = dumps_json(cfg).encode("utf-8")
    with disk_errors(out_dir, None, "data_dir"):  # publish_files has put the previous files back by then
        written = publish_files(out_dir, files, writer="data.py")
    print(f"split {n} rows: train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])}")
    if lengths:
        print(f"tokens per row: mean {lengths['mean']}, p95 {lengths['p95']}, max {lengths['max']}, "
              f"{lengths[f'rows_over_{MAX_LENGTH}']} over {MAX_LENGTH}")
    print("wrote " + " ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
