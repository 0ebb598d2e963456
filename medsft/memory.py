"""Peak-memory estimate of one training configuration from config.json alone (no weights, no GPU): exact byte counts
of the tensors on the meta device, activations and logits by formula (docs/memory.md gives the measurements);
``grpo_estimate``: the same for train_grpo.py's GRPO step in TRL 1.16 (training phase and generation phase)."""

from __future__ import annotations

import resource

from .config import Config
from .files import MedsftError

GIB = 2 ** 30
TORCHAO_BLOCK = 256  # torchao's 8-bit AdamW: one fp32 scale per 256 values, tensors >= 4096 values only
BNB_BLOCK = 2048  # bitsandbytes' 8-bit AdamW block size
# Bytes per token kept for the backward pass of one decoder layer, in activation-dtype units per unit of each width
LAYER_COEF = {"hidden": 10.0, "q": 6.0, "kv": 5.0, "intermediate": 4.0}
CHUNK_TOKENS = 512  # supervised tokens per chunk of the chunked loss
NF4_BLOCK = 64  # bitsandbytes NF4: one absmax per 64 weights (8-bit with double quantization, else fp32)
NF4_BLOCK2 = 256  # double quantization: one fp32 scale per 256 absmax values
LOW_BIT_OPTIMS = ("adamw_torch_8bit", "adamw_8bit", "paged_adamw_8bit", "adamw_bnb_8bit")
TRL_TOKEN_TILE = 4096  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE: tokens per tile of TRL's fused log-prob head
TRL_VOCAB_TILE = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE: vocabulary columns per tile
SAMPLING_BYTES = 40  # per sequence and vocabulary entry at each decode step: fp32 logits, warper copies, top-p's sort
GRPO_PARTS = ("reference", "kv_cache", "vllm")  # the parts estimate_line adds for a GRPO estimate

def weight_dtype(precision: str, lora: bool):
    """bf16 weights under bf16 (and a bf16-mixed LoRA base), else fp32 (bf16-mixed's master weights, fp16, fp32)."""
    import torch
    if precision == "bf16" or (precision == "bf16-mixed" and lora):
        return torch.bfloat16
    return torch.float32

