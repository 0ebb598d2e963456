"""GPU smoke test of the lean full fine-tuning default through the real train.py: kill -9, resume, same losses.

With MODEL=real (one CUDA GPU): the Qwen3-1.7B architecture of CONFIG_DIR with random weights and its real
tokenizer, trained by train.py's own defaults (bf16 weights, torchao 8-bit AdamW with bf16 stochastic rounding,
gradient checkpointing) and the chunked loss (LOSS). With MODEL=tiny: the same checks on CPU, without a GPU, on a
random 2-layer Qwen3 whose linear layers are all 64 x 64 (torchao's optimizer compiles its step once per parameter
shape: few shapes keep a CPU run near a minute) with the project's own 2k-word tokenizer, and --precision=bf16
(the lean default as it resolves on a GPU). Steps:
  1. train.py --dry_run=true: the memory estimate of these settings;
  2. a reference run of STEPS optimizer steps, a checkpoint every SAVE_STEPS;
  3. the same command again, killed with SIGKILL as soon as a checkpoint before the last step is complete, then
     the same command with --resume=true;
  4. checks: the resolved features; the optimizer the Trainer built (torchao AdamW8bit, stochastic rounding on,
     bf16 parameters: bench/smoke_probe.py records it inside train.py's process); the optimizer state restored
     8-bit on resume and saved 8-bit; the resumed run's loss history equal to the reference's; on GPU,
     torch.cuda.max_memory_allocated of the reference run within MEMORY_SLACK of the estimate.

Reads   CONFIG_DIR's config.json + tokenizer (real); rows of DATA.
Writes  OUTPUT (JSON: device, versions, settings, each check, losses, memory beside the estimate, seconds) and a
        short summary; exits 1 when a check fails. Its scratch folder (WORK: model, data, runs) is removed.

    bash bench/gpu_smoke.sh                     # on one H100/H200: -> bench/results/gpu_smoke-<device>.json
    SMOKE_MODEL=tiny bash bench/gpu_smoke.sh    # CPU, 2-layer model (what tests/test_bench.py runs)
    python bench/gpu_smoke.py --model=tiny --output=/tmp/smoke.json   # the same, any constant from the shell
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from medsft.config import configure  # noqa: E402
from medsft.files import MedsftError, write_json, write_jsonl  # noqa: E402

MODEL = "real"  # real: the Qwen3-1.7B architecture of CONFIG_DIR, random weights, one CUDA GPU | tiny: a 2-layer Qwen3 on CPU
CONFIG_DIR = "auto"  # config.json + tokenizer of the architecture (no weights needed); auto = ../shared/qwen3-1.7b
DATA = "auto"  # JSONL rows {question, think, answer}; auto = real: ../shared/data/medical_r1_sample.jsonl, else the demo rows; tiny: the demo rows
STEPS = 4  # optimizer steps of each run
SAVE_STEPS = 2  # a checkpoint every N steps; the killed run is stopped after the first one
MAX_LENGTH = 0  # tokens per example at most (the longest rows that fit are used); 0 = 1024 real, 256 tiny
BATCH_SIZE = 2  # examples per micro-batch
GRAD_ACCUM = 2  # micro-batches per optimizer step
LEARNING_RATE = 1e-3  # large for a few steps, so a wrongly restored optimizer state shows in the losses
LOSS = "chunked"  # passed to train.py; auto = what train.py picks (Liger's fused loss where liger-kernel is installed)
LOSS_RTOL = -1.0  # largest relative difference allowed between the two loss histories; -1 = auto: 0 on CPU (bit for bit), 1e-3 on GPU (attention and embedding backward kernels without a deterministic version)
MEMORY_SLACK = 1.10  # GPU: the measured peak may exceed the estimate by this factor at most
RUN_TIMEOUT = 600  # seconds per train.py run at most
SEED = 42  # seed of the random weights and of train.py
WORK = "auto"  # scratch folder (model, data, runs; GBs on GPU); auto = a new temp folder
KEEP_WORK = False  # keep WORK afterwards (to look at the runs)
OUTPUT = "auto"  # results JSON; auto = bench/results/gpu_smoke-<device>.json on GPU, a temp file for tiny

_BUDGET_S = 360  # what the real mode is sized for on one H100/H200
# MODEL=tiny: every linear layer 64 x 64, so the whole model has 4 parameter shapes
_TINY_SIZE = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=16, tie_word_embeddings=True)


def _bench_module():
    """bench/bench.py as a module: its random-weight model builder, output naming and version list are reused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("medsft_bench", _ROOT / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(data_spec: str, real: bool, tokenizer, work: Path, n: int, max_length: int) -> dict:
    """DATA's rows that fit MAX_LENGTH, longest first (the estimate's worst case is full-length micro-batches), as
    WORK/data/train.jsonl (n rows: one epoch is the STEPS steps) and val.jsonl (2 rows)."""
    from medsft.chat import tokenize_example
    from medsft.files import read_jsonl

    sample, demo = _ROOT.parent / "shared" / "data" / "medical_r1_sample.jsonl", _ROOT / "demo" / "medical_demo.jsonl"
    path = Path(data_spec) if data_spec != "auto" else sample if real and sample.is_file() else demo
    if not path.is_file():
        raise MedsftError(f"--data={data_spec}: no such file; give a JSONL of {{question, think, answer}} rows")
    fit = []
    for row in read_jsonl(path):
        if not real:  # a few short sentences: a CPU step of the 151,936-word head stays cheap
            row = {**row, "think": row["think"][:60], "answer": row["answer"][:60]}
        ex = tokenize_example(tokenizer, row, max_length)
        if ex is not None:
            fit.append((len(ex["input_ids"]), row))
    if len(fit) < 3:
        raise MedsftError(f"{path}: only {len(fit)} rows fit --max_length={max_length}; raise it or pass --data")
    fit.sort(key=lambda t: -t[0])
    train = [dict(fit[i % (len(fit) - 2)][1], id=f"smoke-{i}") for i in range(n)]
    write_jsonl(work / "data" / "train.jsonl", train)
    write_jsonl(work / "data" / "val.jsonl", [r for _, r in fit[-2:]])
    return {"source": str(path), "rows": n, "longest_tokens": fit[0][0],
            "shortest_used_tokens": fit[min(n, len(fit) - 2) - 1][0]}


def _probe_cmd(probe: Path, args: list[str]) -> list[str]:
    return [sys.executable, str(_ROOT / "bench" / "smoke_probe.py"), str(probe), str(_ROOT / "train.py"), *args]


def _run(name: str, cmd: list[str], env: dict, log: Path, timeout: int) -> tuple[float, str]:
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(cmd, cwd=_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise MedsftError(f"the {name} run exited {proc.returncode}; its output ends:\n{text[-3000:]}")
    return round(time.perf_counter() - t, 1), text


def _run_and_kill(cmd: list[str], env: dict, out: Path, log: Path, steps: int, timeout: int) -> dict:
    """Start the run, SIGKILL it once a checkpoint before the last step is complete; what was caught."""
    from medsft.training.checkpoints import checkpoints

    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, cwd=_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            while not (caught := [s for s, _, ok in checkpoints(out) if ok and s < steps]):
                if proc.poll() is not None or time.perf_counter() - t > timeout:
                    raise MedsftError(f"the run to kill ended (exit {proc.poll()}) before a checkpoint before step "
                                      f"{steps} could be caught; raise --steps. Its output ends:\n"
                                      + log.read_text(encoding="utf-8", errors="replace")[-3000:])
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"killed_after_checkpoint": max(caught), "exit": code, "seconds": round(time.perf_counter() - t, 1),
            "finished": (out / "trainer_state.json").exists()}


def _log_losses(out: Path) -> list[list]:
    state = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))
    return [[e["step"], k, e[k]] for e in state["log_history"] for k in ("loss", "eval_loss") if k in e]


