"""Benchmark: training and generation speed and memory of this project against the tutorial's configuration.

Trains three configurations one after another in this process, on the same examples (real rows, real lengths) and
so the same number of tokens, timing only after warm-up:
  a. tutorial: batch size 1 x gradient accumulation 4, gradient checkpointing, bf16 weights, plain padding
     collator, plain loss (full logits), plain AdamW (torch), sdpa attention;
  b. full:     this project's full fine-tuning defaults (train.py's constants, every "auto" resolved here);
  c. lora:     this project's LoRA defaults (train_lora.py's constants).
Then generates answers to the same questions, greedy, MAX_NEW_TOKENS at most: the tutorial's one-at-a-time
`model.generate` loop vs this project's batched `medsft.generate.generate` (and vLLM when installed, GPU only).

Reads   GPU mode: MODEL's config.json + tokenizer only (the real Qwen3-1.7B architecture, built with RANDOM weights:
        cost does not depend on weight values; ../shared/qwen3-1.7b has no weights at all); rows of DATA.
Writes  OUTPUT (JSON: device, library versions, per configuration tokens/s, MFU, peak memory, ratio to the
        tutorial; generation tokens/s and ratio) and prints a short table.

    python bench/bench.py --mode=cpu                  # CPU smoke test (~30 s on 2 cores; numbers labelled CPU)
    python bench/bench.py --mode=cpu --keep_cpu_results=true   # ... and write bench/results/cpu-smoke.json
    python bench/bench.py                             # on a CUDA GPU: real architecture -> bench/results/<gpu>.json
    python bench/bench.py --model=/path/to/Qwen3-1.7B --gen_batch_size=32   # other config source / batch size

CPU mode scales the model down (CPU_LAYERS layers, hidden CPU_HIDDEN) and uses the project's own 2k-token
tokenizer (demo/builtin.py: build_tiny_tokenizer): with the real 151,936-word vocabulary one 1,000-token example
alone takes ~3 s to train on 2 cores. Its numbers only prove that the benchmark runs; they are never GPU results.
Tokens are counted as all non-padding tokens (prompt + response) of the timed epochs: the forward and backward
passes run over all of them; the response share (labels != -100) is reported beside them.
"""

import gc
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))  # run as `python bench/bench.py` from anywhere: the medsft package is in the root

from medsft.config import configure, script_defaults  # noqa: E402
from medsft.files import MedsftError, write_json  # noqa: E402

MODE = "auto"  # auto | cpu | gpu; auto = gpu when a CUDA GPU is present. cpu = scaled-down smoke test
MODEL = "auto"  # config.json + tokenizer of the architecture (GPU mode): local HF dir or ModelScope id; auto = ../shared/qwen3-1.7b if present, else Qwen/Qwen3-1.7B
DATA = "auto"  # JSONL rows {question, think, answer} giving real lengths; auto = data/train.jsonl, else ../shared/data/medical_r1_sample.jsonl, else demo/medical_demo.jsonl
MAX_LENGTH = 2048  # tokens per example at most (train.py's default); longer rows are skipped, as in training
EXAMPLES = 0  # examples per epoch, the same list for every configuration; 0 = smallest multiple of every config's examples per step that is >= 128 on GPU, >= 16 on CPU
WARMUP_EPOCHS = 1  # untimed passes over the examples first (kernel selection, allocator, optimizer state)
MEASURED_EPOCHS = 1  # timed passes: every configuration trains exactly these tokens
CPU_LAYERS = 2  # CPU mode: decoder layers of the scaled-down Qwen3
CPU_HIDDEN = 64  # CPU mode: hidden size (heads of 16 dims, MLP 3x wider)
CPU_THREADS = 1  # CPU mode: torch threads; 1 keeps the smoke test steady on a busy machine (OpenMP threads sharing cores with other work stall ~10x)
GEN_QUESTIONS = 0  # questions answered by both generation methods; 0 = 16 on GPU, 8 on CPU
MAX_NEW_TOKENS = 0  # tokens generated per question at most (greedy); 0 = 256 on GPU, 64 on CPU
GEN_BATCH_SIZE = 0  # batch size of the batched generation; 0 = inference.py's BATCH_SIZE
GEN_VLLM = "auto"  # auto | true | false: also time vLLM (GPU only); auto = when vllm is installed
PEAK_TFLOPS = 0.0  # the GPU's dense bf16 peak in TFLOP/s for MFU; 0 = look the device name up (H100, H200, A100, RTX 4090...)
SEED = 42  # seed of the random weights, data order and LoRA init
OUTPUT = "auto"  # results JSON; auto = bench/results/<gpu-name>.json on GPU, a temp file on CPU (see KEEP_CPU_RESULTS)
KEEP_CPU_RESULTS = False  # CPU mode with OUTPUT=auto: write bench/results/cpu-smoke.json instead of a temp file

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; matched in order against
# torch.cuda.get_device_name(), so specific names come before the names they contain.
_PEAK_BF16_TFLOPS = [
    ("GH200", 989.4), ("H200 NVL", 835.0), ("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
    ("H100", 989.4), ("H800 PCIe", 756.0), ("H800", 989.4), ("H20", 148.0), ("B200", 2250.0), ("B100", 1750.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0), ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
]
_CONFIGS = ("tutorial", "full", "lora")
_CONFIG_LABELS = {"tutorial": "a. tutorial", "full": "b. full FT (defaults)", "lora": "c. LoRA (defaults)"}
_CPU_LABEL = "CPU smoke test: scaled-down model, NOT GPU results"
_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "flash-attn", "liger-kernel", "torchao", "bitsandbytes", "vllm")


