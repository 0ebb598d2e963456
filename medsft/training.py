"""Supervised fine-tuning shared by ``train.py`` (full parameters), ``train_lora.py`` (LoRA) and the benchmark.

A stage script resolves its constants block with ``medsft.config.configure`` and passes the resulting dict
(``cfg``) to these functions. The interface below is stable; the benchmark builds trainers through it:

* ``preflight(cfg, kind)`` - fail fast before any weights are loaded: data present, OUTPUT_DIR state, a model
  that is realistic for the hardware. Returns the checkpoint to resume from (or None).
* ``resolve_features(cfg, lora=False, log=True)`` - turn every ``"auto"`` efficiency constant (PRECISION,
  ATTN_IMPLEMENTATION, PADDING_FREE, LOSS, OPTIM) into a concrete choice for this machine; prints the
  choice in one line. Returns ``{NAME: value}`` to ``cfg.update()`` with.
* ``prepare_examples(path, tokenizer, max_length, system=None) -> (examples, stats)`` - tokenized rows (prompt
  masked); rows over ``max_length`` are skipped and counted, never truncated.
* ``load_training_model(cfg)`` - the model of ``cfg["MODEL"]`` in the resolved precision and attention.
* ``add_lora(model, cfg)`` - wrap with a peft LoRA adapter from the LORA_* constants.
* ``build_trainer(model, tokenizer, train_examples, eval_examples, cfg, callbacks=()) -> transformers.Trainer``.
* ``start_swanlab(cfg, kind)`` / ``finish_swanlab(...)`` - SwanLab logging that never prompts or hangs offline.
* ``run_training(trainer, resume_from)`` - train; Ctrl-C saves a checkpoint and returns ``interrupted=True``.
* ``save_final(trainer, tokenizer, cfg)``, ``write_results(...)``, ``write_charts(results_dir)``, ``preview(...)``.
  ``save_final`` writes ``trainer_state.json`` (what marks a run finished) last, so scripts call it after the
  results and charts.
* ``guard_output()`` - let a run outlive the reader of its stdout/stderr (``| tee`` killed by Ctrl-C).
* ``checkpoint_problem(path)`` - why a checkpoint cannot be resumed from (None when it can).
* ``lock_output_dir(path)`` / ``unlock_output_dir(path)`` - one training run per OUTPUT_DIR.

Constants ``build_trainer`` reads from ``cfg`` (all from the scripts' constants blocks): OUTPUT_DIR, EPOCHS,
MAX_STEPS, BATCH_SIZE, GRAD_ACCUM, LEARNING_RATE, SCHEDULER, WARMUP, WEIGHT_DECAY, MAX_GRAD_NORM, LOGGING_STEPS,
EVAL_STEPS, SAVE_STEPS, SAVE_TOTAL_LIMIT, SEED, GRADIENT_CHECKPOINTING, PRECISION, ATTN_IMPLEMENTATION,
PADDING_FREE, LOSS, OPTIM, RUN_NAME. The efficiency constants may still be ``"auto"`` (or booleans).

Heavy libraries (torch, transformers, peft, swanlab, matplotlib) are imported inside functions, so the fail-fast
checks answer in about a second.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from .chat import IGNORE_INDEX
from .io import MedsftError, iter_jsonl, write_json
from .memory import check_fits, describe, estimate, ways_out

KINDS = ("full", "lora")
RESULTS_NAME = "train_{kind}.json"
CHARTS = {"loss": "trainloss.png", "eval_loss": "evalloss.png"}
CHART_SMOOTHING = 0.6  # TensorBoard-style EMA weight for the smoothed curves
CPU_MAX_PARAMS = 100_000_000  # more parameters than this need a GPU (or ALLOW_CPU): Qwen3-0.6B already takes days
HISTORY_KEYS = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "num_input_tokens_seen",
                "tokens_per_second", "peak_memory_gib")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
GIB = 2 ** 30
# What a finished run leaves at the top of OUTPUT_DIR. trainer_state.json comes first: it marks the run finished,
# so --overwrite removes it before anything else, and save_final writes it last.
FINAL_FILES = ("trainer_state.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "adapter_model.safetensors", "adapter_model.bin", "adapter_config.json", "config.json",
               "generation_config.json", "train_config.json", "training_args.bin", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt",
               "added_tokens.json", "run_fingerprint.json", "swanlab_run.json")
CHECKPOINT_STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")  # torch zip files a resume loads
CHECKPOINT_SMALL_BYTES = 64 * 2 ** 20  # tokenizer, scheduler, RNG and trainer state of a checkpoint, generously
LOCK_NAME = ".lock"
_LOCKS: dict[str, int] = {}  # OUTPUT_DIR -> fd holding its flock, for the life of the process


# --- output that outlives its reader ------------------------------------------------------------------------------


class _PipeSafe:
    """sys.stdout/sys.stderr that keep the run alive when their reader dies (``python train.py | tee log`` and
    Ctrl-C kills tee too): on EPIPE (or EIO, a hung-up terminal) the stream's fd is pointed at /dev/null and
    writing goes on silently, so a checkpoint save never fails because a print did."""

    def __init__(self, stream):
        self._stream = stream

    def _silence(self) -> None:
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError):
            return
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)  # the stream's buffered bytes then flush into /dev/null instead of failing again
        finally:
            os.close(null)

    def write(self, data):
        try:
            return self._stream.write(data)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EIO):
                raise
            self._silence()
            return len(data)

    def flush(self):
        try:
            self._stream.flush()
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EIO):
                raise
            self._silence()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def guard_output() -> None:
    """Wrap sys.stdout and sys.stderr in ``_PipeSafe`` (once). Scripts call it first thing: progress bars and
    loggers created later write through it."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _PipeSafe):
            setattr(sys, name, _PipeSafe(stream))


