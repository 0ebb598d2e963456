"""The ``checkpoint-N`` folders of OUTPUT_DIR: which exist, and whether one is whole enough to resume from.

Cheap checks only (JSON, safetensors headers, zip directories): nothing is loaded.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")  # the Trainer's checkpoint folders; the number is the step
# Names as transformers' Trainer (trainer.py: OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCHEDULER_NAME, SCALER_NAME,
# FSDP_MODEL_NAME, _save_rng_state) and accelerate (utils/constants.py, fsdp_utils.save_fsdp_model/_optimizer) write
OPTIMIZER, SCHEDULER, SCALER, RNG = "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth"
RNG_PER_RANK = re.compile(r"^rng_state_(\d+)\.pth$")  # one per process when several train
INTERRUPTED = "no readable trainer_state.json (its save was interrupted)"
FSDP_MODEL, FSDP_OPTIMIZER = "pytorch_model_fsdp", "optimizer"  # + ".bin" (full) or "_0/" (sharded state dict)


def checkpoints(output_dir) -> list[tuple[int, Path, bool]]:
    """``[(step, path, complete)]`` of the ``checkpoint-N`` folders in ``output_dir``, oldest first.

    A checkpoint is complete when its ``trainer_state.json`` (written last by the Trainer) parses: a ``kill -9``
    during saving leaves a folder without it. ``checkpoint_problem`` checks the rest before a resume.
    """
    out = []
    d = Path(output_dir)
    if not d.is_dir():
        return out
    for p in d.iterdir():
        m = CHECKPOINT_DIR.match(p.name)
        if m and p.is_dir():
            try:
                json.loads((p / "trainer_state.json").read_text(encoding="utf-8"))
                complete = True
            except (OSError, ValueError):
                complete = False
            out.append((int(m.group(1)), p, complete))
    return sorted(out)


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (None when it is). Reads only the header: the file must be
    exactly 8 bytes + header + the data the header's offsets describe, so a save cut short by a full disk shows."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 + n:
                return f"{path.name} is truncated ({size:,} bytes, its header alone claims {8 + n:,})"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"{path.name} is unreadable ({e.strerror or e})"
    except ValueError:
        return f"{path.name} has a corrupt header"
    if not isinstance(header, dict):
        return f"{path.name} has a corrupt header"
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        return f"{path.name} has a corrupt header"
    if size != 8 + n + end:
        return f"{path.name} is truncated ({size:,} of {8 + n + end:,} bytes)"
    return None


def _torch_zip_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole torch.save file (None when it is). torch.save writes a zip whose directory is
    at the end, so a truncated file has none; the entries must also lie within the file. Nothing is loaded."""
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"{path.name} is truncated (entry {info.filename} runs past its end)"
    except FileNotFoundError:
        return f"{path.name} is missing"
    except OSError as e:
        return f"{path.name} is unreadable ({e.strerror or e})"
    except zipfile.BadZipFile:
        return f"{path.name} is truncated or corrupt (no readable zip directory)"
    return None


