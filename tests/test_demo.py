"""The CPU learning demo: the `small` spec builds deterministically from the demo data alone, and demo/learn.sh
parses. (The demo itself takes minutes: run `bash demo/learn.sh`.)"""

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

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
    monkeypatch.setattr(models, "DEMO_DATA", tmp_path / "missing.jsonl")
    with pytest.raises(models.MedsftError, match="git checkout"):
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


def test_sentence_cuts_are_proper_prefixes_ending_at_a_sentence_end():
    cuts = _augment_module().cuts
    assert cuts("甲。乙\n丙。丁") == ["甲。", "甲。乙", "甲。乙\n丙。"]
    assert cuts("甲。乙。") == ["甲。"]  # the whole text is not a cut
    assert cuts("没有句号") == [] and cuts("") == []


def test_augment_puts_every_row_in_every_mode_and_train_py_reads_the_modes(tmp_path):
    """End to end on the demo split: augment.py's rows carry their mode, and prepare_examples trains each in it."""
    import json
    from collections import Counter

    from medsft.training import prepare_examples

    from conftest import run_script

    run_script("data.py", f"--dataset={ROOT / 'demo' / 'medical_demo.jsonl'}", f"--data_dir={tmp_path / 'data'}")
    rows = [json.loads(x) for x in (tmp_path / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    rows.append({**rows[0], "id": "no-think-row", "think": ""})
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                   encoding="utf-8")
    run_script("demo/augment.py", f"--data_dir={tmp_path / 'data'}", f"--out_dir={tmp_path / 'aug'}",
               "--think_copies=2", "--answer_cuts=no_think_soft,no_think_hard")
    out = [json.loads(x) for x in (tmp_path / "aug" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert (tmp_path / "aug" / "val.jsonl").read_bytes() == (tmp_path / "data" / "val.jsonl").read_bytes()
    by_q = {}
    for r in out:
        by_q.setdefault(r["id"].split("#")[0], []).append(r)
    for r in rows:
        mine = by_q[r["id"]]
        full = {x["mode"] for x in mine if x["think"] == r["think"] and x["answer"] == r["answer"]}
        assert full == {"no_think_soft", "no_think_hard"} | ({"think"} if r["think"] else set())
        for x in mine:
            assert r["think"].startswith(x["think"]) and r["answer"].startswith(x["answer"]) and x["answer"]
            assert x["think"] == r["think"] or (x["mode"] == "think" and x["answer"] == r["answer"] and x["think"])
            assert x["answer"] == r["answer"] or x["mode"] != "think"
        thinks = Counter(x["think"] for x in mine if x["mode"] == "think")
        assert set(thinks.values()) == ({2} if r["think"] else set()) and (len(thinks) > 2 or not r["think"])
    counts = {m: sum(r["mode"] == m for r in out) for m in ("think", "no_think_hard", "no_think_soft")}
    assert counts["think"] > 6 * len(rows) and counts["no_think_soft"] == counts["no_think_hard"] > 3 * len(rows)
    tok = models.load_tokenizer("tiny")
    _, stats = prepare_examples(tmp_path / "aug" / "train.jsonl", tok, 4096, no_think_ratio=0.0)
    assert stats["modes"] == counts and stats["kept"] == len(out)
