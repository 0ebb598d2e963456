"""The run harness every trainer uses the same way (train.py, train_lora.py, train_grpo.py): ``start`` (rank 0's
checks before any weights load: the finished-run no-op, no GPU, memory, disk, the lock, the resume choice that never
deletes, the fingerprint that keeps two runs from mixing), ``callbacks.make`` (clock, Ctrl-C stop, SwanLab), ``train``
(Ctrl-C saves a checkpoint and exits 130), ``save_final`` (staged; ``trainer_state.json`` last marks the run
finished) and ``finish``. docs/reliability.md says what each guarantees."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, lock_output_dir does nothing
    fcntl = None

from ..config import FEATURES, RESULTS_NAME, Config, save_config
from ..files import MedsftError, disk_errors, write_json
from ..memory import GIB, check_fits, estimate_line, ways_out
from ..model_checks import weights_identity
from . import distributed, tracking
from .checkpoints import checkpoint_problem, checkpoints, save_interrupted, torn_state

CPU_MAX_PARAMS = 100_000_000  # more parameters than this need a GPU (or ALLOW_CPU): Qwen3-0.6B already takes days
# A finished run's top-level outputs; trainer_state.json first: --overwrite removes it first, save_final writes it last
FINAL_FILES = ("trainer_state.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "adapter_model.safetensors", "adapter_model.bin", "adapter_config.json", "config.json",
               "generation_config.json", "train_config.json", "training_args.bin", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt",
               "added_tokens.json", "run_fingerprint.json", "swanlab_run.json")
CHECKPOINT_SMALL_BYTES = 64 * 2 ** 20  # tokenizer, scheduler, RNG and trainer state of a checkpoint, generously
LOCK_NAME = ".lock"
UNREADABLE_PREFIX, INTERRUPTED_PREFIX = "unreadable-", "interrupted-"  # where --resume moves unusable checkpoints
_LOCKS: dict[str, int] = {}  # OUTPUT_DIR -> fd holding its flock, for the life of the process
# Constants that cannot change what a run trains (where it writes, how often it logs, what it prints); every other
# constant is in the fingerprint, so a new training constant needs no edit here. Features go in resolved.
NOT_TRAINED = ("DATA_DIR", "OUTPUT_DIR", "RESULTS_DIR", "RESUME", "OVERWRITE", "ALLOW_CPU", "DRY_RUN", "DRY_RUN_GPUS",
               "ENGINE", "GLOBAL_BATCH", "EVAL_STEPS", "SAVE_STEPS", "SAVE_TOTAL_LIMIT", "LOGGING_STEPS",
               "GRADIENT_CHECKPOINTING", "SWANLAB_PROJECT", "RUN_NAME", "SWANLAB_LOG_DIR", "PREVIEW_QUESTIONS",
               "PREVIEW_MAX_NEW_TOKENS", "DEEPSPEED", "WORLD_SIZE", "EXAMPLES_PER_STEP", "ESTIMATED_PEAK_GIB", *FEATURES)
# what turns a row into tokens: the tokenizer and its chat template, in whichever of these files the model has
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "added_tokens.json", "special_tokens_map.json")
STAGING = ".final-staging"  # where save_final writes before renaming into OUTPUT_DIR
UNPUBLISHED = ("training_args.bin",)  # a pickle of the TrainingArguments: train_config.json has the settings

# --- start: every check before weights load ---------------------------------------------------------------------

def start(cfg: Config, kind: str, *, fingerprint: dict, estimate: dict, lora: bool) -> Path | None:
    """Rank 0's checks, then every rank gets the checkpoint to resume from (None: a fresh start). A finished run
    with this fingerprint exits 0 touching nothing; a real-size model without a GPU, an estimate over the GPU's free
    memory or a disk without room for a checkpoint stop here; then OUTPUT_DIR is locked, the resume chosen (never
    deleting a checkpoint on a guess) and the fingerprint recorded."""
    try:
        return distributed.on_main(_start, cfg, kind, fingerprint, estimate, lora)
    except SystemExit as e:
        if e.code == 0:  # the finished-run no-op: every rank got its outcome, so the group can end cleanly
            distributed.stop_process_group()
        raise

def _start(cfg: Config, kind: str, fp: dict, est: dict, lora: bool) -> Path | None:
    import torch
    check_finished(cfg, kind, fp)
    print(estimate_line(est))
    if not est["params"] < CPU_MAX_PARAMS and not cfg.allow_cpu and not torch.cuda.is_available():
        raise MedsftError(f"no CUDA GPU found, and {cfg.model} has {est['params'] / 1e9:.2f}B parameters: training "
                          "it on a CPU takes days. Run it on a GPU, or try the whole pipeline on CPU in minutes with "
                          "--model=tiny. To train on CPU anyway, add --allow_cpu=true")
    check_fits(est, lora)
    check_disk(cfg, est, lora)
    lock_output_dir(cfg.output_dir)  # before deleting or writing anything there
    resume_from = check_output_dir(cfg)  # last: --overwrite deletes, so every other check must have passed
    check_same_run(cfg, resume_from, fp)
    return resume_from

def check_disk(cfg: Config, est: dict, lora: bool) -> None:
    """Refuse when OUTPUT_DIR's disk cannot hold one checkpoint; warn when it cannot hold SAVE_TOTAL_LIMIT, one
    being written and the final model. Space --overwrite is about to free counts as free."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    if cfg.overwrite:
        free += sum(_tree_bytes(p) for p in _final_outputs(out) + [c for _, c, _ in checkpoints(out)])
    weights = est["trainable"] * 4 if lora else est["weights"]  # LoRA: the fp32 adapter only
    one = weights + est["moments"] + CHECKPOINT_SMALL_BYTES
    if free < one:
        raise MedsftError(f"{out}: {free / GIB:.2f} GiB free on its disk, but one checkpoint needs ~{one / GIB:.2f} "
                          f"GiB (weights {weights / GIB:.2f} + optimizer state {est['moments'] / GIB:.2f}): free up "
                          "space there, or write elsewhere with --output_dir=DIR")
    keep = cfg.save_total_limit or 1
    peak = (keep + 1) * one + weights
    if free < peak:
        print(f"warning: {out}: {free / GIB:.2f} GiB free, but {keep} kept checkpoint(s), one being saved and the "
              f"final model need ~{peak / GIB:.2f} GiB; the run may stop with 'disk full' (lower --save_total_limit "
              "or free up space)")

