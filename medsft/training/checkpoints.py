"""The ``checkpoint-N`` folders of OUTPUT_DIR: which exist, and whether one is whole enough to resume from.

Cheap checks only (JSON, safetensors headers, zip directories): nothing is loaded.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")  # the Trainer's checkpoint folders; the number is the step
CHECKPOINT_STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")  # torch zip files a one-process resume loads


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
    parses, its weights (model, shards or LoRA adapter) are whole safetensors files, and its optimizer, scheduler
    and RNG states are whole torch files. Cheap: headers and zip directories only."""
    p = Path(path)
    try:
        json.loads((p / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable trainer_state.json (its save was interrupted)"
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
    for f in _state_files(p):
        why = _torch_zip_problem(f)
        if why:
            return why
    return None


def _state_files(p: Path) -> list[Path]:
    """The torch files a resume of checkpoint ``p`` loads. Several processes save one RNG state each
    (rng_state_<rank>.pth); DeepSpeed saves its model and optimizer shards in the folder its ``latest`` file
    names, instead of optimizer.pt."""
    files = [p / "scheduler.pt"]
    files += sorted(p.glob("rng_state_*.pth")) or [p / "rng_state.pth"]
    try:
        tag = (p / "latest").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return [p / "optimizer.pt"] + files
    except (OSError, ValueError):
        tag = ""
    shards = sorted((p / tag).glob("*_states.pt")) if tag else []
    return (shards or [p / (tag or "latest") / "zero_pp_rank_0_mp_rank_00_optim_states.pt"]) + files
