"""The fail-fast checks of a training run, before any weights load: settings, library versions, data, OUTPUT_DIR,
memory, disk, CPU vs GPU. ``--dry_run=true`` stops here after printing the estimate."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from ..files import MedsftError
from ..memory import check_fits, describe, estimate
from ..models import resolve_model
from . import distributed
from .disk import check_writable
from .features import resolve_features
from .outputs import KINDS
from .run_dir import check_disk, check_finished, check_output_dir, check_same_run, lock_output_dir, run_fingerprint

# torch is imported inside check_cpu: importing this module stays fast (train.py --help).

CPU_MAX_PARAMS = 100_000_000  # more parameters than this need a GPU (or ALLOW_CPU): Qwen3-0.6B already takes days


def check_data(data_dir) -> tuple[Path, Path]:
    d = Path(data_dir)
    train, val = d / "train.jsonl", d / "val.jsonl"
    for p in (train, val):
        if not p.is_file():
            raise MedsftError(f"{p} not found: run data.py first (it writes train/val/test.jsonl into {d}/), "
                              "or point --data_dir at a folder that has them")
    return train, val


def check_versions(requirements=None) -> None:
    """Stop before loading anything when an installed library is older than requirements.txt's floor: an older
    transformers, say, lacks TrainingArguments this code passes and would crash after minutes of loading."""
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


def check_cpu(cfg: dict, est: dict) -> None:
    """A real-size model without a GPU takes days per epoch: refuse unless ALLOW_CPU (tiny is the CPU demo)."""
    import torch

    if torch.cuda.is_available() or cfg.get("ALLOW_CPU") or est["params"] < CPU_MAX_PARAMS:
        return
    raise MedsftError(f"no CUDA GPU found, and {cfg['MODEL']} has {est['params'] / 1e9:.2f}B parameters: training "
                      "it on a CPU takes days. Run it on a GPU, or try the whole pipeline on CPU in minutes with "
                      "--model=tiny. To train on CPU anyway, add --allow_cpu=true")


def dry_run(cfg: dict, kind: str, model_dir=None) -> None:
    """Print the resolved features and the memory estimate for the GPU this run is meant for, then exit 0.
    Needs only config.json (no weights, no GPU, no data): of a hub id nothing else is downloaded. The estimate is
    per GPU for the ENGINE on WORLD_SIZE GPUs (DRY_RUN_GPUS when not launched on several)."""
    lora = kind == "lora"
    feats = resolve_features(cfg, lora=lora, assume_gpu=True)
    est = estimate({**cfg, **feats}, model_dir or resolve_model(str(cfg["MODEL"]), config_only=True), lora)
    print(describe(est))
    where = ("" if cfg["ENGINE"] == "single" else
             f"; per GPU with {cfg['ENGINE']} on {cfg['WORLD_SIZE']} GPUs")
    print(f"dry run: {est['params'] / 1e9:.3f}B parameters, {est['trainable'] / 1e6:,.1f}M trainable, "
          f"{est['tokens_per_micro_batch']:,} tokens per micro-batch (BATCH_SIZE x MAX_LENGTH), "
          f"{cfg['EXAMPLES_PER_STEP']} examples per optimizer step{where}; nothing loaded or written")
    raise SystemExit(0)


def preflight(cfg: dict, kind: str) -> Path | None:
    """All fail-fast checks, before any weights load. Returns the checkpoint to resume from (or None).

    Under a multi-process launch every process joins one process group first; rank 0 alone runs the checks and
    the OUTPUT_DIR bookkeeping (--overwrite, resume choice, fingerprint, lock) and hands the outcome to the others.
    Between the cheap checks and the estimate every process fetches the model itself, outside any collective: on
    each machine one downloads a hub id while the others wait on a file lock (``models.download``), so a long
    first download never runs into the process group's timeout.
    Sets ENGINE, DEEPSPEED, WORLD_SIZE, GRAD_ACCUM (derived from GLOBAL_BATCH when set), EXAMPLES_PER_STEP and
    ESTIMATED_PEAK_GIB in ``cfg`` on every rank.
    With DRY_RUN it prints the resolved features and the memory estimate and exits instead (config.json only).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    distributed.start()
    cfg.update(distributed.on_main(_check_settings, dict(cfg), kind))
    model_dir = resolve_model(str(cfg["MODEL"]), config_only=bool(cfg.get("DRY_RUN")))
    try:
        resume_from, updates = distributed.on_main(_preflight, dict(cfg), kind, model_dir)
    except SystemExit as e:
        if e.code == 0:  # the dry run: every rank got its outcome and stops here, so the group can end cleanly
            distributed.stop_process_group()
        raise
    cfg.update(updates)
    return resume_from


