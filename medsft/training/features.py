"""The efficiency constants (PRECISION, ATTN_IMPLEMENTATION, PADDING_FREE, LOSS, OPTIM): ``"auto"`` turned into
a concrete choice for this machine, explicit choices checked, and the dtype the weights load in."""

from __future__ import annotations

from ..files import MedsftError
from .distributed import SHARDED

# torch and transformers are imported inside the functions: importing this module stays fast (train.py --help).


def _tristate(name: str, value) -> bool | None:
    """True/False for an explicit choice, None for auto."""
    if isinstance(value, bool) or value is None:
        return value
    low = str(value).strip().lower()
    if low == "auto":
        return None
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise MedsftError(f"--{name.lower()}={value}: expected auto, true or false")


FEATURES = ("PRECISION", "ATTN_IMPLEMENTATION", "PADDING_FREE", "LOSS", "OPTIM")
PRECISIONS = ("bf16", "bf16-mixed", "fp16", "fp32")
LOSSES = ("liger", "chunked", "plain")
TORCHAO_OPTIMS = ("adamw_torch_8bit", "adamw_torch_4bit")


def _engine(cfg: dict) -> str:
    """The resolved multi-GPU engine (``single`` for one process)."""
    engine = str(cfg.get("ENGINE") or "single")
    if engine == "auto" or engine.endswith(".json"):
        from .distributed import resolve_engine

        engine = resolve_engine(cfg)["ENGINE"]
    return engine


def weight_dtype(precision: str, lora: bool):
    """The dtype the weights load in. bf16: bf16 weights (LoRA's frozen base too); bf16-mixed: fp32 master weights
    under bf16 autocast for full fine-tuning (+8 bytes/param), a bf16 base for LoRA; fp16 and fp32: fp32 weights."""
    import torch

    if precision == "bf16" or (precision == "bf16-mixed" and lora):
        return torch.bfloat16
    return torch.float32


def _gpu_facts(assume_gpu: bool) -> dict:
    """What the feature choice depends on: CUDA, real bf16, sm80+ (flash-attn). ``assume_gpu`` describes a bf16
    GPU on a machine without one (the dry run estimates for the GPU the user will train on)."""
    import torch

    if torch.cuda.is_available():
        return {"cuda": True, "bf16": torch.cuda.is_bf16_supported(including_emulation=False),
                "ampere": torch.cuda.get_device_capability()[0] >= 8, "name": torch.cuda.get_device_name(0)}
    if assume_gpu:
        return {"cuda": True, "bf16": True, "ampere": True, "name": "a bf16 CUDA GPU (assumed: no GPU here)"}
    return {"cuda": False, "bf16": False, "ampere": False, "name": "CPU"}


