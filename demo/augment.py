"""Demo only — the 32 train rows of the CPU demo → every row in all three thinking modes, plus sentence-cut copies.

Reads   DATA_DIR/train.jsonl and val.jsonl (written by data.py).
Writes  OUT_DIR/train.jsonl (rows with a `mode` field, which train.py honours), OUT_DIR/val.jsonl (a copy) and
        OUT_DIR/augment_config.json (the resolved constants).

    python demo/augment.py                        # data/ -> data_aug/, as demo/learn.sh runs it

Why: a model trained from random weights on 32 rows memorises them; on an unseen question it babbles, and with only
32 examples of where a think ends it never learns to close one (it ends the turn inside the think). So each row also
trains as thinking rows whose think stops after its 1st, 2nd, ... sentence (every sentence end is a place where
`</think>` may come; these rows appear twice, as the think switch is the hardest to learn), and as
enable_thinking=False rows whose answer stops after each sentence (that switch has no cue in the question, and without
these rows the model wanders back into think-like text and closes a second think). The shapes the three switches ask
for are what this teaches; no medical skill is (see the demo's results README). Not for real training: a real model
has seen language, and real data has thousands of rows.
"""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: medsft is beside demo/

from medsft.chat import MODES  # noqa: E402
from medsft.config import configure  # noqa: E402
from medsft.io import MedsftError, dumps_json, dumps_jsonl, publish_files, read_jsonl  # noqa: E402

DATA_DIR = "data"  # folder with train.jsonl and val.jsonl (data.py's output)
OUT_DIR = "data_aug"  # folder for the augmented train.jsonl, val.jsonl and augment_config.json
THINK_COPIES = 2  # times each thinking row and its think cuts appear (the think switch is the hardest to learn)
THINK_CUTS = True  # also train each row as thinking rows whose think stops after each of its sentences
ANSWER_CUTS = "no_think_hard"  # modes whose rows also train with answers cut after each sentence: no_think_hard, no_think_soft or both (comma-separated); "" = none

_SENTENCE = re.compile(r"[^。\n]*[。\n]")  # a sentence ends at 。 or a line break


def cuts(text: str) -> list[str]:
    """The proper prefixes of ``text`` that end at a sentence end, stripped, non-empty, shortest first."""
    parts = _SENTENCE.findall(text + "\n")
    out = dict.fromkeys("".join(parts[:k]).strip() for k in range(1, len(parts)))  # "。\n" ends one sentence
    return [t for t in out if t and t != text.strip()]


def augment(rows: list[dict], think_copies: int, think_cuts: bool, answer_cuts: tuple) -> list[dict]:
    """Each row in the three modes (thinking ``think_copies`` times), then its think cuts (each ``think_copies``
    times), then its answer cuts in the ``answer_cuts`` modes. Rows with an empty think never train as thinking."""
    full, thinks, answers = [], [], []
    for r in rows:
        base = str(r.get("id") or r["question"])
        has_think = bool(r["think"].strip())
        modes = (["think"] * think_copies if has_think else []) + ["no_think_soft", "no_think_hard"]
        full += [{**r, "id": f"{base}#{m}{i}", "mode": m} for i, m in enumerate(modes)]
        if think_cuts and has_think:
            thinks += [{**r, "id": f"{base}#think{i}.{k}", "think": t, "mode": "think"}
                       for i in range(think_copies) for k, t in enumerate(cuts(r["think"]), 1)]
        answers += [{**r, "id": f"{base}#{m}.{k}", "answer": a, "mode": m}
                    for m in answer_cuts for k, a in enumerate(cuts(r["answer"]), 1)]
    return full + thinks + answers


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
    answer_modes = tuple(m.strip() for m in ANSWER_CUTS.split(",") if m.strip())
    bad = [m for m in answer_modes if m not in MODES or m == "think"]
    if bad or THINK_COPIES < 1:
        raise MedsftError(f"--answer_cuts={ANSWER_CUTS!r} --think_copies={THINK_COPIES}: answer cuts are for "
                          "no_think_soft and/or no_think_hard (comma-separated, or empty); think_copies >= 1")
    out = augment(rows, THINK_COPIES, THINK_CUTS, answer_modes)
    files = {"train.jsonl": dumps_jsonl(out).encode("utf-8"),
             "val.jsonl": (src / "val.jsonl").read_bytes(),
             "augment_config.json": dumps_json(cfg).encode("utf-8")}
    written = publish_files(OUT_DIR, files, writer="demo/augment.py")
    modes = {m: sum(r["mode"] == m for r in out) for m in MODES}
    print(f"{len(rows)} train rows -> {len(out)} examples: {modes}")
    print("wrote " + " ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
