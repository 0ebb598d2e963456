"""The Trainer: transformers' Trainer with tokens/s, peak memory, Ctrl-C that saves a checkpoint, the chunked loss
and a resumable length-grouped order; ``build_trainer`` configures it from the constants, ``run_training`` runs it."""

from __future__ import annotations

import functools
import os
import resource
import signal
import threading
import time

from ..chat import IGNORE_INDEX
from ..files import MedsftError
from ..memory import ways_out
from . import distributed
from .disk import disk_errors
from .features import TORCHAO_OPTIMS, resolve_features
from .model import install_chunked_loss
from .stdio import notice

# torch and transformers are imported inside the functions (the Trainer classes are built on first use):
# importing this module stays fast (train.py --help).


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

        A second Ctrl-C aborts at once without saving. Under a launcher, the terminal's SIGINT reaches every process
        and torchrun then sends each a SIGTERM: only a repeat of the same signal aborts. All ranks agree after each
        step on whether any was asked to stop, so they save the same step together.
        """

        def __init__(self):
            self.requested = False
            self._seen = set()
            self._previous = {}

        def _handler(self, signum, frame):
            if signum in self._seen:
                raise KeyboardInterrupt
            self._seen.add(signum)
            if self.requested:
                return
            self.requested = True
            if distributed.is_main():  # every process of a launch gets the terminal's Ctrl-C: one line
                notice(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                       "(press Ctrl-C again to abort without saving)\n")

        def on_train_begin(self, args, state, control, **kwargs):
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._previous[sig] = signal.signal(sig, self._handler)

        def on_step_end(self, args, state, control, **kwargs):
            self.requested = distributed.any_rank(self.requested, args.device)
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
            kwargs.setdefault("compute_metrics", _token_mean_loss)
            super().__init__(*args, **kwargs)
            self.add_callback(self.clock)
            self.add_callback(self.graceful_stop)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
                return super()._get_train_sampler(train_dataset)
            # grouped per optimizer step over all processes (accelerate then deals the micro-batches out in turn):
            # N processes x batch b see the examples one process x batch N*b sees, in the same order
            per_step = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            return EpochLengthGroupedSampler(per_step, [len(e["input_ids"]) for e in dataset],
                                             self.args.data_seed if self.args.data_seed is not None else self.args.seed)

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            """Eval: this batch's summed target-token loss and its token count, as one (1, 2) row of "logits" that
            ``_token_mean_loss`` totals. The Trainer's own eval loss is a mean of per-batch means, so it moved
            with the eval batch size and, under several processes, with the duplicates that pad the last batch;
            the totals make it the mean over every target token of the eval set, as the train loss is per step."""
            inputs = self._prepare_inputs(inputs)
            labels = inputs["shift_labels"] if "shift_labels" in inputs else inputs["labels"][..., 1:]
            count = labels.ne(IGNORE_INDEX).sum()
            if self.args.use_liger_kernel:
                inputs = {**inputs, "skip_logits": True}  # its fused loss, without the vocabulary-wide logits
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
    """``compute_metrics`` for the (total, count) rows of ``prediction_step``: the token-mean eval loss."""
    total, count = prediction.predictions.sum(axis=0)
    return {"loss": float(total / count) if count else float("nan")}


def _pad_eval(examples: list[dict], per_step: int, pad_id: int) -> list[dict]:
    """``examples`` plus 1-token rows with no target up to a multiple of ``per_step`` (eval batch x processes).

    A set that does not divide is padded by the dataloader with repeats of its first examples, which would be
    counted twice in a rank's totals; rows with no target add nothing, and with no remainder nothing is cut."""
    short = -len(examples) % per_step
    return examples + [{"input_ids": [pad_id], "attention_mask": [1], "labels": [IGNORE_INDEX]}] * short


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
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

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
    args = training_arguments(cfg, lora=hasattr(model, "peft_config"), has_eval=has_eval)
    distributed.check_launch(args)
    if feats["LOSS"] == "chunked":
        install_chunked_loss(model)
    trainer_cls = _trainer_classes()
    if has_eval:
        eval_examples = _pad_eval(list(eval_examples), args.per_device_eval_batch_size * args.world_size,
                                  tokenizer.pad_token_id)
    trainer = trainer_cls(model=model, args=args, train_dataset=train_examples,
                       eval_dataset=eval_examples if has_eval else None, data_collator=collator,
                       processing_class=tokenizer, callbacks=list(callbacks))
    return trainer


def training_arguments(cfg: dict, lora: bool, has_eval: bool = True):
    """The ``TrainingArguments`` of ``cfg``. Built before the model loads under ZeRO-3, so that from_pretrained
    places each weight straight into its shard (DeepSpeed's zero.Init) instead of every GPU loading all of them."""
    import torch
    from transformers import TrainingArguments

    feats = resolve_features(cfg, lora=lora, log=False)
    if cfg.get("DEEPSPEED"):
        distributed.start_deepspeed()
    try:
        return _training_arguments(TrainingArguments, cfg, feats, feats["PADDING_FREE"], has_eval,
                                   torch.cuda.is_available())
    except ValueError as e:  # e.g. an unknown SCHEDULER or OPTIM name
        raise MedsftError(f"invalid training settings: {e}") from None


def _training_arguments(TrainingArguments, cfg, feats, padding_free, has_eval, cuda):
    engine = cfg.get("ENGINE") or "single"
    # --engine=fsdp2 under torchrun; under accelerate launch its FSDP config (environment) is used as it is
    fsdp = engine == "fsdp2" and os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true"
    return TrainingArguments(
        deepspeed=cfg.get("DEEPSPEED") or None,
        fsdp="full_shard auto_wrap" if fsdp else None,
        fsdp_config=str(distributed.PROJECT_ROOT / distributed.ENGINE_CONFIGS["fsdp2"]) if fsdp else None,
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


def training_error(e: Exception, lora: bool = False) -> MedsftError | None:
    """A user-facing error for well-known failures (out of memory), or None."""
    text = str(e)
    if "out of memory" in text.lower():
        return MedsftError(f"out of memory ({text.splitlines()[0][:200]}); {ways_out(lora)}")
    return None
