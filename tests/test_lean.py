"""The lean full fine-tuning default: chunked loss, bf16 weights + 8-bit AdamW with stochastic rounding, the
memory estimate (exact bytes, dry run, preflight) and the version floors check."""

from __future__ import annotations

import json
from pathlib import Path
import re

import pytest

from conftest import ROOT, run_script


def _small_config(vocab=4096, layers=2, hidden=256):
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                       tie_word_embeddings=True, max_position_embeddings=2048)


def chunked_forward_loss(model, inputs: dict, num_items_in_batch=None):
    """Test oracle: the training loss of ``model`` on a collated batch through the chunked loss."""
    from medsft.training.loss import causal_parts, chunked_causal_lm_loss

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    decoder, head = causal_parts(model)
    return chunked_causal_lm_loss(decoder(**inputs).last_hidden_state, head.weight, labels, num_items_in_batch)


def _batch(vocab, n=3, length=40, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :15] = -100  # a masked prompt
    mask = torch.ones_like(ids)
    if n > 1:
        labels[1, 30:] = -100  # and a padded tail
        mask[1, 30:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --- the chunked loss -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_items", [None, 50])
def test_chunked_loss_equals_the_plain_loss_and_its_gradients(num_items):
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(_small_config(vocab=1000, hidden=64))
    batch = _batch(1000)
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    plain = model(**batch, **kwargs).loss
    plain.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # chunks of 7 tokens: many chunks, the last one partial
    import medsft.training.loss as L

    chunked = L.chunked_causal_lm_loss(*(lambda h: (h, model.lm_head.weight))(
        model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state),
        batch["labels"], kwargs.get("num_items_in_batch"), chunk_tokens=7)
    chunked.backward()
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=n)
    model.zero_grad()
    assert chunked_forward_loss(model, batch, kwargs.get("num_items_in_batch")).item() == pytest.approx(plain.item(),
                                                                                                     rel=1e-5)


def test_chunked_loss_of_a_batch_that_supervises_nothing_is_zero_and_differentiable():
    import torch
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM(_small_config(vocab=500, hidden=64))
    batch = _batch(500)
    batch["labels"][:] = -100
    loss = chunked_forward_loss(model, batch)
    loss.backward()  # no "does not require grad" error: an all-prompt micro-batch must not crash training
    assert loss.item() == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_hidden_state_at_an_unsupervised_position_changes_nothing(bad):
    """Only supervised positions reach the loss: a NaN/inf in a masked prompt or padding position (garbage the
    model computes there, never trained on) leaves the loss and every gradient exactly as on clean hidden states."""
    import torch

    from medsft.training.loss import chunked_causal_lm_loss

    torch.manual_seed(0)
    labels = _batch(100, n=2, length=20)["labels"]  # labels 0..14 masked (the prompt)
    weight = torch.randn(100, 16, requires_grad=True)

    def run(poison: bool):
        hidden = torch.randn(2, 20, 16, generator=torch.Generator().manual_seed(1))
        if poison:
            hidden[0, 3, 5] = bad  # position 3 predicts label 4: masked
            hidden[1, 19, :] = bad  # the last position predicts nothing
        hidden.requires_grad_(True)
        weight.grad = None
        loss = chunked_causal_lm_loss(hidden, weight, labels, chunk_tokens=4)
        loss.backward()
        return loss.detach(), hidden.grad, weight.grad.clone()

    clean, poisoned = run(False), run(True)
    assert torch.isfinite(poisoned[0]) and poisoned[0] == clean[0]
    assert torch.isfinite(poisoned[1]).all() and torch.isfinite(poisoned[2]).all()
    torch.testing.assert_close(poisoned[1], clean[1], rtol=0, atol=0)
    torch.testing.assert_close(poisoned[2], clean[2], rtol=0, atol=0)


