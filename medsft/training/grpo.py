"""The GRPO recipe's parts that are not its rewards, as sft.py holds the SFT recipe's: the multiple-choice rows (any
published layout, file, folder or ModelScope), the evaluation items dropped from them, the held-out questions, the
prompts per mode; the held-out measurement before and after training and the per-step history."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import adherence, benchmarks, chat, mcq
from .. import rows as medsft_rows
from ..files import MedsftError, iter_jsonl
from ..generate import generate
from ..models import is_hub_id


# --- multiple-choice rows ---------------------------------------------------------------------------------------
def read_rows(dataset, revision: str = "") -> tuple[list[dict], list[dict]]:
    """(rows, bad): every valid row (``mcq.parse_record``: any published layout) of a file, a folder of them or a
    ModelScope dataset (``rows.read_records`` / ``rows.read_hub``), with its ``where`` and ``id``; each bad row's
    where and reason."""
    src = Path(str(dataset)).expanduser()
    if src.exists():
        records = medsft_rows.read_records(src)
    elif is_hub_id(str(dataset)):
        records = medsft_rows.read_hub(str(dataset), split="train", revision=revision, fix="pass a local file instead")
    else:
        raise MedsftError(f"--dataset={dataset}: no such file or folder, and not a ModelScope id (org/name)")
    rows, bad = [], []
    for where, rec in records:
        got = rec if isinstance(rec, str) else mcq.parse_record(rec)
        if isinstance(got, str):
            bad.append({"where": where, "reason": got})
            print(f"{where}: {got}; row skipped")
            continue
        got["id"] = hashlib.sha256(json.dumps([got["question"], got["choices"]], ensure_ascii=False)
                                   .encode()).hexdigest()[:16]
        rows.append({**got, "where": where})
    if not rows:
        raise MedsftError(f"--dataset={dataset}: no valid multiple-choice rows ({len(bad)} bad, listed above)")
    return rows, bad


# --- evaluation overlap -----------------------------------------------------------------------------------------
def eval_keys(eval_data: str, eval_benchmarks: str, subjects: str) -> tuple[dict[str, str], dict]:
    """The keys (``benchmarks.suite_keys``, strict) of every item measured later, and how many items each source
    gave: data.py's test split and every item of benchmark.py's benchmarks (not only a sample)."""
    keys, sources = {}, {}
    if eval_data:
        path = Path(eval_data)
        if not path.is_file():
            raise MedsftError(f"--eval_data={eval_data}: no such file (data.py writes data/test.jsonl); pass "
                              "--eval_data= to check nothing")
        keys = {mcq.question_key(obj["question"]): str(path) for _, obj, err in iter_jsonl(path)
                if not err and isinstance(obj.get("question"), str)}
        sources[str(path)] = len(keys)
    suite = benchmarks.parse_suite(eval_benchmarks)
    try:
        found, counts, _ = benchmarks.suite_keys(suite, strict=True,
                                                 subjects=[s.strip() for s in subjects.split(",") if s.strip()])
    except MedsftError as e:
        raise MedsftError(f"--eval_benchmarks: {e}; RL must not train on what benchmark.py scores: pass the "
                          "benchmarks you will score (name=file or folder), or --eval_benchmarks= to check "
                          "none") from None
    return {**found, **keys}, {**sources, **{f"{b}={suite[b]}": n for b, n in counts.items()}}


# --- prompts ----------------------------------------------------------------------------------------------------
def mc_question(row: dict) -> str:
    """The user turn: benchmark.py's multiple-choice prompt (``mcq.prompt``), so RL trains what it measures."""
    return mcq.prompt(row)


