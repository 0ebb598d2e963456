"""OUTPUT_DIR's state between runs: finished or not, what --resume / --overwrite do to it, whether it has room for
the checkpoints, one run at a time (a lock), and the fingerprint that keeps two different runs from mixing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, lock_output_dir does nothing
    fcntl = None

from ..files import MedsftError, write_json
from ..memory import GIB
from ..models import resolve_model
from .checkpoints import checkpoint_problem, checkpoints, save_interrupted
from .disk import disk_errors
from .outputs import RESULTS_NAME

# What a finished run leaves at the top of OUTPUT_DIR. trainer_state.json comes first: it marks the run finished,
# so --overwrite removes it before anything else, and save_final writes it last.
FINAL_FILES = ("trainer_state.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "adapter_model.safetensors", "adapter_model.bin", "adapter_config.json", "config.json",
               "generation_config.json", "train_config.json", "training_args.bin", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt",
               "added_tokens.json", "run_fingerprint.json", "swanlab_run.json")
CHECKPOINT_SMALL_BYTES = 64 * 2 ** 20  # tokenizer, scheduler, RNG and trainer state of a checkpoint, generously
LOCK_NAME = ".lock"
# where --resume=true moves a checkpoint it cannot use: unreadable-checkpoint-N, .interrupted-checkpoint-N
UNREADABLE_PREFIX, INTERRUPTED_PREFIX = "unreadable-", "interrupted-"
_LOCKS: dict[str, int] = {}  # OUTPUT_DIR -> fd holding its flock, for the life of the process


def is_finished(output_dir) -> bool:
    """A finished run leaves ``trainer_state.json`` at the top of OUTPUT_DIR (checkpoints keep theirs inside)."""
    return (Path(output_dir) / "trainer_state.json").is_file()


def _final_outputs(out: Path) -> list[Path]:
    """The previous run's top-level outputs in OUTPUT_DIR, finished marker first (the user's own files stay)."""
    found = [out / n for n in FINAL_FILES if (out / n).is_file()]
    return found + sorted(p for p in out.glob("model-*-of-*.safetensors") if p.is_file())


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_output_dir(cfg: dict) -> Path | None:
    """Decide what to do with OUTPUT_DIR; return the checkpoint to resume from, or None to start fresh.

    A finished run or an unfinished one's checkpoints are never silently mixed with a new run: without RESUME the
    user must choose (resume, another OUTPUT_DIR, or OVERWRITE). OVERWRITE deletes the previous run's final outputs
    (the finished marker first) and checkpoints before anything trains, so a new run killed early never looks
    finished nor leaves the old model for later stages. RESUME verifies checkpoints newest first and resumes from
    the newest usable one; the unusable ones newer than it are moved aside, never deleted (a read error may pass).
    With none usable it refuses, changing nothing, unless each one is a save the Trainer never finished (moved
    aside, then a fresh start, as with no checkpoint at all).
    """
    out = Path(cfg["OUTPUT_DIR"])
    ckpts = checkpoints(out)
    if cfg.get("OVERWRITE"):
        if cfg.get("RESUME"):
            raise MedsftError("--resume=true and --overwrite=true contradict each other: pick one")
        old = _final_outputs(out)
        for f in old:
            f.unlink()
        for _, path, _ in ckpts:
            shutil.rmtree(path)
        if old or ckpts:
            print(f"overwrite: deleted the previous run in {out} ({len(old)} output file(s), {len(ckpts)} "
                  "checkpoint(s))")
        return None
    if cfg.get("RESUME"):
        unusable = []
        for step, path, _ in reversed(ckpts):
            why = checkpoint_problem(path)
            if why is None:
                for bad, bad_why in unusable:  # else later resumes, and the Trainer re-saving that step, meet it
                    _move_aside(bad, bad_why)
                print(f"resume: continuing from {path} (step {step})")
                return path
            unusable.append((path, why))
        damaged = [(path, why) for path, why in unusable if not save_interrupted(path)]
        if damaged:  # a whole save that reads badly now may read fine later, or be worth recovering: the user decides
            found = "; ".join(f"{path.name}: {why}" for path, why in unusable)
            raise MedsftError(f"--resume=true: no checkpoint in {out} can be resumed from ({found}). Nothing was "
                              "changed. If a disk or network error is to blame, retry once it is fixed; otherwise "
                              "start over with --overwrite=true (deletes these checkpoints), or train into another "
                              "--output_dir=DIR")
        for bad, bad_why in unusable:  # saves the Trainer never finished (killed during the first one)
            _move_aside(bad, bad_why)
        print(f"resume: no {'finished ' if unusable else ''}checkpoint in {out}; starting from scratch")
        (out / "swanlab_run.json").unlink(missing_ok=True)  # a fresh start is a new SwanLab experiment too
        return None
    fix = ("continue it with --resume=true, write elsewhere with --output_dir=DIR, or start over with "
           "--overwrite=true (deletes its checkpoints)")
    if is_finished(out):
        raise MedsftError(f"{out} already holds a finished run (trainer_state.json): {fix}")
    if ckpts:
        raise MedsftError(f"{out} holds checkpoints of an unfinished run (newest {ckpts[-1][1].name}): {fix}")
    return None


def _move_aside(path: Path, why: str) -> Path:
    """Rename checkpoint ``path`` to a free name beside it and say so in one line: ``unreadable-checkpoint-N[.k]``,
    or a hidden ``.interrupted-checkpoint-N[.k]`` for a save the Trainer never finished. Neither name is matched by
    the Trainer's rotation (transformers.trainer_utils.sort_checkpoints globs ``checkpoint-*``) nor by
    ``checkpoints()``, so nothing deletes it; an earlier one is never overwritten."""
    base = path.with_name(("." + INTERRUPTED_PREFIX if save_interrupted(path) else UNREADABLE_PREFIX) + path.name)
    dest, k = base, 1
    while dest.exists():
        k += 1
        dest = base.with_name(f"{base.name}.{k}")
    try:
        size = f"{_tree_bytes(path) / GIB:.2f} GiB"
    except OSError:
        size = "size unknown"
    try:
        os.rename(path, dest)
    except OSError as e:
        raise MedsftError(f"--resume=true: {path} cannot be resumed from ({why}) and cannot be moved aside to {dest} "
                          f"({e.strerror or e}); check the disk, then retry") from None
    print(f"resume: {path.name} cannot be resumed from ({why}); moved it to {dest} ({size}; delete it once you have "
          "no use for it)")
    return dest


def checkpoint_bytes(est: dict, lora: bool) -> int:
    """Disk bytes of one checkpoint: the trainable weights (LoRA: the fp32 adapter only), the optimizer's moments
    and small files."""
    weights = est["trainable"] * 4 if lora else est["weights"]
    return weights + est["moments"] + CHECKPOINT_SMALL_BYTES


def check_disk(cfg: dict, est: dict, lora: bool) -> None:
    """Refuse when OUTPUT_DIR's disk cannot hold one checkpoint; warn (one line) when it cannot hold what the run
    keeps at its peak: SAVE_TOTAL_LIMIT checkpoints, one more being written, and the final model. Space that
    --overwrite is about to free counts as free."""
    out = Path(cfg["OUTPUT_DIR"])
    free = shutil.disk_usage(out).free
    if cfg.get("OVERWRITE"):
        free += sum(_tree_bytes(p) for p in _final_outputs(out) + [c for _, c, _ in checkpoints(out)])
    one = checkpoint_bytes(est, lora)
    if free < one:
        weights = est["trainable"] * 4 if lora else est["weights"]
        raise MedsftError(f"{out}: {free / GIB:.2f} GiB free on its disk, but one checkpoint needs ~{one / GIB:.2f} "
                          f"GiB (weights {weights / GIB:.2f} + optimizer state {est['moments'] / GIB:.2f}): free up "
                          "space there, or write elsewhere with --output_dir=DIR")
    keep = cfg.get("SAVE_TOTAL_LIMIT") or 1
    peak = (keep + 1) * one + (est["trainable"] * 4 if lora else est["weights"])
    if free < peak:
        print(f"warning: {out}: {free / GIB:.2f} GiB free, but {keep} kept checkpoint(s), one being saved and the "
              f"final model need ~{peak / GIB:.2f} GiB; the run may stop with 'disk full' (lower --save_total_limit "
              "or free up space)")


def lock_output_dir(output_dir) -> None:
    """Hold an exclusive lock on OUTPUT_DIR/.lock for the life of this process (the kernel drops it when the
    process dies, kill -9 included), so two runs never write one OUTPUT_DIR. The holder's pid is written into the
    file for the refusal message. No-op where fcntl is missing (Windows) or the file system has no locks."""
    if fcntl is None:
        return
    d = Path(output_dir)
    d.mkdir(parents=True, exist_ok=True)
    key = str(d.resolve())
    if key in _LOCKS:
        return
    path = d / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise MedsftError(f"{d} is in use by another training run (pid {holder}, holding {path}): wait for it to "
                          f"finish or stop it, or write elsewhere with --output_dir=DIR") from None
    except OSError as e:  # e.g. ENOLCK on some network file systems: run unguarded rather than not at all
        os.close(fd)
        print(f"warning: cannot lock {path} ({e.strerror or e}); make sure no other run writes {d}")
        return
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    _LOCKS[key] = fd


def unlock_output_dir(output_dir) -> None:
    """Release ``lock_output_dir``'s lock early (tests, and callers that train twice in one process)."""
    fd = _LOCKS.pop(str(Path(output_dir).resolve()), None)
    if fd is not None:
        os.close(fd)


