"""What a training run measures and leaves: stdout that outlives its reader, SwanLab, the clock and peak memory, the
final model (``trainer_state.json`` last: it marks the run finished), ``train_{kind}.json`` and a preview."""

from __future__ import annotations

import errno
import functools
import json
import os
import resource
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from .. import generate as gen
from ..config import FEATURES, RESULTS_NAME, TrainConfig, save_config
from ..files import MedsftError, disk_errors, read_jsonl, visible, write_json
from ..models import hub_revision
from .distributed import SHARDED, is_main, on_main

STAGING = ".final-staging"  # where save_final writes before renaming into OUTPUT_DIR
UNPUBLISHED = ("training_args.bin",)  # a pickle of the TrainingArguments: train_config.json has the settings
HISTORY_KEYS = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "num_input_tokens_seen",
                "tokens_per_second", "peak_memory_gib")

class _PipeSafe:
    """A stdout/stderr whose dead reader (``| tee`` killed by Ctrl-C) or hung-up terminal points its fd at
    /dev/null, so a checkpoint save never fails because a print did."""
    def __init__(self, stream):
        self._stream = stream

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EIO):
                raise
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())  # the buffered bytes then flush into /dev/null
            except (OSError, ValueError):
                pass
            finally:
                os.close(null)
            return len(args[0]) if args else None

    def write(self, data):
        return self._guarded(self._stream.write, data)

    def flush(self):
        return self._guarded(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)

def guard_output() -> None:
    """Wrap sys.stdout and sys.stderr in ``_PipeSafe`` (once); scripts call it first thing."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _PipeSafe):
            setattr(sys, name, _PipeSafe(stream))

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

def session_clock():
    return _clock_class()()

def swanlab_mode() -> tuple[str, str]:
    """``(mode, why)``: SWANLAB_MODE when set, else cloud when swanlab knows an API key (no network), else local."""
    env = os.environ.get("SWANLAB_MODE", "").strip()
    if env:
        mode = {"online": "cloud"}.get(env.lower(), env.lower())
        if mode not in ("cloud", "local", "offline", "disabled"):
            raise MedsftError(f"SWANLAB_MODE={env}: expected cloud, local, offline or disabled")
        return mode, "from SWANLAB_MODE"
    import swanlab
    try:
        logged_in = swanlab.Settings().api_key is not None
    except ValueError:  # unreadable swanlab settings: treat as not logged in
        logged_in = False
    return ("cloud", "logged in") if logged_in else ("local", "not logged in to SwanLab")

def _cloud_unreachable(timeout: float = 5.0) -> str | None:
    """Why the SwanLab API host refuses a TCP connection (swanlab's own login retries for ~15 s offline)."""
    import swanlab
    try:
        url = urlparse(swanlab.Settings().api_host)
    except ValueError:  # unreadable settings: let swanlab.init report it
        return None
    if not url.hostname:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"{url.hostname}:{port}: {e.strerror or e or type(e).__name__}"
    return None

def start_swanlab(cfg, kind: str, resume_from=None, config: dict | None = None) -> list:
    """Start SwanLab without ever prompting (cloud without credentials or network falls back to local swanlog/);
    a resumed run continues its cloud experiment, or becomes "RUN_NAME (resumed at step N)" locally. ``config``:
    what the experiment records (default: cfg's constants)."""
    cfg = TrainConfig.of(cfg)
    if not is_main():  # one experiment per run: rank 0 logs
        return []
    mode, why = swanlab_mode()
    if mode == "disabled":
        print(f"SwanLab: disabled ({why})")
        return []
    import swanlab
    from transformers.integrations import SwanLabCallback
    init = dict(project=cfg.swanlab_project, name=cfg.run_name, config={**(config or cfg.constants()), "KIND": kind},
                log_dir=str(cfg.swanlab_log_dir), settings=swanlab.Settings(interactive=False))
    id_file = Path(cfg.output_dir) / "swanlab_run.json"
    resumed = bool(cfg.resume and id_file.is_file())
    if resumed:
        init.update(id=json.loads(id_file.read_text(encoding="utf-8"))["id"], resume="allow")
    if mode == "cloud":
        unreachable = _cloud_unreachable()
        if unreachable:
            mode, why = "local", f"the SwanLab cloud is unreachable: {unreachable}"
    if mode == "cloud":
        try:
            swanlab.init(mode="online", **init)
        except Exception as e:  # noqa: BLE001 - login/network errors come in many types; training must go on
            first = (str(e).strip().splitlines() or [""])[0][:200]
            mode, why = "local", f"cloud login failed: {type(e).__name__}: {first}"
    if mode != "cloud":
        if resumed and mode == "local":
            step = Path(resume_from).name.removeprefix("checkpoint-") if resume_from else ""
            init["name"] = f"{cfg.run_name} (resumed" + (f" at step {step})" if step.isdigit() else ")")
        swanlab.init(mode=mode, **init)
    run_id = swanlab.get_run().id
    write_json(id_file, {"id": run_id})
    where = "the SwanLab cloud" if mode == "cloud" else f"{init['log_dir']}/ (view: swanlab watch {init['log_dir']})"
    note = ""
    if resumed:
        note = {"cloud": f"; continuing experiment {run_id}",
                "local": f"; local mode cannot continue an experiment, so this resumed part is a new experiment, "
                         f"'{init['name']}'",
                "offline": f"; saved under the interrupted part's run id {run_id}: swanlab sync uploads both into one "
                           "cloud experiment"}.get(mode, "")
    print(f"SwanLab: {mode} ({why}), logging to {where}{note}")
    return [SwanLabCallback()]

def swanlab_active() -> bool:
    return "swanlab" in sys.modules and sys.modules["swanlab"].has_run()

def finish_swanlab(interrupted: bool = False, reason: str | None = None) -> None:
    """End the SwanLab run: success, or aborted with a reason (local mode shows a run without one as Finished)."""
    if swanlab_active():
        import swanlab
        if interrupted:
            swanlab.finish(state="aborted", error=reason or "interrupted (Ctrl-C or SIGTERM): a checkpoint was saved; "
                                                            "continue with --resume=true")
        else:
            swanlab.finish(state="success")

def save_final(trainer, tokenizer, cfg, config: dict | None = None) -> list[Path]:
    """Save the model or adapter (base_model_name_or_path = MODEL), tokenizer, generation config, train_config.json
    (``config``, else cfg's constants) and, last, trainer_state.json into OUTPUT_DIR. Every process calls it (ZeRO-3
    / FSDP2 gather); rank 0 writes."""
    cfg = TrainConfig.of(cfg)
    out = Path(cfg.output_dir)
    with disk_errors(out, "the final model", "output_dir", resume=True):
        # staged in a hidden folder, then renamed file by file: a kill leaves each top-level file whole, old or new
        stage = out / STAGING
        on_main(_fresh_folder, stage)  # a save killed earlier may have left one
        model = trainer.model
        model.config.use_cache = True  # inference wants the KV cache back
        tokenizer.padding_side = "left"
        if hasattr(model, "peft_config"):
            for adapter in model.peft_config.values():
                adapter.base_model_name_or_path = str(cfg.model)
            state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if cfg.engine in SHARDED else None
            def save_adapter():
                # save_embedding_layers=False: peft's "auto" would look the spec up on the Hugging Face Hub
                model.save_pretrained(stage, state_dict=state_dict, save_embedding_layers=False)
                model.get_base_model().generation_config.save_pretrained(stage)
                tokenizer.save_pretrained(stage)
            on_main(save_adapter)
        else:
            if cfg.precision == "bf16-mixed" and not cfg.deepspeed:
                import torch
                model.to(torch.bfloat16)  # fp32 master weights were for the updates; ship bf16 like Qwen3 itself
            trainer.save_model(str(stage))  # model.safetensors + config + generation_config + tokenizer; gathers
        return on_main(_publish, trainer, config or cfg.constants(), stage, out)

def _fresh_folder(path: Path) -> None:
    if path.is_symlink():  # rmtree refuses a link and save_model would write through it into its target
        raise MedsftError(f"{path} is a symlink (to {os.readlink(path)}), not the staging folder this project "
                          f"creates: nothing is saved through a link. Remove it (rm {path}), then continue with "
                          "--resume=true")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)