def _notice(text: str) -> None:
    """Write one line to fd 2 from a signal handler. Not print(): the handler may run in the middle of a print to
    the same buffered stream (a reentrant write raises RuntimeError), and a dead reader raises BrokenPipeError;
    either would abort the step instead of saving the checkpoint."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass  # nobody is reading: the message is lost, the checkpoint is not


# --- fail fast ---------------------------------------------------------------------------------------------------


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
        m = _CHECKPOINT.match(p.name)
        if m and p.is_dir():
            try:
                json.loads((p / "trainer_state.json").read_text(encoding="utf-8"))
                complete = True
            except (OSError, ValueError):
                complete = False
            out.append((int(m.group(1)), p, complete))
    return sorted(out)


def is_finished(output_dir) -> bool:
    """A finished run leaves ``trainer_state.json`` at the top of OUTPUT_DIR (checkpoints keep theirs inside)."""
    return (Path(output_dir) / "trainer_state.json").is_file()


def check_data(data_dir) -> tuple[Path, Path]:
    d = Path(data_dir)
    train, val = d / "train.jsonl", d / "val.jsonl"
    for p in (train, val):
        if not p.is_file():
            raise MedsftError(f"{p} not found: run data.py first (it writes train/val/test.jsonl into {d}/), "
                              "or point --data_dir at a folder that has them")
    return train, val


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
    for name in CHECKPOINT_STATE_FILES:
        why = _torch_zip_problem(p / name)
        if why:
            return why
    return None


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
    finished nor leaves the old model for later stages. RESUME verifies checkpoints newest first and removes the
    damaged ones; with none usable it starts from scratch, saying why (the damaged files hold nothing to save).
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
        damaged = 0
        for step, path, _ in reversed(ckpts):
            why = checkpoint_problem(path)
            if why is None:
                print(f"resume: continuing from {path} (step {step})")
                return path
            # a damaged checkpoint would shadow the older good one in every later resume
            print(f"resume: removing {path.name}: {why}")
            shutil.rmtree(path)
            damaged += 1
        print(f"resume: no usable checkpoint in {out}" + (f" ({damaged} damaged, removed)" if damaged else "")
              + "; starting from scratch")
        (out / "swanlab_run.json").unlink(missing_ok=True)  # a fresh start is a new SwanLab experiment too
        return None
    fix = ("continue it with --resume=true, write elsewhere with --output_dir=DIR, or start over with "
           "--overwrite=true (deletes its checkpoints)")
    if is_finished(out):
        raise MedsftError(f"{out} already holds a finished run (trainer_state.json): {fix}")
    if ckpts:
        raise MedsftError(f"{out} holds checkpoints of an unfinished run (newest {ckpts[-1][1].name}): {fix}")
    return None


_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "storagefull")


def _disk_full(e: BaseException, folder: Path) -> bool:
    """Whether ``e`` (or an exception it chains) is the disk running out. torch and safetensors report it in
    their own exception types, so their messages count too."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        text = str(e).lower()
        if any(t in text for t in _DISK_FULL_TEXT):
            return True
        # torch.save reports a full disk as "[enforce fail at inline_container.cc] unexpected pos ..." or
        # "file write failed", without errno: believed when the disk is indeed nearly full
        if any(t in text for t in ("inline_container", "file write failed", "failed writing file")):
            try:
                return shutil.disk_usage(folder).free < GIB
            except OSError:
                return False
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def disk_errors(folder, what: str, option: str, resume: bool = False):
    """Turn the disk filling up while writing ``what`` into ``folder`` into a MedsftError that names the folder
    and the fix, instead of a traceback from deep inside torch or safetensors."""
    folder = Path(folder)
    try:
        yield
    except Exception as e:  # noqa: BLE001 - torch/safetensors raise their own types; anything else is re-raised
        if not _disk_full(e, folder):
            raise
        try:
            free = f"{shutil.disk_usage(folder).free / GIB:.2f} GiB free now"
        except OSError:
            free = "free space unknown"
        then = (", then continue with --resume=true (it skips a half-written checkpoint)" if resume else
                ", then run the script again")
        raise MedsftError(f"disk full while writing {what} in {folder} ({free}): free up space there, or point "
                          f"--{option} at a disk with room{then}") from e


def check_writable(folder, option: str) -> None:
    """Create ``folder`` and write a file there now, so a read-only or missing path stops the run before the
    model loads rather than after hours of training."""
    d = Path(folder)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".medsft-write-test-")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)  # a full disk may only refuse the data when it is flushed
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise MedsftError(f"{d} is not writable ({e.strerror or e}): fix its permissions or free space there, or "
                          f"choose another --{option}=DIR") from None


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
    try:
        import fcntl
    except ImportError:
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


