"""What a finished SFT run reports: RESULTS_DIR/train_{kind}.json (settings, timing, memory, the loss history that
redraws the curves) and a preview of a few val answers."""

from __future__ import annotations

import json
from pathlib import Path

from .. import generate as gen
from ..config import FEATURES, RESULTS_NAME, Config
from ..files import disk_errors, read_jsonl, visible, write_json
from ..memory import peak_memory
from ..models import hub_revision
from .distributed import SHARDED
from .tracking import swanlab_active

HISTORY_KEYS = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "num_input_tokens_seen",
                "tokens_per_second", "peak_memory_gib")

def history(log_history: list[dict]) -> list[dict]:
    """The train logs (loss...) and eval logs (eval_loss) that redraw the curves."""
    return [{k: e[k] for k in HISTORY_KEYS if k in e} for e in log_history if "loss" in e or "eval_loss" in e]

def _last(hist: list[dict], key: str):
    vals = [e[key] for e in hist if key in e]
    return vals[-1] if vals else None

def _numel(p) -> int:
    # ZeRO-3 keeps the real size in ds_numel; a 4-bit weight stores two values per byte
    n = getattr(p, "ds_numel", None) or p.numel()
    return n * 2 if p.__class__.__name__ == "Params4bit" else n

def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model``."""
    return sum(_numel(p) for p in model.parameters() if p.requires_grad), sum(_numel(p) for p in model.parameters())

def write_results(trainer, cfg, kind: str, summary: dict, data_stats: dict) -> Path:
    """Write ``RESULTS_DIR/train_{kind}.json``. A session that trained nothing (resumed from the final checkpoint)
    keeps the timing of the results it replaces rather than reporting 0 tokens/s."""
    import torch
    cfg = Config.of(cfg)
    path = Path(cfg.results_dir) / RESULTS_NAME.format(kind=kind)
    state = trainer.state
    if not summary.get("session_tokens"):
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if old.get("output_dir") == str(cfg.output_dir) and old.get("steps") == state.global_step:
            kept = ("wall_time_s", "train_time_s", "tokens_per_s", "session_tokens")
            summary = {**summary, **{k: old[k] for k in kept if k in old}}
    hist = history(state.log_history)
    peak, peak_kind = peak_memory()
    trainable, total = count_parameters(trainer.model)
    result = {
        "kind": kind, "model": str(cfg.model), "model_revision": hub_revision(cfg.model),
        "output_dir": str(cfg.output_dir),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "features": {k: cfg[k] for k in (*FEATURES, "GRADIENT_CHECKPOINTING")},
        "estimated_peak_gib": cfg.get("ESTIMATED_PEAK_GIB"), "steps": state.global_step, "max_steps": state.max_steps,
        "epochs": round(state.epoch or 0.0, 4),
        "examples_per_step": cfg.get("EXAMPLES_PER_STEP") or cfg.batch_size * cfg.grad_accum,
        "world_size": cfg.get("WORLD_SIZE", 1), "engine": "single" if cfg.get("ENGINE", "auto") == "auto" else cfg.engine,
        "quantization": cfg.get("QUANTIZATION") if kind == "lora" else None, "grad_accum": cfg.grad_accum,
        "trained_tokens": state.num_input_tokens_seen, "wall_time_s": summary["wall_time_s"],
        "train_time_s": summary["train_time_s"], "tokens_per_s": summary["tokens_per_s"],
        "session_tokens": summary["session_tokens"], "resumed_from": summary.get("resumed_from"),
        "peak_memory_gib": round(peak, 4), "peak_memory_kind": peak_kind, "final_train_loss": _last(hist, "loss"),
        "final_eval_loss": _last(hist, "eval_loss"), "trainable_params": trainable, "total_params": total,
        "data": data_stats, "log_history": hist,
    }
    with disk_errors(path.parent, path.name, "results_dir"):
        return write_json(path, result)

def preview(model, tokenizer, val_path, cfg) -> list[dict]:
    """Answer the first PREVIEW_QUESTIONS val questions greedily; print them and log them to SwanLab."""
    cfg = Config.of(cfg)
    n = int(cfg.preview_questions)
    if n <= 0:
        return []
    if cfg.get("ENGINE") in SHARDED:  # generating needs every process to gather the weights, step by step
        print(f"preview: skipped under --engine={cfg.engine} (the weights are sharded across the GPUs); answer "
              f"questions with inference.py on {cfg.output_dir}")
        return []
    rows = read_jsonl(val_path)[:n]
    questions = [r["question"] for r in rows]
    outs = gen.generate(model, tokenizer, questions, max_new_tokens=int(cfg.preview_max_new_tokens),
                        do_sample=False, seed=cfg.seed, batch_size=len(questions), progress=False)
    items = []
    for i, (row, out) in enumerate(zip(rows, outs), start=1):
        items.append({"question": row["question"], "output": out["output"], "finished": out["finished"],
                      "reference": row.get("answer", "")})
        cut = "" if out["finished"] else f" [cut at {cfg.preview_max_new_tokens} tokens]"
        print(f"--- preview {i}/{len(rows)}\nQ: {visible(row['question'])}\nA: {visible(out['output'])}{cut}")
    if swanlab_active():
        import swanlab
        swanlab.log({"Prediction": [swanlab.Text(f"问题 / question:\n{it['question']}\n\n回答 / answer:\n{it['output']}",
                                                 caption=f"val {i}") for i, it in enumerate(items, start=1)]})
    return items
