"""OUTPUT_DIR bookkeeping before any weights load: settings and versions, one run at a time (a lock), the
fingerprint that keeps two runs from mixing, the resume choice, whole checkpoints, disk room, the dry run."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, lock_output_dir does nothing
    fcntl = None

from ..config import KINDS, RESULTS_NAME, TrainConfig
from ..files import MedsftError, check_writable, disk_errors, write_json
from ..memory import GIB, check_fits, estimate, estimate_line
from ..model_checks import weights_identity
from ..models import resolve_model
from . import distributed
from .checkpoints import checkpoint_problem, checkpoints, save_interrupted, torn_state
from .sft import resolve_features, resolved

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
RUN_KEYS = ("MODEL", "MODEL_REVISION", "QUANTIZATION", "MAX_LENGTH", "EPOCHS", "MAX_STEPS", "BATCH_SIZE", "GRAD_ACCUM",
            "LEARNING_RATE", "SCHEDULER", "WARMUP", "WEIGHT_DECAY", "MAX_GRAD_NORM", "SEED", "NO_THINK_RATIO", "LORA_R",
            "LORA_ALPHA", "LORA_DROPOUT", "LORA_TARGET_MODULES")
ADDED_KEYS = ("weights_sha256", "LORA_R", "LORA_ALPHA")  # fingerprint keys added since runs began recording one
# what turns a row into tokens: the tokenizer and its chat template, in whichever of these files the model has
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "added_tokens.json", "special_tokens_map.json")

# --- the run: start_run and its checks ------------------------------------------------------------------------------

def start_run(cfg, kind: str) -> tuple[TrainConfig, Path | None]:
    """Every fail-fast check before weights load: ``(cfg resolved, checkpoint to resume or None)``; DRY_RUN exits.
    Rank 0 checks; every rank fetches the model outside any collective (a download never meets its timeout)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    distributed.start()
    cfg = TrainConfig.of(cfg)
    cfg = cfg.replace(**{k.lower(): v for k, v in distributed.on_main(check_settings, cfg, kind).items()})
    model_dir = resolve_model(str(cfg.model), config_only=cfg.dry_run)
    try:
        resume_from, peak = distributed.on_main(_check_run, cfg, kind, model_dir)
    except SystemExit as e:
        if e.code == 0:  # the dry run: every rank got its outcome and stops here, so the group can end cleanly
            distributed.stop_process_group()
        raise
    return resolved(cfg.replace(estimated_peak_gib=peak), lora=kind == "lora", log=True), resume_from

def preflight(cfg, kind: str) -> Path | None:
    """``start_run`` for callers that need only the checkpoint to resume from."""
    return start_run(cfg, kind)[1]

def check_settings(cfg: TrainConfig, kind: str) -> dict:
    """The checks that need no model; returns ENGINE, DEEPSPEED, WORLD_SIZE, GRAD_ACCUM and EXAMPLES_PER_STEP."""
    lora = kind == "lora"
    for name in ("BATCH_SIZE", "GRAD_ACCUM", "LOGGING_STEPS", "EVAL_STEPS", "SAVE_STEPS", "MAX_LENGTH"):
        if getattr(cfg, name.lower()) < 1:
            raise MedsftError(f"--{name.lower()}={getattr(cfg, name.lower())}: must be at least 1")
    if cfg.max_steps <= 0 and cfg.epochs <= 0:
        raise MedsftError("nothing to train: set --epochs > 0 or --max_steps > 0")
    if not 0 <= cfg.seed < 2 ** 32:
        raise MedsftError(f"--seed={cfg.seed}: must be between 0 and 2**32 - 1")
    if lora and (cfg.lora_r < 1 or cfg.lora_alpha <= 0):
        raise MedsftError(f"--lora_r={cfg.lora_r} --lora_alpha={cfg.lora_alpha}: the rank must be at least 1 "
                          "and alpha positive")
    if lora and not 0 <= cfg.lora_dropout < 1:
        raise MedsftError(f"--lora_dropout={cfg.lora_dropout}: must be in [0, 1)")
    launch = distributed.resolve_engine(cfg)
    launch.update(distributed.resolve_batch(cfg, launch["WORLD_SIZE"]))
    cfg = cfg.replace(**{k.lower(): v for k, v in launch.items()})
    _check_quantization(cfg, lora)
    check_versions()
    if cfg.dry_run:
        return launch
    check_data(cfg.data_dir)
    resolve_features(cfg, lora=lora, log=False)  # bad precision/attention/optim choices, before loading
    check_writable(cfg.output_dir, "output_dir")  # before the model is fetched (maybe downloaded)
    if cfg.results_dir:
        check_writable(cfg.results_dir, "results_dir")
    return launch