RUN_KEYS = ("MODEL", "MODEL_REVISION", "QUANTIZATION", "MAX_LENGTH", "EPOCHS", "MAX_STEPS", "BATCH_SIZE", "GRAD_ACCUM",
            "LEARNING_RATE", "SCHEDULER", "WARMUP", "WEIGHT_DECAY", "MAX_GRAD_NORM", "SEED", "NO_THINK_RATIO", "LORA_R",
            "LORA_ALPHA", "LORA_DROPOUT", "LORA_TARGET_MODULES")
# what turns a row into tokens: the tokenizer and its chat template, in whichever of these files the model has
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "added_tokens.json", "special_tokens_map.json")


def run_fingerprint(cfg: dict, feats: dict) -> dict:
    """What defines a run: the data bytes, the tokenizer and chat template of the model trained, the schedule
    (RUN_KEYS) and the resolved features, as JSON values."""
    digest = hashlib.sha256()
    for name in ("train.jsonl", "val.jsonl"):
        digest.update((Path(cfg["DATA_DIR"]) / name).read_bytes())
    fp = {"data_sha256": digest.hexdigest(), "tokenizer_sha256": _tokenizer_sha256(cfg["MODEL"]),
          **{k: cfg[k] for k in RUN_KEYS if k in cfg}, "features": feats}
    if int(cfg.get("WORLD_SIZE") or 1) > 1:  # another process count deals the data out differently
        fp.update(WORLD_SIZE=cfg["WORLD_SIZE"], ENGINE=cfg.get("ENGINE"))
    return json.loads(json.dumps(fp))  # tuples become lists, as in the file it is compared with