# --- setup ----------------------------------------------------------------------------------------------------


def pick_mode(mode: str) -> str:
    import torch

    mode = mode.lower()
    if mode not in ("auto", "cpu", "gpu"):
        raise MedsftError(f"--mode={mode}: expected auto, cpu or gpu")
    if mode == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if mode == "gpu" and not torch.cuda.is_available():
        raise MedsftError("--mode=gpu needs a CUDA GPU and none is visible; run --mode=cpu for the smoke test")
    return mode


def pick_data(spec: str) -> Path:
    if spec != "auto":
        path = Path(spec)
        if not path.is_file():
            raise MedsftError(f"--data={spec}: no such file; give a JSONL of {{question, think, answer}} rows "
                              "(e.g. data/train.jsonl from data.py) or --data=auto")
        return path
    for path in (_ROOT / "data" / "train.jsonl", _ROOT.parent / "shared" / "data" / "medical_r1_sample.jsonl",
                 _ROOT / "demo" / "medical_demo.jsonl"):
        if path.is_file():
            return path
    raise MedsftError("no data for --data=auto: run data.py (writes data/train.jsonl) or pass --data=FILE.jsonl")


def pick_model(spec: str) -> str:
    if spec != "auto":
        return spec
    shared = _ROOT.parent / "shared" / "qwen3-1.7b"
    return str(shared) if (shared / "config.json").is_file() else "Qwen/Qwen3-1.7B"


def training_configs(cuda: bool) -> dict:
    """The three configurations as train.py / train_lora.py constants dicts (what build_trainer reads)."""
    lora_script = _ROOT / "train_lora.py"
    if not lora_script.is_file():
        raise MedsftError(f"{lora_script} not found: the LoRA configuration (c) takes its defaults from it")
    full = script_defaults(_ROOT / "train.py")
    tutorial = {**full, "BATCH_SIZE": 1, "GRAD_ACCUM": 4, "GRADIENT_CHECKPOINTING": True,
                "PRECISION": "bf16" if cuda else "fp32",  # the tutorial loads and trains bf16 weights (plain AdamW)
                "ATTN_IMPLEMENTATION": "sdpa",  # transformers' default attention
                "PADDING_FREE": False, "LOSS": "plain", "OPTIM": "adamw_torch"}
    return {"tutorial": tutorial, "full": full, "lora": script_defaults(lora_script)}


def examples_per_epoch(requested: int, configs: dict, gpu: bool) -> int:
    """Every configuration must see whole optimizer steps per epoch, so each epoch holds the same examples."""
    per_step = [c["BATCH_SIZE"] * c["GRAD_ACCUM"] for c in configs.values()]
    unit = math.lcm(*per_step)
    if requested > 0:
        if requested % unit:
            raise MedsftError(f"--examples={requested} must be a multiple of {unit} (examples per optimizer step: "
                              f"{dict(zip(configs, per_step))}), or 0 for auto")
        return requested
    target = 128 if gpu else 16
    return unit * max(1, math.ceil(target / unit))


