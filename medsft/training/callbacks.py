"""A run's callbacks: its clock (tokens/s without evaluation time, peak memory), the Ctrl-C / SIGTERM stop that
saves a checkpoint on every rank, and SwanLab's. Their classes live in ``trainer`` (imported here on first use: a
script's --help stays fast), with ``clock_of`` / ``stop_of`` to find them on a trainer."""

from __future__ import annotations

from ..config import Config
from . import tracking

def make(cfg: Config, kind: str, resume_from=None) -> list:
    """The run's callbacks: ``basic``'s and SwanLab's (rank 0; started here, never prompting)."""
    return [*basic(), *tracking.start_swanlab(cfg, kind, resume_from)]

def basic() -> list:
    """A clock (tokens/s without evaluation time) and the Ctrl-C / SIGTERM stop."""
    from .trainer import Clock, GracefulStop
    return [Clock(), GracefulStop()]
