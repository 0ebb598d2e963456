"""Several seeds of demo/grpo.sh side by side: per seed the held-out reward before and after GRPO, the held-out set's
majority-letter floor, the paired McNemar p, adherence after in each mode and the train prompts' correctness over the
first and last 20 steps; then the mean and standard deviation over seeds. Reads results/train_grpo.json,
results/grpo_heldout.jsonl and output/grpo/train_config.json of each run folder given; writes nothing.

    for s in 42 1 2 3 4; do SEED=$s RUN_DIR=runs/grpo-seed$s bash demo/grpo.sh; done   # ~15 min each on 2 cores
    python demo/grpo_seeds.py runs/grpo-seed*
"""

import json
import statistics
import sys
from collections import Counter
from pathlib import Path

MODES = ("think", "no_think_soft", "no_think_hard")


def one(run: Path) -> dict:
    res = json.loads((run / "results" / "train_grpo.json").read_text(encoding="utf-8"))
    h = res["heldout"]
    golds = Counter(json.loads(line)["gold"] for line in
                    (run / "results" / "grpo_heldout.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
    train = [s["correct_mean"] for s in res["steps"] if s.get("correct_mean") is not None]
    seed = json.loads((run / "output" / "grpo" / "train_config.json").read_text(encoding="utf-8"))["SEED"]
    return {"seed": seed, "before": h["before"]["correct"],
            "after": h["after"]["correct"], "floor": max(golds.values()) / sum(golds.values()), "p": h["change"]["p"],
            "adherence": [h["after"]["by_mode"][m]["adherence"] for m in MODES],
            "train_first": statistics.fmean(train[:20]), "train_last": statistics.fmean(train[-20:])}


def main() -> None:
    runs = [Path(a) for a in sys.argv[1:]]
    if not runs:
        sys.exit(__doc__)
    rows = []
    for run in runs:
        try:
            rows.append(one(run))
        except (OSError, KeyError, ValueError) as e:
            sys.exit(f"error: {run}: no finished demo/grpo.sh run there ({type(e).__name__}: {e}); run it first")
    print("| seed | held-out before | after | floor | McNemar p | adherence after (think / soft / hard) | "
          "train prompts, first 20 steps | last 20 |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['before']:.2f} | {r['after']:.2f} | {r['floor']:.2f} | {r['p']:.2g} | "
              + " / ".join(f"{a:.2f}" for a in r["adherence"]) + f" | {r['train_first']:.2f} | {r['train_last']:.2f} |")
    if len(rows) > 1:
        stat = lambda k: (statistics.fmean(r[k] for r in rows), statistics.stdev(r[k] for r in rows))  # noqa: E731
        for r in rows:
            r["change"], r["over_floor"] = r["after"] - r["before"], r["after"] - r["floor"]
        print(f"\nover {len(rows)} seeds (mean ± sd): " + ", ".join(
            f"{name} {m:+.2f} ± {s:.2f}" if name in ("change", "after - floor") else f"{name} {m:.2f} ± {s:.2f}"
            for name, (m, s) in (("before", stat("before")), ("after", stat("after")), ("floor", stat("floor")),
                                 ("change", stat("change")), ("after - floor", stat("over_floor")),
                                 ("train first 20", stat("train_first")), ("train last 20", stat("train_last")))))


if __name__ == "__main__":
    main()