def check_knobs(cfg: dict) -> None:
    for name in ("MAX_LENGTH", "MEASURED_EPOCHS", "CPU_LAYERS", "CPU_HIDDEN", "CPU_THREADS"):
        if cfg[name] < 1:
            raise MedsftError(f"--{name.lower()}={cfg[name]}: must be at least 1")
    for name in ("WARMUP_EPOCHS", "EXAMPLES", "GEN_QUESTIONS", "MAX_NEW_TOKENS", "GEN_BATCH_SIZE", "PEAK_TFLOPS"):
        if cfg[name] < 0:
            raise MedsftError(f"--{name.lower()}={cfg[name]}: must be 0 (auto) or more")
    if cfg["CPU_HIDDEN"] % 16:
        raise MedsftError(f"--cpu_hidden={cfg['CPU_HIDDEN']}: must be a multiple of 16 (attention heads of 16 dims)")
    if str(cfg["GEN_VLLM"]).lower() not in ("auto", "true", "false"):
        raise MedsftError(f"--gen_vllm={cfg['GEN_VLLM']}: expected auto, true or false")


def build_random_model(mode: str, model_spec: str, out_dir: Path, seed: int, cpu_layers: int, cpu_hidden: int):
    """Save a random-weight model + tokenizer in out_dir (loaded back like any trained model); returns its config.

    GPU: the real architecture of model_spec (AutoConfig) and its tokenizer. CPU: a scaled-down Qwen3 with the
    project's own small tokenizer (a 151,936-word output layer would dominate a CPU run).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, Qwen3Config

    from medsft.models import demo_builders, load_tokenizer, resolve_model

    if mode == "gpu":
        src = resolve_model(model_spec)
        config = AutoConfig.from_pretrained(src)
        tokenizer = load_tokenizer(src)
        device, dtype = "cuda", torch.bfloat16
        try:
            gen = GenerationConfig.from_pretrained(src)
        except OSError:  # no generation_config.json: the model config's eos/pad ids are used
            gen = None
    else:
        tokenizer = demo_builders().build_tiny_tokenizer(out_dir)
        eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
        heads = cpu_hidden // 16
        config = Qwen3Config(vocab_size=(len(tokenizer) + 63) // 64 * 64, hidden_size=cpu_hidden,
                             intermediate_size=3 * cpu_hidden, num_hidden_layers=cpu_layers,
                             num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=16,
                             max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=pad,
                             eos_token_id=eos, pad_token_id=pad)
        device, dtype = "cpu", torch.float32
        gen = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if gen is not None:
        model.generation_config = gen
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model
    free_memory()
    return config


def matmul_params(config) -> int:
    """N of the 6·N·tokens rule: weights of every linear layer, output head included (counted once when tied)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def architecture(config, n_matmul: int, source: str) -> dict:
    return {"source": source, "model_type": config.model_type, "layers": config.num_hidden_layers,
            "hidden": config.hidden_size, "intermediate": config.intermediate_size,
            "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            "vocab": config.vocab_size, "tied_embeddings": bool(config.tie_word_embeddings),
            "matmul_params": n_matmul}


# --- measurement ----------------------------------------------------------------------------------------------


def device_name(cuda: bool) -> str:
    import torch

    if cuda:
        return torch.cuda.get_device_name(0)
    threads = torch.get_num_threads()
    return (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} torch "
            f"thread{'s' if threads > 1 else ''})")