# --- OUTPUT_DIR: finished or not, --resume / --overwrite, the lock --------------------------------------------------

def is_finished(output_dir) -> bool:
    """A finished run leaves ``trainer_state.json`` at the top of OUTPUT_DIR (checkpoints keep theirs inside)."""
    return (Path(output_dir) / "trainer_state.json").is_file()

def _final_outputs(out: Path) -> list[Path]:
    found = [out / n for n in FINAL_FILES if (out / n).is_file()]
    return found + sorted(p for p in out.glob("model-*-of-*.safetensors") if p.is_file())

def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

def check_output_dir(cfg) -> Path | None:
    """The checkpoint to resume from, or None to start fresh; a previous run is never silently mixed in, and a
    checkpoint never deleted on a guess (docs/reliability.md)."""
    cfg = Config.of(cfg)
    out = Path(cfg.output_dir)
    ckpts = checkpoints(out)
    if cfg.overwrite:
        if cfg.resume:
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
    if cfg.resume:
        unusable = []
        for step, path, _ in reversed(ckpts):
            why = checkpoint_problem(path)
            if why is None:
                for bad, bad_why in unusable:  # else later resumes, and the Trainer re-saving that step, meet it
                    _move_aside(bad, bad_why)
                print(f"resume: continuing from {path} (step {step})")
                return path
            unusable.append((path, why))
        found = "; ".join(f"{path.name}: {why}" for path, why in unusable)
        if any(not save_interrupted(path) for path, _ in unusable):  # a whole save that reads badly: the user decides
            raise MedsftError(f"--resume=true: no checkpoint in {out} can be resumed from ({found}). Nothing was "
                              "changed. If a disk or network error is to blame, retry once it is fixed; otherwise "
                              "start over with --overwrite=true (deletes these checkpoints), or train into another "
                              f"--output_dir=DIR{_hidden_aside(out)}")
        if any(torn_state(path) for path, _ in unusable):  # a host crash can empty every one: never restart silently
            raise MedsftError(f"--resume=true: no checkpoint in {out} holds a whole trainer_state.json ({found}), so "
                              f"none can be resumed from and starting at step 0 would drop the run. Nothing was "
                              f"changed. Inspect the newest, {unusable[0][0]}; to start over use --overwrite=true "
                              f"(deletes these checkpoints), or train into another --output_dir=DIR"
                              f"{_hidden_aside(out)}")
        for bad, bad_why in unusable:
            _move_aside(bad, bad_why)
        print(f"resume: no {'finished ' if unusable else ''}checkpoint in {out}; starting from scratch"
              f"{_hidden_aside(out)}")
        (out / "swanlab_run.json").unlink(missing_ok=True)  # a fresh start is a new SwanLab experiment too
        return None
    fix = ("continue it with --resume=true, write elsewhere with --output_dir=DIR, or start over with "
           "--overwrite=true (deletes its checkpoints)")
    if is_finished(out):
        raise MedsftError(f"{out} already holds a finished run (trainer_state.json): {fix}")
    if ckpts:
        raise MedsftError(f"{out} holds checkpoints of an unfinished run (newest {ckpts[-1][1].name}): {fix}")
    return None

