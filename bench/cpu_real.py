"""Peak memory of training the REAL Qwen3-1.7B architecture on this CPU, measured beside medsft.memory's estimate.

Builds the architecture of MODEL's config.json with random weights (cost does not depend on weight values; no
download), trains STEPS optimizer steps of each KIND with the GPU defaults (features resolved as on a bf16 GPU:
bf16 weights, 8-bit AdamW with stochastic rounding for full fine-tuning, the chunked loss, gradient checkpointing;
sdpa attention and padded batches, as without flash-attn), each kind in a fresh process, and records the process's
peak resident set from the model built to the last step, above its baseline (libraries loaded, no model yet), against
the estimate of the same settings.

Reads   MODEL's config.json + tokenizer; rows of DATA (real rows cut to exactly MAX_LENGTH tokens: the estimate's
        worst case, BATCH_SIZE x MAX_LENGTH tokens per micro-batch).
Writes  OUTPUT (JSON: per kind measured peak, baseline, estimate by component, ratio, seconds, losses; plus the
        preflight's verdict on the fp32-master path).

    python bench/cpu_real.py                                   # Qwen3-1.7B, full + LoRA: ~25 min on 2 cores
    python bench/cpu_real.py --layers=2 --max_length=128       # the same code on 2 layers (the CI test)
"""

import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from medsft.config import configure, script_defaults  # noqa: E402
from medsft.files import MedsftError, write_json  # noqa: E402

MODEL = "auto"  # config.json + tokenizer of the architecture; auto = ../shared/qwen3-1.7b
DATA = "auto"  # JSONL rows {question, think, answer}; auto = ../shared/data/medical_r1_sample.jsonl, else the demo rows
KINDS = "full,lora"  # which defaults to measure: full (train.py) and/or lora (train_lora.py)
LAYERS = 0  # decoder layers; 0 = the config's (28 for Qwen3-1.7B); fewer for a quick check of the same code
MAX_LENGTH = 512  # tokens per example (every example is cut to exactly this)
BATCH_SIZE = 1  # examples per micro-batch (and per optimizer step)
STEPS = 2  # optimizer steps per kind
THREADS = 2  # torch threads
OUTPUT = "auto"  # results JSON; auto = bench/results/cpu-real-arch.json for the whole model, else a temp file


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise MedsftError(f"/proc/self/status has no {field}: this measurement needs Linux")


def _examples(tokenizer, data: Path, n: int, length: int) -> list[dict]:
    """Real rows in the chat format, cut to exactly ``length`` tokens (prompt masked as in training)."""
    from medsft.chat import tokenize_example
    from medsft.files import read_jsonl

    out = []
    for row in read_jsonl(data):
        ex = tokenize_example(tokenizer, row, 10 ** 6)
        if ex and len(ex["input_ids"]) >= length:
            out.append({k: v[:length] for k, v in ex.items()})
    if not out:
        raise MedsftError(f"{data}: no row has {length} tokens; lower --max_length")
    return [out[i % len(out)] for i in range(n)]


def measure(kind: str, cfg: dict, model_dir: str, data: str, queue) -> None:
    """One kind in this (fresh) process: baseline RSS, build, train STEPS steps, peak RSS. Puts a dict in queue."""
    # what the Trainer writes in OUTPUT_DIR is GBs for the whole architecture: scratch that must not outlive the run
    with tempfile.TemporaryDirectory(prefix="medsft-cpu-real-") as scratch:
        _measure(kind, cfg, model_dir, data, queue, scratch)


def _measure(kind: str, cfg: dict, model_dir: str, data: str, queue, scratch: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from medsft import memory
    from medsft.config import FEATURES
    from medsft.memory import estimate
    from medsft.models import load_tokenizer
    from medsft.training import features, sft

    torch.set_num_threads(cfg["THREADS"])
    lora = kind == "lora"
    run = {**script_defaults(_ROOT / ("train_lora.py" if lora else "train.py")), "MODEL": model_dir,
           "MAX_LENGTH": cfg["MAX_LENGTH"], "BATCH_SIZE": cfg["BATCH_SIZE"], "GRAD_ACCUM": 1,
           "MAX_STEPS": cfg["STEPS"], "LOGGING_STEPS": 1, "SAVE_STEPS": 10 ** 9, "EVAL_STEPS": 10 ** 9,
           "OUTPUT_DIR": scratch, "WARMUP": 0}
    run.update(features.resolve_features(run, lora=lora, log=False, assume_gpu=True))
    config = AutoConfig.from_pretrained(model_dir)
    if cfg["LAYERS"]:
        config.num_hidden_layers = cfg["LAYERS"]
        config.layer_types = config.layer_types[:cfg["LAYERS"]] if getattr(config, "layer_types", None) else None
    tokenizer = load_tokenizer(model_dir)
    examples = _examples(tokenizer, Path(data), cfg["BATCH_SIZE"] * cfg["STEPS"], cfg["MAX_LENGTH"])
    config.save_pretrained(Path(run["OUTPUT_DIR"]) / "arch")
    est = estimate(run, Path(run["OUTPUT_DIR"]) / "arch", lora)
    baseline = _status_kib("VmRSS")
    t = time.perf_counter()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=memory.weight_dtype(run["PRECISION"], lora),
                                             attn_implementation=run["ATTN_IMPLEMENTATION"])
    model.config.use_cache = False
    if lora:
        model = sft.add_lora(model, run)
    # peak RSS from here on: from_config allocates a head that tying to the embedding then frees (151,936 x 2048 in
    # bf16, 0.58 GiB), a transient that from_pretrained's loading (on the meta device first) never has
    Path("/proc/self/clear_refs").write_text("5")
    trainer = sft.build_trainer(model, tokenizer, examples, None, run)
    trainer.args.disable_tqdm = True
    trainer.train()
    peak = _status_kib("VmHWM")
    net = (peak - baseline) * 1024
    queue.put({
        "kind": kind, "settings": {k: run[k] for k in FEATURES + ("GRADIENT_CHECKPOINTING", "BATCH_SIZE",
                                                                            "MAX_LENGTH")},
        "tokens_per_micro_batch": cfg["BATCH_SIZE"] * cfg["MAX_LENGTH"], "steps": trainer.state.global_step,
        "baseline_rss_gib": round(baseline / 2 ** 20, 3), "peak_rss_gib": round(peak / 2 ** 20, 3),
        "measured_gib": round(net / 2 ** 30, 3), "estimated_gib": round(est["total"] / 2 ** 30, 3),
        "estimate_parts_gib": {k: round(est[k] / 2 ** 30, 3) for k in ("weights", "grads", "optimizer",
                                                                        "activations", "logits")},
        "measured_over_estimate": round(net / est["total"], 3), "seconds": round(time.perf_counter() - t, 1),
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e], "params": est["params"],
        "trainable": est["trainable"]})


