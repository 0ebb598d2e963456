"""The SFT recipe, top to bottom: examples (chat template, prompt masked) -> features (every "auto" resolved once)
-> model (precision, LoRA / QLoRA) -> trainer (transformers' Trainer with loss.py's chunked loss, Ctrl-C saves).
torch, transformers and peft are imported inside the functions: train.py --help stays fast."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from pathlib import Path

from tqdm import tqdm

from .. import models
from ..chat import (IGNORE_INDEX, MODES, THINK_CLOSE, THINK_OPEN, control_tokens, example_modes, find_control_token,
                    tokenize_example)
from ..config import FEATURES, TrainConfig
from ..files import MedsftError, disk_errors, iter_jsonl
from ..memory import weight_dtype, ways_out
from . import distributed
from .loss import install_chunked_loss
from .finish import notice, peak_memory, session_clock

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

# --- features: PRECISION, ATTN_IMPLEMENTATION, PADDING_FREE, LOSS, OPTIM -------------------------------------------

PRECISIONS = ("bf16", "bf16-mixed", "fp16", "fp32")
LOSSES = ("liger", "chunked", "plain")
ATTENTIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
TORCHAO_OPTIMS = ("adamw_torch_8bit", "adamw_torch_4bit")

def _tristate(name: str, value) -> bool | None:
    if isinstance(value, bool) or value is None:
        return value
    low = str(value).strip().lower()
    if low in ("auto", "true", "1", "yes", "on", "false", "0", "no", "off"):
        return None if low == "auto" else low in ("true", "1", "yes", "on")
    raise MedsftError(f"--{name.lower()}={value}: expected auto, true or false")

def _gpu_facts(assume_gpu: bool) -> dict:
    import torch
    if torch.cuda.is_available():
        return {"cuda": True, "bf16": torch.cuda.is_bf16_supported(including_emulation=False),
                "ampere": torch.cuda.get_device_capability()[0] >= 8, "name": torch.cuda.get_device_name(0)}
    if assume_gpu:
        return {"cuda": True, "bf16": True, "ampere": True, "name": "a bf16 CUDA GPU (assumed: no GPU here)"}
    return {"cuda": False, "bf16": False, "ampere": False, "name": "CPU"}

def resolve_features(cfg, lora: bool = False, log: bool = True, assume_gpu: bool = False) -> dict:
    """``{NAME: value}`` of the concrete FEATURES here (auto's picks: docs/performance.md); explicit ones checked."""
    from transformers.utils import is_bitsandbytes_available, is_flash_attn_2_available, is_liger_kernel_available
    from transformers.utils.import_utils import is_torchao_available
    c = TrainConfig.of(cfg)
    gpu = _gpu_facts(assume_gpu)
    cuda = gpu["cuda"]
    engine = distributed.resolve_engine(c)["ENGINE"] if c.engine == "auto" or c.engine.endswith(".json") else c.engine
    precision = str(c.precision).lower()
    if precision == "auto":  # emulated bf16 (T4, V100) is slow: those get fp16 mixed precision
        precision = ("bf16" if gpu["bf16"] else "fp16") if cuda else "fp32"
    if precision not in PRECISIONS:
        raise MedsftError(f"--precision={precision}: expected auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and not cuda:
        raise MedsftError("--precision=fp16 needs a CUDA GPU; use --precision=fp32 (or auto) on CPU")
    attn = str(c.attn_implementation)
    if attn == "auto":  # flash-attn 2 kernels need sm80+ and half precision
        attn = "flash_attention_2" if gpu["ampere"] and precision != "fp32" and is_flash_attn_2_available() else "sdpa"
    if attn not in ATTENTIONS:
        raise MedsftError(f"--attn_implementation={attn}: expected auto, sdpa, eager, flash_attention_2, "
                          "flash_attention_3 or flex_attention")
    if attn.startswith("flash_attention") and (not cuda or precision == "fp32"):
        raise MedsftError(f"--attn_implementation={attn} needs a CUDA GPU and bf16/fp16; use "
                          "--attn_implementation=auto")
    if attn == "flash_attention_2" and not is_flash_attn_2_available():
        raise MedsftError("--attn_implementation=flash_attention_2 but flash-attn is not installed: "
                          "pip install flash-attn, or use --attn_implementation=auto")
    padding_free = _tristate("PADDING_FREE", c.padding_free)
    if padding_free is None:  # sdpa would need a (tokens x tokens) mask per flattened batch: padding is cheaper
        padding_free = attn.startswith("flash_attention")
    loss = str(c.loss).lower()
    if loss == "auto":
        sharded = engine in distributed.SHARDED
        loss = "liger" if cuda and is_liger_kernel_available() else "plain" if sharded else "chunked"
    if loss == "chunked" and engine in distributed.SHARDED:
        raise MedsftError(f"--loss=chunked with --engine={engine}: the chunked loss reads the output head's weight "
                          "outside its forward pass, where ZeRO-3 / FSDP2 keep only a shard of it; use --loss=auto "
                          "(Liger's fused loss when liger-kernel is installed, else plain) or --engine=ddp / zero2")
    if loss not in LOSSES:
        raise MedsftError(f"--loss={loss}: expected auto, {', '.join(LOSSES)}")
    if loss == "liger" and not is_liger_kernel_available() and not assume_gpu:
        raise MedsftError("--loss=liger but liger-kernel is not installed: pip install liger-kernel (needs a CUDA "
                          "GPU), or use --loss=auto (the chunked loss saves the same memory)")
    optim = str(c.optim)
    master = engine in ("zero2", "zero3")  # DeepSpeed steps fp32 master weights: no stochastic rounding needed
    if optim == "auto":
        if not lora and not master and weight_dtype(precision, lora) != weight_dtype("fp32", lora):
            optim = "adamw_torch_8bit"  # bf16 weights need stochastic rounding; its 8-bit moments are a bonus
        else:
            optim = "adamw_torch_fused"  # transformers' default too; on CPU, for-loop AdamW's temporaries cost more
    if optim in TORCHAO_OPTIMS and not is_torchao_available():
        raise MedsftError(f"--optim={optim} needs torchao: pip install -r requirements.txt, or use --optim=adamw_torch")
    if "8bit" in optim and optim not in TORCHAO_OPTIMS and not is_bitsandbytes_available():
        raise MedsftError(f"--optim={optim} needs bitsandbytes: pip install bitsandbytes, or use --optim=auto")
    if log:
        batching = "padding-free (flattened)" if padding_free else "length-grouped padded"
        print(f"efficiency on {gpu['name']}: precision={precision} attention={attn} batches={batching} "
              f"loss={loss} optim={optim} gradient_checkpointing={c.gradient_checkpointing}")
        if not lora and not master and precision == "bf16" and optim not in TORCHAO_OPTIMS:
            print(f"warning: bf16 weights with --optim={optim}: updates smaller than half a bf16 ulp round away "
                  "(most of them at LR 1e-5); --optim=auto uses stochastic rounding")
    return {"PRECISION": precision, "ATTN_IMPLEMENTATION": attn, "PADDING_FREE": padding_free, "LOSS": loss,
            "OPTIM": optim}

def resolved(cfg, lora: bool, log: bool = False, assume_gpu: bool = False) -> TrainConfig:
    """The TrainConfig of ``cfg`` with concrete features (resolved here unless they already are)."""
    cfg = TrainConfig.of(cfg)
    if cfg.resolved:
        return cfg
    feats = resolve_features(cfg, lora=lora, log=log, assume_gpu=assume_gpu)
    return cfg.replace(**{k.lower(): v for k, v in feats.items()}, resolved=True)

# --- model ----------------------------------------------------------------------------------------------------------

def load_training_model(cfg):
    """``cfg.model`` in the resolved precision and attention; QUANTIZATION=4bit loads an NF4 base (QLoRA)."""
    cfg = resolved(cfg, lora=TrainConfig.of(cfg).lora)
    dtype = weight_dtype(cfg.precision, cfg.lora)
    kwargs = {"attn_implementation": cfg.attn_implementation}
    # under ZeRO-3 the TrainingArguments must be alive while from_pretrained runs: each GPU then loads its shard
    zero3_args = training_arguments(cfg, cfg.lora) if cfg.engine == "zero3" else None  # noqa: F841
    if str(cfg.quantization).lower() == "4bit":
        model = _load_4bit(cfg, dtype, kwargs)
    else:
        model = models.load_model(cfg.model, dtype=dtype, device=models.pick_device(), **kwargs)
    model.config.use_cache = False  # no KV cache while training (and incompatible with gradient checkpointing)
    return model

def _load_4bit(cfg: TrainConfig, dtype, kwargs: dict):
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

def add_lora(model, cfg):
    """Wrap ``model`` with a trainable LoRA adapter (LORA_*; targets ``all-linear`` or comma-separated names)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import set_seed
    cfg = TrainConfig.of(cfg)
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

@functools.lru_cache(maxsize=None)
def _graceful_stop_class():
    from transformers import TrainerCallback

    class GracefulStop(TrainerCallback):
        """Ctrl-C or SIGTERM: save a checkpoint after this step on every rank, then stop; a repeat aborts."""
        def __init__(self):
            self.requested, self._seen, self._previous = False, set(), {}

        def _handler(self, signum, frame):
            if signum in self._seen:
                raise KeyboardInterrupt
            self._seen.add(signum)
            if not self.requested and distributed.is_main():
                notice(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                       "(press Ctrl-C again to abort without saving)\n")
            self.requested = True

        def on_train_begin(self, args, state, control, **kwargs):
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._previous[sig] = signal.signal(sig, self._handler)

        def on_step_end(self, args, state, control, **kwargs):
            self.requested = distributed.any_rank(self.requested, args.device)
            if self.requested:
                control.should_save = control.should_training_stop = True

        def on_train_end(self, args, state, control, **kwargs):
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = {}

    return GracefulStop

def graceful_stop():
    """A callback: Ctrl-C or SIGTERM saves a checkpoint after the current step on every rank, then stops."""
    return _graceful_stop_class()()

@functools.lru_cache(maxsize=None)
def _trainer_class():
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class EpochLengthGroupedSampler(LengthGroupedSampler):
        """Length-grouped order drawn from ``seed + epoch``: a resumed run replays the interrupted epoch's order."""
        def __init__(self, batch_size, lengths, seed):
            super().__init__(batch_size, lengths=lengths)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))

    class MedsftTrainer(Trainer):
        """transformers' Trainer plus tokens/s and peak memory in every training log, and a token-mean eval loss."""
        def __init__(self, *args, **kwargs):
            self.clock, self.graceful_stop = session_clock(), graceful_stop()
            kwargs.setdefault("compute_metrics", _token_mean_loss)
            super().__init__(*args, **kwargs)
            self.add_callback(self.clock)
            self.add_callback(self.graceful_stop)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
                return super()._get_train_sampler(train_dataset)
            # grouped per optimizer step over all processes: N processes x batch b see what 1 x N*b sees, in order
            per_step = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            return EpochLengthGroupedSampler(per_step, [len(e["input_ids"]) for e in dataset],
                                             self.args.data_seed if self.args.data_seed is not None else self.args.seed)

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            # one (summed loss, target tokens) row per batch: the eval loss is a mean over every target token
            inputs = self._prepare_inputs(inputs)
            labels = inputs["shift_labels"] if "shift_labels" in inputs else inputs["labels"][..., 1:]
            count = labels.ne(IGNORE_INDEX).sum()
            if self.args.use_liger_kernel:
                inputs = {**inputs, "skip_logits": True}
            with torch.no_grad(), self.compute_loss_context_manager():
                mean = model(**inputs).loss.float()
            total = torch.where(count > 0, mean * count, 0.0)  # a batch of only padding rows adds nothing
            row = torch.stack([total, count.float()]).view(1, 2)
            return None, row, row

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

