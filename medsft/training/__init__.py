"""Supervised fine-tuning for train.py, train_lora.py and bench/ (docs/architecture.md)."""

from ..config import KINDS, RESULTS_NAME, TrainConfig
from ..files import check_writable, disk_errors
from ..memory import weight_dtype
from .distributed import is_main, on_main, rank, resolve_batch, resolve_engine, stop_process_group, world_size
from .finish import (count_parameters, finish_swanlab, guard_output, history, peak_memory,
                     preview, save_final, start_swanlab, swanlab_active, swanlab_mode, write_results)
from .loss import install_chunked_loss
from .rundir import (check_output_dir, check_versions, checkpoint_problem, checkpoints, dry_run, is_finished,
                     lock_output_dir, preflight, start_run, unlock_output_dir)
from .sft import (FEATURES, add_lora, build_trainer, load_training_model, prepare_examples,
                  resolve_features, run_training, sort_lora_targets, training_arguments)

__all__ = ["FEATURES", "KINDS", "RESULTS_NAME", "TrainConfig", "add_lora", "build_trainer", "check_output_dir",
           "check_versions", "check_writable", "checkpoint_problem", "checkpoints", "count_parameters", "disk_errors",
           "dry_run", "finish_swanlab", "guard_output", "history", "install_chunked_loss", "is_finished", "is_main",
           "load_training_model", "lock_output_dir", "on_main", "peak_memory", "preflight", "prepare_examples",
           "preview", "rank", "resolve_batch", "resolve_engine", "resolve_features", "run_training", "save_final",
           "sort_lora_targets", "start_run", "start_swanlab", "stop_process_group", "swanlab_active", "swanlab_mode",
           "training_arguments", "unlock_output_dir", "weight_dtype", "world_size", "write_results"]
