"""The built-in demo models, made on this machine from a seed: ``tiny`` (2 layers, random weights: the whole pipeline
on CPU in minutes) and ``small`` (4 layers, for demo/learn.sh and demo/grpo.sh), each with a tokenizer trained on
demo/medical_demo.jsonl (tiny: the real Qwen3 tokenizer when MEDSFT_TOKENIZER names one). medsft.models loads this
file for the specs ``tiny`` and ``small``; the folders go to medsft's cache, built once (rank 0 under a launch)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from medsft.files import MedsftError
from medsft.models import DEMO_DATA, cache_dir

TINY_VERSION = 1  # bump when the tiny recipe changes, so caches are rebuilt
TINY_SEED = 1234
TINY_SIZE = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, initializer_range=0.3)
SMALL_VERSION = 1  # bump when the small recipe changes, so caches are rebuilt
SMALL_SEED = 1234
# sized for demo/learn.sh on 2 cores, embeddings untied: why in docs/reliability.md
SMALL_VOCAB = 8192
SMALL_SIZE = dict(num_hidden_layers=4, hidden_size=128, intermediate_size=384, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, initializer_range=0.02)

# Qwen3's own chat template (tools omitted) for the project-built tokenizer
TINY_CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{%- set ns.last_query_index = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'system' and loop.first %}{{- '<|im_start|>system\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role in ('user', 'system') %}{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = message.reasoning_content if message.reasoning_content is string else '' %}"
    "{%- if message.reasoning_content is not string and '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

def _tiny_tokenizer_source() -> tuple[Path | None, bytes]:
    """The tokenizer folder tiny uses (None: build one) and the bytes that identify it."""
    env = os.environ.get("MEDSFT_TOKENIZER")
    if env:
        src = Path(env).expanduser()
        if not (src / "tokenizer_config.json").is_file():
            raise MedsftError(f"MEDSFT_TOKENIZER={env}: no tokenizer_config.json there; point it at a tokenizer "
                              "directory (e.g. ../shared/qwen3-1.7b) or unset it to use the project's own")
        files = sorted(p for p in src.iterdir() if p.is_file() and p.name.startswith(("tokenizer", "vocab", "merges")))
        return src, b"".join(p.name.encode() + p.read_bytes() for p in files)
    if not DEMO_DATA.is_file():
        raise MedsftError(f"{DEMO_DATA} is missing: the tiny tokenizer is trained on it (restore it from git), "
                          "or set MEDSFT_TOKENIZER to a tokenizer directory")
    return None, DEMO_DATA.read_bytes()

def build_tiny_tokenizer(out_dir: Path, corpus: Path = DEMO_DATA, vocab_size: int = 2048):
    """Train a small byte-level BPE tokenizer on the demo data, with Qwen3's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from medsft.files import read_jsonl

    texts = [r[k] for r in read_jsonl(corpus) for k in ("question", "think", "answer")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # <think> tags are plain added tokens in Qwen3 (not "special"), so decoding keeps them
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"], chat_template=TINY_CHAT_TEMPLATE,
                                   model_max_length=32768, clean_up_tokenization_spaces=False)
    fast.save_pretrained(out_dir)
    return fast

def save_random_qwen3(out_dir: Path, tok, seed: int, size: dict) -> None:
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen3Config(vocab_size=(len(tok) + 63) // 64 * 64, max_position_embeddings=8192, rope_theta=1_000_000.0,
                         bos_token_id=pad, eos_token_id=eos, pad_token_id=pad, **size)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    # Qwen3's own recommended thinking-mode sampling, as in the real model's generation_config.json
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad,
                                               do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
    model.save_pretrained(out_dir)

def _create_tiny(out_dir: Path, tokenizer_src: Path | None) -> None:
    from transformers import AutoTokenizer

    if tokenizer_src is None:
        tok = build_tiny_tokenizer(out_dir)
    else:
        tok = AutoTokenizer.from_pretrained(tokenizer_src)
        tok.save_pretrained(out_dir)
    save_random_qwen3(out_dir, tok, TINY_SEED, TINY_SIZE)

BUILD_WAIT_S = 600  # longest wait of a launch's other processes for rank 0 to build a builtin model

def _build_once(out: Path, create, meta_name: str, meta: dict) -> Path:
    # built in a temporary sibling and renamed into place: a reader never sees half a model
    weights, kind = out / "model.safetensors", out.name.split("-")[0]
    if weights.is_file():
        return out
    if _launched_rank() > 0:  # under a launch transformers writes weights on rank 0 only: rank 0 builds
        deadline = time.monotonic() + BUILD_WAIT_S
        while not weights.is_file():
            if time.monotonic() > deadline:
                raise MedsftError(f"{out}: rank 0 did not build it within {BUILD_WAIT_S} s (a launch over several "
                                  "machines? build it once on each with one process: python inference.py "
                                  f"--model={kind} --question=hi)")
            time.sleep(0.2)
        return out
    if out.exists() and not weights.is_file():
        raise MedsftError(f"{out} holds no model.safetensors (an older medsft could leave one under torchrun): "
                          f"remove it (rm -r {out}) and run again; it is rebuilt the same from its seed")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=out.parent))
    try:
        create(tmp)
        (tmp / meta_name).write_text(json.dumps(meta) + "\n")
        try:
            os.rename(tmp, out)
        except OSError:  # another process created it first: theirs is identical
            if not (out / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

def _launched_rank() -> int:
    """This process's rank in an initialized process group, or 0 when there is none."""
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

def ensure_tiny() -> Path:
    src, ident = _tiny_tokenizer_source()
    key = hashlib.sha256(f"v{TINY_VERSION}-seed{TINY_SEED}".encode() + ident).hexdigest()[:12]
    return _build_once(cache_dir() / f"tiny-qwen3-{key}", lambda tmp: _create_tiny(tmp, src), "medsft_tiny.json",
                       {"tokenizer": str(src or "built from demo data"), "seed": TINY_SEED, "version": TINY_VERSION})

def _create_small(out_dir: Path) -> None:
    save_random_qwen3(out_dir, build_tiny_tokenizer(out_dir, vocab_size=SMALL_VOCAB), SMALL_SEED, SMALL_SIZE)

def ensure_small() -> Path:
    """Always with the tokenizer built from the demo data ($MEDSFT_TOKENIZER is for tiny): a fresh clone runs it."""
    if not DEMO_DATA.is_file():
        raise MedsftError(f"{DEMO_DATA} is missing: the small model's tokenizer is trained on it; restore it with "
                          "`git checkout -- demo/medical_demo.jsonl`")
    recipe = json.dumps({"version": SMALL_VERSION, "seed": SMALL_SEED, "vocab": SMALL_VOCAB, **SMALL_SIZE},
                        sort_keys=True)
    key = hashlib.sha256(recipe.encode() + DEMO_DATA.read_bytes()).hexdigest()[:12]
    return _build_once(cache_dir() / f"small-qwen3-{key}", _create_small, "medsft_small.json",
                       {"tokenizer": f"built from demo data, {SMALL_VOCAB} tokens", "seed": SMALL_SEED,
                        "version": SMALL_VERSION, **SMALL_SIZE})

