"""Demo only: demo/grpo_mcq.jsonl's 28 questions in several option orders, split into GRPO train and held-out prompts,
and the format warm-up rows (a RANDOM letter, never chosen by the gold one) that teach the answer shape.

Reads   ROWS (demo/grpo_mcq.jsonl: 28 four-option questions written for the demo topics, 7 answers per letter).
Writes  OUT_DIR/mcq.jsonl (the option orders of every question: train_grpo.py's DATASET, which holds HELDOUT of them
        out with the same SEED), OUT_DIR/heldout_ids.json (those held-out ids, to show they never train) and
        WARM_DIR/train.jsonl + val.jsonl (train.py's rows: the warm-up, built from the train orders only).

    python demo/grpo_rows.py --orders=distractors --heldout=56 --warm_per_mode=4     # as demo/grpo.sh runs it

ORDERS=all (24 orders): a held-out prompt puts the gold option at a letter the question never had in training, so
only picking the option TEXT and reading its letter off the prompt beats chance. ORDERS=distractors (6 orders, the
gold option keeps its letter): a held-out prompt is an unseen distractor order of a trained question, so a model
that memorised question -> letter passes; it measures that the reward moved the model, not reading.
Why the warm-up: the SFT model never saw a multiple-choice prompt and never writes 答案：X (measured on learn.sh's
checkpoint-400: 0 letters read in 224 sampled completions, three modes), so every GRPO group would score 0 and
carry no signal. The warm-up rows have a fixed think (THINK) and answer 答案：X with X drawn at random (PHRASE=true:
the answer first restates that random option): they teach the shape, never which option is right, so the warm-up
model scores ~ chance (0.25). Raising that is the reward's job, and what the demo measures.
"""

import itertools
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: medsft is beside demo/

import train_grpo as g  # noqa: E402
from medsft.chat import MODES  # noqa: E402
from medsft.config import configure  # noqa: E402
from medsft.files import MedsftError, dumps_jsonl, publish_files  # noqa: E402

ROWS = "demo/grpo_mcq.jsonl"  # the multiple-choice rows written for the demo
OUT_DIR = "grpo_data"  # mcq.jsonl (all orders) and heldout_ids.json
WARM_DIR = "grpo_warm"  # the warm-up rows for train.py (train.jsonl, val.jsonl)
HELDOUT = 96  # option orders held out (train_grpo.py's --heldout must be the same)
SEED = 42  # train_grpo.py's --seed (the held-out choice) and the warm-up's random picks
ORDERS = "all"  # all: the 24 option orders | distractors: the 6 orders that keep the gold option at its letter
THINK = "这是一道单项选择题，我逐一比较四个选项。"  # the warm-up's think (a fixed sentence: the warm-up teaches shape, not content)
PHRASE = False  # true: the warm-up answer restates the (random) option before its letter
WARM_PER_MODE = 1  # warm-up rows per train order and mode (each with its own random pick)
VAL_ROWS = 8  # warm-up rows kept aside as train.py's val split


def orders(row: dict, which: str = "all") -> list[dict]:
    """``row`` in all 24 option orders (or the 6 that keep the gold option's letter), the gold letter following it."""
    gold_text = row["choices"]["ABCD".index(row["gold"])]
    out = []
    for perm in itertools.permutations(row["choices"]):
        if which == "distractors" and perm.index(gold_text) != "ABCD".index(row["gold"]):
            continue
        out.append({"question": row["question"], **dict(zip("ABCD", perm)), "answer": "ABCD"[perm.index(gold_text)]})
    return out


def warm_row(row: dict, mode: str, rng: random.Random, rid: str) -> dict:
    """A warm-up example: restate a random option (not the gold one's share: uniform over the four), then its letter."""
    k = rng.randrange(4)
    letter, text = "ABCD"[k], row["choices"][k]
    pick = f"{text}，对应选项{letter}。"
    if mode == "think":
        think, answer = (pick if PHRASE else THINK), f"答案：{letter}"
    else:
        think, answer = "", (f"{pick}\n答案：{letter}" if PHRASE else f"答案：{letter}")
    return {"id": rid, "question": g.mc_question(row), "think": think, "answer": answer, "mode": mode}


def main():
    configure(globals())
    rows, bad = g.read_rows(ROWS)
    if bad:
        raise MedsftError(f"{ROWS}: {len(bad)} bad rows (listed above); fix them first")
    all_orders = [o for r in rows for o in orders(r, ORDERS)]
    files = {"mcq.jsonl": dumps_jsonl(all_orders).encode("utf-8")}
    written = publish_files(OUT_DIR, files, writer="demo/grpo_rows.py")
    mc, _ = g.read_rows(Path(OUT_DIR) / "mcq.jsonl")
    train, held = g.split_heldout(mc, HELDOUT, SEED)
    rng = random.Random(SEED)
    warm = [warm_row(r, m, rng, f"{r['id']}#{m}#{i}") for r in train for m in MODES for i in range(WARM_PER_MODE)]
    rng.shuffle(warm)
    files = {"train.jsonl": dumps_jsonl(warm[VAL_ROWS:]).encode("utf-8"),
             "val.jsonl": dumps_jsonl(warm[:VAL_ROWS]).encode("utf-8")}
    written += publish_files(WARM_DIR, files, writer="demo/grpo_rows.py")
    written += publish_files(OUT_DIR, {"heldout_ids.json": json.dumps(sorted(r["id"] for r in held)).encode()},
                             writer="demo/grpo_rows.py")
    print(f"{len(rows)} questions -> {len(mc)} option orders: {len(held)} held out, {len(train)} to train on; "
          f"{len(warm)} warm-up rows (random picks)")
    print("wrote " + " ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