def peak_tflops(name: str) -> float | None:
    for key, tflops in _PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    import torch

    out["cuda"] = torch.version.cuda
    return out


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _clear_rss_peak() -> bool:
    """Reset this process's peak RSS (Linux: /proc/self/clear_refs), so each configuration gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def reset_peak(cuda: bool) -> bool:
    import torch

    free_memory()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        return True
    return _clear_rss_peak()


def read_peak(cuda: bool, was_reset: bool) -> dict:
    import resource

    import torch

    if cuda:
        return {"kind": "cuda", "max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 3),
                "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2 ** 30, 3)}
    if was_reset:
        status = Path("/proc/self/status").read_text()
        kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
        how = "VmHWM (peak resident set of this process, reset before each measurement)"
    else:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        how = "resource.getrusage ru_maxrss (peak resident set since the process started)"
    return {"kind": "cpu_peak_rss", "peak_rss_gib": round(kib / 2 ** 20, 3), "how": how}


def peak_gib(peak: dict) -> float:
    return peak["max_allocated_gib"] if peak["kind"] == "cuda" else peak["peak_rss_gib"]


def train_flops(lengths: list[int], n_matmul: int, layers: int, attn_dim: int, weight_grads: bool = True) -> float:
    """Model FLOPs of one pass over examples of these lengths: (6·N + 12·L·d·seq) per token (PaLM appendix B);
    4·N instead of 6·N when the weights get no gradient (frozen base of LoRA). Recomputation by gradient
    checkpointing and padding are not counted: MFU measures useful work."""
    dense = (6 if weight_grads else 4) * n_matmul
    return float(sum(n * (dense + 12 * layers * attn_dim * n) for n in lengths))


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def epoch_timer(warmup_epochs: int, cuda: bool):
    """A TrainerCallback timing the epochs after the warm-up ones (GPU synchronized), and vetoing checkpoints."""
    from transformers import TrainerCallback

    class EpochTimer(TrainerCallback):
        def __init__(self):
            self.epochs_done = 0
            self.t0 = self.t1 = None
            self.tokens0 = self.tokens1 = self.step0 = self.step1 = 0

        def _mark(self, state):
            _sync(cuda)
            return time.perf_counter(), state.num_input_tokens_seen, state.global_step

        def on_train_begin(self, args, state, control, **kwargs):
            if warmup_epochs == 0:
                self.t0, self.tokens0, self.step0 = self._mark(state)

        def on_step_end(self, args, state, control, **kwargs):
            control.should_save = False  # a checkpoint is disk time, not training time

        def on_epoch_end(self, args, state, control, **kwargs):
            self.epochs_done += 1
            if self.epochs_done == warmup_epochs:
                self.t0, self.tokens0, self.step0 = self._mark(state)
            elif self.epochs_done > warmup_epochs:
                self.t1, self.tokens1, self.step1 = self._mark(state)

    return EpochTimer()


class CountingCollator:
    """Wraps the trainer's collator to count the positions it emits (padding included) against real tokens."""

    def __init__(self, inner):
        self.inner = inner
        self.positions = self.tokens = 0

    def __call__(self, features):
        batch = self.inner(features)
        self.positions += batch["input_ids"].numel()
        self.tokens += sum(len(f["input_ids"]) for f in features)
        return batch


