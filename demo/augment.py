"""Demo only — the 32 train rows of the CPU demo → each row in all three thinking modes, plus format-drill rows.

Reads   DATA_DIR/train.jsonl and val.jsonl (written by data.py).
Writes  OUT_DIR/train.jsonl (rows with a `mode` field, which train.py honours), OUT_DIR/val.jsonl (a copy) and
        OUT_DIR/augment_config.json (the resolved constants).

    python demo/augment.py                        # data/ -> data_aug/, as demo/learn.sh runs it

Why: a model trained from random weights on 32 rows memorises them, and learns where a think ends from the text
itself: this sentence closed a think in training, that one ended an answer. On an unseen question it stitches
sentences together, and then closes a think in the middle of its answer (a second `</think>`) or ends the turn inside
its think. So beside the real rows (each in every mode) come DRILL_ROWS rows whose think and answer are random runs of
sentences drawn from ONE pool, every think and answer sentence of the train rows: no sentence says which side of
`</think>` it is on, only the tags do, and that is what the model must learn to follow. Measured (learning rate 3e-3,
16 held-out answers per mode, issue 13 notes): with the drill every answer had the right shape in all three modes;
with sentence-cut copies of the real rows instead, 0.81 / 0.81 / 1.00, the misses a second `</think>` or a think
never closed. What the drill teaches is the shapes the three switches ask for, no medical skill (see the demo's
results README). Not for real training: a real model has seen language, and real data has thousands of rows.
"""

import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: medsft is beside demo/

from medsft.chat import MODES  # noqa: E402 - think, no_think_soft, no_think_hard
from medsft.config import configure  # noqa: E402
from medsft.files import MedsftError, dumps_json, dumps_jsonl, publish_files, read_jsonl  # noqa: E402

DATA_DIR = "data"  # folder with train.jsonl and val.jsonl (data.py's output)
OUT_DIR = "data_aug"  # folder for the augmented train.jsonl, val.jsonl and augment_config.json
DRILL_ROWS = 1500  # format-drill rows added to the real ones (0 = none)
THINK_SENTENCES = 6  # a drill row's think is 1..this many pool sentences
ANSWER_SENTENCES = 4  # a drill row's answer is 1..this many pool sentences
SEED = 0  # drill rows' seed: same rows + same seed => byte-identical output

_SENTENCE = re.compile(r"[^。\n]*[。\n]")  # a sentence ends at 。 or a line break
# drill modes, thinking twice as often: it is the switch with the most to learn (where to close)
_DRILL_MODES = ("think", *MODES)


def sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped, non-empty."""
    return [s.strip() for s in _SENTENCE.findall(text + "\n") if s.strip()]


def augment(rows: list[dict], drill_rows: int, think_sentences: int, answer_sentences: int, seed: int) -> list[dict]:
    """Each row in the three modes (rows with an empty think never train as thinking), then ``drill_rows`` rows whose
    think and answer are runs of sentences drawn from one pool of all thinks' and answers' sentences."""
    def row_id(r):
        return str(r.get("id") or r["question"])

    out = [{**r, "id": f"{row_id(r)}#{m}", "mode": m}
           for r in rows for m in MODES if m != "think" or r["think"].strip()]
    pool = [s for field in ("think", "answer") for r in rows for s in sentences(r[field])]
    rng = random.Random(seed)
    for i in range(drill_rows if pool else 0):
        r, mode = rng.choice(rows), rng.choice(_DRILL_MODES)
        think = "".join(rng.choice(pool) for _ in range(rng.randint(1, think_sentences)))
        answer = "".join(rng.choice(pool) for _ in range(rng.randint(1, answer_sentences)))
        out.append({**r, "id": f"{row_id(r)}#drill{i}", "think": think, "answer": answer, "mode": mode})
    return out


def main():
    cfg = configure(globals())
    src = Path(DATA_DIR)
    for name in ("train.jsonl", "val.jsonl"):
        if not (src / name).is_file():
            raise MedsftError(f"{src / name} not found: run data.py first (it writes {DATA_DIR}/{name})")
    rows = read_jsonl(src / "train.jsonl")
    for i, r in enumerate(rows, 1):
        if not all(isinstance(r.get(k), str) for k in ("question", "think", "answer")):
            raise MedsftError(f"{src / 'train.jsonl'}:{i}: needs question, think and answer strings; re-run data.py")
    if DRILL_ROWS < 0 or THINK_SENTENCES < 1 or ANSWER_SENTENCES < 1:
        raise MedsftError(f"--drill_rows={DRILL_ROWS} --think_sentences={THINK_SENTENCES} "
                          f"--answer_sentences={ANSWER_SENTENCES}: drill_rows >= 0, the sentence counts >= 1")
    out = augment(rows, DRILL_ROWS, THINK_SENTENCES, ANSWER_SENTENCES, SEED)
    files = {"train.jsonl": dumps_jsonl(out).encode("utf-8"),
             "val.jsonl": (src / "val.jsonl").read_bytes(),
             "augment_config.json": dumps_json(cfg).encode("utf-8")}
    written = publish_files(OUT_DIR, files, writer="demo/augment.py")
    modes = {m: sum(r["mode"] == m for r in out) for m in MODES}
    print(f"{len(rows)} train rows -> {len(out)} examples: {modes}")
    print("wrote " + " ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
