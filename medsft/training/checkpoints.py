"""The ``checkpoint-N`` folders of OUTPUT_DIR: which exist, and whether one is whole enough to resume from (headers,
zip directories and sizes only: nothing is loaded)."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# the Trainer's (OPTIMIZER_NAME, SCHEDULER_NAME, SCALER_NAME, _save_rng_state) and accelerate's FSDP file names
OPTIMIZER, SCHEDULER, SCALER, RNG = "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth"
RNG_PER_RANK = re.compile(r"^rng_state_(\d+)\.pth$")
INTERRUPTED = "no readable trainer_state.json (its save was interrupted)"
TORN = "trainer_state.json holds no trainer state"  # + ": what it holds": present but empty, not JSON, or null
FSDP_MODEL, FSDP_OPTIMIZER = "pytorch_model_fsdp", "optimizer"  # + ".bin" (full) or "_0/" (sharded state dict)

def checkpoints(output_dir) -> list[tuple[int, Path, bool]]:
    """``[(step, path, complete)]`` of the checkpoint-N folders, oldest first; complete: trainer_state.json holds a
    trainer state."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p, _trainer_state_problem(p) is None) for p in d.iterdir()
                  if (m := CHECKPOINT_DIR.match(p.name)) and p.is_dir())

def checkpoint_problem(path) -> str | None:
    """Why checkpoint ``path`` cannot be resumed from (None when it can): trainer_state.json and every file a resume
    of its layout loads (one process, DDP, DeepSpeed, FSDP full or sharded) whole; a read error names its cause."""
    p = Path(path)
    why = _trainer_state_problem(p)
    if why:
        return why
    try:
        return _layout_problem(p)
    except OSError as e:  # listing the folder failed
        return f"the folder is unreadable ({e.strerror or e})"

def save_interrupted(path) -> bool:
    """The Trainer never finished saving ``path`` (trainer_state.json missing, empty or cut short; a read error is
    not)."""
    why = _trainer_state_problem(Path(path))
    return why == INTERRUPTED or torn_state(path)

def torn_state(path) -> bool:
    """trainer_state.json is there but holds no state (empty, not JSON, null): a kill mid-write or a host crash."""
    return (_trainer_state_problem(Path(path)) or "").startswith(TORN)

def _trainer_state_problem(p: Path) -> str | None:
    try:
        raw = (p / "trainer_state.json").read_bytes()
    except FileNotFoundError:
        return INTERRUPTED
    except OSError as e:
        return f"trainer_state.json is unreadable ({e.strerror or e})"
    if not raw.strip():
        return f"{TORN}: it is empty ({len(raw)} bytes; a host crash or a kill while it was written)"
    try:
        state = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return f"{TORN}: it is not JSON ({len(raw):,} bytes; a host crash or a kill while it was written)"
    # the Trainer always writes an object with the step; anything else (null, a list) cannot be resumed from
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{TORN}: it holds {raw[:20].decode('utf-8', 'replace')!r}, not an object with its global_step"
    return None

def _layout_problem(p: Path) -> str | None:
    names = {c.name for c in p.iterdir()}
    ranks = sorted(int(m.group(1)) for n in names if (m := RNG_PER_RANK.match(n)))
    world = ranks[-1] + 1 if ranks else 1  # every process saved its RNG state, so the highest rank gives the count
    rng = [f"rng_state_{r}.pth" for r in range(world)] if ranks else [RNG]
    if "latest" in names:  # DeepSpeed: model, optimizer and scheduler live in the folder `latest` names
        why, required = _deepspeed_problem(p, world), []
    elif any(n.startswith(FSDP_MODEL) for n in names):
        why, required = _fsdp_problem(p, names), [SCHEDULER]
    else:
        why, required = _weights_problem(p) or _zip_problem(p / OPTIMIZER), [SCHEDULER]
    optional = [n for n in (SCHEDULER, SCALER) if n in names and n not in required]  # loaded when present
    return why or next(filter(None, (_zip_problem(p / n) for n in required + rng + optional)), None)

def _safetensors_problem(path: Path) -> str | None:
    """The file must be exactly 8 bytes + header + the data its offsets describe (a cut save shows)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 + n:
                return f"{path.name} is truncated ({size:,} bytes, its header alone claims {8 + n:,})"
            header = json.loads(f.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except OSError as e:
        return f"{path.name} is unreadable ({e.strerror or e})"
    except (ValueError, AttributeError, KeyError, IndexError, TypeError):
        return f"{path.name} has a corrupt header"
    if size != 8 + n + end:
        return f"{path.name} is truncated ({size:,} of {8 + n + end:,} bytes)"
    return None

def _zip_problem(path: Path) -> str | None:
    """torch.save writes a zip whose directory is at its end; every entry must lie within the file."""
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

def _weights_problem(p: Path) -> str | None:
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
    problems = (_safetensors_problem(f) if f.is_file() else f"{f.name} is missing" for f in weights)
    return next(filter(None, problems), None)

def _deepspeed_problem(p: Path, world: int) -> str | None:
    """``latest`` names a folder of *_model_states.pt and one zero_pp_rank_<r>_mp_rank_00_optim_states.pt per rank."""
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
        ranks = {int(m.group(1)) for f in files if (m := re.search(r"zero_pp_rank_(\d+)_", f.name))}
        missing = sorted(set(range(world)) - ranks) if kind == "optim" else []
        if missing:
            return f"{tag}/ lacks zero_pp_rank_{missing[0]}_mp_rank_00_optim_states.pt (rank {missing[0]} of {world})"
        why = next(filter(None, (_zip_problem(f) for f in files)), None)
        if why:
            return f"{tag}/{why}"
    return None

def _fsdp_problem(p: Path, names: set) -> str | None:
    """accelerate's FSDP saves: torch files (full state dict) or torch.distributed.checkpoint folders (sharded)."""
    for prefix, what in ((FSDP_MODEL, "model"), (FSDP_OPTIMIZER, "optimizer")):
        files = sorted(n for n in names if n.startswith(prefix) and n.endswith(".bin"))
        dirs = sorted(n for n in names if re.fullmatch(rf"{prefix}_\d+", n) and (p / n).is_dir())
        if not files + dirs:
            return f"no {what} state ({prefix}*.bin or {prefix}_0/)"
        why = next(filter(None, [*(_zip_problem(p / n) for n in files), *(_dcp_problem(p / n) for n in dirs)]), None)
        if why:
            return why
    return None

def _dcp_problem(d: Path) -> str | None:
    """.metadata (renamed into place last) must be a whole pickle (ends in STOP ``.``) beside non-empty .distcp."""
    try:
        with open(d / ".metadata", "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b".":
                return f"{d.name}/.metadata is truncated"
        shards = sorted(d.glob("*.distcp"))
        if not shards:
            return f"{d.name}/ holds no .distcp file"
        empty = [s for s in shards if s.stat().st_size == 0]
        if empty:
            return f"{d.name}/{empty[0].name} is empty"
    except FileNotFoundError:
        return f"{d.name}/.metadata is missing (its save was interrupted)"
    except OSError as e:
        return f"{d.name}/ is unreadable ({e.strerror or e})"
    return None
