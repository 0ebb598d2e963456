"""The GRPO CPU demo's rows (demo/grpo_rows.py): held-out prompts never reach training, the shape warm-up is blind
to the gold letter, the gold warm-up is one pass over the train prompts' letters, same seed same bytes; and
demo/grpo.sh parses. (The demo itself takes minutes: `bash demo/grpo.sh`.)"""

import json
import subprocess
from collections import Counter
from pathlib import Path

from medsft.training import grpo

from conftest import run_script

ROOT = Path(__file__).resolve().parent.parent


def _jsonl(path):
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()]


def _rows(tmp_path, name, *args):
    out, warm, gold = (tmp_path / name / d for d in ("data", "warm", "gold"))
    run_script("demo/grpo_rows.py", f"--rows={ROOT / 'demo' / 'grpo_mcq.jsonl'}", f"--out_dir={out}",
               f"--warm_dir={warm}", f"--gold_dir={gold}", *args)
    return out, warm, gold


def test_demo_mcq_rows_are_valid_and_balanced():
    rows, bad = grpo.read_rows(ROOT / "demo" / "grpo_mcq.jsonl")
    assert not bad and len(rows) >= 24 and all(len(r["choices"]) == 4 and not r["multi"] for r in rows)
    golds = Counter(r["gold"] for r in rows)
    assert set(golds) == set("ABCD") and max(golds.values()) - min(golds.values()) <= 1  # no letter to guess


def test_heldout_prompts_never_train_and_the_warm_ups_are_what_they_say(tmp_path):
    out, warm, gold = _rows(tmp_path, "a", "--heldout=9")
    mc, _ = grpo.read_rows(out / "mcq.jsonl")
    train, held = grpo.split_heldout(mc, 9, 42)  # what train_grpo.py holds out with the same seed
    assert sorted(json.loads((out / "heldout_ids.json").read_text())) == sorted(r["id"] for r in held)
    assert len(held) == 9 * 6 and len(mc) == 6 * len(_jsonl(ROOT / "demo" / "grpo_mcq.jsonl"))
    assert not {r["question"] for r in held} & {r["question"] for r in train}  # no held-out question in any order
    by_question = {}
    for r in mc:  # "distractors": the gold option keeps its letter in every order of a question
        by_question.setdefault(r["question"], set()).add((r["gold"], r["choices"]["ABCD".index(r["gold"])]))
    assert all(len(v) == 1 for v in by_question.values())
    warm_rows = _jsonl(warm / "train.jsonl") + _jsonl(warm / "val.jsonl")
    held_prompts = {grpo.mc_question(r) for r in held}
    train_prompts = {grpo.mc_question(r) for r in train}
    assert not held_prompts & {w["question"] for w in warm_rows}
    assert {w["question"] for w in warm_rows} == train_prompts
    # every train prompt answers each letter once in every mode: the warm-up's best fit is uniform, whatever the gold
    per = Counter((w["question"], w["mode"], w["answer"]) for w in warm_rows)
    assert set(per.values()) == {1} and len(per) == len(train_prompts) * 3 * 4
    assert {w["answer"] for w in warm_rows} == {f"答案：{x}" for x in "ABCD"}
    assert all(bool(w["think"]) == (w["mode"] == "think") for w in warm_rows)
    # the gold warm-up: each train prompt once per mode with its own gold letter, no held-out prompt
    gold_rows = _jsonl(gold / "train.jsonl") + _jsonl(gold / "val.jsonl")
    gold_of = {grpo.mc_question(r): r["gold"] for r in train}
    assert sorted((g["question"], g["mode"]) for g in gold_rows) == sorted(
        (q, m) for q in gold_of for m in ("think", "no_think_soft", "no_think_hard"))
    assert all(g["answer"] == f"答案：{gold_of[g['question']]}" for g in gold_rows)


def test_same_seed_same_bytes(tmp_path):
    a, wa, ga = _rows(tmp_path, "a", "--heldout=9")
    b, wb, gb = _rows(tmp_path, "b", "--heldout=9")
    for x, y in ((a / "mcq.jsonl", b / "mcq.jsonl"), (wa / "train.jsonl", wb / "train.jsonl"),
                 (ga / "train.jsonl", gb / "train.jsonl"),
                 (a / "heldout_ids.json", b / "heldout_ids.json")):
        assert x.read_bytes() == y.read_bytes()


def test_grpo_sh_parses():
    subprocess.run(["bash", "-n", str(ROOT / "demo" / "grpo.sh")], check=True)


def test_grpo_seeds_summarises_runs_with_mean_and_spread(tmp_path):
    """demo/grpo_seeds.py on two made-up finished runs: each seed's row, then mean ± sd over seeds."""
    import sys

    def fake_run(name, seed, before, after, golds, train):
        run = tmp_path / name
        (run / "results").mkdir(parents=True)
        (run / "output" / "grpo").mkdir(parents=True)
        (run / "output" / "grpo" / "train_config.json").write_text(json.dumps({"SEED": seed}))
        by_mode = {m: {"adherence": 1.0, "correct": after} for m in ("think", "no_think_soft", "no_think_hard")}
        (run / "results" / "train_grpo.json").write_text(json.dumps({
            "heldout": {"before": {"correct": before}, "after": {"correct": after, "by_mode": by_mode},
                        "change": {"p": 0.5}},
            "steps": [{"correct_mean": x} for x in train]}))
        (run / "results" / "grpo_heldout.jsonl").write_text(
            "".join(json.dumps({"gold": g}) + "\n" for g in golds))
        return run

    a = fake_run("a", 1, 0.30, 0.20, "AAB", [0.2] * 20 + [0.6] * 20)  # floor 2/3
    b = fake_run("b", 2, 0.10, 0.40, "ABCD", [0.4] * 40)  # floor 1/4
    out = subprocess.run([sys.executable, str(ROOT / "demo" / "grpo_seeds.py"), str(a), str(b)], capture_output=True,
                         text=True, check=True).stdout
    assert "| 1 | 0.30 | 0.20 | 0.67 |" in out and "| 2 | 0.10 | 0.40 | 0.25 |" in out
    # changes -0.10 and +0.30: mean +0.10, sd 0.28; train first 20 steps 0.2 and 0.4, last 20 0.6 and 0.4
    assert "before 0.20 ± 0.14" in out and "change +0.10 ± 0.28" in out and "train last 20 0.50 ± 0.14" in out
    missing = subprocess.run([sys.executable, str(ROOT / "demo" / "grpo_seeds.py"), str(tmp_path / "none")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and str(tmp_path / "none") in missing.stderr and "Traceback" not in missing.stderr