def _check_settings(cfg: dict, kind: str) -> dict:
    """The checks that need no model: settings, library versions and, but for a dry run, data and OUTPUT_DIR."""
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
    updates = distributed.resolve_engine(cfg)
    updates.update(distributed.resolve_batch(cfg, updates["WORLD_SIZE"]))
    cfg.update(updates)
    check_quantization(cfg, lora)
    check_versions()
    if cfg.get("DRY_RUN"):
        return updates
    check_data(cfg["DATA_DIR"])
    resolve_features(cfg, lora=lora, log=False)  # bad precision/attention/optim choices, before loading
    check_writable(cfg["OUTPUT_DIR"], "output_dir")  # before the model is fetched (maybe downloaded)
    if cfg.get("RESULTS_DIR"):
        check_writable(cfg["RESULTS_DIR"], "results_dir")
    return updates


def _preflight(cfg: dict, kind: str, model_dir: Path) -> tuple[Path | None, dict]:
    lora = kind == "lora"
    if cfg.get("DRY_RUN"):
        dry_run(cfg, kind, model_dir)
    feats = resolve_features(cfg, lora=lora, log=False)
    check_finished(cfg, kind, run_fingerprint(cfg, feats))  # it hashes the model's tokenizer: after the fetch
    est = estimate({**cfg, **feats}, model_dir, lora)
    print(describe(est))
    cfg["ESTIMATED_PEAK_GIB"] = round(est["total"] / 2 ** 30, 3)
    check_cpu(cfg, est)
    check_fits(est, lora)
    check_disk(cfg, est, lora)
    lock_output_dir(cfg["OUTPUT_DIR"])  # before deleting or writing anything there
    resume_from = check_output_dir(cfg)  # last: --overwrite deletes, so every other check must have passed
    check_same_run(cfg, resume_from, feats)
    print(f"examples per optimizer step: {cfg['EXAMPLES_PER_STEP']} (BATCH_SIZE {cfg['BATCH_SIZE']} x GRAD_ACCUM "
          f"{cfg['GRAD_ACCUM']} x {cfg['WORLD_SIZE']} process(es), engine {cfg['ENGINE']})")
    keys = ("ENGINE", "DEEPSPEED", "WORLD_SIZE", "GRAD_ACCUM", "EXAMPLES_PER_STEP", "ESTIMATED_PEAK_GIB")
    return resume_from, {k: cfg[k] for k in keys}


def check_quantization(cfg: dict, lora: bool) -> None:
    """QUANTIZATION (train_lora.py): none, or 4bit (QLoRA: the frozen base in bitsandbytes NF4)."""
    quant = str(cfg.get("QUANTIZATION", "none")).lower()
    if quant in ("none", ""):
        return
    if quant != "4bit" or not lora:
        raise MedsftError(f"--quantization={cfg.get('QUANTIZATION')}: expected none or 4bit (QLoRA, train_lora.py "
                          "only: a quantized base cannot be fully fine-tuned)")
    if cfg["ENGINE"] in distributed.SHARDED:
        raise MedsftError(f"--quantization=4bit with --engine={cfg['ENGINE']}: a 4-bit base is not sharded here; "
                          "use --engine=ddp (each GPU holds the whole 4-bit base)")
    if cfg.get("DRY_RUN"):
        return
    from transformers.utils import is_bitsandbytes_available

    if not is_bitsandbytes_available():
        raise MedsftError("--quantization=4bit needs bitsandbytes: pip install -r requirements-scale.txt (see "
                          "docs/scale.md), or use --quantization=none")