def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2 ** 20:.1f} MiB"

def _hidden_aside(out: Path) -> str:
    """``; hidden ... (sizes)`` for the .interrupted-checkpoint-N folders of ``out`` (ls does not show them)."""
    found = []
    for p in sorted(out.glob("." + INTERRUPTED_PREFIX + "checkpoint-*")):
        try:
            found.append(f"{p} ({_size(_tree_bytes(p))})")
        except OSError:
            found.append(f"{p} (size unknown)")
    if not found:
        return ""
    return (f"; earlier resumes moved these hidden folders aside, which --overwrite=true keeps: {', '.join(found)} "
            "(delete them once you have no use for them)")

def _move_aside(path: Path, why: str) -> None:
    """Rename an unusable checkpoint to a free ``unreadable-checkpoint-N[.k]`` (or hidden ``.interrupted-...``):
    names neither the Trainer's rotation (``checkpoint-*``) nor ``checkpoints()`` match, so nothing deletes it."""
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

def lock_output_dir(output_dir) -> None:
    """Hold an exclusive flock on OUTPUT_DIR/.lock (with the holder's pid) for the life of the process, so two runs
    never write one OUTPUT_DIR; the kernel drops it when the process dies. No-op without fcntl."""
    if fcntl is None:
        return
    d = Path(output_dir)
    d.mkdir(parents=True, exist_ok=True)
    key = str(d.resolve())
    if key in _LOCKS:
        return
    path = d / LOCK_NAME
    try:  # O_NOFOLLOW: a planted symlink would have us truncate whatever it points at
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as e:
        if e.errno != errno.ELOOP and not path.is_symlink():
            raise
        raise MedsftError(f"{path} is a symlink (to {os.readlink(path)}), not the lock file this project creates: "
                          "a lock is never written through a link, as that would overwrite its target. Remove the "
                          f"link (rm {path}) and run again, or write elsewhere with --output_dir=DIR") from None
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
    fd = _LOCKS.pop(str(Path(output_dir).resolve()), None)
    if fd is not None:
        os.close(fd)

# --- the fingerprint: what the run trains on and with --------------------------------------------------------------

def fingerprint(cfg: Config, hashes: dict, not_trained: tuple = ()) -> dict:
    """``hashes`` (the data, tokenizer and weights it trains from), every constant but NOT_TRAINED and the script's
    ``not_trained``, the resolved features, and the process count when there are several."""
    skip = set(NOT_TRAINED) | set(not_trained)
    fp = {**hashes, **{k: v for k, v in cfg.items() if k not in skip},
          "features": {k: cfg[k] for k in FEATURES if k in cfg}}
    if int(cfg.get("WORLD_SIZE") or 1) > 1:  # another process count deals the data out differently
        fp.update(WORLD_SIZE=cfg["WORLD_SIZE"], ENGINE=cfg["ENGINE"])
    return json.loads(json.dumps(fp))  # tuples become lists, as in the file it is compared with

