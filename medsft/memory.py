"""Peak-memory estimate of one training configuration, from config.json alone (no weights, no GPU).

``estimate(cfg, model_dir, lora)`` builds the architecture on the meta device (no memory), so weights, gradients
and optimizer states are exact byte counts of the tensors the run will allocate. Activations and the loss's
logits are formulas in the model's dimensions, with coefficients measured on the real Qwen3-1.7B architecture
(docs/memory.md gives the measurements and the command). The same numbers serve as the preflight of train.py /
train_lora.py and as ``--dry_run=true``.
"""

from __future__ import annotations

from pathlib import Path

from .files import MedsftError

GIB = 2 ** 30
TORCHAO_BLOCK = 256  # torchao's 8-bit AdamW: one fp32 scale per 256 values, tensors >= 4096 values only
BNB_BLOCK = 2048  # bitsandbytes' 8-bit AdamW block size
# Bytes per token per layer kept for the backward pass of ONE decoder layer, in units of the activation dtype's
# size, per unit of each width: saved inputs of the norms/projections, q/k/v after norm and rope, attention output,
# the MLP's gate/up/act/product. Counted from Qwen3's layer code, then checked by measurement (docs/memory.md).
LAYER_COEF = {"hidden": 10.0, "q": 6.0, "kv": 5.0, "intermediate": 4.0}
CHUNK_TOKENS = 512  # supervised tokens per chunk of the chunked loss (medsft.loss)
NF4_BLOCK = 64  # bitsandbytes NF4: one absmax per 64 weights (8-bit with double quantization, else fp32)
NF4_BLOCK2 = 256  # double quantization: one fp32 scale per 256 absmax values