def _token_mean_loss(prediction) -> dict:
    total, count = prediction.predictions.sum(axis=0)
    return {"loss": float(total / count) if count else float("nan")}

def build_trainer(model, tokenizer, train_examples, eval_examples, cfg, callbacks=()):
    """A Trainer over ``prepare_examples`` output (no eval when it is empty); ``.interrupted``: a Ctrl-C came."""
    import torch
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening
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
    return _trainer_class()(model=model, args=args, train_dataset=train_examples,
                            eval_dataset=eval_examples if has_eval else None, data_collator=collator,
                            processing_class=tokenizer, callbacks=list(callbacks))

def training_arguments(cfg, lora: bool, has_eval: bool = True):
    """The TrainingArguments of ``cfg`` (built before the model loads under ZeRO-3: DeepSpeed's zero.Init)."""
    import torch
    from transformers import TrainingArguments
    cfg = resolved(cfg, lora=lora)
    if cfg.deepspeed:
        distributed.start_deepspeed()
    cuda = torch.cuda.is_available()
    # --engine=fsdp2 under torchrun; under accelerate launch its FSDP config (environment) is used as it is
    fsdp = cfg.engine == "fsdp2" and os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true"
    checkpointing = bool(cfg.gradient_checkpointing)
    try:
        return TrainingArguments(
            deepspeed=cfg.deepspeed or None, fsdp="full_shard auto_wrap" if fsdp else None,
            fsdp_config=str(distributed.PROJECT_ROOT / distributed.ENGINE_CONFIGS["fsdp2"]) if fsdp else None,
            output_dir=str(cfg.output_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup, weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm, optim=cfg.optim,
            # bf16 weights move by stochastic rounding, or updates below half a bf16 ulp would vanish
            optim_args="bf16_stochastic_round=True" if cfg.optim in TORCHAO_OPTIMS and cfg.precision == "bf16"
            and not cfg.lora else None,
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

def run_training(trainer, resume_from=None) -> dict:
    """Train (resuming from ``resume_from``): the session summary plus ``interrupted``; out of memory says how out."""
    try:
        with disk_errors(trainer.args.output_dir, "a checkpoint", "output_dir", resume=True):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
        text = str(e)
        if "out of memory" not in text.lower():
            raise
        lora = hasattr(trainer.model, "peft_config")
        raise MedsftError(f"out of memory ({text.splitlines()[0][:200]}); {ways_out(lora)}") from e
    summary = trainer.clock.summary(trainer.state)
    summary["interrupted"] = trainer.interrupted
    summary["resumed_from"] = str(resume_from) if resume_from else None
    return summary