def tokenizer_sha256(model_dir: Path) -> str:
    """One hash of the files that turn text into tokens (the tokenizer and its chat template)."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256((model_dir / name).read_bytes()).digest())
    return digest.hexdigest()

def weights_sha256(model_dir: Path, *also: Path) -> str | None:
    """The weights' identity (``model_checks.weights_identity``) of ``model_dir``, combined with that of each of
    ``also`` (e.g. an adapter a run starts from) when given."""
    if not also:
        return weights_identity(model_dir)
    ids = [weights_identity(d) for d in (model_dir, *also)]
    return hashlib.sha256(json.dumps(ids).encode("utf-8")).hexdigest()

def _comparable(old: dict, fp: dict) -> dict:
    # a fingerprint written before a key existed is compared without it (it cannot know), then rewritten with it
    return {k: v for k, v in fp.items() if k in old}

def _read_fingerprint(out: Path) -> dict | None:
    path = out / "run_fingerprint.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise MedsftError(f"{path}: unreadable ({e}); start over with --overwrite=true, or use another "
                          "--output_dir") from None

def _mismatch(old: dict, fp: dict) -> tuple[str, str | None]:
    """``(the changed keys in words, or ""; how the auto features moved, or None)``."""
    fp = _comparable(old, fp)
    changed = [k for k in dict.fromkeys([*fp, *old]) if k != "features" and old.get(k) != fp.get(k)]
    words = {"data_sha256": "the data files", "tokenizer_sha256": "the model's tokenizer or chat template",
             "weights_sha256": "the model's weights: retrained in place, or another revision of a hub id"}
    named = ", ".join(f"{k} ({words[k]})" if k in words else k for k in changed)
    moved = {k: v for k, v in (old.get("features") or {}).items() if fp.get("features", {}).get(k) != v}
    if not moved:
        return named, None
    now = ", ".join(f"{k}={fp['features'].get(k)} (was {v})" for k, v in moved.items())
    keep = " ".join(f"--{k.lower()}={str(v).lower() if isinstance(v, bool) else v}" for k, v in moved.items())
    return named, (f"the features now resolve to {now}, e.g. a library was installed or removed since the run "
                   f"started; resume as before with {keep}")

def check_finished(cfg, kind: str, fp: dict) -> None:
    """A finished run asked to run again with the same fingerprint: say so and exit 0, touching nothing. With
    another one, --resume=true is refused (it would mix two runs) and so is a plain run. OVERWRITE starts over."""
    cfg = Config.of(cfg)
    out = Path(cfg.output_dir)
    if cfg.overwrite or not is_finished(out):
        return
    old = _read_fingerprint(out)
    if old is not None and old == _comparable(old, fp):
        try:
            step = json.loads((out / "trainer_state.json").read_text(encoding="utf-8")).get("global_step", "?")
        except (OSError, ValueError):
            step = "?"
        results = Path(cfg.results_dir or ".") / RESULTS_NAME.format(kind=kind)
        where = f"results in {results}" if results.is_file() else f"no {results} (it went to that run's --results_dir)"
        print(f"{out} already holds this finished run (step {step}, same data and settings): nothing to do; "
              f"{where}; to train it again use --overwrite=true")
        raise SystemExit(0)
    if not cfg.resume:
        check_output_dir(cfg)  # refuses: a finished run with other settings is never silently replaced
    changed, moved = _mismatch(old, fp) if old else ("", None)
    if moved and not changed:
        raise MedsftError(f"--resume=true: {out} holds a finished run; {moved}")
    what = f"was trained with other {changed}" if old else "has no run_fingerprint.json to compare its settings with"
    raise MedsftError(f"--resume=true: {out} holds a finished run that {what}: resuming would mix two runs; "
                      "start over with --overwrite=true, or use another --output_dir")

def check_same_run(cfg, resume_from, fp: dict) -> None:
    """Record ``fp`` in OUTPUT_DIR/run_fingerprint.json; refuse to resume a run whose data, tokenizer, settings or
    resolved auto features changed since."""
    out = Path(Config.of(cfg).output_dir)
    old = _read_fingerprint(out) if resume_from is not None else None
    changed, moved = _mismatch(old, fp) if old is not None else ("", None)
    if changed:
        raise MedsftError(f"--resume=true: {out} was trained with other {changed}: resuming would mix two runs; "
                          "start over with --overwrite=true, or use another --output_dir")
    if moved:
        raise MedsftError(f"--resume=true: {moved}")
    with disk_errors(out, "run_fingerprint.json", "output_dir"):
        write_json(out / "run_fingerprint.json", fp)

# --- train, save, finish --------------------------------------------------------------------------------------------

def train(trainer, resume_from, cfg: Config, lora: bool, grpo: bool = False) -> dict:
    """Train (resuming from ``resume_from``) and return the session summary. Out of memory says how out; a Ctrl-C
    (its checkpoint saved) ends the SwanLab run as aborted and exits 130."""
    from .trainer import clock_of, stop_of
    cfg = Config.of(cfg)
    try:
        with disk_errors(cfg.output_dir, "a checkpoint", "output_dir", resume=True):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
        text = str(e)
        if "out of memory" not in text.lower():
            raise
        raise MedsftError(f"out of memory ({text.splitlines()[0][:200]}); {ways_out(lora, grpo)}") from e
    if stop_of(trainer).requested:
        stopped = (f"stopped at step {trainer.state.global_step}: checkpoint saved in {cfg.output_dir}; continue "
                   "with --resume=true")
        tracking.finish_swanlab(interrupted=True, reason=stopped)
        print(stopped)
        raise SystemExit(130)
    return {**clock_of(trainer).summary(trainer.state), "resumed_from": str(resume_from) if resume_from else None}

def save_final(trainer, tokenizer, cfg: Config, base_model: str | None = None) -> list[Path]:
    """Save the model or adapter (its base_model_name_or_path = ``base_model``, default MODEL), tokenizer, generation
    config, train_config.json (``cfg``) and, last, trainer_state.json into OUTPUT_DIR. Every process calls it
    (ZeRO-3 / FSDP2 gather); rank 0 writes."""
    cfg = Config.of(cfg)
    out = Path(cfg.output_dir)
    with disk_errors(out, "the final model", "output_dir", resume=True):
        # staged in a hidden folder, then renamed file by file: a kill leaves each top-level file whole, old or new
        stage = out / STAGING
        distributed.on_main(_fresh_folder, stage)  # a save killed earlier may have left one
        model = trainer.model
        model.config.use_cache = True  # inference wants the KV cache back
        tokenizer.padding_side = "left"
        if hasattr(model, "peft_config"):
            for adapter in model.peft_config.values():
                adapter.base_model_name_or_path = str(base_model or cfg.model)
            sharded = cfg.get("ENGINE") in distributed.SHARDED
            state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None

            def save_adapter():
                # save_embedding_layers=False: peft's "auto" would look the spec up on the Hugging Face Hub
                model.save_pretrained(stage, state_dict=state_dict, save_embedding_layers=False)
                model.get_base_model().generation_config.save_pretrained(stage)
                tokenizer.save_pretrained(stage)
            distributed.on_main(save_adapter)
        else:
            if cfg.get("PRECISION") == "bf16-mixed" and not cfg.get("DEEPSPEED"):
                import torch
                model.to(torch.bfloat16)  # fp32 master weights were for the updates; ship bf16 like Qwen3 itself
            trainer.save_model(str(stage))  # model.safetensors + config + generation_config + tokenizer; gathers
        return distributed.on_main(_publish, trainer, cfg, stage, out)

def _fresh_folder(path: Path) -> None:
    if path.is_symlink():  # rmtree refuses a link and save_model would write through it into its target
        raise MedsftError(f"{path} is a symlink (to {os.readlink(path)}), not the staging folder this project "
                          f"creates: nothing is saved through a link. Remove it (rm {path}), then continue with "
                          "--resume=true")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)

def _publish(trainer, config, stage: Path, out: Path) -> list[Path]:
    save_config(config, stage / "train_config.json")
    names = sorted(p.name for p in stage.iterdir() if p.is_file() and p.name not in UNPUBLISHED)
    for name in names:
        os.replace(stage / name, out / name)
    shutil.rmtree(stage, ignore_errors=True)
    # a fresh name created exclusively: save_to_json's plain open() then writes our own file, never a planted link
    tmp = out / f".trainer_state.json.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
    try:
        trainer.state.save_to_json(str(tmp))
        os.replace(tmp, out / "trainer_state.json")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    weights = [out / n for n in names if n.endswith(".safetensors")]
    return weights + [out / "tokenizer_config.json", out / "generation_config.json", out / "train_config.json",
                      out / "trainer_state.json"]

def finish(trainer, written: list) -> None:
    """End the SwanLab run as a success, list what was written, end the process group (every rank, at the end)."""
    tracking.finish_swanlab()
    print("wrote:\n  " + "\n  ".join(str(p) for p in written))
    distributed.stop_process_group(trainer)
