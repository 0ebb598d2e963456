"""medsft.memory.grpo_estimate: train_grpo.py's GRPO step in TRL 1.16, per phase: the reference copy present only
with beta > 0 and full parameters, the KV cache of one generation batch against numbers worked out from config.json
and against the cache transformers' generate really holds, vLLM's share, monotonic growth, the bad batch refused."""

from __future__ import annotations

import json
import re

import pytest

from conftest import REAL_TOKENIZER
from oracles import numbers_in, raises_naming

DEFAULTS = {"beta": 0.04, "num_generations": 8, "prompt_tokens": 384, "max_completion_length": 1536}


def _cfg(lora=False, batch=2, accum=16, precision="bf16", optim="adamw_torch_fused"):
    from pathlib import Path

    from medsft.config import Config, script_defaults

    cfg = script_defaults(Path(__file__).resolve().parents[1] / "train_grpo.py")
    return Config({**cfg, "ADAPTER": "lora" if lora else "none", "BATCH_SIZE": batch, "GRAD_ACCUM": accum,
                   "PRECISION": precision, "OPTIM": optim, "GRADIENT_CHECKPOINTING": True, "ENGINE": "single",
                   "WORLD_SIZE": 1, "LOSS": "auto"})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import Qwen3Config

    path = tmp_path_factory.mktemp("tiny-grpo")
    Qwen3Config(vocab_size=1024, hidden_size=64, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                max_position_embeddings=4096).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def real_dir():
    if not (REAL_TOKENIZER / "config.json").is_file():
        pytest.skip("../shared/qwen3-1.7b is absent")
    return REAL_TOKENIZER


def _est(model_dir, cfg=None, **kw):
    from medsft.memory import grpo_estimate

    cfg = cfg or _cfg()
    return grpo_estimate(cfg, model_dir, lora=cfg["ADAPTER"] == "lora", **{**DEFAULTS, **kw})


def test_reference_only_with_beta_and_full_parameters(tiny_dir):
    """beta > 0 with all parameters: TRL builds a second model at the policy's dtype, whose bytes are those of a real
    bf16 model built from the same config; beta = 0 or LoRA (adapter switched off): none, and nothing else moves."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    ref_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_dir)).to(torch.bfloat16)
    model_bytes = sum(p.numel() * p.element_size() for p in ref_model.parameters())  # tied head counted once
    with_ref, without = _est(tiny_dir), _est(tiny_dir, beta=0.0)
    assert with_ref["reference"] == model_bytes
    assert without["reference"] == 0
    assert with_ref["train"] - without["train"] == model_bytes
    assert with_ref["generation"] - without["generation"] == model_bytes  # the copy stays resident while generating
    lora = _est(tiny_dir, _cfg(lora=True))
    assert lora["reference"] == 0
    # fp32 gradients of r=16 adapters only: (in + out) of q, k, v, o, gate, up, down per layer, 3 layers
    assert lora["grads"] == 4 * 16 * 3 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 192))
    for est in (with_ref, without, lora):
        assert est["total"] == max(est["train"], est["generation"])
        assert est["phase"] == ("training" if est["train"] >= est["generation"] else "generation")
        assert est["peak_gib"] == round(est["total"] / 2 ** 30, 2)


def test_kv_cache_of_qwen3_1_7b_worked_out_from_config(real_dir):
    """One generation batch = BATCH_SIZE x GRAD_ACCUM sequences of prompt + completion tokens, each keeping K and V
    per layer: 2 x 16 x (384 + 1536) x 2 x 28 x 8 x 128 x 2 bytes (bf16) = 6.5625 GiB with the defaults."""
    c = json.loads((real_dir / "config.json").read_text())
    per_token = 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * c["head_dim"] * 2
    assert per_token == 112 * 1024  # 112 KiB per token, as docs/plans/issue-25-grpo.md worked it out
    est = _est(real_dir)
    assert est["kv_cache"] == 2 * 16 * (384 + 1536) * per_token
    assert est["kv_cache"] / 2 ** 30 == pytest.approx(6.5625)
    assert est["sequences_per_generation"] == 32 and est["prompts_per_generation"] == 4
    assert est["generation"] > est["weights"] + est["reference"] + est["moments"] + est["kv_cache"]
    fp32 = _est(real_dir, _cfg(precision="fp32", optim="adamw_torch"))
    assert fp32["kv_cache"] == 2 * est["kv_cache"]  # the cache takes the weights' dtype


def test_kv_cache_equals_what_generate_holds(tiny_dir):
    """The KV term against transformers' own DynamicCache after a real generate of one generation batch: the cache
    holds prompt + completion - 1 positions (the last token is sampled, never fed back)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_dir)).eval()
    batch, accum, prompt, completion = 2, 3, 7, 9
    ids = torch.randint(0, 1000, (batch * accum, prompt))
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=completion,
                             min_new_tokens=completion, do_sample=True, return_dict_in_generate=True, use_cache=True)
    held = sum(t.numel() * t.element_size() for layer in out.past_key_values.layers for t in (layer.keys, layer.values))
    est = _est(tiny_dir, _cfg(batch=batch, accum=accum, precision="fp32", optim="adamw_torch"), num_generations=3,
               prompt_tokens=prompt, max_completion_length=completion)
    assert est["kv_cache"] * (prompt + completion - 1) == held * (prompt + completion)