def check_versions(requirements=None) -> None:
    """Stop before loading anything when an installed library is older than requirements.txt's floor: an older
    transformers, say, lacks TrainingArguments this code passes and would crash after minutes of loading."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import Version

    path = Path(requirements) if requirements else Path(__file__).resolve().parent.parent / "requirements.txt"
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


def check_cpu(cfg: dict, est: dict) -> None:
    """A real-size model without a GPU takes days per epoch: refuse unless ALLOW_CPU (tiny is the CPU demo)."""
    import torch

    if torch.cuda.is_available() or cfg.get("ALLOW_CPU") or est["params"] < CPU_MAX_PARAMS:
        return
    raise MedsftError(f"no CUDA GPU found, and {cfg['MODEL']} has {est['params'] / 1e9:.2f}B parameters: training "
                      "it on a CPU takes days. Run it on a GPU, or try the whole pipeline on CPU in minutes with "
                      "--model=tiny. To train on CPU anyway, add --allow_cpu=true")


def dry_run(cfg: dict, kind: str) -> None:
    """Print the resolved features and the memory estimate for the GPU this run is meant for, then exit 0.
    Needs only config.json (no weights, no GPU, no data)."""
    from .models import resolve_model

    lora = kind == "lora"
    feats = resolve_features(cfg, lora=lora, assume_gpu=True)
    est = estimate({**cfg, **feats}, resolve_model(str(cfg["MODEL"])), lora)
    print(describe(est))
    print(f"dry run: {est['params'] / 1e9:.3f}B parameters, {est['trainable'] / 1e6:,.1f}M trainable, "
          f"{est['tokens_per_micro_batch']:,} tokens per micro-batch (BATCH_SIZE x MAX_LENGTH); nothing loaded or "
          "written")
    raise SystemExit(0)


def preflight(cfg: dict, kind: str) -> Path | None:
    """All fail-fast checks, before any weights load. Returns the checkpoint to resume from (or None).

    With DRY_RUN it prints the resolved features and the memory estimate and exits instead.
    """
    from .models import resolve_model

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    lora = kind == "lora"
    for name in ("BATCH_SIZE", "GRAD_ACCUM", "LOGGING_STEPS", "EVAL_STEPS", "SAVE_STEPS", "MAX_LENGTH"):
        if cfg[name] < 1:
            raise MedsftError(f"--{name.lower()}={cfg[name]}: must be at least 1")
    if cfg["MAX_STEPS"] <= 0 and cfg["EPOCHS"] <= 0:
        raise MedsftError("nothing to train: set --epochs > 0 or --max_steps > 0")
    if not 0 <= cfg["SEED"] < 2 ** 32:
        raise MedsftError(f"--seed={cfg['SEED']}: must be between 0 and 2**32 - 1")
    if lora:
        if cfg["LORA_R"] < 1 or cfg["LORA_ALPHA"] <= 0:
            raise MedsftError(f"--lora_r={cfg['LORA_R']} --lora_alpha={cfg['LORA_ALPHA']}: the rank must be at least 1 "
                              "and alpha positive")
        if not 0 <= cfg["LORA_DROPOUT"] < 1:
            raise MedsftError(f"--lora_dropout={cfg['LORA_DROPOUT']}: must be in [0, 1)")
    check_versions()
    if cfg.get("DRY_RUN"):
        dry_run(cfg, kind)
    check_data(cfg["DATA_DIR"])
    feats = resolve_features(cfg, lora=lora, log=False)  # bad precision/attention/optim choices, before loading
    check_finished(cfg, kind, run_fingerprint(cfg, feats))  # before anything below writes a file
    check_writable(cfg["OUTPUT_DIR"], "output_dir")  # before the estimate, which may download the model
    if cfg.get("RESULTS_DIR"):
        check_writable(cfg["RESULTS_DIR"], "results_dir")
    est = estimate({**cfg, **feats}, resolve_model(str(cfg["MODEL"])), lora)
    print(describe(est))
    cfg["ESTIMATED_PEAK_GIB"] = round(est["total"] / 2 ** 30, 3)
    check_cpu(cfg, est)
    check_fits(est, lora)
    check_disk(cfg, est, lora)
    lock_output_dir(cfg["OUTPUT_DIR"])  # before deleting or writing anything there
    resume_from = check_output_dir(cfg)  # last: --overwrite deletes, so every other check must have passed
    check_same_run(cfg, resume_from, feats)
    return resume_from


RUN_KEYS = ("MODEL", "MAX_LENGTH", "EPOCHS", "MAX_STEPS", "BATCH_SIZE", "GRAD_ACCUM", "LEARNING_RATE", "SCHEDULER",
            "WARMUP", "WEIGHT_DECAY", "SEED", "NO_THINK_RATIO", "LORA_R", "LORA_ALPHA", "LORA_DROPOUT",
            "LORA_TARGET_MODULES")


def run_fingerprint(cfg: dict, feats: dict) -> dict:
    """What defines a run: the data bytes, the schedule (RUN_KEYS) and the resolved features, as JSON values."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("train.jsonl", "val.jsonl"):
        digest.update((Path(cfg["DATA_DIR"]) / name).read_bytes())
    fp = {"data_sha256": digest.hexdigest(), **{k: cfg[k] for k in RUN_KEYS if k in cfg}, "features": feats}
    return json.loads(json.dumps(fp))  # tuples become lists, as in the file it is compared with


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
    return [k for k in fp if k != "features" and old.get(k) != fp[k]]


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
    what = (f"was trained with other {', '.join(changed)} (the data when data_sha256)" if old else
            "has no run_fingerprint.json to compare its settings with")
    raise MedsftError(f"--resume=true: {out} holds a finished run that {what}: resuming would mix two runs; "
                      "start over with --overwrite=true, or use another --output_dir")


def check_same_run(cfg: dict, resume_from, feats: dict) -> None:
    """Record what defines a run (data bytes, schedule, resolved features) in OUTPUT_DIR/run_fingerprint.json;
    refuse to resume a run whose data or schedule changed since (e.g. data.py re-run), or whose ``auto`` features
    would now resolve differently (e.g. bitsandbytes or flash-attn installed meanwhile), which would silently mix
    two runs."""
    fp = run_fingerprint(cfg, feats)
    path = Path(cfg["OUTPUT_DIR"]) / "run_fingerprint.json"
    old = _read_fingerprint(cfg["OUTPUT_DIR"]) if resume_from is not None else None
    if old is not None:
        changed = _changed(old, fp)
        if changed:
            raise MedsftError(f"--resume=true: {path.parent} was trained with other {', '.join(changed)} (the data "
                              "when data_sha256): resuming would mix two runs; start over with --overwrite=true, or "
                              "use another --output_dir")
        moved = _moved_features(old, fp["features"])
        if moved:
            raise MedsftError(f"--resume=true: {moved}")
    with disk_errors(path.parent, "run_fingerprint.json", "output_dir"):
        write_json(path, fp)


# --- efficiency features --------------------------------------------------------------------------------------


def _tristate(name: str, value) -> bool | None:
    """True/False for an explicit choice, None for auto."""
    if isinstance(value, bool) or value is None:
        return value
    low = str(value).strip().lower()
    if low == "auto":
        return None
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise MedsftError(f"--{name.lower()}={value}: expected auto, true or false")


FEATURES = ("PRECISION", "ATTN_IMPLEMENTATION", "PADDING_FREE", "LOSS", "OPTIM")
PRECISIONS = ("bf16", "bf16-mixed", "fp16", "fp32")
LOSSES = ("liger", "chunked", "plain")
TORCHAO_OPTIMS = ("adamw_torch_8bit", "adamw_torch_4bit")


def weight_dtype(precision: str, lora: bool):
    """The dtype the weights load in. bf16: bf16 weights (LoRA's frozen base too); bf16-mixed: fp32 master weights
    under bf16 autocast for full fine-tuning (+8 bytes/param), a bf16 base for LoRA; fp16 and fp32: fp32 weights."""
    import torch

    if precision == "bf16" or (precision == "bf16-mixed" and lora):
        return torch.bfloat16
    return torch.float32


def _gpu_facts(assume_gpu: bool) -> dict:
    """What the feature choice depends on: CUDA, real bf16, sm80+ (flash-attn). ``assume_gpu`` describes a bf16
    GPU on a machine without one (the dry run estimates for the GPU the user will train on)."""
    import torch

    if torch.cuda.is_available():
        return {"cuda": True, "bf16": torch.cuda.is_bf16_supported(including_emulation=False),
                "ampere": torch.cuda.get_device_capability()[0] >= 8, "name": torch.cuda.get_device_name(0)}
    if assume_gpu:
        return {"cuda": True, "bf16": True, "ampere": True, "name": "a bf16 CUDA GPU (assumed: no GPU here)"}
    return {"cuda": False, "bf16": False, "ampere": False, "name": "CPU"}


