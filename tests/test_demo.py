"""The CPU learning demo: the `small` spec builds deterministically from the demo data alone, and demo/learn.sh
parses. (The demo itself takes minutes: run `bash demo/learn.sh`.)"""

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from oracles import assert_exit, raises_naming

from medsft import models

ROOT = Path(__file__).resolve().parent.parent


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_small_builds_identically_and_ignores_medsft_tokenizer(monkeypatch, tmp_path):
    # a bogus MEDSFT_TOKENIZER would make tiny fail: small must not even look at it
    monkeypatch.setenv("MEDSFT_TOKENIZER", str(tmp_path / "no-such-tokenizer"))
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "a"))
    d1 = models.resolve_model("small")
    assert models.resolve_model("small") == d1
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "b"))
    d2 = models.resolve_model("small")
    assert d2 != d1
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha(d1 / name) == sha(d2 / name), name


def test_small_has_the_chosen_size(monkeypatch, tmp_path):
    from transformers import AutoConfig

    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path))
    monkeypatch.delenv("MEDSFT_TOKENIZER", raising=False)
    cfg = AutoConfig.from_pretrained(models.resolve_model("small"))
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (4, 128, 4)
    assert cfg.tie_word_embeddings is False and cfg.vocab_size < 10_000  # the demo tokenizer, not 151k Qwen3
    tok = models.load_tokenizer("small")
    assert tok.chat_template and len(tok) <= cfg.vocab_size


def test_small_without_demo_data_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path))
    monkeypatch.setattr(models.demo_builders(), "DEMO_DATA", tmp_path / "missing.jsonl")  # where it is read
    with raises_naming(models.MedsftError, tmp_path / "missing.jsonl", "git checkout -- demo/medical_demo.jsonl"):
        models.resolve_model("small")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_learn_sh_parses():
    subprocess.run(["bash", "-n", str(ROOT / "demo" / "learn.sh")], check=True)


def _augment_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_augment", ROOT / "demo" / "augment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sentences_split_at_full_stops_and_line_breaks():
    sentences = _augment_module().sentences
    assert sentences("甲。乙\n丙。丁") == ["甲。", "乙", "丙。", "丁"]
    assert sentences("。\n\n") == ["。"] and sentences("") == []


def _segments(text: str, pool: set) -> bool:
    """Can ``text`` be cut into a run of ``pool`` strings?"""
    ok = [True] + [False] * len(text)
    for end in range(1, len(text) + 1):
        ok[end] = any(ok[start] and text[start:end] in pool for start in range(end))
    return ok[-1]


def test_augment_keeps_every_row_in_every_mode_and_drills_the_tags(tmp_path):
    """End to end on the demo split: every real row in each of its modes, then the drill rows, whose thinks and
    answers are runs of sentences from one pool (so a sentence is no cue to the side of </think>); same seed, same
    bytes; and prepare_examples trains each row in its mode."""
    import json

    from medsft.training.sft import prepare_examples

    from conftest import run_script

    run_script("data.py", f"--dataset={ROOT / 'demo' / 'medical_demo.jsonl'}", f"--data_dir={tmp_path / 'data'}")
    rows = [json.loads(x) for x in (tmp_path / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    rows.append({**rows[0], "id": "no-think-row", "think": ""})
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                   encoding="utf-8")
    args = [f"--data_dir={tmp_path / 'data'}", "--drill_rows=300"]
    run_script("demo/augment.py", *args, f"--out_dir={tmp_path / 'aug'}")
    run_script("demo/augment.py", *args, f"--out_dir={tmp_path / 'again'}")
    run_script("demo/augment.py", *args, f"--out_dir={tmp_path / 'seed1'}", "--seed=1")
    train = tmp_path / "aug" / "train.jsonl"
    assert train.read_bytes() == (tmp_path / "again" / "train.jsonl").read_bytes()
    assert train.read_bytes() != (tmp_path / "seed1" / "train.jsonl").read_bytes()
    assert (tmp_path / "aug" / "val.jsonl").read_bytes() == (tmp_path / "data" / "val.jsonl").read_bytes()
    out = [json.loads(x) for x in train.read_text(encoding="utf-8").splitlines()]
    real, drill = out[:-300], out[-300:]
    for r in rows:
        modes = sorted(x["mode"] for x in real if x["id"].split("#")[0] == r["id"]
                       and (x["think"], x["answer"]) == (r["think"], r["answer"]))
        assert modes == sorted(["no_think_soft", "no_think_hard"] + (["think"] if r["think"] else [])), r["id"]
    assert len(real) == 3 * len(rows) - 1
    split = _augment_module().sentences
    think_side = {t for r in rows for t in split(r["think"])}
    answer_side = {t for r in rows for t in split(r["answer"])}
    for x in drill:
        assert x["think"] and x["answer"] and _segments(x["think"], think_side | answer_side), x
        assert _segments(x["answer"], think_side | answer_side), x
    # the drill is the point: answers made of think sentences, and thinks of answer sentences
    assert any(t in x["answer"] for x in drill for t in think_side - answer_side if len(t) > 8)
    assert any(t in x["think"] for x in drill for t in answer_side - think_side if len(t) > 8)
    counts = {m: sum(r["mode"] == m for r in out) for m in ("think", "no_think_hard", "no_think_soft")}
    assert counts["think"] > counts["no_think_soft"] > len(rows) and counts["no_think_hard"] > len(rows)
    tok = models.load_tokenizer("tiny")
    _, stats = prepare_examples(train, tok, 4096, no_think_ratio=0.0)
    assert stats["modes"] == counts and stats["kept"] == len(out)


def test_augment_refuses_bad_counts_with_the_fix(tmp_path):
    from conftest import run_script

    proc = run_script("demo/augment.py", f"--data_dir={tmp_path}", "--think_sentences=0", check=False)
    assert_exit(proc, 1, tmp_path / "train.jsonl", "data.py")  # the file, and what makes it
    run_script("data.py", f"--dataset={ROOT / 'demo' / 'medical_demo.jsonl'}", f"--data_dir={tmp_path / 'data'}")
    proc = run_script("demo/augment.py", f"--data_dir={tmp_path / 'data'}", "--think_sentences=0", check=False)
    assert_exit(proc, 1, "--think_sentences=0", ">= 1")  # the value, and the least allowed