def split_heldout(rows: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, heldout): whole questions (``mcq.question_key``: one question in other option orders or spellings
    stays on one side): ``n`` questions chosen by a hash of (seed, question), with all their rows; the same on every
    run and resume."""
    keys = [mcq.question_key(r["question"]) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (hashlib.sha256(f"{seed}:held:{keys[i]}".encode()).hexdigest(),
                                                    rows[i]["id"]))
    held = set(list(dict.fromkeys(keys[i] for i in order))[:n])
    return [r for r, k in zip(rows, keys) if k not in held], [r for r, k in zip(rows, keys) if k in held]


def prompt_rows(tokenizer, rows: list[dict], no_think_ratio: float, seed: int) -> list[dict]:
    """The GRPO dataset: each row's prompt as text rendered with the project's chat format in its mode
    (``chat.example_modes``: seeded per row id). Text, not messages: TRL's chat_template_kwargs is one setting for
    every prompt, so enable_thinking could not vary per row; TRL tokenizes the text, which equals
    ``chat.prompt_ids`` for rows without control tokens (``parse_row`` rejects those)."""
    modes = chat.example_modes([r["id"] for r in rows], no_think_ratio, seed)
    return [{"prompt": chat.prompt_text(tokenizer, mc_question(r), mode=m), "gold": r["gold"], "mode": m,
             "n_options": len(r["choices"]), "id": r["id"]} for r, m in zip(rows, modes)]


# --- results ----------------------------------------------------------------------------------------------------
_STEP_KEYS = ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "completions/clipped_ratio",
             "frac_reward_zero_std", "loss", "learning_rate", "grad_norm")


def step_history(log_history: list[dict], reward_names) -> list[dict]:
    """Per logged step: each reward's mean and std, KL, completion length, clipped share (None when absent)."""
    keys = [f"rewards/{name}/{s}" for name in reward_names for s in ("mean", "std")] + list(_STEP_KEYS)
    return [{"step": e["step"], **{k.replace("rewards/", "").replace("completions/", "completion_").replace("/", "_"):
                                   e.get(k) for k in keys}}
            for e in log_history if "step" in e and any(k.startswith("rewards/") for k in e)]


def generation_settings(model, cfg: dict) -> dict:
    """temperature / top_p / top_k: the constants when set, else the model's generation_config (TRL would use its
    own 1.0 / 1.0 / 0 otherwise)."""
    gc = model.generation_config
    pick = lambda name, default: cfg[name.upper()] if cfg[name.upper()] is not None else (  # noqa: E731
        getattr(gc, name, None) if getattr(gc, name, None) is not None else default)
    return {"temperature": float(pick("temperature", 1.0)), "top_p": float(pick("top_p", 1.0)),
            "top_k": int(pick("top_k", 0))}


def heldout_scores(model, tokenizer, rows: list[dict], cfg: dict, sampling: dict, when: str,
                   correct) -> tuple[dict, list]:
    """Each held-out row answered in all three modes, sampled as in training (seeded): the mean of ``correct(output,
    gold, mode, finished, n_options)`` (the script's correctness reward; overall and per mode) and the shape
    adherence per mode, plus the completions; (None, []) for no rows."""
    if not rows:
        return None, []
    pairs = [(r, m) for r in rows for m in chat.MODES]
    results = generate(model, tokenizer, [mc_question(r) for r, _ in pairs], modes=[m for _, m in pairs],
                       max_new_tokens=cfg["MAX_COMPLETION_LENGTH"], do_sample=True, seed=cfg["SEED"],
                       batch_size=cfg["EVAL_BATCH_SIZE"], progress=False, **sampling)
    done = [{"when": when, "id": r["id"], "mode": m, "gold": r["gold"], "output": res["output"],
             "finished": res["finished"], "new_tokens": res["new_tokens"],
             "correct": correct(res["output"], r["gold"], m, res["finished"], len(r["choices"]))}
            for (r, m), res in zip(pairs, results)]
    shapes = adherence.measure({m: [d for d in done if d["mode"] == m] for m in chat.MODES})
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"n_rows": len(rows), "correct": mean([d["correct"] for d in done]),
            "by_mode": {m: {"correct": mean([d["correct"] for d in done if d["mode"] == m]),
                            "adherence": shapes[m]["rate"], "shapes": shapes[m]["shapes"]} for m in chat.MODES}}, done


def heldout_change(before_rows: list[dict], after_rows: list[dict]) -> dict:
    """The held-out correctness before and after on the same (prompt, mode) pairs: each with its 95% Wilson
    interval, and the exact McNemar test of the pairs that changed."""
    before = {(r["id"], r["mode"]): r["correct"] for r in before_rows}
    pairs = [(before[k], r["correct"]) for r in after_rows if (k := (r["id"], r["mode"])) in before]
    b, c = sum(bool(x and not y) for x, y in pairs), sum(bool(y and not x) for x, y in pairs)
    ci = lambda k: [round(v, 4) for v in benchmarks.wilson(int(k), len(pairs))]  # noqa: E731
    return {"n": len(pairs), "before_ci95": ci(sum(x for x, _ in pairs)), "after_ci95": ci(sum(y for _, y in pairs)),
            "worse": b, "better": c, "p": benchmarks.mcnemar(b, c)}