def resolve_features(cfg: dict, lora: bool = False, log: bool = True, assume_gpu: bool = False) -> dict:
    """Concrete values for PRECISION, ATTN_IMPLEMENTATION, PADDING_FREE, LOSS, OPTIM on this machine.

    auto means, on a CUDA GPU: bf16 weights (fp16 mixed precision on GPUs without bf16); flash_attention_2 with
    padding-free batches when flash-attn is installed; Liger's fused linear + cross-entropy when liger-kernel is
    installed, else the project's chunked loss; for full fine-tuning with bf16 weights torchao's 8-bit AdamW with
    bf16 stochastic rounding (6 bytes/param for weights + grads + optimizer, and updates smaller than half a bf16
    ulp still land on average), else fused AdamW. On CPU: fp32, sdpa, length-grouped padded batches, the chunked
    loss, plain AdamW. Explicit values are kept (and checked).
    """
    from transformers.utils import is_bitsandbytes_available, is_flash_attn_2_available, is_liger_kernel_available
    from transformers.utils.import_utils import is_torchao_available

    gpu = _gpu_facts(assume_gpu)
    cuda = gpu["cuda"]
    precision = str(cfg.get("PRECISION", "auto")).lower()
    if precision == "auto":
        # emulated bf16 (pre-Ampere GPUs such as T4/V100) is slow: those get fp16 mixed precision
        precision = ("bf16" if gpu["bf16"] else "fp16") if cuda else "fp32"
    if precision not in PRECISIONS:
        raise MedsftError(f"--precision={precision}: expected auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and not cuda:
        raise MedsftError("--precision=fp16 needs a CUDA GPU; use --precision=fp32 (or auto) on CPU")

    attn = str(cfg.get("ATTN_IMPLEMENTATION", "auto"))
    if attn == "auto":  # flash-attn 2 kernels need sm80+ and half precision
        attn = "flash_attention_2" if gpu["ampere"] and precision != "fp32" and is_flash_attn_2_available() else "sdpa"
    if attn not in ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"):
        raise MedsftError(f"--attn_implementation={attn}: expected auto, sdpa, eager, flash_attention_2, "
                          "flash_attention_3 or flex_attention")
    if attn.startswith("flash_attention") and (not cuda or precision == "fp32"):
        raise MedsftError(f"--attn_implementation={attn} needs a CUDA GPU and bf16/fp16; use --attn_implementation=auto")
    if attn == "flash_attention_2" and not is_flash_attn_2_available():
        raise MedsftError("--attn_implementation=flash_attention_2 but flash-attn is not installed: "
                          "pip install flash-attn, or use --attn_implementation=auto")
    flash = attn.startswith("flash_attention")

    padding_free = _tristate("PADDING_FREE", cfg.get("PADDING_FREE", "auto"))
    if padding_free is None:
        # with flash-attention a flattened batch attends within each sample at no extra cost; with sdpa the
        # per-sample separation needs a (tokens x tokens) mask, so padded length-grouped batches are cheaper
        padding_free = flash

    loss = str(cfg.get("LOSS", "auto")).lower()
    if loss == "auto":
        loss = "liger" if cuda and is_liger_kernel_available() else "chunked"
    if loss not in LOSSES:
        raise MedsftError(f"--loss={loss}: expected auto, {', '.join(LOSSES)}")
    if loss == "liger" and not is_liger_kernel_available():
        raise MedsftError("--loss=liger but liger-kernel is not installed: pip install liger-kernel (needs a CUDA "
                          "GPU), or use --loss=auto (the chunked loss saves the same memory)")

    optim = str(cfg.get("OPTIM", "auto"))
    if optim == "auto":
        if not lora and weight_dtype(precision, lora) != weight_dtype("fp32", lora):
            optim = "adamw_torch_8bit"  # bf16 weights need stochastic rounding; its 8-bit moments are a bonus
        else:
            optim = "adamw_torch_fused" if cuda else "adamw_torch"
    if optim in TORCHAO_OPTIMS and not is_torchao_available():
        raise MedsftError(f"--optim={optim} needs torchao: pip install -r requirements.txt, or use --optim=adamw_torch")
    if "8bit" in optim and optim not in TORCHAO_OPTIMS and not is_bitsandbytes_available():
        raise MedsftError(f"--optim={optim} needs bitsandbytes: pip install bitsandbytes, or use --optim=auto")

    out = {"PRECISION": precision, "ATTN_IMPLEMENTATION": attn, "PADDING_FREE": padding_free, "LOSS": loss,
           "OPTIM": optim}
    if log:
        batching = "padding-free (flattened)" if padding_free else "length-grouped padded"
        print(f"efficiency on {gpu['name']}: precision={precision} attention={attn} batches={batching} "
              f"loss={loss} optim={optim} gradient_checkpointing={cfg.get('GRADIENT_CHECKPOINTING')}")
        if not lora and precision == "bf16" and optim not in TORCHAO_OPTIMS:
            print(f"warning: bf16 weights with --optim={optim}: updates smaller than half a bf16 ulp round away "
                  "(most of them at LR 1e-5); --optim=auto uses stochastic rounding")
    return out


# --- data ---------------------------------------------------------------------------------------------------------


def prepare_examples(path, tokenizer, max_length: int, system=None, no_think_ratio: float = 0.0,
                     seed: int = 0) -> tuple[list[dict], dict]:
    """Tokenize the {question, think, answer} rows of a JSONL file for SFT.

    A ``no_think_ratio`` share of rows, chosen by seed and row id (``medsft.chat.example_modes``), become
    non-thinking examples (half Qwen3's hard switch, half the soft ``/no_think``), so the tuned model keeps
    obeying both; rows with an empty think are always non-thinking. ``stats["modes"]`` counts each kind.

    Returns ``(examples, stats)``: examples are ``{"input_ids", "labels", "attention_mask"}`` lists (prompt
    labels -100, see ``medsft.chat.tokenize_example``); stats are ``{"path", "rows", "kept",
    "skipped_too_long", "tokens", "supervised_tokens", "longest"}``. Rows longer than ``max_length`` are skipped
    and counted (a truncated answer would teach the model not to stop). A bad line or field raises MedsftError
    naming ``path:line``.
    """
    from tqdm import tqdm

    from .chat import example_modes, tokenize_example

    path = Path(path)
    rows = []
    for lineno, obj, err in iter_jsonl(path):
        if err:
            raise MedsftError(f"{path}:{lineno}: {err}; fix or remove that line")
        for key in ("question", "think", "answer"):
            if not isinstance(obj.get(key), str) or (key != "think" and not obj[key].strip()):
                raise MedsftError(f"{path}:{lineno}: field '{key}' must be a non-empty string; re-run data.py "
                                  "or fix that line")
        rows.append(obj)
    if not rows:
        raise MedsftError(f"{path} has no rows: re-run data.py")
    if not 0 <= no_think_ratio <= 1:
        raise MedsftError(f"--no_think_ratio={no_think_ratio}: must be between 0 and 1")
    modes = example_modes([str(r.get("id") or r["question"]) for r in rows], no_think_ratio, seed)
    examples, skipped, counts = [], 0, {}
    for row, mode in tqdm(list(zip(rows, modes)), desc=f"tokenize {path.name}", unit="row", disable=len(rows) < 200):
        mode = mode if row["think"].strip() else "no_think_hard"  # never a thinking example with an empty think
        ex = tokenize_example(tokenizer, row, max_length, system=system, mode=mode)
        if ex is None:
            skipped += 1
        else:
            examples.append(ex)
            counts[mode] = counts.get(mode, 0) + 1
    stats = {"path": str(path), "rows": len(rows), "kept": len(examples), "skipped_too_long": skipped,
             "tokens": sum(len(e["input_ids"]) for e in examples),
             "supervised_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples),
             "longest": max((len(e["input_ids"]) for e in examples), default=0),
             "modes": {m: counts.get(m, 0) for m in ("think", "no_think_hard", "no_think_soft")}}
    print(f"{path}: {stats['kept']}/{stats['rows']} rows kept, {skipped} skipped as longer than "
          f"MAX_LENGTH={max_length} tokens; {stats['tokens']:,} tokens ({stats['supervised_tokens']:,} trained)"
          + (f"; modes {stats['modes']}" if no_think_ratio or counts.get("no_think_hard") else ""))
    if not examples:
        raise MedsftError(f"{path}: all {len(rows)} rows are longer than MAX_LENGTH={max_length} tokens; raise "
                          f"--max_length (the longest row needs more)")
    return examples, stats


# --- model ----------------------------------------------------------------------------------------------------------


def load_training_model(cfg: dict):
    """Load ``cfg["MODEL"]`` for training in the resolved precision (``weight_dtype``) and attention."""
    from .models import load_model, pick_device

    lora = "LORA_R" in cfg
    feats = resolve_features(cfg, lora=lora, log=False)
    model = load_model(cfg["MODEL"], dtype=weight_dtype(feats["PRECISION"], lora), device=pick_device(),
                       attn_implementation=feats["ATTN_IMPLEMENTATION"])
    model.config.use_cache = False  # no KV cache while training (and incompatible with gradient checkpointing)
    return model


def add_lora(model, cfg: dict):
    """Wrap ``model`` with a trainable LoRA adapter (LORA_R, LORA_ALPHA, LORA_DROPOUT, LORA_TARGET_MODULES).

    LORA_TARGET_MODULES is ``"all-linear"`` (every linear layer of the decoder, not the output head) or a
    comma-separated list of module names. The base weights are frozen; peft keeps the adapter in fp32.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import set_seed

    targets = cfg.get("LORA_TARGET_MODULES", "all-linear")
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    set_seed(cfg["SEED"])  # the adapter's random init (lora_A) is part of "same seed, same run"
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg["LORA_R"], lora_alpha=cfg["LORA_ALPHA"],
                        lora_dropout=cfg["LORA_DROPOUT"], target_modules=targets, bias="none")
    try:
        model = get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules not found in the model
        raise MedsftError(f"LoRA: {e}; check --lora_target_modules") from None
    trainable, total = model.get_nb_trainable_parameters()
    print(f"LoRA r={cfg['LORA_R']} alpha={cfg['LORA_ALPHA']} targets={targets}: {trainable:,} trainable of "
          f"{total:,} parameters ({100 * trainable / total:.2f}%)")
    return model


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# --- trainer ----------------------------------------------------------------------------------------------------


def peak_memory() -> tuple[float, str]:
    """Peak memory of this process in GiB and what it measures (GPU allocations, or CPU resident set)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30, "cuda_max_allocated"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss_kib / 2 ** 20, "cpu_max_rss"


@functools.lru_cache(maxsize=None)
def _trainer_classes():
    """Trainer subclass and callbacks, defined lazily so importing this module does not import transformers."""
    import torch
    from transformers import Trainer, TrainerCallback

    from .loss import chunked_forward_loss
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class EpochLengthGroupedSampler(LengthGroupedSampler):
        """Length-grouped order drawn from ``seed + epoch`` rather than the global RNG, so a resumed run replays
        the interrupted epoch's order exactly (the Trainer calls ``set_epoch``)."""

        def __init__(self, batch_size, lengths, seed):
            super().__init__(batch_size, lengths=lengths)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))

    class Clock(TrainerCallback):
        """Session timing: training time excludes evaluation so tokens/s measures training alone."""

        def __init__(self):
            self.start = self.end = None
            self.tokens0 = 0
            self.eval_s = 0.0
            self.mark = None  # (time, tokens, eval_s) at the previous training log

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()
            self.tokens0 = state.num_input_tokens_seen  # restored from the checkpoint when resuming
            self.mark = (self.start, self.tokens0, 0.0)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_log = True  # the final train loss is always in the history

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()

        def interval(self, tokens: int) -> float | None:
            now = time.perf_counter()
            t0, tok0, ev0 = self.mark
            seconds = now - t0 - (self.eval_s - ev0)
            self.mark = (now, tokens, self.eval_s)
            return (tokens - tok0) / seconds if seconds > 0 else None

        def summary(self, state) -> dict:
            wall = (self.end or time.perf_counter()) - self.start
            tokens = state.num_input_tokens_seen - self.tokens0
            train_s = max(wall - self.eval_s, 1e-9)
            return {"wall_time_s": round(wall, 3), "train_time_s": round(train_s, 3), "session_tokens": tokens,
                    "tokens_per_s": round(tokens / train_s, 2)}

    class GracefulStop(TrainerCallback):
        """Ctrl-C (SIGINT) or SIGTERM: finish the current optimizer step, save a checkpoint, stop training.

        A second Ctrl-C aborts at once without saving.
        """

        def __init__(self):
            self.requested = False
            self._previous = {}

        def _handler(self, signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            _notice(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                    "(press Ctrl-C again to abort without saving)\n")

        def on_train_begin(self, args, state, control, **kwargs):
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._previous[sig] = signal.signal(sig, self._handler)

        def on_step_end(self, args, state, control, **kwargs):
            if self.requested:
                control.should_save = True
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kwargs):
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = {}

    class MedsftTrainer(Trainer):
        """transformers' Trainer plus tokens/s and peak memory in every training log (and so in SwanLab)."""

        def __init__(self, *args, **kwargs):
            self.clock = Clock()
            self.graceful_stop = GracefulStop()
            super().__init__(*args, **kwargs)
            self.add_callback(self.clock)
            self.add_callback(self.graceful_stop)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
                return super()._get_train_sampler(train_dataset)
            return EpochLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                             [len(e["input_ids"]) for e in dataset],
                                             self.args.data_seed if self.args.data_seed is not None else self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not getattr(self, "chunked_loss", False):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # the sum over supervised tokens divided by num_items_in_batch: already scaled for accumulation
            loss = chunked_forward_loss(model, inputs, num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

        @property
        def interrupted(self) -> bool:
            return self.graceful_stop.requested

        def evaluate(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                self.clock.eval_s += time.perf_counter() - t

        def log(self, logs, start_time=None):
            if "loss" in logs and self.clock.mark is not None:
                speed = self.clock.interval(self.state.num_input_tokens_seen)
                if speed is not None:
                    logs["tokens_per_second"] = round(speed, 2)
                logs["peak_memory_gib"] = round(peak_memory()[0], 4)
            super().log(logs, start_time)

    return MedsftTrainer


def build_trainer(model, tokenizer, train_examples, eval_examples, cfg: dict, callbacks=()):
    """A ``transformers.Trainer`` for ``cfg`` (the resolved constants of train.py / train_lora.py).

    ``train_examples`` / ``eval_examples`` come from ``prepare_examples`` (eval may be empty or None: no eval).
    Batches are padding-free (``DataCollatorWithFlattening``: one row of concatenated samples with restarting
    position_ids) when PADDING_FREE resolves true, else right-padded and grouped by length. Every training log
    carries loss, grad_norm, learning_rate, tokens_per_second and peak_memory_gib; checkpoints every SAVE_STEPS
    keep optimizer, scheduler and RNG state for an exact resume. The returned trainer has ``.interrupted``
    (Ctrl-C / SIGTERM seen) and ``.clock.summary(state)`` (session wall time and tokens/s).
    """
    import torch
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, TrainingArguments

    feats = resolve_features(cfg, lora=hasattr(model, "peft_config"), log=False)  # keeps explicit values
    padding_free = feats["PADDING_FREE"]
    cuda = torch.cuda.is_available()
    tokenizer.padding_side = "right"  # positions count from the first token: padding must come after it
    if padding_free:
        collator = DataCollatorWithFlattening(
            return_flash_attn_kwargs=str(feats["ATTN_IMPLEMENTATION"]).startswith("flash_attention"))
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX,
                                          pad_to_multiple_of=8 if cuda else None, return_tensors="pt")
    has_eval = bool(eval_examples)
    try:
        args = _training_arguments(TrainingArguments, cfg, feats, padding_free, has_eval, cuda)
    except ValueError as e:  # e.g. an unknown SCHEDULER or OPTIM name
        raise MedsftError(f"invalid training settings: {e}") from None
    trainer_cls = _trainer_classes()
    trainer = trainer_cls(model=model, args=args, train_dataset=train_examples,
                       eval_dataset=eval_examples if has_eval else None, data_collator=collator,
                       processing_class=tokenizer, callbacks=list(callbacks))
    trainer.chunked_loss = feats["LOSS"] == "chunked"
    return trainer


def _training_arguments(TrainingArguments, cfg, feats, padding_free, has_eval, cuda):
    return TrainingArguments(
        output_dir=str(cfg["OUTPUT_DIR"]),
        num_train_epochs=cfg["EPOCHS"],
        max_steps=cfg["MAX_STEPS"],
        per_device_train_batch_size=cfg["BATCH_SIZE"],
        per_device_eval_batch_size=cfg["BATCH_SIZE"],
        gradient_accumulation_steps=cfg["GRAD_ACCUM"],
        learning_rate=cfg["LEARNING_RATE"],
        lr_scheduler_type=cfg["SCHEDULER"],
        warmup_steps=cfg["WARMUP"],
        weight_decay=cfg.get("WEIGHT_DECAY", 0.0),
        max_grad_norm=cfg.get("MAX_GRAD_NORM", 1.0),
        optim=feats["OPTIM"],
        # bf16 weights move by stochastic rounding (torchao), or updates below half a bf16 ulp would vanish
        optim_args="bf16_stochastic_round=True" if feats["OPTIM"] in TORCHAO_OPTIMS and feats["PRECISION"] == "bf16"
        and "LORA_R" not in cfg else None,
        bf16=feats["PRECISION"] in ("bf16", "bf16-mixed"),
        fp16=feats["PRECISION"] == "fp16",
        activation_checkpointing=bool(cfg["GRADIENT_CHECKPOINTING"]),
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg["GRADIENT_CHECKPOINTING"] else None,
        use_liger_kernel=feats["LOSS"] == "liger",
        train_sampling_strategy="random" if padding_free else "group_by_length",
        logging_steps=cfg["LOGGING_STEPS"],
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg["EVAL_STEPS"] if has_eval else None,
        save_strategy="steps",
        save_steps=cfg["SAVE_STEPS"],
        save_total_limit=cfg.get("SAVE_TOTAL_LIMIT"),
        seed=cfg["SEED"],
        data_seed=cfg["SEED"],
        include_num_input_tokens_seen="non_padding",
        report_to="none",  # SwanLab is attached as a callback by start_swanlab (mode chosen there)
        run_name=cfg.get("RUN_NAME"),
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        use_cpu=not cuda,  # else bf16 on a CPU (tests, the CPU real-architecture bench) is refused
        disable_tqdm=False,
    )


def run_training(trainer, resume_from=None) -> dict:
    """Train (resuming from ``resume_from`` if given). Returns the session summary plus ``interrupted``.

    Running out of GPU memory becomes a MedsftError that says which constants to lower.
    """
    try:
        with disk_errors(trainer.args.output_dir, "a checkpoint", "output_dir", resume=True):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
        error = training_error(e, lora=hasattr(trainer.model, "peft_config"))
        if error is None:
            raise
        raise error from e
    summary = trainer.clock.summary(trainer.state)
    summary["interrupted"] = trainer.interrupted
    summary["resumed_from"] = str(resume_from) if resume_from else None
    return summary


# --- SwanLab ------------------------------------------------------------------------------------------------------


def swanlab_mode() -> tuple[str, str]:
    """``(mode, why)``: SWANLAB_MODE when set; else cloud when an API key is known (env or ``swanlab login``), else
    local. Reads swanlab's own settings (SWANLAB_API_KEY, ./.swanlab/.netrc, ~/.swanlab/.netrc) without network."""
    env = os.environ.get("SWANLAB_MODE", "").strip()
    if env:
        mode = {"online": "cloud"}.get(env.lower(), env.lower())
        if mode not in ("cloud", "local", "offline", "disabled"):
            raise MedsftError(f"SWANLAB_MODE={env}: expected cloud, local, offline or disabled")
        return mode, "from SWANLAB_MODE"
    import swanlab

    try:
        logged_in = swanlab.Settings().api_key is not None
    except ValueError:  # unreadable swanlab settings: treat as not logged in
        logged_in = False
    return ("cloud", "logged in") if logged_in else ("local", "not logged in to SwanLab")


def _cloud_unreachable(timeout: float = 5.0) -> str | None:
    """Why the SwanLab API host cannot be reached (None when a TCP connection opens). One quick probe instead of
    swanlab's login, which retries with a warning line per attempt for ~15 s when the network is down."""
    import socket
    from urllib.parse import urlparse

    import swanlab

    try:
        url = urlparse(swanlab.Settings().api_host)
    except ValueError:  # unreadable settings: let swanlab.init report it
        return None
    if not url.hostname:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"{url.hostname}:{port}: {e.strerror or e or type(e).__name__}"
    return None


def start_swanlab(cfg: dict, kind: str, resume_from=None) -> list:
    """Start a SwanLab run for this training; returns the callbacks to pass to ``build_trainer``.

    Never prompts: cloud mode without working credentials or network falls back to local logging in swanlog/
    (view it with ``swanlab watch swanlog``), said in the one line this prints; ``disabled`` logs nothing.
    A resumed run (RESUME, with the run id kept in OUTPUT_DIR/swanlab_run.json) continues its experiment in cloud
    mode. Local mode cannot continue one (swanlab's local dashboard makes a new experiment per init), so the
    resumed part is a new experiment named "RUN_NAME (resumed at step N)", and the line says so. Offline mode saves
    each part under the same run id; ``swanlab sync`` uploads them into one cloud experiment.
    """
    mode, why = swanlab_mode()
    if mode == "disabled":
        print(f"SwanLab: disabled ({why})")
        return []
    import swanlab
    from transformers.integrations import SwanLabCallback

    init = dict(project=cfg["SWANLAB_PROJECT"], name=cfg.get("RUN_NAME"), config={**cfg, "KIND": kind},
                log_dir=str(cfg.get("SWANLAB_LOG_DIR", "swanlog")), settings=swanlab.Settings(interactive=False))
    id_file = Path(cfg["OUTPUT_DIR"]) / "swanlab_run.json"
    resumed = bool(cfg.get("RESUME") and id_file.is_file())
    if resumed:
        init.update(id=json.loads(id_file.read_text(encoding="utf-8"))["id"], resume="allow")
    if mode == "cloud":
        unreachable = _cloud_unreachable()
        if unreachable:
            mode, why = "local", f"the SwanLab cloud is unreachable: {unreachable}"
    if mode == "cloud":
        try:
            swanlab.init(mode="online", **init)
        except Exception as e:  # noqa: BLE001 - login/network errors come in many types; training must go on
            first = (str(e).strip().splitlines() or [""])[0][:200]
            mode, why = "local", f"cloud login failed: {type(e).__name__}: {first}"
    if mode != "cloud":
        if resumed and mode == "local":
            m = _CHECKPOINT.match(Path(resume_from).name) if resume_from else None
            init["name"] = f"{cfg.get('RUN_NAME')} (resumed" + (f" at step {m.group(1)})" if m else ")")
        swanlab.init(mode=mode, **init)
    run_id = swanlab.get_run().id
    write_json(id_file, {"id": run_id})
    where = "the SwanLab cloud" if mode == "cloud" else f"{init['log_dir']}/ (view: swanlab watch {init['log_dir']})"
    note = ""
    if resumed:
        note = {"cloud": f"; continuing experiment {run_id}",
                "local": f"; local mode cannot continue an experiment, so this resumed part is a new experiment, "
                         f"'{init['name']}'",
                "offline": f"; saved under the interrupted part's run id {run_id}: swanlab sync uploads both into one "
                           "cloud experiment"}.get(mode, "")
    print(f"SwanLab: {mode} ({why}), logging to {where}{note}")
    return [SwanLabCallback()]


def swanlab_active() -> bool:
    if "swanlab" not in sys.modules:
        return False
    import swanlab

    return swanlab.has_run()


def finish_swanlab(interrupted: bool = False, reason: str | None = None) -> None:
    """End the SwanLab run: "success", or for an interrupted run "aborted" with a reason. The reason matters in
    local mode, whose dashboard shows a run without an error text as Finished."""
    if swanlab_active():
        import swanlab

        if interrupted:
            swanlab.finish(state="aborted", error=reason or "interrupted (Ctrl-C or SIGTERM): a checkpoint was saved; "
                                                            "continue with --resume=true")
        else:
            swanlab.finish(state="success")


# --- outputs ------------------------------------------------------------------------------------------------------


def save_final(trainer, tokenizer, cfg: dict) -> list[Path]:
    """Save the trained model (or adapter), tokenizer (chat template included), generation config,
    ``train_config.json`` and, last, ``trainer_state.json`` (the finished marker) in OUTPUT_DIR. Returns the paths
    written. A full disk raises MedsftError naming OUTPUT_DIR.

    A LoRA adapter records the base model's spec (``cfg["MODEL"]``, e.g. ``tiny`` or ``Qwen/Qwen3-1.7B``) as
    ``base_model_name_or_path``, so later stages find the base without being told.
    """
    out = Path(cfg["OUTPUT_DIR"])
    with disk_errors(out, "the final model", "output_dir", resume=True):
        return _save_final(trainer, tokenizer, cfg, out)


def _save_final(trainer, tokenizer, cfg: dict, out: Path) -> list[Path]:
    from .config import save_config

    model = trainer.model
    model.config.use_cache = True  # inference wants the KV cache back
    tokenizer.padding_side = "left"  # what generation uses; load_tokenizer sets it anyway
    if hasattr(model, "peft_config"):
        for adapter in model.peft_config.values():
            adapter.base_model_name_or_path = str(cfg["MODEL"])
        # save_embedding_layers=False: peft's "auto" would look the spec up on the Hugging Face Hub
        model.save_pretrained(out, save_embedding_layers=False)
        model.get_base_model().generation_config.save_pretrained(out)
        tokenizer.save_pretrained(out)
        written = [out / "adapter_model.safetensors", out / "adapter_config.json"]
    else:
        if cfg.get("PRECISION") == "bf16-mixed":
            import torch

            model.to(torch.bfloat16)  # fp32 master weights were for the updates; ship bf16 like Qwen3 itself
        trainer.save_model(str(out))  # model.safetensors + config + generation_config + tokenizer
        written = sorted(out.glob("model*.safetensors"))
    save_config(cfg, out / "train_config.json")
    # last, and atomically: trainer_state.json is what marks the run finished
    tmp = out / ".trainer_state.json.tmp"
    trainer.state.save_to_json(str(tmp))
    os.replace(tmp, out / "trainer_state.json")
    return written + [out / "tokenizer_config.json", out / "generation_config.json", out / "train_config.json",
                      out / "trainer_state.json"]


def history(log_history: list[dict]) -> list[dict]:
    """The log entries needed to redraw the curves: train logs (loss...) and eval logs (eval_loss)."""
    out = []
    for entry in log_history:
        if "loss" in entry or "eval_loss" in entry:
            out.append({k: entry[k] for k in HISTORY_KEYS if k in entry})
    return out


def _last(hist: list[dict], key: str):
    vals = [e[key] for e in hist if key in e]
    return vals[-1] if vals else None


def write_results(trainer, cfg: dict, kind: str, summary: dict, data_stats: dict) -> Path:
    """Write ``RESULTS_DIR/train_{kind}.json``: steps, tokens, time, tokens/s, peak memory, final losses, curves.

    A session that trained nothing (resumed from the final checkpoint of a run killed while saving its outputs)
    keeps the timing of the results it replaces, rather than reporting 0 tokens/s.
    """
    import torch

    path = Path(cfg["RESULTS_DIR"]) / RESULTS_NAME.format(kind=kind)
    state = trainer.state
    if not summary.get("session_tokens"):
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if old.get("output_dir") == str(cfg["OUTPUT_DIR"]) and old.get("steps") == state.global_step:
            summary = {**summary, **{k: old[k] for k in ("wall_time_s", "train_time_s", "tokens_per_s",
                                                          "session_tokens") if k in old}}
    hist = history(state.log_history)
    peak, peak_kind = peak_memory()
    trainable, total = count_parameters(trainer.model)
    result = {
        "kind": kind,
        "model": str(cfg["MODEL"]),
        "output_dir": str(cfg["OUTPUT_DIR"]),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "features": {k: cfg.get(k) for k in FEATURES + ("GRADIENT_CHECKPOINTING",)},
        "estimated_peak_gib": cfg.get("ESTIMATED_PEAK_GIB"),
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "epochs": round(state.epoch or 0.0, 4),
        "examples_per_step": cfg["BATCH_SIZE"] * cfg["GRAD_ACCUM"],
        "trained_tokens": state.num_input_tokens_seen,
        "wall_time_s": summary["wall_time_s"],
        "train_time_s": summary["train_time_s"],
        "tokens_per_s": summary["tokens_per_s"],
        "session_tokens": summary["session_tokens"],
        "resumed_from": summary.get("resumed_from"),
        "peak_memory_gib": round(peak, 4),
        "peak_memory_kind": peak_kind,
        "final_train_loss": _last(hist, "loss"),
        "final_eval_loss": _last(hist, "eval_loss"),
        "trainable_params": trainable,
        "total_params": total,
        "data": data_stats,
        "log_history": hist,
    }
    with disk_errors(path.parent, path.name, "results_dir"):
        return write_json(path, result)


def _smooth(values: list[float], weight: float = CHART_SMOOTHING) -> list[float]:
    """TensorBoard's debiased exponential moving average."""
    out, last, n = [], 0.0, 0
    for v in values:
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out


def write_charts(results_dir) -> list[Path]:
    """Redraw ``trainloss.png`` and ``evalloss.png`` with every run whose ``train_{kind}.json`` exists.

    Each run is drawn raw (thin) and smoothed (EMA); same results ⇒ same PNG bytes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import io as _io

    import matplotlib.pyplot as plt

    from .io import atomic_write_bytes

    results_dir = Path(results_dir)
    runs = {}
    for kind in KINDS:
        p = results_dir / RESULTS_NAME.format(kind=kind)
        if p.is_file():
            try:
                runs[kind] = json.loads(p.read_text(encoding="utf-8")).get("log_history", [])
            except ValueError as e:
                raise MedsftError(f"{p}: invalid JSON ({e}); delete it and re-run its training") from None
    colors = {"full": "tab:blue", "lora": "tab:orange"}
    written = []
    for key, name in CHARTS.items():
        with plt.rc_context({"svg.hashsalt": "medsft", "path.simplify": False}):
            fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
            for kind, hist in runs.items():
                pts = [(e["step"], e[key]) for e in hist if key in e and e[key] is not None]
                if not pts:
                    continue
                steps, vals = zip(*pts)
                ax.plot(steps, vals, color=colors[kind], alpha=0.3, linewidth=1,
                        marker="o" if key == "eval_loss" else None, markersize=3, label=f"{kind} (raw)")
                ax.plot(steps, _smooth(list(vals)), color=colors[kind], linewidth=2, label=f"{kind} (smoothed)")
            title = "Train loss" if key == "loss" else "Eval loss (val.jsonl)"
            ax.set_title(title)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("cross-entropy loss")
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend()
            else:
                ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes)
            buf = _io.BytesIO()
            fig.savefig(buf, format="png", metadata={"Software": None})
            plt.close(fig)
        with disk_errors(results_dir, name, "results_dir"):
            written.append(atomic_write_bytes(results_dir / name, buf.getvalue()))
    return written


def preview(model, tokenizer, val_path, cfg: dict) -> list[dict]:
    """Answer the first PREVIEW_QUESTIONS val questions greedily; print them and log them to SwanLab as text."""
    from .generate import generate
    from .io import read_jsonl

    n = int(cfg.get("PREVIEW_QUESTIONS", 3))
    if n <= 0:
        return []
    rows = read_jsonl(val_path)[:n]
    questions = [r["question"] for r in rows]
    outs = generate(model, tokenizer, questions, max_new_tokens=int(cfg.get("PREVIEW_MAX_NEW_TOKENS", 256)),
                    do_sample=False, seed=cfg["SEED"], batch_size=len(questions), progress=False)
    items = []
    for i, (row, out) in enumerate(zip(rows, outs), start=1):
        items.append({"question": row["question"], "output": out["output"], "finished": out["finished"],
                      "reference": row.get("answer", "")})
        cut = "" if out["finished"] else f" [cut at {cfg.get('PREVIEW_MAX_NEW_TOKENS')} tokens]"
        print(f"--- preview {i}/{len(rows)}\nQ: {row['question']}\nA: {out['output']}{cut}")
    if swanlab_active():
        import swanlab

        swanlab.log({"Prediction": [swanlab.Text(f"问题 / question:\n{it['question']}\n\n回答 / answer:\n{it['output']}",
                                                 caption=f"val {i}") for i, it in enumerate(items, start=1)]})
    return items


def training_error(e: Exception, lora: bool = False) -> MedsftError | None:
    """A user-facing error for well-known failures (out of memory), or None."""
    text = str(e)
    if "out of memory" in text.lower():
        return MedsftError(f"out of memory ({text.splitlines()[0][:200]}); {ways_out(lora)}")
    return None