def checkpoint_problem(path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from, or None when it can: its trainer_state.json
    parses and every file a resume of its layout loads is whole (one process, DDP, DeepSpeed, FSDP full or sharded
    state dict). Cheap: headers, zip directories and file sizes only. A read error (e.g. EIO or ESTALE on a network
    disk) is a problem too, named with its cause."""
    p = Path(path)
    why = _trainer_state_problem(p)
    if why:
        return why
    try:
        return _layout_problem(p)
    except OSError as e:  # listing the folder failed
        return f"the folder is unreadable ({e.strerror or e})"


def save_interrupted(path) -> bool:
    """Whether the Trainer never finished saving checkpoint ``path``: its trainer_state.json, written last, is
    missing or cut short (kill -9, full disk). A read error is not that: the files may be fine once the disk is."""
    return _trainer_state_problem(Path(path)) == INTERRUPTED


def _trainer_state_problem(p: Path) -> str | None:
    try:
        json.loads((p / "trainer_state.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return INTERRUPTED
    except OSError as e:
        return f"trainer_state.json is unreadable ({e.strerror or e})"
    return None


def _layout_problem(p: Path) -> str | None:
    names = {c.name for c in p.iterdir()}
    ranks = sorted(int(m.group(1)) for n in names if (m := RNG_PER_RANK.match(n)))
    world = ranks[-1] + 1 if ranks else 1  # every process saved its RNG state, so the highest rank gives the count
    rng = [f"rng_state_{r}.pth" for r in range(world)] if ranks else [RNG]
    if "latest" in names:  # DeepSpeed: model and optimizer live in the folder `latest` names
        why = _deepspeed_problem(p, world)
        required = []  # a DeepSpeed scheduler is saved in the engine's files, not as scheduler.pt
    elif any(n.startswith(FSDP_MODEL) for n in names):
        why = _fsdp_problem(p, names)
        required = [SCHEDULER]
    else:
        why = _weights_problem(p) or _torch_zip_problem(p / OPTIMIZER)
        required = [SCHEDULER]
    if why:
        return why
    optional = [n for n in (SCHEDULER, SCALER) if n in names and n not in required]  # loaded when present
    for name in required + rng + optional:
        why = _torch_zip_problem(p / name)
        if why:
            return why
    return None


def _weights_problem(p: Path) -> str | None:
    """The weights a one-process or DDP resume loads: the LoRA adapter, the shards of an index, or one file."""
    if (p / "adapter_config.json").is_file():
        weights = [p / "adapter_model.safetensors"]
    elif (p / "model.safetensors.index.json").is_file():
        try:
            index = json.loads((p / "model.safetensors.index.json").read_text(encoding="utf-8"))
            weights = [p / name for name in sorted(set(index["weight_map"].values()))]
        except (OSError, ValueError, KeyError, AttributeError):
            return "model.safetensors.index.json is unreadable"
    else:
        weights = [p / "model.safetensors"]
    for f in weights:
        why = _safetensors_problem(f) if f.is_file() else f"{f.name} is missing"
        if why:
            return why
    return None


def _deepspeed_problem(p: Path, world: int) -> str | None:
    """DeepSpeed's save_checkpoint (engine._get_ckpt_name, _get_zero_ckpt_name): ``latest`` names the tag folder
    holding *_model_states.pt (one, or one per rank under ZeRO-3) and zero_pp_rank_<r>_mp_rank_00_optim_states.pt
    (one per rank, ``bf16_``-prefixed under its bf16 optimizer); each of the ``world`` ranks loads its own."""
    try:
        tag = (p / "latest").read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as e:
        return f"latest is unreadable ({getattr(e, 'strerror', None) or e})"
    if not tag or Path(tag).name != tag or not (p / tag).is_dir():
        return f"latest names no folder of the checkpoint ({tag!r})"
    for kind in ("model", "optim"):
        files = sorted((p / tag).glob(f"*_{kind}_states.pt"))
        if not files:
            return f"{tag}/ holds no *_{kind}_states.pt"
        if kind == "optim":
            ranks = {int(m.group(1)) for f in files if (m := re.search(r"zero_pp_rank_(\d+)_", f.name))}
            missing = sorted(set(range(world)) - ranks)
            if missing:
                r = missing[0]
                return f"{tag}/ lacks zero_pp_rank_{r}_mp_rank_00_optim_states.pt (rank {r} of {world})"
        for f in files:
            why = _torch_zip_problem(f)
            if why:
                return f"{tag}/{why}"
    return None


def _fsdp_problem(p: Path, names: set) -> str | None:
    """accelerate's save_fsdp_model / save_fsdp_optimizer: torch files (full state dict, or one per rank) or
    torch.distributed.checkpoint folders (sharded state dict) for the model and for the optimizer."""
    for prefix, what in ((FSDP_MODEL, "model"), (FSDP_OPTIMIZER, "optimizer")):
        files = sorted(n for n in names if n.startswith(prefix) and n.endswith(".bin"))
        dirs = sorted(n for n in names if re.fullmatch(rf"{prefix}_\d+", n) and (p / n).is_dir())
        if not files + dirs:
            return f"no {what} state ({prefix}*.bin or {prefix}_0/)"
        for name in files:
            why = _torch_zip_problem(p / name)
            if why:
                return why
        for name in dirs:
            why = _dcp_problem(p / name)
            if why:
                return why
    return None


def _dcp_problem(d: Path) -> str | None:
    """Why ``d`` is not a whole torch.distributed.checkpoint folder: its .metadata (renamed into place last) must be
    a whole pickle, ending in the STOP opcode ``.``, beside at least one non-empty .distcp file. Nothing is loaded."""
    meta = d / ".metadata"
    try:
        with open(meta, "rb") as f:
            f.seek(-1, os.SEEK_END)
            whole = f.read(1) == b"."
        if not whole:
            return f"{d.name}/.metadata is truncated"
        shards = sorted(d.glob("*.distcp"))
        if not shards:
            return f"{d.name}/ holds no .distcp file"
        for s in shards:
            if s.stat().st_size == 0:
                return f"{d.name}/{s.name} is empty"
    except FileNotFoundError:
        return f"{d.name}/.metadata is missing (its save was interrupted)"
    except OSError as e:
        return f"{d.name}/ is unreadable ({e.strerror or e})"
    return None