def _saved_state(out: Path) -> dict:
    """8-bit and plain state tensors in the newest checkpoint's optimizer.pt, loaded as the Trainer loads it."""
    import torch
    import torchao.optim  # noqa: F401 - registers OptimState8bit as safe to load

    from medsft.training.checkpoints import checkpoints
    from smoke_probe import state_kinds

    step, path, _ = [c for c in checkpoints(out) if c[2]][-1]
    saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True, mmap=True)
    return {"checkpoint": step, **state_kinds(saved["state"].values())}


def _rel_diff(a: list[list], b: list[list]) -> float | None:
    if [x[:2] for x in a] != [x[:2] for x in b]:
        return None
    return max((abs(x[2] - y[2]) / max(abs(x[2]), 1e-12) for x, y in zip(a, b)), default=0.0)


def main():
    cfg = configure(globals())
    t0 = time.perf_counter()
    # 1. Fail fast: mode, device, architecture
    if MODEL not in ("real", "tiny"):
        raise MedsftError(f"--model={MODEL}: expected real or tiny")
    import torch

    real = MODEL == "real"
    if real and not torch.cuda.is_available():
        raise MedsftError("--model=real needs a CUDA GPU and none is visible; SMOKE_MODEL=tiny bash bench/gpu_smoke.sh "
                          "runs the same checks on the tiny model on CPU")
    config_dir = Path(CONFIG_DIR if CONFIG_DIR != "auto" else _ROOT.parent / "shared" / "qwen3-1.7b")
    if real and not (config_dir / "config.json").is_file():
        raise MedsftError(f"{config_dir}/config.json not found: pass --config_dir=DIR holding Qwen3-1.7B's "
                          "config.json and tokenizer (no weights needed)")
    if not 0 < SAVE_STEPS < STEPS:
        raise MedsftError(f"--save_steps={SAVE_STEPS} must be at least 1 and below --steps={STEPS}")
    bench = _bench_module()
    device = torch.cuda.get_device_name(0) if real else "CPU (tiny model)"
    max_length = MAX_LENGTH or (1024 if real else 256)
    rtol = LOSS_RTOL if LOSS_RTOL >= 0 else (1e-3 if real else 0.0)
    work = Path(WORK) if WORK != "auto" else Path(tempfile.mkdtemp(prefix="medsft-gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    seconds = {}
    try:
        # 2. The model (random weights, saved like a downloaded model) and the rows
        from medsft import models

        t = time.perf_counter()
        model = str(work / "model")
        if real:
            bench.build_random_model("gpu", str(config_dir), work / "model", SEED, 0, 0)
        else:
            demo = models.demo_builders()
            demo.save_random_qwen3(work / "model", demo.build_tiny_tokenizer(work / "model"), SEED, _TINY_SIZE)
        data = _data(DATA, real, models.load_tokenizer(model), work, STEPS * BATCH_SIZE * GRAD_ACCUM, max_length)
        seconds["model_and_data"] = round(time.perf_counter() - t, 1)
        env = {**os.environ, "SWANLAB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "MEDSFT_SMOKE_DETERMINISTIC": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        common = [f"--model={model}", f"--data_dir={work / 'data'}", f"--max_steps={STEPS}",
                  f"--save_steps={SAVE_STEPS}", "--save_total_limit=1", "--logging_steps=1", f"--eval_steps={STEPS}",
                  f"--max_length={max_length}", f"--batch_size={BATCH_SIZE}", f"--grad_accum={GRAD_ACCUM}",
                  f"--learning_rate={LEARNING_RATE}", "--warmup=0", f"--seed={SEED}", f"--loss={LOSS}",
                  "--preview_questions=0", *([] if real else ["--precision=bf16"])]

        def args(name):
            return [*common, f"--output_dir={work / name}", f"--results_dir={work / ('results-' + name)}"]

        # 3. The estimate, the reference run, the killed run and its resume
        t = time.perf_counter()
        dry = subprocess.run([sys.executable, str(_ROOT / "train.py"), *args("ref"), "--dry_run=true"], cwd=_ROOT,
                             env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        m = re.search(r"estimated peak: ([\d.]+) GiB", dry.stdout)
        if dry.returncode != 0 or not m:
            raise MedsftError(f"train.py --dry_run=true exited {dry.returncode}:\n{(dry.stdout + dry.stderr)[-3000:]}")
        seconds["dry_run"] = round(time.perf_counter() - t, 1)
        seconds["reference"], _ = _run("reference", _probe_cmd(work / "probe-ref.json", args("ref")), env,
                                       work / "ref.log", RUN_TIMEOUT)
        kill = _run_and_kill(_probe_cmd(work / "probe-killed.json", args("killed")), env, work / "killed",
                             work / "killed.log", STEPS, RUN_TIMEOUT)
        seconds["killed"] = kill.pop("seconds")
        seconds["resumed"], resumed_log = _run("resumed", _probe_cmd(work / "probe-resumed.json",
                                                                     [*args("killed"), "--resume=true"]), env,
                                               work / "resumed.log", RUN_TIMEOUT)

        # 4. The checks
        probe = json.loads((work / "probe-ref.json").read_text(encoding="utf-8"))
        resumed_probe = json.loads((work / "probe-resumed.json").read_text(encoding="utf-8"))
        results = json.loads((work / "results-ref" / "train_full.json").read_text(encoding="utf-8"))
        want, got = _log_losses(work / "ref"), _log_losses(work / "killed")
        diff = _rel_diff(want, got)
        saved = _saved_state(work / "killed")
        feats = results["features"]
        peak, estimate = results["peak_memory_gib"], results["estimated_peak_gib"]
        checks = {
            "lean_default": feats["PRECISION"] == "bf16" and feats["OPTIM"] == "adamw_torch_8bit"
            and feats["GRADIENT_CHECKPOINTING"] is True and (LOSS == "auto" or feats["LOSS"] == LOSS),
            "optimizer_8bit_with_stochastic_rounding": probe.get("optimizer") == "torchao.optim.adam.AdamW8bit"
            and probe.get("bf16_stochastic_round") is True and probe.get("param_dtypes") == ["torch.bfloat16"],
            "killed_mid_run": kill["exit"] == -signal.SIGKILL and not kill["finished"],
            "resumed_from_the_checkpoint": f"(step {kill['killed_after_checkpoint']})" in resumed_log
            and resumed_probe.get("resumed_state", {}).get("8bit", 0) > 0,
            "checkpoint_state_8bit": saved["8bit"] > 0,
            "loss_history_equal": diff is not None and [s for s, k, _ in want if k == "loss"] == list(
                range(1, STEPS + 1)) and diff <= rtol,
            "dry_run_equals_preflight": abs(float(m.group(1)) - estimate) < 0.006,
            "estimate_covers_peak": peak <= estimate * MEMORY_SLACK if real else None,  # CPU RSS counts libraries
        }
    finally:
        if not KEEP_WORK:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    seconds["total"] = round(time.perf_counter() - t0, 1)
    passed = all(v is not False for v in checks.values())
    result = {
        "date": time.strftime("%Y-%m-%d"), "device": device, "mode": MODEL, "passed": passed, "checks": checks,
        "architecture": str(config_dir) if real else _TINY_SIZE, "versions": bench.versions(), "data": data,
        "features": feats, "optimizer": probe, "resumed_optimizer": resumed_probe, "saved_optimizer_state": saved,
        "kill": kill, "losses": {"reference": want, "resumed": got, "max_relative_difference": diff, "rtol": rtol,
                                 "identical": want == got},
        "memory": {"estimated_peak_gib": estimate, "dry_run_estimate_gib": float(m.group(1)), "measured_gib": peak,
                   "measured_kind": results["peak_memory_kind"], "measured_over_estimate": round(peak / estimate, 3)},
        "seconds": seconds, "within_budget_s": seconds["total"] <= _BUDGET_S if real else None,
        "config": {**cfg, "MAX_LENGTH": max_length},
    }
    out = Path(OUTPUT) if OUTPUT != "auto" else (
        _ROOT / "bench" / "results" / f"gpu_smoke-{bench.output_path('auto', 'gpu', device, False).name}" if real
        else Path(tempfile.gettempdir()) / "medsft-bench" / "gpu_smoke-cpu-tiny.json")
    write_json(out, result)
    mem = result["memory"]
    print(f"gpu smoke on {device}: {'PASSED' if passed else 'FAILED'} in {seconds['total']:.0f} s")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'n/a ' if ok is None else 'FAIL'} {name}")
    print(f"  losses {'identical' if want == got else f'max relative difference {diff}'} over {len(want)} entries; "
          f"killed after checkpoint {kill['killed_after_checkpoint']} of {STEPS} steps")
    print(f"  memory: {mem['measured_gib']:.2f} GiB {mem['measured_kind']} vs {mem['estimated_peak_gib']:.2f} GiB "
          f"estimated " + (f"({mem['measured_over_estimate']:.2f}x)" if real else "(not compared: CPU RSS counts the "
                                                                                "libraries)"))
    print(f"wrote:\n  {out}")
    if not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