def _tokenizer_sha256(spec) -> str:
    model_dir = resolve_model(str(spec))
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = model_dir / name
        if f.is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


def _read_fingerprint(output_dir) -> dict | None:
    path = Path(output_dir) / "run_fingerprint.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise MedsftError(f"{path}: unreadable ({e}); start over with --overwrite=true, or use another "
                          "--output_dir") from None


def _changed(old: dict, fp: dict) -> list[str]:
    return [k for k in dict.fromkeys([*fp, *old]) if k != "features" and old.get(k) != fp.get(k)]


def _named(changed: list[str]) -> str:
    """``"data_sha256 (the data files), LEARNING_RATE"``: the changed keys, the digests said in words."""
    words = {"data_sha256": "the data files", "tokenizer_sha256": "the model's tokenizer or chat template"}
    return ", ".join(f"{k} ({words[k]})" if k in words else k for k in changed)


def _moved_features(old: dict, feats: dict) -> str | None:
    """``"X=new (was old); resume as before with --x=old"`` when the auto features resolve differently now."""
    moved = {k: v for k, v in (old.get("features") or {}).items() if feats.get(k) != v}
    if not moved:
        return None
    now = ", ".join(f"{k}={feats.get(k)} (was {v})" for k, v in moved.items())
    keep = " ".join(f"--{k.lower()}={str(v).lower() if isinstance(v, bool) else v}" for k, v in moved.items())
    return (f"the features now resolve to {now}, e.g. a library was installed or removed since the run started; "
            f"resume as before with {keep}")


