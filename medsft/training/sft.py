"""The SFT recipe's parts, top to bottom: ``start`` (settings, launch, features resolved once, memory estimate,
fingerprint, then the run harness), examples (chat template, prompt masked), the model (precision, LoRA / QLoRA) and
the trainer (transformers' Trainer with loss.py's chunked loss). torch, transformers and peft are imported inside the
functions: train.py --help stays fast."""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version
from tqdm import tqdm

from .. import models
from ..chat import (IGNORE_INDEX, MODES, THINK_CLOSE, THINK_OPEN, control_tokens, example_modes, find_control_token,
                    tokenize_example)
from ..config import Config
from ..files import MedsftError, check_writable, iter_jsonl
from ..memory import estimate, estimate_line, weight_dtype
from . import callbacks, distributed, run
from .features import TORCHAO_OPTIMS, resolve_features, resolved

# --- start: every check before weights load -------------------------------------------------------------------------

def start_run(cfg, kind: str) -> tuple[Config, Path | None]:
    """``(cfg with the launch, features and estimate, the checkpoint to resume or None)``; DRY_RUN prints the
    features and the per-GPU estimate (config.json only) and exits 0. Every process joins one run here; rank 0
    checks, every rank fetches the model outside any collective (a download never meets its timeout)."""
    lora = kind == "lora"
    distributed.join()
    cfg = Config.of(cfg)
    cfg = cfg.replace(**distributed.on_main(check_settings, cfg, lora))
    # once per run, before the model is fetched; a dry run shows what a bf16 GPU would get
    cfg = cfg.replace(**distributed.on_main(resolve_features, cfg, lora, True, cfg.dry_run), resolved=True)
    model_dir = models.resolve_model(str(cfg.model), config_only=cfg.dry_run)
    est = distributed.on_main(estimate, cfg, model_dir, lora)
    if cfg.dry_run:
        distributed.on_main(_dry_run_report, cfg, est)
        distributed.stop_process_group()
        raise SystemExit(0)
    fp = distributed.on_main(run_fingerprint, cfg, model_dir)
    resume_from = run.start(cfg, kind, fingerprint=fp, estimate=est, lora=lora)
    print(f"examples per optimizer step: {cfg.examples_per_step} (BATCH_SIZE {cfg.batch_size} x GRAD_ACCUM "
          f"{cfg.grad_accum} x {cfg.world_size} process(es), engine {cfg.engine})")
    return cfg.replace(ESTIMATED_PEAK_GIB=round(est["total"] / 2 ** 30, 3)), resume_from

def _dry_run_report(cfg: Config, est: dict) -> None:
    print(estimate_line(est))
    where = "" if cfg.engine == "single" else f"; per GPU with {cfg.engine} on {cfg.world_size} GPUs"
    print(f"dry run: {est['params'] / 1e9:.3f}B parameters, {est['trainable'] / 1e6:,.1f}M trainable, "
          f"{est['tokens_per_micro_batch']:,} tokens per micro-batch (BATCH_SIZE x MAX_LENGTH), "
          f"{cfg.examples_per_step} examples per optimizer step{where}; nothing loaded or written")

def run_fingerprint(cfg: Config, model_dir: Path) -> dict:
    """What makes two SFT runs one run: the data files' bytes, the tokenizer, the weights, the settings."""
    digest = hashlib.sha256()
    for name in ("train.jsonl", "val.jsonl"):
        digest.update((Path(cfg.data_dir) / name).read_bytes())
    return run.fingerprint(cfg, {"data_sha256": digest.hexdigest(), "tokenizer_sha256": run.tokenizer_sha256(model_dir),
                                 "weights_sha256": run.weights_sha256(model_dir)})

def check_settings(cfg: Config, lora: bool) -> dict:
    """The checks that need no model; returns ENGINE, DEEPSPEED, WORLD_SIZE, GRAD_ACCUM and EXAMPLES_PER_STEP."""
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
    cfg = cfg.replace(**launch)
    _check_quantization(cfg, lora)
    check_versions()
    if cfg.dry_run:
        return launch
    check_data(cfg.data_dir)
    check_writable(cfg.output_dir, "output_dir")  # before the model is fetched (maybe downloaded)
    if cfg.results_dir:
        check_writable(cfg.results_dir, "results_dir")
    return launch

def _check_quantization(cfg: Config, lora: bool) -> None:
    quant = str(cfg.get("QUANTIZATION", "none")).lower()  # train.py has no QUANTIZATION: a full run is never one
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
    path = Path(requirements) if requirements else distributed.PROJECT_ROOT / "requirements.txt"
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

# --- examples -------------------------------------------------------------------------------------------------------

