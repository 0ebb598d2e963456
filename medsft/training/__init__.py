"""Supervised fine-tuning shared by ``train.py`` (full parameters), ``train_lora.py`` (LoRA) and the benchmark.

A stage script resolves its constants block with ``medsft.config.configure`` and passes the resulting dict
(``cfg``) to these functions, all importable from ``medsft.training``. The interface is stable; the benchmark
builds trainers through it. In the order a script calls them, with the module each lives in:

* ``guard_output()`` (stdio) - let a run outlive the reader of its stdout/stderr (``| tee`` killed by Ctrl-C).
* ``preflight(cfg, kind)`` (preflight) - fail fast before any weights are loaded: data present, OUTPUT_DIR state,
  a model that is realistic for the hardware. Returns the checkpoint to resume from (or None).
* ``resolve_features(cfg, lora=False, log=True)`` (features) - turn every ``"auto"`` efficiency constant
  (PRECISION, ATTN_IMPLEMENTATION, PADDING_FREE, LOSS, OPTIM) into a concrete choice for this machine; prints
  the choice in one line. Returns ``{NAME: value}`` to ``cfg.update()`` with.
* ``prepare_examples(path, tokenizer, max_length, system=None) -> (examples, stats)`` (examples) - tokenized rows
  (prompt masked); rows over ``max_length`` are skipped and counted, never truncated.
* ``start_swanlab(cfg, kind)`` / ``finish_swanlab(...)`` (tracking) - SwanLab logging that never prompts or hangs
  offline.
* ``load_training_model(cfg)`` / ``add_lora(model, cfg)`` (model) - the model of ``cfg["MODEL"]`` in the resolved
  precision and attention; wrapped with a peft LoRA adapter from the LORA_* constants.
* ``build_trainer(model, tokenizer, train_examples, eval_examples, cfg, callbacks=()) -> transformers.Trainer``
  and ``run_training(trainer, resume_from)`` (trainer) - train; Ctrl-C saves a checkpoint and returns
  ``interrupted=True``.
* ``write_results(...)``, ``save_final(trainer, tokenizer, cfg)``, ``preview(...)`` (outputs). ``save_final``
  writes ``trainer_state.json`` (what marks a run finished) last, so scripts call it after the results and the
  loss charts (``medsft.report.write_charts``).

And for tests and tools: ``checkpoints(output_dir)`` / ``checkpoint_problem(path)`` (checkpoints) - the
checkpoints of a run and why one cannot be resumed from (None when it can); ``check_output_dir``,
``lock_output_dir(path)`` / ``unlock_output_dir(path)`` (run_dir) - one training run per OUTPUT_DIR;
``disk_errors`` (disk) - a full disk as a clear error.

Constants ``build_trainer`` reads from ``cfg`` (all from the scripts' constants blocks): OUTPUT_DIR, EPOCHS,
MAX_STEPS, BATCH_SIZE, GRAD_ACCUM, LEARNING_RATE, SCHEDULER, WARMUP, WEIGHT_DECAY, MAX_GRAD_NORM, LOGGING_STEPS,
EVAL_STEPS, SAVE_STEPS, SAVE_TOTAL_LIMIT, SEED, GRADIENT_CHECKPOINTING, PRECISION, ATTN_IMPLEMENTATION,
PADDING_FREE, LOSS, OPTIM, RUN_NAME. The efficiency constants may still be ``"auto"`` (or booleans).

Heavy libraries (torch, transformers, peft, swanlab) are imported inside functions, so the fail-fast checks
answer in about a second.
"""

from .checkpoints import checkpoint_problem, checkpoints
from .disk import check_writable, disk_errors
from .distributed import (barrier, is_main, on_main, rank, resolve_batch, resolve_engine, stop_process_group,
                          world_size)
from .examples import prepare_examples
from .features import FEATURES, resolve_features, weight_dtype
from .model import add_lora, count_parameters, install_chunked_loss, load_training_model
from .outputs import KINDS, RESULTS_NAME, history, preview, save_final, write_results
from .preflight import check_versions, dry_run, preflight
from .run_dir import check_output_dir, is_finished, lock_output_dir, unlock_output_dir
from .stdio import guard_output
from .trainer import build_trainer, peak_memory, run_training, training_arguments
from .tracking import finish_swanlab, start_swanlab, swanlab_active, swanlab_mode

__all__ = ["FEATURES", "KINDS", "RESULTS_NAME", "add_lora", "barrier", "build_trainer", "check_output_dir",
           "check_versions", "check_writable", "checkpoint_problem", "checkpoints", "count_parameters", "disk_errors",
           "dry_run", "finish_swanlab", "guard_output", "history", "install_chunked_loss", "is_finished", "is_main",
           "load_training_model", "lock_output_dir", "on_main", "peak_memory", "preflight", "prepare_examples",
           "preview", "rank", "resolve_batch", "resolve_engine", "resolve_features", "run_training", "save_final",
           "start_swanlab", "stop_process_group", "swanlab_active", "swanlab_mode", "training_arguments",
           "unlock_output_dir", "weight_dtype", "world_size", "write_results"]
