"""Demo only: demo/grpo_mcq.jsonl's 28 questions in their distractor orders, split into GRPO train and held-out
prompts, and the two warm-up sets train.py runs before GRPO.

Reads   ROWS (demo/grpo_mcq.jsonl: 28 four-option questions written for the demo topics, 7 answers per letter).
Writes  OUT_DIR/mcq.jsonl (every option order: train_grpo.py's DATASET, which holds HELDOUT of them out with the same
        SEED), OUT_DIR/heldout_ids.json (those ids), WARM_DIR/ and GOLD_DIR/ (train.jsonl + val.jsonl each, built
        from the train orders only).

    python demo/grpo_rows.py          # as demo/grpo.sh runs it

ORDERS=distractors (6 orders a question, the gold option keeps its letter): a held-out prompt is an unseen distractor
order of a trained question, so a model that learnt question -> letter passes; it measures that the reward moved
the model, not reading. ORDERS=all (24 orders) would ask for reading the option text.
Why a warm-up: the SFT model never saw a multiple-choice prompt and never writes 答案：X (0 letters read in 224
sampled completions), so every GRPO group would score 0 and carry no signal. WARM_DIR: every train prompt in every
mode answers each of its four letters once (a fixed think in thinking mode): it teaches the shape, and its best fit
is uniform over the letters whatever the gold one. GOLD_DIR: each train prompt once per mode with its gold letter,
trained for one pass: a weak preference for the right letter (measured: held-out 0.32 sampled, chance 0.25), as an
SFT model's partial knowledge is what RL sharpens; from the uniform model alone the reward mostly moved every
prompt's letter together (a letter that stops being sampled never comes back: docs/plans/issue-25-grpo.md).
"""

import itertools
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: medsft is beside demo/

from medsft.training import grpo  # noqa: E402
from medsft.chat import MODES  # noqa: E402
from medsft.config import configure  # noqa: E402
from medsft.files import MedsftError, dumps_jsonl, publish_files  # noqa: E402

ROWS = "demo/grpo_mcq.jsonl"  # the multiple-choice rows written for the demo
OUT_DIR = "grpo_data"  # mcq.jsonl (all orders) and heldout_ids.json
WARM_DIR = "grpo_warm"  # the shape warm-up for train.py: each letter once per prompt and mode
GOLD_DIR = "grpo_gold"  # the weak-preference warm-up for train.py: the gold letter once per prompt and mode
HELDOUT = 9  # questions held out with all their option orders (train_grpo.py's --heldout must be the same)
SEED = 42  # train_grpo.py's --seed (the held-out choice) and the warm-up rows' order
ORDERS = "distractors"  # distractors: the 6 orders that keep the gold option at its letter | all: the 24 orders
THINK = "这是一道单项选择题，我逐一比较四个选项。"  # the warm-up's think: a fixed sentence (shape, not content)
VAL_ROWS = 8  # warm-up rows kept aside as train.py's val split


def orders(row: dict, which: str = ORDERS) -> list[dict]:
    """``row`` in all 24 option orders (or the 6 that keep the gold option's letter), the gold letter following it."""
    gold_text = row["choices"]["ABCD".index(row["gold"])]
    out = []
    for perm in itertools.permutations(row["choices"]):
        if which == "distractors" and perm.index(gold_text) != "ABCD".index(row["gold"]):
            continue
        out.append({"question": row["question"], **dict(zip("ABCD", perm)), "answer": "ABCD"[perm.index(gold_text)]})
    return out


def warm_row(row: dict, mode: str, k: int, rid: str) -> dict:
    """A warm-up row answering option ``k`` in ``mode``'s shape: THINK (thinking mode only), then 答案：<letter>."""
    think = THINK if mode == "think" else ""
    return {"id": rid, "question": grpo.mc_question(row), "think": think, "answer": f"答案：{'ABCD'[k]}", "mode": mode}


def main():
    configure(globals())
    rows, bad = grpo.read_rows(ROWS)
    if bad:
        raise MedsftError(f"{ROWS}: {len(bad)} bad rows (listed above); fix them first")
    all_orders = [o for r in rows for o in orders(r, ORDERS)]
    files = {"mcq.jsonl": dumps_jsonl(all_orders).encode("utf-8")}
    written = publish_files(OUT_DIR, files, writer="demo/grpo_rows.py")
    mc, _ = grpo.read_rows(Path(OUT_DIR) / "mcq.jsonl")
    train, held = grpo.split_heldout(mc, HELDOUT, SEED)
    # every train prompt in every mode answers each of its four letters once: the best fit is uniform per prompt
    warm = [warm_row(r, m, k, f"{r['id']}#{m}#{k}") for r in train for m in MODES for k in range(4)]
    gold = [warm_row(r, m, "ABCD".index(r["gold"]), f"{r['id']}#{m}#gold") for r in train for m in MODES]
    for rows_out, folder in ((warm, WARM_DIR), (gold, GOLD_DIR)):
        random.Random(SEED).shuffle(rows_out)
        files = {"train.jsonl": dumps_jsonl(rows_out[VAL_ROWS:]).encode("utf-8"),
                 "val.jsonl": dumps_jsonl(rows_out[:VAL_ROWS]).encode("utf-8")}
        written += publish_files(folder, files, writer="demo/grpo_rows.py")
    written += publish_files(OUT_DIR, {"heldout_ids.json": json.dumps(sorted(r["id"] for r in held)).encode()},
                             writer="demo/grpo_rows.py")
    print(f"{len(rows)} questions -> {len(mc)} option orders: {len(held)} held out, {len(train)} to train on; "
          f"warm-up rows: {len(warm)} for the shape (each letter once per prompt and mode), {len(gold)} gold")
    print("wrote " + " ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