def check_finished(cfg: dict, kind: str, fp: dict) -> None:
    """A finished run asked to run again (the pipeline re-run, or --resume=true) with the same fingerprint: say so
    in one line and exit 0, touching no file; re-training from its last checkpoint would train nothing and
    overwrite its results with a 0 tokens/s session. With another fingerprint, --resume=true is refused here (it
    would mix two runs) and so is a plain run (check_output_dir's refusal), before any file is written.
    OVERWRITE starts over in any case."""
    out = Path(cfg["OUTPUT_DIR"])
    if cfg.get("OVERWRITE") or not is_finished(out):
        return
    old = _read_fingerprint(out)
    if old == fp:
        try:
            step = json.loads((out / "trainer_state.json").read_text(encoding="utf-8")).get("global_step", "?")
        except (OSError, ValueError):
            step = "?"
        results = Path(cfg.get("RESULTS_DIR") or ".") / RESULTS_NAME.format(kind=kind)
        where = f"results in {results}" if results.is_file() else f"no {results} (it went to that run's --results_dir)"
        print(f"{out} already holds this finished run (step {step}, same data and settings): nothing to do; "
              f"{where}; to train it again use --overwrite=true")
        raise SystemExit(0)
    if not cfg.get("RESUME"):
        check_output_dir(cfg)  # refuses: a finished run with other settings is never silently replaced
    changed = _changed(old, fp) if old else []
    moved = _moved_features(old, fp["features"]) if old and not changed else None
    if moved:
        raise MedsftError(f"--resume=true: {out} holds a finished run; {moved}")
    what = (f"was trained with other {_named(changed)}" if old else
            "has no run_fingerprint.json to compare its settings with")
    raise MedsftError(f"--resume=true: {out} holds a finished run that {what}: resuming would mix two runs; "
                      "start over with --overwrite=true, or use another --output_dir")


def check_same_run(cfg: dict, resume_from, feats: dict) -> None:
    """Record what defines a run (data bytes, tokenizer and chat template, schedule, resolved features) in
    OUTPUT_DIR/run_fingerprint.json; refuse to resume a run whose data, tokenizer or schedule changed since (e.g.
    data.py re-run, or an edited chat template), or whose ``auto`` features would now resolve differently (e.g.
    bitsandbytes or flash-attn installed meanwhile), which would silently mix two runs."""
    fp = run_fingerprint(cfg, feats)
    path = Path(cfg["OUTPUT_DIR"]) / "run_fingerprint.json"
    old = _read_fingerprint(cfg["OUTPUT_DIR"]) if resume_from is not None else None
    if old is not None:
        changed = _changed(old, fp)
        if changed:
            raise MedsftError(f"--resume=true: {path.parent} was trained with other {_named(changed)}: resuming "
                              "would mix two runs; start over with --overwrite=true, or use another --output_dir")
        moved = _moved_features(old, fp["features"])
        if moved:
            raise MedsftError(f"--resume=true: {moved}")
    with disk_errors(path.parent, "run_fingerprint.json", "output_dir"):
        write_json(path, fp)
