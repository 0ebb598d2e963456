"""Model specs: tiny is deterministic and reloads identically; hub ids and bad dirs fail fast and clearly."""

import hashlib

import pytest
import torch

from medsft import models
from medsft.io import MedsftError


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_is_created_once_and_reloads_identically(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "a"))
    d1 = models.resolve_model("tiny")
    assert models.resolve_model("tiny") == d1  # second call reuses it
    m1 = models.load_model("tiny", device="cpu")
    assert type(m1).__name__ == "Qwen3ForCausalLM"
    # an independent cache gets byte-identical weights: every stage sees the same tiny model
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "b"))
    d2 = models.resolve_model("tiny")
    assert d2 != d1 and sha(d1 / "model.safetensors") == sha(d2 / "model.safetensors")
    m2 = models.load_model(d2, device="cpu")
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_tiny_forward_pass_and_tokenizer():
    tok = models.load_tokenizer("tiny")
    model = models.load_model("tiny", device="cpu")
    ids = tok("头痛怎么办？", return_tensors="pt")["input_ids"]
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert len(tok) <= model.config.vocab_size and torch.isfinite(out.loss)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    gc = model.generation_config
    assert tok.convert_tokens_to_ids("<|im_end|>") in gc.eos_token_id


def test_tiny_uses_medsft_tokenizer(monkeypatch, tmp_path, real_tokenizer_dir):
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path))
    monkeypatch.setenv("MEDSFT_TOKENIZER", str(real_tokenizer_dir))
    assert len(models.load_tokenizer("tiny")) == 151669


def test_tiny_without_env_builds_project_tokenizer(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path))
    monkeypatch.delenv("MEDSFT_TOKENIZER", raising=False)
    tok = models.load_tokenizer("tiny")
    assert len(tok) < 5000 and tok.chat_template and tok.convert_tokens_to_ids("<think>") != tok.unk_token_id


def test_bad_medsft_tokenizer_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSFT_TOKENIZER", str(tmp_path))
    with pytest.raises(MedsftError, match="MEDSFT_TOKENIZER"):
        models.resolve_model("tiny")


def test_hub_id_offline_fails_fast_with_local_hint(monkeypatch):
    monkeypatch.setattr(models, "_modelscope_reachable", lambda timeout=3.0: False)
    with pytest.raises(MedsftError, match="--model=/path/to"):
        models.resolve_model("Qwen/Qwen3-1.7B")


def test_dir_without_config_and_missing_path(tmp_path):
    with pytest.raises(MedsftError, match="not a model directory"):
        models.resolve_model(str(tmp_path))
    with pytest.raises(MedsftError, match="not found"):
        models.resolve_model(str(tmp_path / "nope" / "deeper"))


def test_base_model_of(tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny"}')
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "train_config.json").write_text('{"MODEL": "Qwen/Qwen3-1.7B"}')
    assert models.base_model_of(tmp_path / "lora") == "tiny"
    assert models.base_model_of(tmp_path / "full") == "Qwen/Qwen3-1.7B"
    assert models.base_model_of(tmp_path) is None


def test_a_cache_folder_without_config_is_not_a_model(tmp_path, monkeypatch):
    """modelscope returns the cache folder of a download that failed (only its .mdl marker): that is no model."""
    import modelscope

    from medsft import models
    from medsft.io import MedsftError

    (tmp_path / ".mdl").write_text("x")
    monkeypatch.setattr(modelscope, "snapshot_download", lambda spec, **kw: str(tmp_path))
    monkeypatch.setattr(models, "_modelscope_reachable", lambda *a, **k: False)
    with pytest.raises(MedsftError, match="cannot download 'Qwen/Qwen3-1.7B'"):
        models.download("Qwen/Qwen3-1.7B")
    (tmp_path / "config.json").write_text("{}")
    assert models.download("Qwen/Qwen3-1.7B") == tmp_path