def _publish(trainer, config: dict, stage: Path, out: Path) -> list[Path]:
    save_config(config, stage / "train_config.json")
    names = sorted(p.name for p in stage.iterdir() if p.is_file() and p.name not in UNPUBLISHED)
    for name in names:
        os.replace(stage / name, out / name)
    shutil.rmtree(stage, ignore_errors=True)
    # a fresh name created exclusively: save_to_json's plain open() then writes our own file, never a planted link
    tmp = out / f".trainer_state.json.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
    try:
        trainer.state.save_to_json(str(tmp))
        os.replace(tmp, out / "trainer_state.json")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    weights = [out / n for n in names if n.endswith(".safetensors")]
    return weights + [out / "tokenizer_config.json", out / "generation_config.json", out / "train_config.json",
                      out / "trainer_state.json"]

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
    cfg = TrainConfig.of(cfg)
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
        "features": {k: getattr(cfg, k.lower()) for k in (*FEATURES, "GRADIENT_CHECKPOINTING")},
        "estimated_peak_gib": cfg.estimated_peak_gib, "steps": state.global_step, "max_steps": state.max_steps,
        "epochs": round(state.epoch or 0.0, 4),
        "examples_per_step": cfg.examples_per_step or cfg.batch_size * cfg.grad_accum,
        "world_size": cfg.world_size, "engine": "single" if cfg.engine == "auto" else cfg.engine,
        "quantization": cfg.quantization if kind == "lora" else None, "grad_accum": cfg.grad_accum,
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
    cfg = TrainConfig.of(cfg)
    n = int(cfg.preview_questions)
    if n <= 0:
        return []
    if cfg.engine in SHARDED:  # generating needs every process to gather the weights, step by step
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
