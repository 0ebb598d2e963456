"""What a finished training run leaves behind: the final model or adapter in OUTPUT_DIR (``trainer_state.json``
last: it marks the run finished), ``RESULTS_DIR/train_{kind}.json`` with its curves, and a preview of a few answers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import generate as gen
from ..config import save_config
from ..files import read_jsonl, write_json
from ..models import hub_revision
from .disk import disk_errors
from .distributed import SHARDED, on_main
from .features import FEATURES
from .model import count_parameters
from .tracking import swanlab_active
from .trainer import peak_memory

# torch and swanlab are imported inside the functions: importing this module stays fast (train.py --help).

KINDS = ("full", "lora")
STAGING = ".final-staging"  # where save_final writes before renaming into OUTPUT_DIR
RESULTS_NAME = "train_{kind}.json"
# save_model's pickled TrainingArguments (transformers.trainer.TRAINING_ARGS_NAME): a published model holds no pickle,
# and train_config.json has the settings
UNPUBLISHED = ("training_args.bin",)
HISTORY_KEYS = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "num_input_tokens_seen",
                "tokens_per_second", "peak_memory_gib")


def save_final(trainer, tokenizer, cfg: dict) -> list[Path]:
    """Save the trained model (or adapter), tokenizer (chat template included), generation config,
    ``train_config.json`` and, last, ``trainer_state.json`` (the finished marker) in OUTPUT_DIR. Returns the paths
    written. A full disk raises MedsftError naming OUTPUT_DIR.

    Every process calls it: under ZeRO-3 / FSDP2 the weights are gathered from all of them (into 16-bit under
    DeepSpeed, stage3_gather_16bit_weights_on_model_save), and rank 0 alone writes.

    A LoRA adapter records the base model's spec (``cfg["MODEL"]``, e.g. ``tiny`` or ``Qwen/Qwen3-1.7B``) as
    ``base_model_name_or_path``, so later stages find the base without being told.
    """
    out = Path(cfg["OUTPUT_DIR"])
    with disk_errors(out, "the final model", "output_dir", resume=True):
        return _save_final(trainer, tokenizer, cfg, out)


def _save_final(trainer, tokenizer, cfg: dict, out: Path) -> list[Path]:
    # Everything is written into a hidden staging folder first, then renamed into OUTPUT_DIR file by file: a kill at
    # any moment leaves each top-level file whole (old or new), never an empty config.json that inference would
    # choke on. trainer_state.json, the finished marker, comes last.
    stage = out / STAGING
    on_main(_fresh_folder, stage)  # a save killed earlier may have left one
    model = trainer.model
    model.config.use_cache = True  # inference wants the KV cache back
    tokenizer.padding_side = "left"  # what generation uses; load_tokenizer sets it anyway
    if hasattr(model, "peft_config"):
        for adapter in model.peft_config.values():
            adapter.base_model_name_or_path = str(cfg["MODEL"])
        state_dict = _gathered_state_dict(trainer, cfg)

        def save_adapter():
            # save_embedding_layers=False: peft's "auto" would look the spec up on the Hugging Face Hub
            model.save_pretrained(stage, state_dict=state_dict, save_embedding_layers=False)
            model.get_base_model().generation_config.save_pretrained(stage)
            tokenizer.save_pretrained(stage)

        on_main(save_adapter)
    else:
        if cfg.get("PRECISION") == "bf16-mixed" and not cfg.get("DEEPSPEED"):
            import torch

            model.to(torch.bfloat16)  # fp32 master weights were for the updates; ship bf16 like Qwen3 itself
        trainer.save_model(str(stage))  # model.safetensors + config + generation_config + tokenizer; gathers
    return on_main(_publish, trainer, cfg, stage, out)


def _fresh_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _gathered_state_dict(trainer, cfg: dict):
    """The whole state dict on rank 0 when the weights are sharded (a collective: every process calls it), else
    None (the model in memory is whole)."""
    if cfg.get("ENGINE") not in SHARDED:
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def _publish(trainer, cfg: dict, stage: Path, out: Path) -> list[Path]:
    save_config(cfg, stage / "train_config.json")
    names = sorted(p.name for p in stage.iterdir() if p.is_file() and p.name not in UNPUBLISHED)
    for name in names:
        os.replace(stage / name, out / name)
    shutil.rmtree(stage, ignore_errors=True)
    tmp = out / ".trainer_state.json.tmp"
    trainer.state.save_to_json(str(tmp))
    os.replace(tmp, out / "trainer_state.json")
    weights = [out / n for n in names if n.endswith(".safetensors")]
    return weights + [out / "tokenizer_config.json", out / "generation_config.json", out / "train_config.json",
                      out / "trainer_state.json"]


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
    """Write ``RESULTS_DIR/train_{kind}.json``: steps, tokens, time, tokens/s, peak memory, final losses, curves.

    A session that trained nothing (resumed from the final checkpoint of a run killed while saving its outputs)
    keeps the timing of the results it replaces, rather than reporting 0 tokens/s.
    """
    import torch

    path = Path(cfg["RESULTS_DIR"]) / RESULTS_NAME.format(kind=kind)
    state = trainer.state
    if not summary.get("session_tokens"):
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if old.get("output_dir") == str(cfg["OUTPUT_DIR"]) and old.get("steps") == state.global_step:
            summary = {**summary, **{k: old[k] for k in ("wall_time_s", "train_time_s", "tokens_per_s",
                                                          "session_tokens") if k in old}}
    hist = history(state.log_history)
    peak, peak_kind = peak_memory()
    trainable, total = count_parameters(trainer.model)
    result = {
        "kind": kind,
        "model": str(cfg["MODEL"]),
        "model_revision": hub_revision(cfg["MODEL"]),
        "output_dir": str(cfg["OUTPUT_DIR"]),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "features": {k: cfg.get(k) for k in FEATURES + ("GRADIENT_CHECKPOINTING",)},
        "estimated_peak_gib": cfg.get("ESTIMATED_PEAK_GIB"),
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "epochs": round(state.epoch or 0.0, 4),
        "examples_per_step": cfg.get("EXAMPLES_PER_STEP") or cfg["BATCH_SIZE"] * cfg["GRAD_ACCUM"],
        "world_size": cfg.get("WORLD_SIZE", 1),
        "engine": cfg.get("ENGINE") or "single",
        "quantization": cfg.get("QUANTIZATION") if kind == "lora" else None,
        "grad_accum": cfg["GRAD_ACCUM"],
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
    with disk_errors(path.parent, path.name, "results_dir"):
        return write_json(path, result)


def preview(model, tokenizer, val_path, cfg: dict) -> list[dict]:
    """Answer the first PREVIEW_QUESTIONS val questions greedily; print them and log them to SwanLab as text."""
    n = int(cfg.get("PREVIEW_QUESTIONS", 3))
    if n <= 0:
        return []
    if cfg.get("ENGINE") in SHARDED:  # generating needs every process to gather the weights, step by step
        print(f"preview: skipped under --engine={cfg['ENGINE']} (the weights are sharded across the GPUs); answer "
              f"questions with inference.py on {cfg['OUTPUT_DIR']}")
        return []
    rows = read_jsonl(val_path)[:n]
    questions = [r["question"] for r in rows]
    outs = gen.generate(model, tokenizer, questions, max_new_tokens=int(cfg.get("PREVIEW_MAX_NEW_TOKENS", 256)),
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
