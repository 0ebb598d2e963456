"""Checks on a model spec before any model is loaded, and the identity of what it names (so rows of two models, or
of retrained weights, are never mixed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .files import MedsftError
from .models import BUILTIN_SPECS, UNPINNED, ensure_builtin, hub_revision, is_hub_id, resolve_model

LOCAL_ROOTS = ("output", "data", "results")  # the project's own folders: a missing path there is not a hub id
# the files that hold a model's (or adapter's) weights, and the index that maps tensors to shards
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json",
                   "adapter_model.bin")
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 1 << 16  # 1 MiB read per weights file, spread over it, beside the whole header

def _looks_local(spec: str) -> bool:
    """True when a missing spec is meant as a local path (so it must not be looked up on ModelScope)."""
    if spec.startswith((".", "/", "~")) or "\\" in spec:
        return True
    first = spec.split("/", 1)[0]
    return first in LOCAL_ROOTS or Path(first).is_dir() or not is_hub_id(spec)

def check_model(spec, *, flag="--model_dir", producer="train.py") -> str:
    """Fail fast on a model spec that cannot work: a missing local directory or one without config.json."""
    if spec is None or not str(spec).strip():
        raise MedsftError(f"{flag} is empty: pass a model directory, a ModelScope id like Qwen/Qwen3-1.7B, tiny or small")
    spec = str(spec)
    if spec in BUILTIN_SPECS:
        return spec
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            hint = " (it is a LoRA adapter: use inference_lora.py --adapter_dir)" if (path / "adapter_config.json").is_file() else ""
            raise MedsftError(f"{spec} is not a model directory (no config.json){hint}; pass {flag}=<a trained "
                              "model dir | Qwen/Qwen3-1.7B | tiny>")
        return spec
    if path.exists() or _looks_local(spec):
        run = f"run {producer} first, or " if producer else ""
        raise MedsftError(f"model directory {spec} not found: {run}pass {flag}=<a trained model dir | "
                          "Qwen/Qwen3-1.7B | tiny>")
    return spec  # a ModelScope id: resolved (downloaded or found in the cache) when loading

def spec_key(spec) -> str | None:
    """The key two spellings of one model share: the resolved path of a local one, else the spec itself."""
    if spec is None:
        return None
    path = Path(str(spec)).expanduser()
    return str(path.resolve()) if path.exists() else str(spec)

def weights_fingerprint(model: str, adapter: str | None) -> str | None:
    """A hash of the weights behind a model (and adapter), so retrained weights are never resumed into an older file;
    a pinned hub id's is ``<id>@<revision>``, an unpinned one's also hashes its snapshot (no commit is recorded)."""
    local = Path(model).expanduser()
    revision = hub_revision(model)
    dirs = [ensure_builtin(model)] if model in BUILTIN_SPECS else [local] if local.is_dir() else []
    if revision is not None and revision.startswith(UNPINNED):
        dirs = [resolve_model(model)]
        revision = hub_revision(model)  # now that it is cached: the name modelscope recorded for it
    dirs += [Path(adapter)] if adapter else []
    files = [f for d in dirs for f in sorted(d.glob("*.safetensors"))]
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
    digest = digest.hexdigest()[:16] if files else None
    if revision is None:
        return digest
    return f"{model}@{revision}" + (f"#{digest}" if digest else "")

def _sampled(fh, size: int, start: int, digest) -> None:
    """Hash SAMPLE_BLOCKS blocks spread evenly over bytes ``start``..``size`` (all of them when that is smaller)."""
    span = size - start
    if span <= SAMPLE_BLOCKS * SAMPLE_BYTES:
        fh.seek(start)
        digest.update(fh.read(span))
        return
    step = (span - SAMPLE_BYTES) // (SAMPLE_BLOCKS - 1)
    for k in range(SAMPLE_BLOCKS):
        fh.seek(start + k * step)
        digest.update(fh.read(SAMPLE_BYTES))

def weights_identity(model_dir) -> str | None:
    """A cheap identity of the weights in ``model_dir`` (None: it holds none): each weights file's name and size,
    its whole safetensors header (or index json) and 16 blocks of 64 KiB spread over its data. Retraining rewrites
    every block; a copy keeps them (mtimes are not used), so moving a model never refuses a resume. A change that
    spares every sampled block goes unseen: this is not a full hash (that reads GBs at every start)."""
    d = Path(model_dir)
    files = sorted({f for pattern in WEIGHT_PATTERNS for f in d.glob(pattern) if f.is_file()})
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        part = hashlib.sha256()
        with open(f, "rb") as fh:
            start = 0
            if f.name.endswith(".safetensors") and size >= 8:
                n = int.from_bytes(fh.read(8), "little")
                if 8 + n <= size and n < 1 << 27:  # a sane header is hashed whole: dtypes, shapes, offsets, metadata
                    part.update(fh.read(n))
                    start = 8 + n
            _sampled(fh, size, start, part)
        digest.update(json.dumps([f.name, size, part.hexdigest()]).encode("utf-8"))
    return digest.hexdigest()
