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