def run_training(name: str, cfg: dict, model_dir: Path, work: Path, tokenizer, examples: list[dict],
                 epoch_tokens: int, epoch_supervised: int, lengths: list[int], arch: dict, warmup_epochs: int,
                 measured_epochs: int, peak: float | None, cuda: bool) -> dict:
    """Load the random model, train `name` for warm-up + measured epochs, return its measurements."""
    from medsft.training import callbacks, features, results, sft
    from medsft import config
    from medsft.memory import estimate

    cfg = {**cfg, "MODEL": str(model_dir), "OUTPUT_DIR": str(work / f"run-{name}"), "MAX_STEPS": -1,
           "EPOCHS": float(warmup_epochs + measured_epochs), "SAVE_STEPS": 10 ** 9, "RUN_NAME": f"bench-{name}"}
    lora = name == "lora"
    was_reset = reset_peak(cuda)
    cfg.update(features.resolve_features(cfg, lora=lora, log=False))
    model = sft.load_training_model(cfg)
    if lora:
        model = sft.add_lora(model, cfg)
    trainable, total = results.count_parameters(model)
    est = estimate({**cfg, "MAX_LENGTH": max(lengths)}, model_dir, lora)
    timer = epoch_timer(warmup_epochs, cuda)
    trainer = sft.build_trainer(model, tokenizer, examples, None, cfg, [*callbacks.basic(), timer])
    trainer.data_collator = counter = CountingCollator(trainer.data_collator)
    trainer.train()
    memory = read_peak(cuda, was_reset)
    seconds = timer.t1 - timer.t0
    tokens = epoch_tokens * measured_epochs
    result = {
        "label": _CONFIG_LABELS[name],
        "settings": {k: cfg[k] for k in ("BATCH_SIZE", "GRAD_ACCUM", "GRADIENT_CHECKPOINTING") + config.FEATURES},
        "examples_per_step": cfg["BATCH_SIZE"] * cfg["GRAD_ACCUM"],
        "timed_steps": timer.step1 - timer.step0,
        "trained_tokens": tokens,
        "supervised_tokens": epoch_supervised * measured_epochs,
        "trainer_counted_tokens": timer.tokens1 - timer.tokens0,
        "padding_share": round(1 - counter.tokens / counter.positions, 4),  # of the positions computed, all epochs
        "seconds": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds, 2),
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory": memory,
        # medsft.memory's preflight estimate for these settings at this data's longest example
        "estimated_peak_gib": round(est["total"] / 2 ** 30, 3),
        "estimate_parts_gib": {k: round(est[k] / 2 ** 30, 3) for k in ("weights", "grads", "optimizer", "activations",
                                                                        "logits")},
        "final_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None),
    }
    if lora:
        result["lora"] = {k: cfg[k] for k in cfg if k.startswith("LORA_")}
    flops = train_flops(lengths, arch["matmul_params"], arch["layers"], arch["heads"] * arch["head_dim"])
    result["mfu"] = round(flops * measured_epochs / seconds / (peak * 1e12), 4) if peak else None
    if lora:
        flops4 = train_flops(lengths, arch["matmul_params"], arch["layers"], arch["heads"] * arch["head_dim"],
                             weight_grads=False)
        result["mfu_4n"] = round(flops4 * measured_epochs / seconds / (peak * 1e12), 4) if peak else None
    print(f"{name}: {tokens:,} tokens in {seconds:.2f} s = {result['tokens_per_s']:,.1f} tokens/s, peak "
          f"{peak_gib(memory):.2f} GiB ({memory['kind']}), estimated {result['estimated_peak_gib']:.2f} GiB")
    del trainer, model
    free_memory()
    return result


def count_new(ids: list[int], stop: set[int]) -> int:
    """Real new tokens: up to and including the first end-of-turn token (what medsft.generate counts)."""
    cut = next((k for k, t in enumerate(ids) if t in stop), None)
    return len(ids) if cut is None else cut + 1


def tutorial_generate(model, tokenizer, questions, gen_config) -> list[dict]:
    """The tutorial's predict(): one question at a time, `model.generate` on its chat-template prompt."""
    from medsft.chat import prompt_text

    stop = set(gen_config.eos_token_id)
    device = next(model.parameters()).device
    out = []
    for q in questions:
        enc = tokenizer([prompt_text(tokenizer, q)], return_tensors="pt", add_special_tokens=False).to(device)
        ids = model.generate(enc.input_ids, attention_mask=enc.attention_mask, generation_config=gen_config)
        new = ids[0, enc.input_ids.shape[1]:].tolist()
        n = count_new(new, stop)
        out.append({"output": tokenizer.decode(new[:n], skip_special_tokens=True), "new_tokens": n})
    return out


