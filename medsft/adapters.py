"""LoRA adapters at inference: check an adapter and its base, load a model with or without one, merge one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .files import MedsftError, write_json
from .model_checks import check_model
from .models import base_model_of, load_model, load_tokenizer, resolve_model

# torch, transformers and peft take seconds to import: they are imported inside the functions that load a model,
# so the scripts' --help and their fail-fast checks stay instant.

def check_adapter(adapter_dir, *, flag="--adapter_dir", producer="train_lora.py") -> Path:
    """Fail fast on a directory that is not a LoRA adapter (no adapter_config.json)."""
    path = Path(str(adapter_dir)).expanduser()
    if not (path / "adapter_config.json").is_file():
        what = "not found" if not path.exists() else "has no adapter_config.json"
        raise MedsftError(f"LoRA adapter directory {adapter_dir} {what}: run {producer} first, or pass {flag}=<dir>")
    return path

def lora_base(adapter_dir, base_model=None, *, flag="--base_model") -> str:
    """The base model spec of an adapter: ``base_model`` if given, else the one recorded in the adapter."""
    base = base_model or base_model_of(adapter_dir)
    if not base:
        raise MedsftError(f"{adapter_dir}/adapter_config.json names no base model: pass {flag}=<spec>")
    return check_model(base, flag=flag, producer=None)

def adapter_tokenizer_spec(model, adapter_dir) -> str:
    """Where the tokenizer comes from: the adapter's own copy (saved with it at training) if any, else the model."""
    if adapter_dir is not None and (Path(adapter_dir) / "tokenizer_config.json").is_file():
        return adapter_dir
    return model

def load_for_inference(model, adapter_dir=None, dtype=None, device=None):
    """(model, tokenizer) for a model spec, with a LoRA adapter on top when ``adapter_dir`` is given."""
    print(f"loading {model}" + (f" + LoRA adapter {adapter_dir}" if adapter_dir else ""))
    base = load_model(model, dtype=dtype, device=device)
    tokenizer = load_tokenizer(adapter_tokenizer_spec(model, adapter_dir))
    if adapter_dir is None:
        return base, tokenizer
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)), tokenizer

def merge_lora(adapter_dir, merged_dir, base_model=None) -> Path:
    """Fold a LoRA adapter into its base and save a plain Hugging Face model directory (safetensors, tokenizer with
    its chat template, generation_config), written next to ``merged_dir`` and moved into place when complete."""
    import torch
    from transformers import AutoConfig

    base = lora_base(adapter_dir, base_model)
    # merge in fp32 on the CPU (exact W + BA), then store in the base's own dtype (bf16 for Qwen3): one rounding
    model, tokenizer = load_for_inference(base, adapter_dir, dtype=torch.float32, device="cpu")
    merged = model.merge_and_unload()
    config = AutoConfig.from_pretrained(resolve_model(base))
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    merged = merged.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    merged_dir = Path(merged_dir)
    merged_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{merged_dir.name}-", dir=merged_dir.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "merge_config.json", {"MODEL": base, "ADAPTER_DIR": str(adapter_dir)})
        old = None
        if merged_dir.exists():  # replace an older merge only once the new one is complete
            old = merged_dir.with_name(f".{merged_dir.name}-old-{os.getpid()}")
            os.replace(merged_dir, old)
        os.replace(tmp, merged_dir)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return merged_dir