def meta_model(model_dir):
    """The architecture of ``model_dir`` (a folder with config.json) on the meta device: shapes, no memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise MedsftError(f"{model_dir}: cannot read config.json ({e}); pass a model folder with config.json") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)

def lora_targets(model, targets) -> list[tuple[str, int, int]]:
    """``[(name, in_features, out_features)]`` of the linear layers LoRA wraps (``all-linear``: all but the head)."""
    import torch
    names = None if targets == "all-linear" else [t.strip() for t in str(targets).split(",") if t.strip()]
    head = model.get_output_embeddings()
    return [(name, mod.in_features, mod.out_features) for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and mod is not head
            and (names is None or name.rsplit(".", 1)[-1] in names)]

def step_temporary(shapes: list[tuple[int, int]], optim: str) -> int:
    """Bytes the optimizer step allocates for a moment: torchao dequantizes the largest tensor's two moments, torch's
    foreach AdamW one copy of all the weights, the fused kernels nothing worth counting."""
    if not shapes or "fused" in optim or optim in LOW_BIT_OPTIMS[1:]:
        return 0
    if optim in ("adamw_torch_8bit", "adamw_torch_4bit"):
        return 8 * max(n for n, _ in shapes)
    return sum(n * s for n, s in shapes)

def optimizer_bytes(shapes: list[tuple[int, int]], optim: str) -> int:
    """Bytes of AdamW's two moments for trainable tensors given as ``[(numel, element_size)]``."""
    total = 0
    for numel, size in shapes:
        if optim in LOW_BIT_OPTIMS:
            block = TORCHAO_BLOCK if optim == "adamw_torch_8bit" else BNB_BLOCK
            if numel >= 4096 and numel % block == 0:
                total += 2 * (numel + 4 * (numel // block))  # uint8 codes + fp32 block scales, two moments
                continue
            size = size if optim == "adamw_torch_8bit" else 4  # torchao keeps small tensors' states in their dtype
        elif optim == "adamw_torch_4bit" and numel >= 4096 and numel % 128 == 0:
            total += 2 * (numel // 2 + 4 * (numel // 128))
            continue
        total += 2 * numel * size
    return total

def estimate(cfg, model_dir, lora: bool) -> dict:
    """Peak training memory in bytes by component for resolved features (``cfg``: a run's constants),
    at BATCH_SIZE x MAX_LENGTH tokens per micro-batch; per GPU under ENGINE on WORLD_SIZE GPUs."""
    cfg = Config.of(cfg)
    model = meta_model(model_dir)
    c = model.config
    wsize = weight_dtype(cfg.precision, lora).itemsize
    asize = 2 if cfg.precision.startswith("bf16") or cfg.precision == "fp16" else 4
    params = {id(p): p for p in model.parameters()}.values()  # tied embeddings counted once
    n_params = sum(p.numel() for p in params)
    quantized = lora and str(cfg.get("QUANTIZATION", "none")).lower() == "4bit"
    if lora:
        adapters = [(cfg.lora_r * i, cfg.lora_r * o) for _, i, o in lora_targets(model, cfg.get("LORA_TARGET_MODULES", "all-linear"))]
        trainable = [(n, 4) for pair in adapters for n in pair]  # peft keeps adapters in fp32
        base = nf4_bytes(model, wsize, n_params) if quantized else n_params * wsize
        weights = base + sum(n for n, _ in trainable) * 4
    else:
        trainable = [(p.numel(), wsize) for p in params]
        weights = n_params * wsize
    grads = sum(n * s for n, s in trainable)
    optim = optimizer_bytes(trainable, cfg.optim)
    tokens = cfg.batch_size * cfg.max_length
    d, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    head_dim = getattr(c, "head_dim", None) or d // c.num_attention_heads
    per_layer = tokens * asize * (LAYER_COEF["hidden"] * d + LAYER_COEF["q"] * c.num_attention_heads * head_dim
                                  + LAYER_COEF["kv"] * 2 * c.num_key_value_heads * head_dim
                                  + LAYER_COEF["intermediate"] * c.intermediate_size)
    if cfg.gradient_checkpointing:  # each layer's input is kept; one layer at a time is recomputed
        activations = layers * tokens * d * asize + per_layer
    else:
        activations = layers * per_layer
    activations += 2 * tokens * d * (asize + 4)  # embeddings out, final norm (fp32 inside)
    if cfg.loss == "plain":  # logits in the compute dtype, their fp32 copy, log-softmax and its gradient
        logits = tokens * vocab * (asize + 12)
    else:  # chunked (ours or Liger's): one chunk of logits at a time, plus the head's gradient per chunk
        logits = min(tokens, CHUNK_TOKENS) * vocab * (asize + 12) + 2 * tokens * d * asize
        if not lora:
            logits += vocab * d * wsize
    # backward and optimizer step come one after the other: the step's excess over the backward shows as optimizer
    backward = int(activations) + int(logits)
    moments, temporary = optim, step_temporary(trainable, cfg.optim)
    optim += max(0, temporary - backward)
    if quantized:  # one linear layer's weight dequantized to the compute dtype at a time
        activations += max(i * o for _, i, o in lora_targets(model, "all-linear")) * asize
    parts = {"weights": weights, "grads": grads, "optimizer": optim, "activations": int(activations),
             "logits": int(logits)}
    parts = per_gpu(parts, cfg, trainable, wsize, max(p.numel() for p in params) * wsize)
    return {"total": sum(parts.values()), **parts, "moments": moments, "params": n_params,
            "trainable": sum(n for n, _ in trainable), "tokens_per_micro_batch": tokens, "step_temporary": temporary}

def nf4_bytes(model, wsize: int, n_params: int) -> int:
    """Bytes of an NF4 base (double quantization): linear weights at 4 bits + scales, the rest (head too) in wsize."""
    q = sum(i * o for _, i, o in lora_targets(model, "all-linear"))
    return q // 2 + q // NF4_BLOCK + 4 * (q // NF4_BLOCK // NF4_BLOCK2) + (n_params - q) * wsize

def per_gpu(parts: dict, cfg: Config, trainable: list[tuple[int, int]], wsize: int, largest: int) -> dict:
    """The parts one GPU holds under ENGINE on WORLD_SIZE GPUs (the ZeRO paper's accounting, docs/memory.md)."""
    engine, world = cfg.get("ENGINE", "single"), max(int(cfg.get("WORLD_SIZE") or 1), 1)
    if engine in ("single", "auto"):
        return parts
    out = dict(parts)
    if engine == "ddp":  # DDP's gradient buckets: a second copy of the gradients
        out["grads"] = 2 * parts["grads"]
        return out
    if engine in ("zero2", "zero3") and wsize < 4:  # DeepSpeed steps fp32 master weights and fp32 moments
        fp32 = [(n, 4) for n, _ in trainable]
        out["optimizer"] = optimizer_bytes(fp32, str(cfg.optim)) + sum(n for n, _ in trainable) * 4
    out["optimizer"] //= world
    out["grads"] //= world
    if engine in ("zero3", "fsdp2"):  # plus the largest tensor, gathered for its layer's turn
        out["weights"] = parts["weights"] // world + largest
    return out

def logprob_bytes(tokens: int, d: int, vocab: int, asize: int, wsize: int, head_trains: bool) -> int:
    """TRL's fused log-prob head (``trl.kernels.ChunkedLogProbFunction``, CUDA path) at its backward: the completion
    tokens' hidden states it saved, one logits tile, their fp32 gradient and its cast, and when the head trains its
    fp32 weight gradient and that gradient's cast; the (tokens x vocab) logits never exist."""
    tile = min(tokens, TRL_TOKEN_TILE) * min(vocab, TRL_VOCAB_TILE) * asize
    return tile + tokens * d * (2 * asize + 4) + (vocab * d * (4 + wsize) if head_trains else 0)

def grpo_estimate(cfg, model_dir, *, lora, beta, num_generations, prompt_tokens, max_completion_length, use_vllm=False,
                  vllm_gpu_memory_utilization=0.3, gpu_gib=None) -> dict:
    """Peak memory per GPU of train_grpo.py's step in TRL 1.16, in bytes by part (``total``; ``peak_gib``): the larger
    of the training phase (``estimate`` at prompt + completion tokens with TRL's fused log-prob head for the loss,
    plus the reference copy) and the generation phase (what stays resident plus the KV cache of one generation
    batch: BATCH_SIZE x GRAD_ACCUM sequences; vLLM colocate: its share of the GPU instead, held in both phases)."""
    from transformers import AutoConfig
    cfg = Config.of(cfg)
    seqs, world = cfg.batch_size * cfg.grad_accum, max(int(cfg.get("WORLD_SIZE") or 1), 1)
    engine = cfg.get("ENGINE", "single")
    if num_generations < 2 or seqs * world % num_generations:  # GRPOConfig.__post_init__: the global batch
        raise MedsftError(f"--batch_size x --grad_accum x processes ({seqs * world}) must be a multiple of "
                          f"--num_generations ({num_generations}), which must be at least 2")
    if "auto" in (str(cfg.precision), str(cfg.optim)):
        raise MedsftError("grpo_estimate needs a concrete precision and optim (features.resolved picks them)")
    seq = prompt_tokens + max_completion_length  # TRL pads each micro-batch to the batch's longest prompt + completion
    est = estimate(cfg.replace(MAX_LENGTH=seq), model_dir, lora)
    c = AutoConfig.from_pretrained(model_dir)  # estimate read it already: valid
    d, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    head_dim = getattr(c, "head_dim", None) or d // c.num_attention_heads
    wsize = weight_dtype(cfg.precision, lora).itemsize  # the KV cache takes the k/v projections' dtype
    asize = 2 if cfg.precision.startswith("bf16") or cfg.precision == "fp16" else 4
    # GRPOTrainer.__init__: beta 0 -> no reference; a PEFT policy -> the adapter switched off (a continued adapter
    # gets an adapter-sized "ref" copy, not counted); else create_model_from_path(..., dtype=self.model.dtype)
    ref = 0 if beta == 0 or lora else est["params"] * wsize // (world if engine in ("zero3", "fsdp2") else 1)
    # _get_per_token_logps_and_entropies -> add_fused_lm_head: only completion positions are scored
    logits = logprob_bytes(cfg.batch_size * max_completion_length, d, vocab, asize, wsize, not lora)
    optimizer = est["optimizer"]
    if engine in ("single", "auto", "ddp"):  # the step's temporary weighed against this backward, not SFT's
        optimizer = est["moments"] + max(0, est["step_temporary"] - est["activations"] - logits)
    share = 0
    if use_vllm:  # VLLMGeneration's LLM(gpu_memory_utilization=...) keeps its pool: no sleep mode in train_grpo.py
        if gpu_gib is None:
            import torch
            if not torch.cuda.is_available():
                raise MedsftError("--use_vllm: vLLM's share is a fraction of the GPU's memory, and no CUDA GPU is "
                                  "visible here; estimate on the GPU machine, or without --use_vllm")
            gpu_gib = torch.cuda.mem_get_info()[1] / GIB
        share = int(vllm_gpu_memory_utilization * gpu_gib * GIB)
    train = est["weights"] + est["grads"] + optimizer + est["activations"] + logits + ref + share
    # generation comes first in a step (_prepare_inputs), after Trainer's model.zero_grad(): no grads, only moments
    # (DDP's buckets stay); transformers' generate holds one cache for the whole generation batch
    resident = est["weights"] + ref + share + (est["grads"] // 2 if engine == "ddp" else 0) + (
        est["moments"] if engine in ("single", "auto", "ddp") else est["optimizer"])
    kv = 0 if use_vllm else seqs * seq * 2 * layers * c.num_key_value_heads * head_dim * wsize
    # one decode step's sampling or the prefill's widest layer, plus DynamicCache's torch.cat of one layer
    work = 0 if use_vllm else max(seqs * vocab * SAMPLING_BYTES,
                                  seqs * prompt_tokens * 3 * c.intermediate_size * asize) + kv // layers
    generation = resident + kv + work
    total = max(train, generation)
    return {**est, "optimizer": optimizer, "logits": logits, "reference": ref, "kv_cache": kv, "vllm": share,
            "generation_work": work, "train": train, "generation": generation, "total": total,
            "peak_gib": round(total / GIB, 2), "phase": "training" if train >= generation else "generation",
            "sequences_per_generation": seqs, "prompts_per_generation": seqs * world // num_generations}

def estimate_line(est: dict) -> str:
    """``estimated peak: X GiB (weights A, grads B, optimizer C, activations D, logits E)``; a GRPO estimate adds
    its reference, KV cache and vLLM parts and both phases' totals."""
    keys = ("weights", "grads", "optimizer", "activations", "logits", *(k for k in GRPO_PARTS if k in est))
    parts = ", ".join(f"{k} {est[k] / GIB:.2f}" for k in keys)
    phases = f"; training {est['train'] / GIB:.2f}, generation {est['generation'] / GIB:.2f}" if "phase" in est else ""
    return f"estimated peak: {est['total'] / GIB:.2f} GiB ({parts}{phases})"

def ways_out(lora: bool, grpo: bool = False) -> str:
    if grpo:  # train_grpo.py's flags: the generation batch is BATCH_SIZE x GRAD_ACCUM sequences
        lean = "" if lora else "--adapter=lora (no reference copy, adapter-sized optimizer), --beta=0 (no reference), "
        return (f"ways out: {lean}a smaller --batch_size (training), a smaller --grad_accum (generation's KV cache), "
                "a shorter --max_completion_length (both), --gradient_checkpointing=true")
    lean = "" if lora else "train_lora.py (LoRA), "
    return (f"ways out: {lean}a shorter --max_length, a smaller --batch_size (raise --grad_accum to keep the "
            "examples per step), --gradient_checkpointing=true, --precision=bf16 with --optim=auto (8-bit AdamW), "
            "--loss=auto (chunked loss)")

def check_fits(est: dict, lora: bool) -> None:
    """On a CUDA GPU, stop before loading weights when the estimate exceeds the GPU's free memory."""
    import torch
    if not torch.cuda.is_available():
        return
    free, total = torch.cuda.mem_get_info()
    if est["total"] > free:
        raise MedsftError(f"{estimate_line(est)} exceeds the free memory of {torch.cuda.get_device_name(0)} "
                          f"({free / GIB:.2f} of {total / GIB:.2f} GiB free). {ways_out(lora, 'kv_cache' in est)}")

def peak_memory() -> tuple[float, str]:
    """Peak memory of this process in GiB and what it measures (GPU allocations, or CPU resident set)."""
    import torch
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "cpu_max_rss"  # KiB on Linux
