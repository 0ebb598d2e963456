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

Constants ``build_trainer`` reads from ``cfg`` (all from the scripts' constants blocks): OUTPUT_DIR, EPOCHS,
MAX_STEPS, BATCH_SIZE, GRAD_ACCUM, LEARNING_RATE, SCHEDULER, WARMUP, WEIGHT_DECAY, MAX_GRAD_NORM, LOGGING_STEPS,
EVAL_STEPS, SAVE_STEPS, SAVE_TOTAL_LIMIT, SEED, GRADIENT_CHECKPOINTING, PRECISION, ATTN_IMPLEMENTATION,
PADDING_FREE, LOSS, OPTIM, RUN_NAME. The efficiency constants may still be ``"auto"`` (or booleans).

Heavy libraries (torch, transformers, peft, swanlab, matplotlib) are imported inside functions, so the fail-fast
checks answer in about a second.
"""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import shutil
import signal
import sys
import threading
import time
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


# --- fail fast ---------------------------------------------------------------------------------------------------


def checkpoints(output_dir) -> list[tuple[int, Path, bool]]:
    """``[(step, path, complete)]`` of the ``checkpoint-N`` folders in ``output_dir``, oldest first.

    A checkpoint is complete when its ``trainer_state.json`` (written last by the Trainer) parses: a ``kill -9``
    during saving leaves a folder without it.
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


def check_output_dir(cfg: dict) -> Path | None:
    """Decide what to do with OUTPUT_DIR; return the checkpoint to resume from, or None to start fresh.

    A finished run or an unfinished one's checkpoints are never silently mixed with a new run: without RESUME the
    user must choose (resume, another OUTPUT_DIR, or OVERWRITE, which deletes the old checkpoints).
    """
    out = Path(cfg["OUTPUT_DIR"])
    ckpts = checkpoints(out)
    if cfg.get("OVERWRITE"):
        if cfg.get("RESUME"):
            raise MedsftError("--resume=true and --overwrite=true contradict each other: pick one")
        for _, path, _ in ckpts:
            shutil.rmtree(path)
        (out / "trainer_state.json").unlink(missing_ok=True)
        if ckpts:
            print(f"overwrite: deleted {len(ckpts)} old checkpoint(s) in {out}")
        return None
    if cfg.get("RESUME"):
        complete = [(s, p) for s, p, ok in ckpts if ok]
        for step, path, ok in ckpts:
            if not ok:  # a save interrupted by kill -9: useless, and would shadow the real newest checkpoint
                print(f"resume: removing incomplete {path.name} (no readable trainer_state.json)")
                shutil.rmtree(path)
        if not complete:
            print(f"resume: no checkpoint in {out}; starting from scratch")
            return None
        step, path = complete[-1]
        print(f"resume: continuing from {path} (step {step})")
        return path
    fix = ("continue it with --resume=true, write elsewhere with --output_dir=DIR, or start over with "
           "--overwrite=true (deletes its checkpoints)")
    if is_finished(out):
        raise MedsftError(f"{out} already holds a finished run (trainer_state.json): {fix}")
    if ckpts:
        raise MedsftError(f"{out} holds checkpoints of an unfinished run (newest {ckpts[-1][1].name}): {fix}")
    return None


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
    est = estimate({**cfg, **feats}, resolve_model(str(cfg["MODEL"])), lora)
    print(describe(est))
    cfg["ESTIMATED_PEAK_GIB"] = round(est["total"] / 2 ** 30, 3)
    check_cpu(cfg, est)
    check_fits(est, lora)
    resume_from = check_output_dir(cfg)  # last: --overwrite deletes, so every other check must have passed
    check_same_run(cfg, resume_from, feats)
    return resume_from


RUN_KEYS = ("MODEL", "MAX_LENGTH", "EPOCHS", "MAX_STEPS", "BATCH_SIZE", "GRAD_ACCUM", "LEARNING_RATE", "SCHEDULER",
            "WARMUP", "WEIGHT_DECAY", "SEED", "LORA_R", "LORA_ALPHA", "LORA_DROPOUT", "LORA_TARGET_MODULES")


def check_same_run(cfg: dict, resume_from, feats: dict) -> None:
    """Record what defines a run (data bytes, schedule, resolved features) in OUTPUT_DIR/run_fingerprint.json;
    refuse to resume a run whose data or schedule changed since (e.g. data.py re-run), or whose ``auto`` features
    would now resolve differently (e.g. bitsandbytes or flash-attn installed meanwhile), which would silently mix
    two runs."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("train.jsonl", "val.jsonl"):
        digest.update((Path(cfg["DATA_DIR"]) / name).read_bytes())
    fp = {"data_sha256": digest.hexdigest(), **{k: cfg[k] for k in RUN_KEYS if k in cfg}, "features": feats}
    path = Path(cfg["OUTPUT_DIR"]) / "run_fingerprint.json"
    if resume_from is not None and path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in fp if k != "features" and old.get(k) != fp[k]]
        if changed:
            raise MedsftError(f"--resume=true: {path.parent} was trained with other {', '.join(changed)} (the data "
                              "when data_sha256): resuming would mix two runs; start over with --overwrite=true, or "
                              "use another --output_dir")
        was = old.get("features") or {}
        moved = {k: v for k, v in was.items() if feats.get(k) != v}
        if moved:
            now = ", ".join(f"{k}={feats.get(k)} (was {v})" for k, v in moved.items())
            keep = " ".join(f"--{k.lower()}={str(v).lower() if isinstance(v, bool) else v}" for k, v in moved.items())
            raise MedsftError(f"--resume=true: the features now resolve to {now}, e.g. a library was installed or "
                              f"removed since the run started; resume as before with {keep}")
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


def prepare_examples(path, tokenizer, max_length: int, system=None) -> tuple[list[dict], dict]:
    """Tokenize the {question, think, answer} rows of a JSONL file for SFT.

    Returns ``(examples, stats)``: examples are ``{"input_ids", "labels", "attention_mask"}`` lists (prompt
    labels -100, see ``medsft.chat.tokenize_example``); stats are ``{"path", "rows", "kept",
    "skipped_too_long", "tokens", "supervised_tokens", "longest"}``. Rows longer than ``max_length`` are skipped
    and counted (a truncated answer would teach the model not to stop). A bad line or field raises MedsftError
    naming ``path:line``.
    """
    from tqdm import tqdm

    from .chat import tokenize_example

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
    examples, skipped = [], 0
    for row in tqdm(rows, desc=f"tokenize {path.name}", unit="row", disable=len(rows) < 200):
        ex = tokenize_example(tokenizer, row, max_length, system=system)
        if ex is None:
            skipped += 1
        else:
            examples.append(ex)
    stats = {"path": str(path), "rows": len(rows), "kept": len(examples), "skipped_too_long": skipped,
             "tokens": sum(len(e["input_ids"]) for e in examples),
             "supervised_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples),
             "longest": max((len(e["input_ids"]) for e in examples), default=0)}
    print(f"{path}: {stats['kept']}/{stats['rows']} rows kept, {skipped} skipped as longer than "
          f"MAX_LENGTH={max_length} tokens; {stats['tokens']:,} tokens ({stats['supervised_tokens']:,} trained)")
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
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                  "(press Ctrl-C again to abort without saving)", flush=True)

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


def start_swanlab(cfg: dict, kind: str) -> list:
    """Start a SwanLab run for this training; returns the callbacks to pass to ``build_trainer``.

    Never prompts: cloud mode without working credentials or network falls back to local logging in swanlog/
    (view it with ``swanlab watch swanlog``); ``disabled`` logs nothing.
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
    if cfg.get("RESUME") and id_file.is_file():  # a resumed run continues its SwanLab experiment
        init.update(id=json.loads(id_file.read_text(encoding="utf-8"))["id"], resume="allow")
    try:
        swanlab.init(mode="online" if mode == "cloud" else mode, **init)
    except Exception as e:  # noqa: BLE001 - login/network errors come in many types; training must go on
        if mode != "cloud":
            raise
        print(f"SwanLab: cloud logging failed ({type(e).__name__}: {e}); logging locally in {init['log_dir']}/ "
              "instead")
        mode = "local"
        swanlab.init(mode="local", **init)
    write_json(id_file, {"id": swanlab.get_run().id})
    where = "the SwanLab cloud" if mode == "cloud" else f"{init['log_dir']}/ (view: swanlab watch {init['log_dir']})"
    print(f"SwanLab: {mode} ({why}), logging to {where}")
    return [SwanLabCallback()]


def swanlab_active() -> bool:
    if "swanlab" not in sys.modules:
        return False
    import swanlab

    return swanlab.get_run() is not None


def finish_swanlab(interrupted: bool = False) -> None:
    if swanlab_active():
        import swanlab

        swanlab.finish(state="aborted" if interrupted else "success")


# --- outputs ------------------------------------------------------------------------------------------------------


def save_final(trainer, tokenizer, cfg: dict) -> list[Path]:
    """Save the trained model (or adapter), tokenizer (chat template included), generation config,
    ``trainer_state.json`` and ``train_config.json`` in OUTPUT_DIR. Returns the paths written.

    A LoRA adapter records the base model's spec (``cfg["MODEL"]``, e.g. ``tiny`` or ``Qwen/Qwen3-1.7B``) as
    ``base_model_name_or_path``, so later stages find the base without being told.
    """
    from .config import save_config

    out = Path(cfg["OUTPUT_DIR"])
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
    trainer.state.save_to_json(str(out / "trainer_state.json"))
    save_config(cfg, out / "train_config.json")
    return written + [out / "tokenizer_config.json", out / "generation_config.json", out / "trainer_state.json",
                      out / "train_config.json"]


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
    """Write ``RESULTS_DIR/train_{kind}.json``: steps, tokens, time, tokens/s, peak memory, final losses, curves."""
    import torch

    state = trainer.state
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
    return write_json(Path(cfg["RESULTS_DIR"]) / RESULTS_NAME.format(kind=kind), result)


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