def test_vllm_share_replaces_the_kv_cache_and_stays_for_training(real_dir):
    """vLLM colocate reserves its share of the GPU for the whole run (no sleep mode): in both phases, no KV term."""
    plain = _est(real_dir)
    vllm = _est(real_dir, use_vllm=True, vllm_gpu_memory_utilization=0.3, gpu_gib=24)
    share = int(0.3 * 24 * 2 ** 30)
    assert vllm["vllm"] == share and vllm["kv_cache"] == 0 and plain["vllm"] == 0
    assert vllm["train"] == plain["train"] + share
    assert vllm["generation"] < plain["generation"] - plain["kv_cache"] + share


def test_monotonic_in_batch_accum_and_completion_length(real_dir):
    """More completions per micro-batch: a larger training phase; a larger generation batch (batch or accum): a
    larger KV cache; longer completions: both phases grow."""
    base = _est(real_dir, _cfg(batch=2, accum=16))
    bigger_batch = _est(real_dir, _cfg(batch=4, accum=8))  # the same 32 sequences per generation batch
    assert bigger_batch["train"] > base["train"] and bigger_batch["kv_cache"] == base["kv_cache"]
    more_accum = _est(real_dir, _cfg(batch=2, accum=32))
    assert more_accum["generation"] > base["generation"] and more_accum["train"] == base["train"]
    last = base
    for length in (2048, 4096, 8192):
        longer = _est(real_dir, max_completion_length=length)
        assert longer["train"] > last["train"] and longer["generation"] > last["generation"]
        assert longer["total"] > last["total"]
        last = longer


def test_monotonic_on_the_tiny_config(tiny_dir):
    totals = [_est(tiny_dir, _cfg(batch=b, accum=8), max_completion_length=n)["total"]
              for b in (1, 2, 4) for n in (64, 256)]
    assert totals[0] < totals[1] and totals[2] < totals[3] and totals[4] < totals[5]
    assert totals[0] < totals[2] < totals[4] and totals[1] < totals[3] < totals[5]


def test_refuses_a_batch_that_splits_a_group(tiny_dir):
    from medsft.files import MedsftError

    with raises_naming(MedsftError, "--batch_size", "--grad_accum", "--num_generations") as e:
        _est(tiny_dir, _cfg(batch=2, accum=3), num_generations=4)
    assert numbers_in(e.value)[:2] == [6, 4], e.value  # the sequences per generation (2 x 3), and the group size
    # TRL checks the global generation batch: 2 processes x 2 x 3 = 12 completions hold 3 groups of 4
    two = _est(tiny_dir, _cfg(batch=2, accum=3).replace(WORLD_SIZE=2, ENGINE="ddp"), num_generations=4)
    assert two["prompts_per_generation"] == 3 and two["sequences_per_generation"] == 6
    with raises_naming(MedsftError, "--num_generations") as e:
        _est(tiny_dir, num_generations=1)
    assert numbers_in(e.value)[-2:] == [1, 2], e.value  # the value given, and the least allowed
    with raises_naming(MedsftError, "grpo_estimate", "precision", "optim"):
        _est(tiny_dir, _cfg(precision="auto"))


def test_estimate_line_names_the_grpo_parts(tiny_dir):
    from medsft.memory import estimate_line

    est = _est(tiny_dir)
    line = estimate_line(est)
    m = re.fullmatch(r"estimated peak: ([\d.]+) GiB \(weights [\d.]+, grads [\d.]+, optimizer [\d.]+, activations "
                     r"[\d.]+, logits [\d.]+, reference ([\d.]+), kv_cache ([\d.]+), vllm [\d.]+; training ([\d.]+), "
                     r"generation ([\d.]+)\)", line)
    assert m, line
    assert float(m.group(1)) == max(float(m.group(4)), float(m.group(5)))
    assert float(m.group(3)) == pytest.approx(est["kv_cache"] / 2 ** 30, abs=0.005)


def test_tile_sizes_are_trls():
    """The fused log-prob head's tiles are read from TRL's source: a TRL upgrade that changes them fails here."""
    pytest.importorskip("trl")
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    from medsft.memory import TRL_TOKEN_TILE, TRL_VOCAB_TILE

    assert (TRL_TOKEN_TILE, TRL_VOCAB_TILE) == (TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE)


def test_ddp_buckets_stay_while_generating(tiny_dir):
    """Under torchrun (DDP) each process holds its gradients and DDP's buckets, a second copy; after the optimizer
    step Trainer sets the gradients to None, the buckets stay: generation holds one copy, training two."""
    single = _est(tiny_dir)
    ddp = _est(tiny_dir, _cfg().replace(WORLD_SIZE=2, ENGINE="ddp"))
    assert ddp["train"] - single["train"] == single["grads"]
    assert ddp["generation"] - single["generation"] == single["grads"]
    assert ddp["kv_cache"] == single["kv_cache"]  # each process generates its own BATCH_SIZE x GRAD_ACCUM


def test_vllm_without_a_gpu_says_what_to_do(tiny_dir):
    import torch

    from medsft.files import MedsftError

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: its memory is read")
    with raises_naming(MedsftError, "CUDA", "--use_vllm"):  # what is missing, and the option to drop
        _est(tiny_dir, use_vllm=True)