def _check_quantization(cfg: TrainConfig, lora: bool) -> None:
    quant = str(cfg.quantization).lower()
    if quant in ("none", ""):
        return
    if quant != "4bit" or not lora:
        raise MedsftError(f"--quantization={cfg.quantization}: expected none or 4bit (QLoRA, train_lora.py "
                          "only: a quantized base cannot be fully fine-tuned)")
    if cfg.engine in distributed.SHARDED:
        raise MedsftError(f"--quantization=4bit with --engine={cfg.engine}: a 4-bit base is not sharded here; "
                          "use --engine=ddp (each GPU holds the whole 4-bit base)")
    from transformers.utils import is_bitsandbytes_available
    if not cfg.dry_run and not is_bitsandbytes_available():
        raise MedsftError("--quantization=4bit needs bitsandbytes: pip install -r requirements-scale.txt (see "
                          "docs/scale.md), or use --quantization=none")

def check_data(data_dir) -> None:
    d = Path(data_dir)
    for p in (d / "train.jsonl", d / "val.jsonl"):
        if not p.is_file():
            raise MedsftError(f"{p} not found: run data.py first (it writes train/val/test.jsonl into {d}/), "
                              "or point --data_dir at a folder that has them")

def check_versions(requirements=None) -> None:
    """Stop when an installed library is older than requirements.txt's floor (it would crash after minutes)."""
    path = Path(requirements) if requirements else Path(__file__).resolve().parents[2] / "requirements.txt"
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            req = Requirement(line.split("#", 1)[0].strip())
        except InvalidRequirement:
            continue  # blank lines and comments
        floors = [s.version for s in req.specifier if s.operator in (">=", "==")]
        if not floors or (req.marker is not None and not req.marker.evaluate()):
            continue
        try:
            have = version(req.name)
        except PackageNotFoundError:
            raise MedsftError(f"{req.name} is not installed ({path.name} needs {req}): pip install -r {path}") from None
        if Version(have.split("+")[0]) < Version(floors[0]):
            raise MedsftError(f"{req.name} {have} is installed but this project needs {req} ({path.name}): "
                              f"pip install -r {path}")

def dry_run(cfg, kind: str, model_dir=None) -> None:
    """Print the resolved features and the per-GPU memory estimate (config.json only), then exit 0."""
    lora = kind == "lora"
    cfg = resolved(cfg, lora=lora, log=True, assume_gpu=True)
    est = estimate(cfg, model_dir or resolve_model(str(cfg.model), config_only=True), lora)
    print(estimate_line(est))
    where = "" if cfg.engine == "single" else f"; per GPU with {cfg.engine} on {cfg.world_size} GPUs"
    print(f"dry run: {est['params'] / 1e9:.3f}B parameters, {est['trainable'] / 1e6:,.1f}M trainable, "
          f"{est['tokens_per_micro_batch']:,} tokens per micro-batch (BATCH_SIZE x MAX_LENGTH), "
          f"{cfg.examples_per_step} examples per optimizer step{where}; nothing loaded or written")
    raise SystemExit(0)

def _check_run(cfg: TrainConfig, kind: str, model_dir: Path) -> tuple[Path | None, float]:
    import torch
    lora = kind == "lora"
    if cfg.dry_run:
        dry_run(cfg, kind, model_dir)
    feats = resolve_features(cfg, lora=lora, log=False)
    check_finished(cfg, kind, run_fingerprint(cfg, feats))  # it hashes the model's tokenizer: after the fetch
    est = estimate(resolved(cfg, lora=lora), model_dir, lora)
    print(estimate_line(est))
    if not est["params"] < CPU_MAX_PARAMS and not cfg.allow_cpu and not torch.cuda.is_available():
        raise MedsftError(f"no CUDA GPU found, and {cfg.model} has {est['params'] / 1e9:.2f}B parameters: training "
                          "it on a CPU takes days. Run it on a GPU, or try the whole pipeline on CPU in minutes with "
                          "--model=tiny. To train on CPU anyway, add --allow_cpu=true")
    check_fits(est, lora)
    check_disk(cfg, est, lora)
    lock_output_dir(cfg.output_dir)  # before deleting or writing anything there
    resume_from = check_output_dir(cfg)  # last: --overwrite deletes, so every other check must have passed
    check_same_run(cfg, resume_from, feats)
    print(f"examples per optimizer step: {cfg.examples_per_step} (BATCH_SIZE {cfg.batch_size} x GRAD_ACCUM "
          f"{cfg.grad_accum} x {cfg.world_size} process(es), engine {cfg.engine})")
    return resume_from, round(est["total"] / 2 ** 30, 3)

