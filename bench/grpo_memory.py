"""GRPO memory table: medsft.memory.grpo_estimate on real Qwen3 config.json files (no weights, no GPU) at
train_grpo.py's defaults (read from its constants block), per setup and GPU. An estimate, not a measurement.

    python bench/grpo_memory.py                                   # the table in docs/grpo.md
    python bench/grpo_memory.py --max_completion_length=2048 --grad_accum=8
    python bench/grpo_memory.py --optim=adamw_torch_fused         # plain AdamW (bf16 moments) instead of auto's 8-bit
    python bench/grpo_memory.py --world_size=2 --setups=full,lora # per GPU under torchrun --nproc_per_node=2 (DDP)
"""

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from medsft.config import configure, script_defaults  # noqa: E402
from medsft.memory import GIB, grpo_estimate  # noqa: E402
from medsft.training.features import resolved  # noqa: E402

_GRPO = script_defaults(_ROOT / "train_grpo.py")
MODELS = "../shared/qwen3-1.7b,../shared/qwen3-4b,../shared/qwen3-8b"  # folders with config.json, relative to the project
GPUS_GIB = "24,40,80"  # the cards' memory (GiB), one column each
HEADROOM_GIB = 1.5  # kept free for the CUDA context and allocator fragmentation (a guess, not measured)
SETUPS = "full,full-nobeta,full-vllm,lora,lora-vllm"  # full: all parameters | lora: ADAPTER=lora; -nobeta: BETA=0; -vllm: USE_VLLM
PROMPT_TOKENS = 384  # longest prompt per generation batch: benchmark.py's CMMLU medical prompts are <= 332 tokens in all modes
BATCH_SIZE = _GRPO["BATCH_SIZE"]  # completions per micro-batch (train_grpo.py's)
GRAD_ACCUM = _GRPO["GRAD_ACCUM"]  # micro-batches per step = one generation batch (train_grpo.py's)
NUM_GENERATIONS = _GRPO["NUM_GENERATIONS"]  # completions per prompt (train_grpo.py's)
MAX_COMPLETION_LENGTH = _GRPO["MAX_COMPLETION_LENGTH"]  # think + answer tokens (train_grpo.py's)
BETA = _GRPO["BETA"]  # KL weight of the full and lora setups (train_grpo.py's)
PRECISION = _GRPO["PRECISION"]  # resolved for a bf16 GPU as train_grpo.py does (auto: bf16)
OPTIM = _GRPO["OPTIM"]  # auto: full bf16 -> torchao 8-bit AdamW (stochastic rounding), LoRA -> fused AdamW
LORA_R = 16  # train_grpo.py's LoraConfig (all-linear)
VLLM_GPU_MEMORY_UTILIZATION = _GRPO["VLLM_GPU_MEMORY_UTILIZATION"]  # vLLM's share of the card (train_grpo.py's)
WORLD_SIZE = 1  # processes (GPUs) under torchrun: > 1 adds DDP's gradient buckets per GPU


def row(model: Path, setup: str, gpus: list[float], optims: dict) -> str:
    adapter, *extras = setup.split("-")
    if adapter not in ("full", "lora") or set(extras) - {"nobeta", "vllm"}:
        raise SystemExit(f"--setups: {setup!r} is not full or lora, optionally followed by -nobeta and/or -vllm")
    lora = adapter == "lora"
    cfg = resolved({**_GRPO, "BATCH_SIZE": BATCH_SIZE, "GRAD_ACCUM": GRAD_ACCUM, "PRECISION": PRECISION, "OPTIM": OPTIM,
                    "GRADIENT_CHECKPOINTING": True, "LORA_R": LORA_R, "WORLD_SIZE": WORLD_SIZE,
                    "ENGINE": "ddp" if WORLD_SIZE > 1 else "single"}, lora, assume_gpu=True)
    cells, optims[adapter] = [], f"{cfg.precision} + {cfg.optim}"
    for gib in gpus:
        est = grpo_estimate(cfg, model, lora=lora, beta=0.0 if "nobeta" in extras else BETA, num_generations=NUM_GENERATIONS,
                            prompt_tokens=PROMPT_TOKENS, max_completion_length=MAX_COMPLETION_LENGTH,
                            use_vllm="vllm" in extras, vllm_gpu_memory_utilization=VLLM_GPU_MEMORY_UTILIZATION,
                            gpu_gib=gib)
        cells.append(f"{est['total'] / GIB:.1f} {'fits' if est['total'] / GIB + HEADROOM_GIB <= gib else 'no'}")
    own = [(est[phase] - est["vllm"]) / GIB for phase in ("train", "generation")]  # vLLM's share: per card
    return (f"| {model.name} | {setup} | {own[0]:.1f} | {own[1]:.1f} | "
            + " | ".join(cells) + " |")


def main():
    configure(globals())
    gpus = [float(g) for g in str(GPUS_GIB).split(",")]
    models = [(_ROOT / m).resolve() for m in str(MODELS).split(",")]
    missing = [str(m) for m in models if not (m / "config.json").is_file()]
    if missing:
        raise SystemExit(f"no config.json in {', '.join(missing)}; pass --models=DIR,... (folders with config.json)")
    optims = {}  # the precision and optimizer each adapter setting resolved to, for the header
    rows = [row(m, setup, gpus, optims) for m in models for setup in str(SETUPS).split(",")]
    print(f"GiB per GPU; precision {PRECISION}, optim {OPTIM} on a bf16 GPU -> "
          + ", ".join(f"{k}: {v}" for k, v in optims.items())
          + f"; gradient checkpointing, {WORLD_SIZE} process(es), batch {BATCH_SIZE} x accum {GRAD_ACCUM} "
          f"({BATCH_SIZE * GRAD_ACCUM} completions per generation batch), {PROMPT_TOKENS} + {MAX_COMPLETION_LENGTH} "
          f"tokens; training / generation without vLLM's share ({VLLM_GPU_MEMORY_UTILIZATION} of each card, in its "
          f"column); 'fits' = peak + {HEADROOM_GIB} GiB <= card")
    print("| model | setup | training | generation | " + " | ".join(f"{g:g} GiB" for g in gpus) + " |")
    print("|---|---|---:|---:|" + "---|" * len(gpus))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