def prepare_examples(path, tokenizer, max_length: int, system=None, no_think_ratio: float = 0.0,
                     seed: int = 0) -> tuple[list[dict], dict]:
    """``(examples, stats)`` of a {question, think, answer} JSONL: ``no_think_ratio`` of the rows non-thinking (a
    row's ``mode`` wins); rows over ``max_length`` (never cut) or holding a chat control token skipped and counted."""
    path = Path(path)
    # typed think tags too: a `</think>` in an answer would train a second closing tag
    rows, n_control, tokens = [], 0, control_tokens(tokenizer) + (THINK_OPEN, THINK_CLOSE)
    for lineno, obj, err in iter_jsonl(path):
        if err:
            raise MedsftError(f"{path}:{lineno}: {err}; fix or remove that line")
        for key in ("question", "think", "answer"):
            if not isinstance(obj.get(key), str) or (key != "think" and not obj[key].strip()):
                raise MedsftError(f"{path}:{lineno}: field '{key}' must be a non-empty string; re-run data.py "
                                  "or fix that line")
        if obj.get("mode") is not None and obj["mode"] not in MODES:
            raise MedsftError(f"{path}:{lineno}: field 'mode' is {obj['mode']!r}; use one of {', '.join(MODES)} "
                              "or remove the field (then NO_THINK_RATIO decides)")
        hit = find_control_token(obj, ("question", "think", "answer"), tokens)
        if hit:
            n_control += 1
            print(f"skip {path}:{lineno}: field '{hit[0]}' holds the chat control token {hit[1]!r}, which would be "
                  "trained as a real turn; remove it from that line (data.py rejects such rows)")
            continue
        rows.append(obj)
    if not rows:
        raise MedsftError(f"{path}: all {n_control} rows hold chat control tokens (named above); re-run data.py, "
                          "which rejects them" if n_control else f"{path} has no rows: re-run data.py")
    if not 0 <= no_think_ratio <= 1:
        raise MedsftError(f"--no_think_ratio={no_think_ratio}: must be between 0 and 1")
    modes = example_modes([str(r.get("id") or r["question"]) for r in rows], no_think_ratio, seed)
    examples, skipped, counts = [], 0, {}
    for row, mode in tqdm(list(zip(rows, modes)), desc=f"tokenize {path.name}", unit="row", disable=len(rows) < 200):
        mode = row.get("mode") or mode
        mode = mode if row["think"].strip() or mode != "think" else "no_think_hard"  # never an empty think trained
        ex = tokenize_example(tokenizer, row, max_length, system=system, mode=mode)
        if ex is None:
            skipped += 1
        else:
            examples.append(ex)
            counts[mode] = counts.get(mode, 0) + 1
    stats = {"path": str(path), "rows": len(rows) + n_control, "kept": len(examples), "skipped_too_long": skipped,
             "skipped_control_tokens": n_control, "tokens": sum(len(e["input_ids"]) for e in examples),
             "supervised_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples),
             "longest": max((len(e["input_ids"]) for e in examples), default=0),
             "modes": {m: counts.get(m, 0) for m in MODES}}
    print(f"{path}: {stats['kept']}/{stats['rows']} rows kept, {skipped} skipped as longer than "
          f"MAX_LENGTH={max_length} tokens" + (f", {n_control} as holding chat control tokens" if n_control else "")
          + f"; {stats['tokens']:,} tokens ({stats['supervised_tokens']:,} trained)"
          + (f"; modes {stats['modes']}" if set(counts) != {"think"} else ""))
    if not examples:
        raise MedsftError(f"{path}: all {len(rows)} usable rows are longer than MAX_LENGTH={max_length} tokens; raise "
                          f"--max_length (the longest row needs more)")
    return examples, stats

# --- model ----------------------------------------------------------------------------------------------------------

def load_training_model(cfg):
    """``cfg.model`` in the resolved precision and attention; QUANTIZATION=4bit loads an NF4 base (QLoRA)."""
    lora = is_lora(cfg)
    cfg = resolved(cfg, lora=lora)
    dtype = weight_dtype(cfg.precision, lora)
    kwargs = {"attn_implementation": cfg.attn_implementation}
    # under ZeRO-3 the TrainingArguments must be alive while from_pretrained runs: each GPU then loads its shard
    zero3_args = training_arguments(cfg, lora) if cfg.get("ENGINE") == "zero3" else None  # noqa: F841
    if str(cfg.get("QUANTIZATION", "none")).lower() == "4bit":
        model = _load_4bit(cfg, dtype, kwargs)
    else:
        model = models.load_model(cfg.model, dtype=dtype, device=models.pick_device(), **kwargs)
    model.config.use_cache = False  # no KV cache while training (and incompatible with gradient checkpointing)
    return model

def _load_4bit(cfg: Config, dtype, kwargs: dict):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    compute = torch.float32 if dtype == torch.float32 else torch.bfloat16
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=torch.uint8)
    # no peft prepare_model_for_kbit_training: it would upcast the frozen embedding and head to fp32
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(models.resolve_model(str(cfg.model)), dtype=compute,
                                                 quantization_config=quant, device_map={"": device},
                                                 use_safetensors=True, **kwargs)
    n4 = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
    print(f"QLoRA: base in NF4 ({n4} linear layers, double quantization, {str(compute)[6:]} compute): "
          f"{model.get_memory_footprint() / 2 ** 30:.2f} GiB of weights")
    return model

def is_lora(cfg) -> bool:
    """The LoRA stage's settings (train_lora.py has LORA_R; train.py has none)."""
    return "LORA_R" in cfg