def _bytes(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


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
    """``[(name, in_features, out_features)]`` of the linear layers LoRA wraps (peft's rule for ``all-linear``:
    every ``nn.Linear`` except the output head)."""
    import torch

    names = None if targets == "all-linear" else [t.strip() for t in str(targets).split(",") if t.strip()]
    head = model.get_output_embeddings()
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or mod is head:
            continue
        if names is None or name.rsplit(".", 1)[-1] in names:
            out.append((name, mod.in_features, mod.out_features))
    return out


def step_temporary(shapes: list[tuple[int, int]], optim: str) -> int:
    """Bytes the optimizer step allocates for a moment: torchao's compiled step dequantizes one tensor's two moments
    to fp32 (the largest tensor, the embedding, sets it: measured ~7.2 bytes/value on CPU); torch's foreach AdamW
    makes one temporary the size of all the weights; the fused kernel (and bitsandbytes') none worth counting."""
    if not shapes or "fused" in optim or optim in ("adamw_8bit", "paged_adamw_8bit", "adamw_bnb_8bit"):
        return 0
    if optim in ("adamw_torch_8bit", "adamw_torch_4bit"):
        return 8 * max(n for n, _ in shapes)
    return sum(n * s for n, s in shapes)


def optimizer_bytes(shapes: list[tuple[int, int]], optim: str) -> int:
    """Bytes of AdamW's two moments for trainable tensors given as ``[(numel, element_size)]``."""
    total = 0
    for numel, size in shapes:
        if optim in ("adamw_torch_8bit", "adamw_8bit", "paged_adamw_8bit", "adamw_bnb_8bit"):
            block = TORCHAO_BLOCK if optim == "adamw_torch_8bit" else BNB_BLOCK
            if numel >= 4096 and numel % block == 0:
                total += 2 * (numel + 4 * (numel // block))  # uint8 codes + fp32 block scales, two moments
                continue
            size = size if optim == "adamw_torch_8bit" else 4  # torchao keeps small tensors' states in their dtype
        elif optim == "adamw_torch_4bit":
            if numel >= 4096 and numel % 128 == 0:
                total += 2 * (numel // 2 + 4 * (numel // 128))
                continue
        total += 2 * numel * size  # torch AdamW keeps both moments in the parameter's dtype
    return total


def estimate(cfg: dict, model_dir, lora: bool) -> dict:
    """Peak training memory in bytes by component, for the resolved constants in ``cfg``.

    ``cfg`` holds the resolved PRECISION, OPTIM and LOSS (``resolve_features``), BATCH_SIZE, MAX_LENGTH,
    GRADIENT_CHECKPOINTING and, for LoRA, LORA_R, LORA_TARGET_MODULES and QUANTIZATION (4bit: an NF4 base).
    Tokens per micro-batch are taken at the worst case, BATCH_SIZE x MAX_LENGTH. With ENGINE and WORLD_SIZE
    (``medsft.training.distributed.resolve_engine``) the parts are those of one GPU (``per_gpu``).
    """
    import torch

    from .training import weight_dtype

    model = meta_model(model_dir)
    c = model.config
    wdtype = weight_dtype(cfg["PRECISION"], lora)
    act = torch.bfloat16 if cfg["PRECISION"].startswith("bf16") else (torch.float16 if cfg["PRECISION"] == "fp16"
                                                                     else torch.float32)
    wsize, asize = _bytes(wdtype), _bytes(act)
    params = {id(p): p for p in model.parameters()}.values()  # tied embeddings counted once
    n_params = sum(p.numel() for p in params)
    quantized = lora and str(cfg.get("QUANTIZATION", "none")).lower() == "4bit"
    if lora:
        adapters = [(cfg["LORA_R"] * i, cfg["LORA_R"] * o) for _, i, o in lora_targets(model, cfg["LORA_TARGET_MODULES"])]
        trainable = [(n, 4) for pair in adapters for n in pair]  # peft keeps adapters in fp32
        base = nf4_bytes(model, wsize) if quantized else n_params * wsize
        weights = base + sum(n for n, _ in trainable) * 4
    else:
        trainable = [(p.numel(), wsize) for p in params]
        weights = n_params * wsize
    grads = sum(n * s for n, s in trainable)
    optim = optimizer_bytes(trainable, cfg["OPTIM"])

    tokens = cfg["BATCH_SIZE"] * cfg["MAX_LENGTH"]
    d, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    head_dim = getattr(c, "head_dim", None) or d // c.num_attention_heads
    per_layer = tokens * asize * (LAYER_COEF["hidden"] * d + LAYER_COEF["q"] * c.num_attention_heads * head_dim
                                  + LAYER_COEF["kv"] * 2 * c.num_key_value_heads * head_dim
                                  + LAYER_COEF["intermediate"] * c.intermediate_size)
    if cfg["GRADIENT_CHECKPOINTING"]:  # each layer's input is kept; one layer at a time is recomputed
        activations = layers * tokens * d * asize + per_layer
    else:
        activations = layers * per_layer
    activations += 2 * tokens * d * (asize + 4)  # embeddings out, final norm (fp32 inside)

    head_trainable = not lora
    if cfg["LOSS"] == "plain":  # logits in the compute dtype, their fp32 copy, log-softmax and its gradient
        logits = tokens * vocab * (asize + 4 + 4 + 4)
    else:  # chunked (ours or Liger's): one chunk of logits at a time, plus the head's gradient per chunk
        logits = min(tokens, CHUNK_TOKENS) * vocab * (asize + 4 + 4 + 4) + 2 * tokens * d * asize
        if head_trainable:
            logits += vocab * d * wsize  # the gradient of one chunk before it is added to the head's
    # The backward pass (activations, logits) and the optimizer step (its temporaries) come one after the other:
    # the peak is the larger of the two on top of weights, grads and moments. The step's excess is shown as optimizer.
    backward = int(activations) + int(logits)
    moments = optim
    optim += max(0, step_temporary(trainable, cfg["OPTIM"]) - backward)
    if quantized:  # one linear layer's weight dequantized to the compute dtype at a time, forward and backward
        activations += max(i * o for _, i, o in lora_targets(model, "all-linear")) * asize
    parts = {"weights": weights, "grads": grads, "optimizer": optim, "activations": int(activations),
             "logits": int(logits)}
    largest = max(p.numel() for p in params) * wsize
    parts = per_gpu(parts, cfg, trainable, wsize, largest)
    return {"total": sum(parts.values()), **parts, "moments": moments, "params": n_params,
            "trainable": sum(n for n, _ in trainable), "tokens_per_micro_batch": tokens}


def nf4_bytes(model, wsize: int) -> int:
    """Bytes of a base model loaded in bitsandbytes NF4 with double quantization: every decoder linear layer's
    weight at 4 bits plus its block scales; embeddings, norms and the output head stay in the weights' dtype."""
    import torch

    head = model.get_output_embeddings()
    quant = {id(m.weight): m.weight.numel() for m in model.modules()
             if isinstance(m, torch.nn.Linear) and m is not head}
    rest = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if id(p) not in quant)
    q = sum(quant.values())
    return q // 2 + q // NF4_BLOCK + 4 * (q // NF4_BLOCK // NF4_BLOCK2) + rest * wsize


def per_gpu(parts: dict, cfg: dict, trainable: list[tuple[int, int]], wsize: int, largest: int) -> dict:
    """The parts one GPU holds under ENGINE on WORLD_SIZE GPUs (the ZeRO paper's accounting).

    ddp: everything replicated, plus DDP's gradient buckets (a second copy of the gradients). zero2: gradients and
    optimizer state split across the GPUs; DeepSpeed keeps an fp32 master copy of 16-bit trainable weights in
    the optimizer state. zero3: the weights split too, plus the largest tensor gathered for its layer's turn.
    fsdp2: weights, gradients and optimizer state split (no master copy: the lean optimizer works on the shards),
    plus the largest tensor gathered.
    """
    engine, world = str(cfg.get("ENGINE") or "single"), max(int(cfg.get("WORLD_SIZE") or 1), 1)
    if engine == "single":
        return parts
    out = dict(parts)
    if engine == "ddp":
        out["grads"] = 2 * parts["grads"]
        return out
    if engine in ("zero2", "zero3") and wsize < 4:  # the step works on fp32 master weights and fp32 moments
        fp32 = [(n, 4) for n, _ in trainable]
        out["optimizer"] = optimizer_bytes(fp32, str(cfg["OPTIM"])) + sum(n for n, _ in trainable) * 4
    out["optimizer"] //= world
    out["grads"] //= world
    if engine in ("zero3", "fsdp2"):
        out["weights"] = parts["weights"] // world + largest
    return out


def describe(est: dict) -> str:
    """The one preflight line: ``estimated peak: X GiB (weights A, grads B, optimizer C, activations D, logits E)``."""
    parts = ", ".join(f"{k} {est[k] / GIB:.2f}" for k in ("weights", "grads", "optimizer", "activations", "logits"))
    return f"estimated peak: {est['total'] / GIB:.2f} GiB ({parts})"


def ways_out(lora: bool) -> str:
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
        raise MedsftError(f"{describe(est)} exceeds the free memory of {torch.cuda.get_device_name(0)} "
                          f"({free / GIB:.2f} of {total / GIB:.2f} GiB free). {ways_out(lora)}")


def model_dir_for_estimate(spec: str) -> Path:
    """Where config.json of a model spec lives (of a hub id only config.json is downloaded)."""
    from .models import resolve_model

    return resolve_model(spec, config_only=True)