def resolve_features(cfg: dict, lora: bool = False, log: bool = True, assume_gpu: bool = False) -> dict:
    """Concrete values for PRECISION, ATTN_IMPLEMENTATION, PADDING_FREE, LOSS, OPTIM on this machine.

    auto means, on a CUDA GPU: bf16 weights (fp16 mixed precision on GPUs without bf16); flash_attention_2 with
    padding-free batches when flash-attn is installed; Liger's fused linear + cross-entropy when liger-kernel is
    installed, else the project's chunked loss; for full fine-tuning with bf16 weights torchao's 8-bit AdamW with
    bf16 stochastic rounding (6 bytes/param for weights + grads + optimizer, and updates smaller than half a bf16
    ulp still land on average), else fused AdamW. On CPU: fp32, sdpa, length-grouped padded batches, the chunked
    loss, plain AdamW. Explicit values are kept (and checked). Under ZeRO-3 / FSDP2 (ENGINE) the loss is Liger's or
    plain (the chunked loss needs the whole head); under DeepSpeed AdamW steps fp32 master weights (fused on GPU).
    """
    from transformers.utils import is_bitsandbytes_available, is_flash_attn_2_available, is_liger_kernel_available
    from transformers.utils.import_utils import is_torchao_available

    gpu = _gpu_facts(assume_gpu)
    cuda = gpu["cuda"]
    engine = _engine(cfg)
    precision = str(cfg.get("PRECISION", "auto")).lower()
    if precision == "auto":
        # emulated bf16 (pre-Ampere GPUs such as T4/V100) is slow: those get fp16 mixed precision
        precision = ("bf16" if gpu["bf16"] else "fp16") if cuda else "fp32"
    if precision not in PRECISIONS:
        raise MedsftError(f"--precision={precision}: expected auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and not cuda:
        raise MedsftError("--precision=fp16 needs a CUDA GPU; use --precision=fp32 (or auto) on CPU")

    attn = str(cfg.get("ATTN_IMPLEMENTATION", "auto"))
    if attn == "auto":  # flash-attn 2 kernels need sm80+ and half precision
        attn = "flash_attention_2" if gpu["ampere"] and precision != "fp32" and is_flash_attn_2_available() else "sdpa"
    if attn not in ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"):
        raise MedsftError(f"--attn_implementation={attn}: expected auto, sdpa, eager, flash_attention_2, "
                          "flash_attention_3 or flex_attention")
    if attn.startswith("flash_attention") and (not cuda or precision == "fp32"):
        raise MedsftError(f"--attn_implementation={attn} needs a CUDA GPU and bf16/fp16; use --attn_implementation=auto")
    if attn == "flash_attention_2" and not is_flash_attn_2_available():
        raise MedsftError("--attn_implementation=flash_attention_2 but flash-attn is not installed: "
                          "pip install flash-attn, or use --attn_implementation=auto")
    flash = attn.startswith("flash_attention")

    padding_free = _tristate("PADDING_FREE", cfg.get("PADDING_FREE", "auto"))
    if padding_free is None:
        # with flash-attention a flattened batch attends within each sample at no extra cost; with sdpa the
        # per-sample separation needs a (tokens x tokens) mask, so padded length-grouped batches are cheaper
        padding_free = flash

    loss = str(cfg.get("LOSS", "auto")).lower()
    if loss == "auto":
        liger = cuda and is_liger_kernel_available()
        loss = "liger" if liger else "plain" if engine in SHARDED else "chunked"
    if loss == "chunked" and engine in SHARDED:
        raise MedsftError(f"--loss=chunked with --engine={engine}: the chunked loss reads the output head's weight "
                          "outside its forward pass, where ZeRO-3 / FSDP2 keep only a shard of it; use --loss=auto "
                          "(Liger's fused loss when liger-kernel is installed, else plain) or --engine=ddp / zero2")
    if loss not in LOSSES:
        raise MedsftError(f"--loss={loss}: expected auto, {', '.join(LOSSES)}")
    if loss == "liger" and not is_liger_kernel_available() and not assume_gpu:  # a dry run estimates for a GPU box
        raise MedsftError("--loss=liger but liger-kernel is not installed: pip install liger-kernel (needs a CUDA "
                          "GPU), or use --loss=auto (the chunked loss saves the same memory)")

    optim = str(cfg.get("OPTIM", "auto"))
    master = engine in ("zero2", "zero3")  # DeepSpeed steps fp32 master weights: no stochastic rounding needed
    if optim == "auto":
        if not lora and not master and weight_dtype(precision, lora) != weight_dtype("fp32", lora):
            optim = "adamw_torch_8bit"  # bf16 weights need stochastic rounding; its 8-bit moments are a bonus
        else:
            optim = "adamw_torch_fused" if cuda else "adamw_torch"
    if optim in TORCHAO_OPTIMS and not is_torchao_available():
        raise MedsftError(f"--optim={optim} needs torchao: pip install -r requirements.txt, or use --optim=adamw_torch")
    if "8bit" in optim and optim not in TORCHAO_OPTIMS and not is_bitsandbytes_available():
        raise MedsftError(f"--optim={optim} needs bitsandbytes: pip install bitsandbytes, or use --optim=auto")

    out = {"PRECISION": precision, "ATTN_IMPLEMENTATION": attn, "PADDING_FREE": padding_free, "LOSS": loss,
           "OPTIM": optim}
    if log:
        batching = "padding-free (flattened)" if padding_free else "length-grouped padded"
        print(f"efficiency on {gpu['name']}: precision={precision} attention={attn} batches={batching} "
              f"loss={loss} optim={optim} gradient_checkpointing={cfg.get('GRADIENT_CHECKPOINTING')}")
        if not lora and not master and precision == "bf16" and optim not in TORCHAO_OPTIMS:
            print(f"warning: bf16 weights with --optim={optim}: updates smaller than half a bf16 ulp round away "
                  "(most of them at LR 1e-5); --optim=auto uses stochastic rounding")
    return out