def test_a_micro_batch_that_supervises_nothing_gives_zero_gradients_even_beside_non_finite_values():
    """All-prompt micro-batch (and an optimizer step whose token count is 0): a differentiable 0.0 whose
    gradients reach the decoder's output and the head (DDP then syncs every parameter) and are all zero."""
    import torch

    from medsft.training.loss import chunked_causal_lm_loss

    hidden = torch.randn(2, 10, 16)
    hidden[0, 2] = float("nan")
    hidden[1, 5] = float("inf")
    hidden.requires_grad_(True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.full((2, 10), -100)
    for num_items in (None, torch.tensor(0)):
        hidden.grad = weight.grad = None
        loss = chunked_causal_lm_loss(hidden, weight, labels, num_items)
        loss.backward()
        assert loss.item() == 0.0 and loss.dtype == torch.float32
        assert hidden.grad is not None and weight.grad is not None  # both stay in the graph
        assert (hidden.grad == 0).all() and (weight.grad == 0).all()


# --- exact bytes ----------------------------------------------------------------------------------------------------


def _tensor_bytes(t) -> int:
    inner = [getattr(t, a) for a in getattr(t, "tensor_attrs", ())]  # torchao's OptimState8bit: codes + scale + qmap
    if inner:
        return sum(_tensor_bytes(x) for x in inner if x is not None)
    return t.numel() * t.element_size()


@pytest.mark.parametrize("lora", [False, True])
def test_estimate_counts_the_bytes_a_real_step_allocates(tmp_path, lora):
    """weights, grads and optimizer of the estimate equal the bytes of the tensors after one real optimizer step
    of the lean default (bf16 weights, torchao 8-bit AdamW with stochastic rounding; LoRA: fp32 adapter, AdamW)."""
    import torch
    from torchao.optim import AdamW8bit
    from transformers import Qwen3ForCausalLM

    from medsft.memory import estimate

    config = _small_config()
    config.save_pretrained(tmp_path)
    cfg = {"PRECISION": "bf16", "OPTIM": "adamw_torch" if lora else "adamw_torch_8bit", "LOSS": "chunked",
           "BATCH_SIZE": 1, "MAX_LENGTH": 64, "GRADIENT_CHECKPOINTING": True, "LORA_R": 8,
           "LORA_TARGET_MODULES": "all-linear"}
    est = estimate(cfg, tmp_path, lora=lora)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    params = [p for p in model.parameters() if p.requires_grad]
    # weight_decay 0.0 as the Trainer passes it: torch.compile's graphs are then reused by the resume test below
    opt = torch.optim.AdamW(params, lr=1e-4) if lora else AdamW8bit(params, lr=1e-4, weight_decay=0.0,
                                                                    bf16_stochastic_round=True)
    model(**_batch(config.vocab_size, n=1)).loss.backward()
    opt.step()
    weights = sum(_tensor_bytes(p) for p in {id(p): p for p in model.parameters()}.values())
    grads = sum(_tensor_bytes(p.grad) for p in params)
    states = sum(_tensor_bytes(v) for s in opt.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq"))
    assert est["weights"] == weights
    assert est["grads"] == grads
    qmaps = 0 if lora else 2 * 256 * 4 * sum(1 for p in params if p.numel() >= 4096)  # a 256-entry code book per state
    assert est["moments"] == states - qmaps
    assert est["trainable"] == sum(p.numel() for p in params)


def test_qwen3_1_7b_parameter_count(shared_dir):
    """The meta-device count against Qwen3-1.7B's architecture worked out by hand from its config.json."""
    from medsft.memory import estimate

    c = json.loads((shared_dir / "qwen3-1.7b" / "config.json").read_text())
    d, i, h, kv, hd = (c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"],
                       c["head_dim"])
    layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * i + 2 * d + 2 * hd  # q,k,v,o, MLP, 2 norms, q/k norms
    expected = c["vocab_size"] * d + c["num_hidden_layers"] * layer + d  # tied head, final norm
    cfg = {"PRECISION": "bf16", "OPTIM": "adamw_torch_8bit", "LOSS": "chunked", "BATCH_SIZE": 2, "MAX_LENGTH": 2048,
           "GRADIENT_CHECKPOINTING": True}
    est = estimate(cfg, shared_dir / "qwen3-1.7b", lora=False)
    assert est["params"] == expected
    assert est["weights"] == est["grads"] == 2 * expected  # bf16 weights and grads
    assert 2.0 * expected < est["moments"] < 2.05 * expected  # 8-bit moments + block scales


def _estimated_gib(proc) -> float:
    m = re.search(r"estimated peak: ([\d.]+) GiB \(weights [\d.]+, grads [\d.]+, optimizer [\d.]+, activations "
                  r"[\d.]+, logits [\d.]+\)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


def test_dry_run_of_the_defaults_fits_a_16_gb_card(shared_dir, tmp_path):
    """The issue's acceptance: full FT of Qwen3-1.7B <= 16 GB, LoRA <= 8 GB, from config.json alone, no data."""
    model = f"--model={shared_dir / 'qwen3-1.7b'}"
    full = run_script("train.py", model, "--dry_run=true", cwd=tmp_path)
    lora = run_script("train_lora.py", model, "--dry_run=true", cwd=tmp_path)
    assert _estimated_gib(full) <= 16 and _estimated_gib(lora) <= 8
    assert "precision=bf16" in full.stdout and "optim=adamw_torch_8bit" in full.stdout and "loss=chunked" in full.stdout
    mixed = run_script("train.py", model, "--dry_run=true", "--precision=bf16-mixed", "--loss=plain", cwd=tmp_path)
    assert _estimated_gib(mixed) > 24  # fp32 master weights + fp32 AdamW + full logits: the old heavy path
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_estimate_against_a_measured_peak(shared_dir, tmp_path):
    """bench/cpu_real.py on two layers of the real Qwen3-1.7B architecture (its 151,936 x 2048 embedding is most of
    the memory): peak RSS above the baseline within 20% of the estimate, for full FT and LoRA. At 128 tokens LoRA's
    logits are small beside the 0.58 GiB head that building the model allocates and frees, which must not count.
    The whole architecture's run (28 layers, 512 tokens) is committed in bench/results/cpu-real-arch.json."""
    out, scratch = tmp_path / "cpu-real.json", tmp_path / "tmp"
    scratch.mkdir()
    run_script("bench/cpu_real.py", "--layers=2", "--max_length=128", f"--output={out}", timeout=900,
               env={"TMPDIR": str(scratch)})
    assert not list(scratch.glob("medsft-cpu-real-*"))  # its run folders are gone (the full architecture's are GBs)
    runs = {r["kind"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"full", "lora"}
    for kind, r in runs.items():
        assert r["steps"] == 2 and r["settings"]["PRECISION"] == "bf16", r
        assert 0.8 <= r["measured_over_estimate"] <= 1.2, (kind, r)


# --- the lean default learns like fp32 ------------------------------------------------------------------------------


TOPICS = ["高血压", "糖尿病", "感冒", "胃炎", "偏头痛", "哮喘", "贫血", "失眠", "湿疹", "痛风", "肺炎", "关节炎"]


def _examples(tokenizer):
    from medsft.chat import tokenize_example

    rows = [{"question": f"{t}有哪些常见症状？", "think": f"用户问{t}。先说典型表现，再给建议。",
             "answer": f"{t}的症状因人而异，建议及时就医。"} for t in TOPICS]
    return [tokenize_example(tokenizer, r, 256) for r in rows]


def _cfg(tmp_path, **over):
    from medsft.config import script_defaults

    return {**script_defaults(ROOT / "train.py"), "MODEL": "tiny", "OUTPUT_DIR": str(tmp_path), "EPOCHS": 1, "MAX_STEPS": 40, "BATCH_SIZE": 4,
            "GRAD_ACCUM": 1, "LEARNING_RATE": 2e-4, "SCHEDULER": "constant", "WARMUP": 0, "LOGGING_STEPS": 1,
            "EVAL_STEPS": 1000, "SAVE_STEPS": 1000, "SAVE_TOTAL_LIMIT": 1, "SEED": 0, "GRADIENT_CHECKPOINTING": False,
            "ATTN_IMPLEMENTATION": "sdpa", "PADDING_FREE": False, "LOSS": "chunked", "OPTIM": "auto", **over}


def _train(cfg, examples, tokenizer, start=None) -> tuple[float, dict]:
    """(loss gain, final weights): mean of the first 5 losses minus mean of the last 5."""
    from medsft.training.sft import build_trainer, load_training_model

    model = load_training_model(cfg)
    if start is not None:
        model.load_state_dict(start)  # cast to this run's weight dtype
    trainer = build_trainer(model, tokenizer, examples, None, cfg)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return sum(losses[:5]) / 5 - sum(losses[-5:]) / 5, {k: v.float().clone() for k, v in model.state_dict().items()}


def test_lean_default_reaches_the_fp32_gain_and_pure_bf16_does_not(tmp_path, monkeypatch):
    """As the issue measured it: from a partly trained checkpoint, 40 steps at a small LR (2e-4 against weights of
    ~0.3, whose half bf16 ulp is ~1e-3). fp32 + AdamW is the reference; the lean default (bf16 weights, torchao
    8-bit AdamW with stochastic rounding) must reach >= 95% of its gain; plain AdamW on bf16 weights must not.
    The tiny model with its project-built tokenizer (2,050 words) even where ../shared is present: the rounding
    measured is that of the ~0.3 weights of every layer, whatever the vocabulary's size; with the real 151,669-word
    head the same test measured the same (fp32 gain 0.060, lean/fp32 1.02, pure/fp32 -0.13; here 0.059, 1.00,
    0.33) in twice the CPU time."""
    from medsft.models import load_tokenizer
    from medsft.training.features import resolve_features

    monkeypatch.delenv("MEDSFT_TOKENIZER", raising=False)  # tiny's own tokenizer: a 2,050-row embedding
    assert resolve_features(_cfg(tmp_path, PRECISION="bf16"), log=False)["OPTIM"] == "adamw_torch_8bit"
    tok = load_tokenizer("tiny")
    examples = _examples(tok)
    _, warm = _train(_cfg(tmp_path / "warm", PRECISION="fp32", OPTIM="adamw_torch", LEARNING_RATE=1e-2,
                          MAX_STEPS=15), examples, tok)
    ref, _ = _train(_cfg(tmp_path / "fp32", PRECISION="fp32", OPTIM="adamw_torch"), examples, tok, warm)
    lean, _ = _train(_cfg(tmp_path / "lean", PRECISION="bf16"), examples, tok, warm)
    pure, _ = _train(_cfg(tmp_path / "pure", PRECISION="bf16", OPTIM="adamw_torch"), examples, tok, warm)
    assert ref > 0.05, ref  # the reference really learns
    assert lean >= 0.95 * ref, (ref, lean, pure)
    assert pure < 0.8 * ref, (ref, lean, pure)  # most updates round away


# --- the optimizer the Trainer builds for bf16 weights, and its checkpoint ------------------------------------------


def _gpu_default_cfg(out, **over):
    """The full-FT constants as train.py resolves them on a bf16 GPU (attention and loss kept runnable on CPU)."""
    from medsft.training.features import resolve_features

    cfg = _cfg(out, PRECISION="auto", OPTIM="auto", **over)
    cfg.update(resolve_features(cfg, log=False, assume_gpu=True))
    assert (cfg["PRECISION"], cfg["OPTIM"]) == ("bf16", "adamw_torch_8bit")
    return cfg


def test_the_trainer_builds_torchao_8bit_adamw_with_stochastic_rounding_for_bf16_weights(tmp_path):
    """The lean default end to end without a GPU: bf16 weights, and the optimizer transformers' Trainer builds from
    OPTIM=adamw_torch_8bit + optim_args is torchao's AdamW8bit with bf16 stochastic rounding on. Without it most
    bf16 updates at LR 1e-5 silently round away (test_lean_default_reaches_the_fp32_gain... measures that)."""
    import torch
    from torchao.optim import AdamW8bit

    from medsft.models import load_tokenizer
    from medsft.training.sft import build_trainer, load_training_model

    cfg = _gpu_default_cfg(tmp_path)
    tok = load_tokenizer("tiny")
    model = load_training_model(cfg)
    trainer = build_trainer(model, tok, _examples(tok), None, cfg)
    opt = trainer.create_optimizer()
    assert type(opt) is AdamW8bit, type(opt)
    sr = opt.bf16_stochastic_round
    assert isinstance(sr, int) and sr == 1  # True, or the 1 of transformers' strtobool; never a string
    stepped = [p for g in opt.param_groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in stepped} == {id(p) for p in trainable}
    assert all(p.dtype == torch.bfloat16 for p in stepped)  # torchao rounds stochastically only bf16 params


def _state_tensors(opt) -> dict:
    """Every optimizer-state tensor by (param index, name, part): the 8-bit codes, block scales and code book of
    torchao's OptimState8bit, else the tensor itself."""
    out = {}
    for i, state in opt.state_dict()["state"].items():
        for name, v in state.items():
            parts = getattr(v, "tensor_attrs", None)
            out.update({(i, name, a): getattr(v, a) for a in parts} if parts else {(i, name, ""): v})
    return out


def test_the_8bit_optimizer_state_saves_and_resumes_exactly_through_the_trainer(tmp_path):
    """4 steps straight, against 2 steps resumed from the uninterrupted run's checkpoint-2: the same losses, the
    same bf16 weights and the same 8-bit optimizer state, bit for bit, and the state is still 8-bit after the load
    (torch's load_state_dict casts state to the parameter's dtype, which must not dequantize it)."""
    import torch
    from torchao.optim.subclass_8bit import OptimState8bit
    from transformers import Qwen3ForCausalLM

    from medsft.models import load_tokenizer
    from medsft.training.sft import build_trainer

    cfg = _gpu_default_cfg(tmp_path, MAX_STEPS=4, SAVE_STEPS=2, SAVE_TOTAL_LIMIT=None, BATCH_SIZE=2,
                           LEARNING_RATE=1e-3, SCHEDULER="linear")
    g = torch.Generator().manual_seed(0)
    examples = []
    for i in range(8):  # one length: no padding (the tokenizer's pad id is outside this model's vocabulary)
        ids = torch.randint(0, 4096, (24,), generator=g).tolist()
        examples.append({"input_ids": ids, "attention_mask": [1] * 24, "labels": [-100] * (4 + i) + ids[4 + i:]})
    tok = load_tokenizer("tiny")

    def train(out, resume=None):
        torch.manual_seed(0)  # the shapes test_estimate_counts_the_bytes... steps: torch.compile's graphs reused
        model = Qwen3ForCausalLM(_small_config()).to(torch.bfloat16)  # a fresh config: the Trainer edits it
        trainer = build_trainer(model, tok, examples, None, {**cfg, "OUTPUT_DIR": str(out)})
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        losses = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
        return trainer, losses

    straight, want = train(tmp_path / "straight")
    resumed, got = train(tmp_path / "resumed", tmp_path / "straight" / "checkpoint-2")
    assert sorted(want) == [1, 2, 3, 4] and got == want
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b), name
    states = [v for s in resumed.optimizer.state_dict()["state"].values() for v in s.values()]
    # torchao quantizes the moments of every tensor of >= 4096 values that splits into 256-value blocks
    big = sum(1 for p in resumed.model.parameters() if p.numel() >= 4096 and p.numel() % 256 == 0)
    assert big > 0 and sum(isinstance(v, OptimState8bit) for v in states) == 2 * big
    a, b = _state_tensors(straight.optimizer), _state_tensors(resumed.optimizer)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


# --- version floors -------------------------------------------------------------------------------------------------


def test_an_installed_library_below_its_floor_stops_before_loading(tmp_path):
    from importlib.metadata import version

    from medsft.files import MedsftError
    from medsft.training.sft import check_versions

    req = tmp_path / "requirements.txt"
    req.write_text(f"# comment\ntransformers>={version('transformers')},<99\n\ntqdm>=1.0  # fine\n")
    check_versions(req)  # the installed version meets its own floor
    req.write_text("transformers>=99.0\n")
    with pytest.raises(MedsftError, match=r"transformers .* is installed but this project needs transformers>=99.0"):
        check_versions(req)
    req.write_text("no-such-package-medsft>=1.0\n")
    with pytest.raises(MedsftError, match="no-such-package-medsft is not installed"):
        check_versions(req)
    check_versions()  # the project's own requirements.txt holds in this environment


_PEAK_PROBE = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
from medsft.training.loss import chunked_causal_lm_loss
def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
torch.manual_seed(0)
vocab, hidden = 100_000, 512  # one fp32 (vocab x hidden) tensor: 195 MiB; a chunk's logits 3 MiB
emb = torch.nn.Parameter(torch.randn(vocab, hidden) * 0.02)  # tied: the input embedding is the output head
ids = torch.randint(0, vocab, (1, 24))
labels = ids.clone()
labels[0, :4] = -100
h = emb[ids].tanh()
loss = chunked_causal_lm_loss(h, emb, labels, chunk_tokens=8)
before = kib("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # VmHWM from here on
loss.backward()
print((kib("VmHWM") - before) / (vocab * hidden * 4 / 1024))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to read the peak")
def test_backward_through_a_tied_head_holds_two_vocabulary_sized_tensors_not_three(tmp_path):
    """The head's gradient and the input embedding's dense gradient are added in place: peak = the .grad being
    built + one more (autograd's transposed-view head gradient cost a third; bench/peers.py measured it)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # freed blocks go back: RSS follows live tensors
    out = subprocess.run([sys.executable, "-c", _PEAK_PROBE, str(ROOT)], capture_output=True, text=True, env=env,
                         check=True).stdout
    peak = float(out.split()[-1])
    assert 1.9 < peak < 2.5, f"backward's peak was {peak:.2f} vocabulary-sized tensors"


_LOGITS_PROBE = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
from medsft.training.loss import chunked_causal_lm_loss
def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
torch.manual_seed(0)
vocab, tokens = 100_000, 512  # one chunk's fp32 logits: 195 MiB; the frozen bf16 head (LoRA): 12 MiB
head = (torch.randn(vocab, 64) * 0.02).to(torch.bfloat16)
x = torch.randn(1, tokens + 1, 64, dtype=torch.bfloat16, requires_grad=True)
loss = chunked_causal_lm_loss(x.tanh(), head, torch.randint(0, vocab, (1, tokens + 1)))
before = kib("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
loss.backward()
print((kib("VmHWM") - before) / (vocab * tokens * 4 / 1024))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to read the peak")
def test_backward_of_a_frozen_head_holds_a_chunks_logits_no_longer_than_autograd_does():
    """LoRA's frozen bf16 head: the backward holds log-softmax, its gradient and the logits' gradient (3 fp32
    chunks, as checkpointed autograd did), not a 4th kept as the leaf (bench/peers.py measured +0.25 GiB)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", _LOGITS_PROBE, str(ROOT)], capture_output=True, text=True, env=env,
                         check=True).stdout
    peak = float(out.split()[-1])
    assert peak < 3.5, f"backward's peak was {peak:.2f} chunks of fp32 logits"
