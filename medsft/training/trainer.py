"""Our subclasses of transformers' training classes, defined once at module level (subclass or jump to them):
the Trainer (tokens/s and peak memory in its logs, a token-mean eval loss), its per-step length-grouped sampler, the
run's clock and its Ctrl-C / SIGTERM stop. Imports torch and transformers: only imported once training starts."""

from __future__ import annotations

import signal
import threading
import time

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from ..chat import IGNORE_INDEX
from ..memory import peak_memory
from . import distributed
from .tracking import notice

class Clock(TrainerCallback):
    """Session timing; training time excludes evaluation, so tokens/s measures training alone."""
    def __init__(self):
        self.start = self.end = self.mark = None  # mark: (time, tokens, eval_s) at the previous training log
        self.tokens0, self.eval_s = 0, 0.0

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
        kwargs.setdefault("compute_metrics", _token_mean_loss)
        super().__init__(*args, **kwargs)
        self.clock = clock_of(self)  # callbacks.basic gave it

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

def clock_of(trainer) -> Clock:
    """The trainer's Clock (from ``callbacks.basic``)."""
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, Clock))

def stop_of(trainer) -> GracefulStop:
    """The trainer's GracefulStop (from ``callbacks.basic``)."""
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, GracefulStop))

def _token_mean_loss(prediction) -> dict:
    total, count = prediction.predictions.sum(axis=0)
    return {"loss": float(total / count) if count else float("nan")}
