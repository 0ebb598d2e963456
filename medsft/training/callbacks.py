"""A run's callbacks: its clock (tokens/s without evaluation time, peak memory), the Ctrl-C / SIGTERM stop that
saves a checkpoint on every rank, and SwanLab's. transformers is imported inside: a script's --help stays fast."""

from __future__ import annotations

import functools
import os
import resource
import signal
import threading
import time

from ..config import Config
from . import distributed, tracking

def make(cfg: Config, kind: str, resume_from=None) -> list:
    """The run's callbacks: ``basic``'s and SwanLab's (rank 0; started here, never prompting)."""
    return [*basic(), *tracking.start_swanlab(cfg, kind, resume_from)]

def basic() -> list:
    """A clock (tokens/s without evaluation time) and the Ctrl-C / SIGTERM stop."""
    return [_clock_class()(), _stop_class()()]

def notice(text: str) -> None:
    """One line to fd 2 from a signal handler: print() could re-enter a buffered write or raise on a dead reader."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass  # nobody is reading: the message is lost, the checkpoint is not

def peak_memory() -> tuple[float, str]:
    """Peak memory of this process in GiB and what it measures (GPU allocations, or CPU resident set)."""
    import torch
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "cpu_max_rss"  # KiB on Linux

@functools.lru_cache(maxsize=None)
def _clock_class():
    import torch
    from transformers import TrainerCallback

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

    return Clock

@functools.lru_cache(maxsize=None)
def _stop_class():
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

def clock_of(trainer):
    """The trainer's Clock (from ``callbacks``)."""
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, _clock_class()))

def stop_of(trainer):
    """The trainer's GracefulStop (from ``make``)."""
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, _stop_class()))