def check_disk(cfg, est: dict, lora: bool) -> None:
    """Refuse when OUTPUT_DIR's disk cannot hold one checkpoint; warn when it cannot hold SAVE_TOTAL_LIMIT, one
    being written and the final model. Space --overwrite is about to free counts as free."""
    cfg = TrainConfig.of(cfg)
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
    cfg = TrainConfig.of(cfg)
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

# --- the fingerprint: data bytes, tokenizer and chat template, schedule, resolved features ------------------------

def run_fingerprint(cfg, feats: dict) -> dict:
    cfg = TrainConfig.of(cfg)
    constants = cfg.constants()
    digest = hashlib.sha256()
    for name in ("train.jsonl", "val.jsonl"):
        digest.update((Path(cfg.data_dir) / name).read_bytes())
    model_dir = resolve_model(str(cfg.model))
    fp = {"data_sha256": digest.hexdigest(), "tokenizer_sha256": tokenizer_sha256(model_dir),
          "weights_sha256": weights_sha256(model_dir),
          **{k: constants[k] for k in RUN_KEYS if k in constants}, "features": feats}
    if int(cfg.world_size or 1) > 1:  # another process count deals the data out differently
        fp.update(WORLD_SIZE=cfg.world_size, ENGINE=cfg.engine)
    return json.loads(json.dumps(fp))  # tuples become lists, as in the file it is compared with

def tokenizer_sha256(model_dir: Path) -> str:
    """One hash of the files that turn text into tokens (the tokenizer and its chat template)."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256((model_dir / name).read_bytes()).digest())
    return digest.hexdigest()

def weights_sha256(model_dir: Path, *also: Path) -> str | None:
    """The weights' identity for a run fingerprint (the base of a LoRA): ``model_checks.weights_identity`` of
    ``model_dir``, combined with that of each of ``also`` (e.g. an adapter a run starts from) when given."""
    if not also:
        return weights_identity(model_dir)
    ids = [weights_identity(d) for d in (model_dir, *also)]
    return hashlib.sha256(json.dumps(ids).encode("utf-8")).hexdigest()

def _comparable(old: dict, fp: dict) -> dict:
    # a fingerprint written before a key existed is compared without it (it cannot know), then rewritten with it
    return {k: v for k, v in fp.items() if k in old or k not in ADDED_KEYS}

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
    moved = {k: v for k, v in (old.get("features") or {}).items() if fp["features"].get(k) != v}
    if not moved:
        return named, None
    now = ", ".join(f"{k}={fp['features'].get(k)} (was {v})" for k, v in moved.items())
    keep = " ".join(f"--{k.lower()}={str(v).lower() if isinstance(v, bool) else v}" for k, v in moved.items())
    return named, (f"the features now resolve to {now}, e.g. a library was installed or removed since the run "
                   f"started; resume as before with {keep}")

def check_finished(cfg, kind: str, fp: dict) -> None:
    """A finished run asked to run again with the same fingerprint: say so and exit 0, touching nothing. With
    another one, --resume=true is refused (it would mix two runs) and so is a plain run. OVERWRITE starts over."""
    cfg = TrainConfig.of(cfg)
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

def check_same_run(cfg, resume_from, feats: dict, fp: dict | None = None) -> None:
    """Record the fingerprint (``fp``, else SFT's) in OUTPUT_DIR/run_fingerprint.json; refuse to resume a run whose
    data, tokenizer, schedule or resolved auto features changed since."""
    cfg = TrainConfig.of(cfg)
    fp = run_fingerprint(cfg, feats) if fp is None else fp
    out = Path(cfg.output_dir)
    old = _read_fingerprint(out) if resume_from is not None else None
    changed, moved = _mismatch(old, fp) if old is not None else ("", None)
    if changed:
        raise MedsftError(f"--resume=true: {out} was trained with other {changed}: resuming would mix two runs; "
                          "start over with --overwrite=true, or use another --output_dir")
    if moved:
        raise MedsftError(f"--resume=true: {moved}")
    with disk_errors(out, "run_fingerprint.json", "output_dir"):
        write_json(out / "run_fingerprint.json", fp)