def add_lora(model, cfg):
    """Wrap ``model`` with a trainable LoRA adapter (LORA_*; targets ``all-linear`` or comma-separated names)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import set_seed
    cfg = Config.of(cfg)
    targets = cfg.lora_target_modules
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    set_seed(cfg.seed)  # the adapter's random init (lora_A) is part of "same seed, same run"
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                        lora_dropout=cfg.lora_dropout, target_modules=targets, bias="none")
    try:
        model = get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules not found in the model
        raise MedsftError(f"LoRA: {e}; check --lora_target_modules") from None
    sort_lora_targets(model)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} targets={targets}: {trainable:,} trainable of "
          f"{total:,} parameters ({100 * trainable / total:.2f}%)")
    return model

def sort_lora_targets(model) -> None:
    """peft saves the resolved target set as list(set), in hash order: other bytes every run. Sorted, the same."""
    for c in getattr(model, "peft_config", {}).values():
        if isinstance(c.target_modules, set):
            c.target_modules = sorted(c.target_modules)

# --- trainer ----------------------------------------------------------------------------------------------------------

def build_trainer(model, tokenizer, train_examples, eval_examples, cfg, run_callbacks=None):
    """A Trainer over ``prepare_examples`` output (no eval when it is empty) with ``run_callbacks`` (default
    ``callbacks.basic()``: no SwanLab); their clock adds tokens/s and peak memory to each log."""
    import torch
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    from .loss import install_chunked_loss
    from .trainer import MedsftTrainer
    lora = hasattr(model, "peft_config")
    cfg = resolved(cfg, lora=lora)
    tokenizer.padding_side = "right"  # positions count from the first token: padding must come after it
    if cfg.padding_free:
        collator = DataCollatorWithFlattening(return_flash_attn_kwargs=cfg.attn_implementation.startswith("flash"))
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX,
                                          pad_to_multiple_of=8 if torch.cuda.is_available() else None,
                                          return_tensors="pt")
    has_eval = bool(eval_examples)
    args = training_arguments(cfg, lora=lora, has_eval=has_eval)
    distributed.check_launch(args)
    if cfg.loss == "chunked":
        install_chunked_loss(model)
    if has_eval:  # rows with no target up to a multiple of eval batch x processes: the dataloader repeats none
        per_step = args.per_device_eval_batch_size * args.world_size
        filler = {"input_ids": [tokenizer.pad_token_id], "attention_mask": [1], "labels": [IGNORE_INDEX]}
        eval_examples = list(eval_examples) + [filler] * (-len(eval_examples) % per_step)
    return MedsftTrainer(model=model, args=args, train_dataset=train_examples,
                         eval_dataset=eval_examples if has_eval else None, data_collator=collator,
                         processing_class=tokenizer,
                         callbacks=callbacks.basic() if run_callbacks is None else list(run_callbacks))

def training_arguments(cfg, lora: bool, has_eval: bool = True):
    """The TrainingArguments of ``cfg`` (built before the model loads under ZeRO-3: DeepSpeed's zero.Init)."""
    import torch
    from transformers import TrainingArguments
    cfg = resolved(cfg, lora=lora)
    if cfg.get("DEEPSPEED"):
        distributed.start_deepspeed()
    cuda = torch.cuda.is_available()
    # --engine=fsdp2 under torchrun; under accelerate launch its FSDP config (environment) is used as it is
    fsdp = cfg.get("ENGINE") == "fsdp2" and os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true"
    checkpointing = bool(cfg.gradient_checkpointing)
    try:
        return TrainingArguments(
            deepspeed=cfg.get("DEEPSPEED") or None, fsdp="full_shard auto_wrap" if fsdp else None,
            fsdp_config=str(distributed.PROJECT_ROOT / distributed.ENGINE_CONFIGS["fsdp2"]) if fsdp else None,
            output_dir=str(cfg.output_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup, weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm, optim=cfg.optim,
            # bf16 weights move by stochastic rounding, or updates below half a bf16 ulp would vanish
            optim_args="bf16_stochastic_round=True" if cfg.optim in TORCHAO_OPTIMS and cfg.precision == "bf16"
            and not lora else None,
            bf16=cfg.precision in ("bf16", "bf16-mixed"), fp16=cfg.precision == "fp16",
            activation_checkpointing=checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
            use_liger_kernel=cfg.loss == "liger",
            train_sampling_strategy="random" if cfg.padding_free else "group_by_length",
            logging_steps=cfg.logging_steps, logging_first_step=True, eval_strategy="steps" if has_eval else "no",
            eval_steps=cfg.eval_steps if has_eval else None, save_strategy="steps", save_steps=cfg.save_steps,
            save_total_limit=cfg.save_total_limit, seed=cfg.seed, data_seed=cfg.seed,
            include_num_input_tokens_seen="non_padding", report_to="none", run_name=cfg.run_name,
            dataloader_num_workers=0, dataloader_pin_memory=cuda, use_cpu=not cuda, disable_tqdm=False)
    except ValueError as e:  # e.g. an unknown SCHEDULER or OPTIM name
        raise MedsftError(f"invalid training settings: {e}") from None