def run_generation(model_dir: Path, questions: list[str], max_new_tokens: int, batch_size: int, use_vllm: bool,
                   max_length: int, seed: int, cuda: bool) -> dict:
    import torch

    from medsft.generate import eos_ids, generate, generation_config
    from medsft.models import load_model, load_tokenizer

    was_reset = reset_peak(cuda)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)  # bf16 on GPU, fp32 on CPU: what inference uses
    model.eval()
    gen_config = generation_config(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=False)
    # warm-up of both paths (kernels, allocator, batch shapes), untimed
    with torch.no_grad():
        tutorial_generate(model, tokenizer, questions[:1], generation_config(model, tokenizer, max_new_tokens=4,
                                                                             do_sample=False))
    generate(model, tokenizer, questions[:batch_size], max_new_tokens=4, do_sample=False, seed=seed,
             batch_size=batch_size, progress=False)

    def timed(fn):
        _sync(cuda)
        t = time.perf_counter()
        res = fn()
        _sync(cuda)
        return res, time.perf_counter() - t

    loop, loop_s = timed(lambda: tutorial_generate(model, tokenizer, questions, gen_config))
    batched, batched_s = timed(lambda: generate(model, tokenizer, questions, max_new_tokens=max_new_tokens,
                                                do_sample=False, seed=seed, batch_size=batch_size, progress=False))
    memory = read_peak(cuda, was_reset)

    def stats(results, seconds):
        tokens = sum(r["new_tokens"] for r in results)
        return {"new_tokens": tokens, "seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 2)}

    out = {"questions": len(questions), "max_new_tokens": max_new_tokens, "decoding": "greedy",
           "loop": stats(loop, loop_s), "batched": {**stats(batched, batched_s), "batch_size": batch_size},
           "identical_outputs": sum(a["output"] == b["output"] for a, b in zip(loop, batched)),
           "peak_memory": memory}
    out["batched"]["ratio_to_loop"] = round(out["batched"]["tokens_per_s"] / out["loop"]["tokens_per_s"], 3)
    print(f"generation: loop {out['loop']['tokens_per_s']:,.1f} tokens/s, batched (batch {batch_size}) "
          f"{out['batched']['tokens_per_s']:,.1f} tokens/s = {out['batched']['ratio_to_loop']:.2f}x")
    stop = eos_ids(model, tokenizer)
    del model
    free_memory()
    out["vllm"] = run_vllm(model_dir, tokenizer, questions, max_new_tokens, stop, max_length, seed,
                           out["loop"]["tokens_per_s"]) if use_vllm else None
    return out


def run_vllm(model_dir, tokenizer, questions, max_new_tokens, stop, max_length, seed, loop_tps) -> dict:
    from medsft.generate import generate_vllm, load_vllm, vllm_settings

    try:
        llm = load_vllm(model_dir, seed=seed, max_model_len=max_length + max_new_tokens)
        settings = vllm_settings(model_dir, max_new_tokens=max_new_tokens, do_sample=False)
        generate_vllm(llm, tokenizer, questions[:1], settings={**settings, "max_new_tokens": 4}, stop_ids=stop)
        t = time.perf_counter()
        res = generate_vllm(llm, tokenizer, questions, settings=settings, stop_ids=stop, seed=seed)
        seconds = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - optional backend: its failure is reported, the rest still stands
        print(f"vLLM: failed ({type(e).__name__}: {e}); reported in the JSON, the other numbers stand")
        return {"error": f"{type(e).__name__}: {e}"}
    tokens = sum(r["new_tokens"] for r in res)
    tps = tokens / seconds
    print(f"generation: vLLM {tps:,.1f} tokens/s = {tps / loop_tps:.2f}x the loop")
    return {"new_tokens": tokens, "seconds": round(seconds, 4), "tokens_per_s": round(tps, 2),
            "ratio_to_loop": round(tps / loop_tps, 3)}


# --- report ---------------------------------------------------------------------------------------------------


def output_path(spec: str, mode: str, device: str, keep_cpu: bool) -> Path:
    if spec != "auto":
        return Path(spec)
    if mode == "gpu":
        slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
        return _ROOT / "bench" / "results" / f"{'-'.join(filter(None, slug.split('-')))}.json"
    if keep_cpu:
        return _ROOT / "bench" / "results" / "cpu-smoke.json"
    return Path(tempfile.gettempdir()) / "medsft-bench" / "cpu-smoke.json"


def shown(path) -> str:
    """A path as the JSON records it: relative to the repository root when it is inside or beside it."""
    p = Path(path)
    if not p.exists():
        return str(path)  # a ModelScope id
    rel = os.path.relpath(p.resolve(), _ROOT)
    return rel if not rel.startswith("../../") else str(p.resolve())


def table(result: dict) -> str:
    mem = "peak RSS" if result["mode"] == "cpu" else "max allocated / reserved"
    lines = [f"{result['device']}" + (f"  [{_CPU_LABEL}]" if result["mode"] == "cpu" else ""),
             f"training: {result['data']['examples']} examples, {result['training']['tutorial']['trained_tokens']:,} "
             f"non-padding tokens timed per configuration",
             f"  {'config':<24}{'tokens/s':>12}{'MFU':>8}   {'peak memory (' + mem + ')':<34}{'estimate':>10}"
             f"{'vs tutorial':>12}"]
    for name in _CONFIGS:
        r = result["training"][name]
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        p = r["peak_memory"]
        memory = (f"{p['peak_rss_gib']:.2f} GiB" if p["kind"] == "cpu_peak_rss"
                  else f"{p['max_allocated_gib']:.2f} / {p['max_reserved_gib']:.2f} GiB")
        lines.append(f"  {r['label']:<24}{r['tokens_per_s']:>12,.1f}{mfu:>8}   {memory:<34}"
                     f"{r['estimated_peak_gib']:>6.2f} GiB{r['ratio_to_tutorial']:>11.2f}x")
    g = result["generation"]
    lines.append(f"generation: {g['questions']} questions, {g['max_new_tokens']} new tokens at most, greedy")
    lines.append(f"  {'method':<34}{'tokens/s':>12}{'vs loop':>10}")
    lines.append(f"  {'tutorial loop (one at a time)':<34}{g['loop']['tokens_per_s']:>12,.1f}{1.0:>9.2f}x")
    lines.append(f"  {'batched (batch ' + str(g['batched']['batch_size']) + ')':<34}"
                 f"{g['batched']['tokens_per_s']:>12,.1f}{g['batched']['ratio_to_loop']:>9.2f}x")
    lora = result["training"]["lora"]
    if lora.get("mfu_4n") is not None:
        lines.insert(6, f"  (LoRA MFU counting 4·N, the frozen base having no weight gradients: "
                        f"{100 * lora['mfu_4n']:.1f}%)")
    if g.get("vllm") and "tokens_per_s" in g["vllm"]:
        lines.append(f"  {'vLLM':<34}{g['vllm']['tokens_per_s']:>12,.1f}{g['vllm']['ratio_to_loop']:>9.2f}x")
    return "\n".join(lines)


def main():
    cfg = configure(globals())
    # 1. Fail fast, before building anything: mode vs hardware, knobs, data, the three configurations
    import torch

    check_knobs(cfg)
    mode = pick_mode(MODE)
    cuda = mode == "gpu"
    if not cuda:
        torch.set_num_threads(CPU_THREADS)
    data_path = pick_data(DATA)
    model_spec = pick_model(MODEL)
    configs = training_configs(cuda)
    n_examples = examples_per_epoch(EXAMPLES, configs, cuda)
    n_questions = GEN_QUESTIONS or (16 if cuda else 8)
    max_new_tokens = MAX_NEW_TOKENS or (256 if cuda else 64)
    batch_size = GEN_BATCH_SIZE or script_defaults(_ROOT / "inference.py")["BATCH_SIZE"]
    vllm_flag = str(GEN_VLLM).lower()
    from medsft.generate import vllm_available

    if vllm_flag == "true" and not (cuda and vllm_available()):
        raise MedsftError("--gen_vllm=true needs a CUDA GPU and `pip install vllm`; use --gen_vllm=auto")
    use_vllm = cuda and vllm_flag != "false" and vllm_available()
    device = device_name(cuda)
    peak = (PEAK_TFLOPS or peak_tflops(device)) if cuda else None  # MFU on a CPU means nothing: null
    if cuda and peak is None:
        print(f"MFU: no bf16 peak known for '{device}'; pass --peak_tflops=N (dense bf16 TFLOP/s) to get MFU")
    out_path = output_path(OUTPUT, mode, device, KEEP_CPU_RESULTS)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MedsftError(f"cannot create {out_path.parent} for the results ({e.strerror}): pass --output=FILE.json "
                          "in a writable folder") from None
    print(f"benchmark: {mode} mode on {device}; data {shown(data_path)}; {n_examples} examples per epoch, "
          f"{WARMUP_EPOCHS} warm-up + {MEASURED_EPOCHS} timed epoch(s)")

    work = Path(tempfile.mkdtemp(prefix="medsft-bench-"))
    try:
        # 2. A random-weight model (real architecture on GPU, scaled down on CPU) saved with its tokenizer
        from medsft.models import load_tokenizer
        from medsft.training import sft
        from medsft.chat import IGNORE_INDEX
        from medsft.files import read_jsonl

        torch.manual_seed(SEED)
        model_dir = work / "model"
        config = build_random_model(mode, model_spec, model_dir, SEED, CPU_LAYERS, CPU_HIDDEN)
        source = (shown(model_spec) if cuda
                  else f"scaled-down Qwen3 ({CPU_LAYERS} layers, hidden {CPU_HIDDEN}, the project's 2k-token tokenizer)")
        arch = architecture(config, matmul_params(config), source)
        tokenizer = load_tokenizer(model_dir)
        print(f"model: random {arch['layers']}-layer {arch['model_type']}, hidden {arch['hidden']}, vocab "
              f"{arch['vocab']:,}, {arch['matmul_params']:,} matmul parameters")

        # 3. The same examples (real rows, real lengths) for every configuration
        examples, stats = sft.prepare_examples(data_path, tokenizer, MAX_LENGTH)
        if len(examples) < n_examples:  # cost does not depend on content: repeating rows keeps real lengths
            print(f"{data_path}: {len(examples)} rows fit, {n_examples} needed: repeating them")
        examples = [examples[i % len(examples)] for i in range(n_examples)]
        lengths = [len(e["input_ids"]) for e in examples]
        epoch_tokens = sum(lengths)
        epoch_supervised = sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples)
        questions = [r["question"] for r in read_jsonl(data_path)[:n_questions]]

        # 4. Train each configuration: warm-up epoch(s), then the timed epoch(s) over the same examples
        results = {}
        for name in _CONFIGS:
            print(f"--- training {_CONFIG_LABELS[name]}")
            results[name] = run_training(name, configs[name], model_dir, work, tokenizer, examples, epoch_tokens,
                                         epoch_supervised, lengths, arch, WARMUP_EPOCHS, MEASURED_EPOCHS, peak,
                                         cuda)
        base = results["tutorial"]
        for r in results.values():
            r["ratio_to_tutorial"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
            r["memory_ratio_to_tutorial"] = round(peak_gib(r["peak_memory"]) / peak_gib(base["peak_memory"]), 3)

        # 5. Generation: the tutorial's one-at-a-time loop vs batched (and vLLM), same prompts, greedy
        print("--- generation")
        generation = run_generation(model_dir, questions, max_new_tokens, batch_size, use_vllm, MAX_LENGTH, SEED,
                                    cuda)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # 6. Write the JSON and print the table
    result = {
        "mode": mode,
        "device": device,
        "label": _CPU_LABEL if mode == "cpu" else f"GPU benchmark on {device}",
        "versions": versions(),
        "architecture": arch,
        "peak_bf16_tflops": peak,
        "data": {"path": shown(data_path), "tokenizer": "real (MODEL's)" if cuda else "project's 2k-token BPE",
                 "rows_fitting_max_length": stats["kept"], "repeated_rows": stats["kept"] < n_examples,
                 "examples": n_examples, "max_length": MAX_LENGTH, "tokens_per_epoch": epoch_tokens,
                 "supervised_tokens_per_epoch": epoch_supervised,
                 "mean_length": round(epoch_tokens / n_examples, 1), "longest": max(lengths)},
        "method": {
            "warmup_epochs": WARMUP_EPOCHS, "measured_epochs": MEASURED_EPOCHS,
            "tokens": "trained_tokens = all non-padding tokens (prompt + response) of the timed epochs, identical "
                      "for every configuration; supervised_tokens = those with a label (response)",
            "mfu": "(6·N + 12·L·d·seq) per token over the dense bf16 peak, N = linear-layer weights; LoRA also "
                   "(4·N + 12·L·d·seq) (frozen base: no weight gradients); recompute and padding not counted; "
                   "null on CPU",
            "memory": "GPU: torch.cuda max_memory_allocated / max_memory_reserved per configuration; CPU: peak "
                      "resident set (see peak_memory.how)",
        },
        "training": results,
        "generation": generation,
        "config": {**cfg, "MODE": mode, "MODEL": shown(model_spec) if cuda else None, "DATA": shown(data_path),
                   "OUTPUT": shown(out_path)},
    }
    path = write_json(out_path, result)
    print(table(result))
    print(f"wrote:\n  {path}")


if __name__ == "__main__":
    main()