def main():
    cfg = configure(globals())
    # 1. Fail fast: the architecture's config, rows, kinds
    model_dir = Path(MODEL if MODEL != "auto" else _ROOT.parent / "shared" / "qwen3-1.7b")
    if not (model_dir / "config.json").is_file():
        raise MedsftError(f"{model_dir}/config.json not found: pass --model=DIR with the config.json and tokenizer "
                          "of Qwen3-1.7B (no weights needed)")
    data = Path(DATA) if DATA != "auto" else next(
        p for p in (_ROOT.parent / "shared" / "data" / "medical_r1_sample.jsonl", _ROOT / "demo" / "medical_demo.jsonl")
        if p.is_file())
    kinds = [k.strip() for k in KINDS.split(",") if k.strip()]
    if not kinds or set(kinds) - {"full", "lora"}:
        raise MedsftError(f"--kinds={KINDS}: expected full, lora or full,lora")
    # 2. What the preflight says about the old fp32-master path at these settings and at train.py's defaults
    from medsft.memory import GIB, estimate

    heavy = {**script_defaults(_ROOT / "train.py"), "PRECISION": "bf16-mixed", "OPTIM": "adamw_torch_fused",
             "LOSS": "plain"}
    verdict = {name: round(estimate({**heavy, **over}, model_dir, lora=False)["total"] / GIB, 2)
               for name, over in (("this_run_settings", {"BATCH_SIZE": BATCH_SIZE, "MAX_LENGTH": MAX_LENGTH}),
                                  ("train_py_defaults", {}))} if not LAYERS else None
    # 3. Each kind in a fresh process, so one's memory never counts in the other's peak. glibc's malloc keeps freed
    #    heap blocks up to 32 MB (its mmap threshold grows), which RSS counts and a GPU allocator's live-tensor
    #    peak would not (measured: +0.6 GiB on 12 layers of LoRA); a fixed threshold returns them to the system
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    # the compiled 8-bit AdamW kernels take their OpenMP threads from the environment, not torch.set_num_threads
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    ctx = multiprocessing.get_context("spawn")
    results = []
    for kind in kinds:
        queue = ctx.Queue()
        proc = ctx.Process(target=measure, args=(kind, cfg, str(model_dir), str(data), queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise MedsftError(f"the {kind} measurement failed (exit {proc.exitcode}); see the traceback above")
        r = queue.get()
        print(f"{kind}: measured {r['measured_gib']:.2f} GiB above a {r['baseline_rss_gib']:.2f} GiB baseline, "
              f"estimated {r['estimated_gib']:.2f} GiB ({r['measured_over_estimate']:.2f}x), {r['seconds']:.0f} s")
        results.append(r)
    out = Path(OUTPUT) if OUTPUT != "auto" else (_ROOT / "bench" / "results" / "cpu-real-arch.json" if not LAYERS
                                                 else Path(tempfile.gettempdir()) / "medsft-cpu-real.json")
    layers = LAYERS or json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    result = {"date": time.strftime("%Y-%m-%d"), "device": f"CPU ({platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, {THREADS} torch threads)", "model": str(model_dir), "layers": layers,
              "measure": "peak resident set (VmHWM) from the model built to the last step, minus the resident set "
              "before the model was built, glibc MALLOC_MMAP_THRESHOLD_=" + os.environ["MALLOC_MMAP_THRESHOLD_"],
              "runs": results, "fp32_master_estimate_gib": verdict,
              "config": {**cfg, "MODEL": str(model_dir), "DATA": str(data)}}
    print(f"wrote:\n  {write_json(out, result)}")


if __name__ == "__main__":
    main()
