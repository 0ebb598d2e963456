"""The efficiency features, PRECISION, ATTN_IMPLEMENTATION, PADDING_FREE, LOSS and OPTIM: "auto" resolved once per
run to what this machine and library set do best (docs/performance.md), explicit choices checked."""

from __future__ import annotations

from ..config import Config
from ..files import MedsftError
from ..memory import weight_dtype
from . import distributed

PRECISIONS = ("bf16", "bf16-mixed", "fp16", "fp32")
LOSSES = ("liger", "chunked", "plain")
ATTENTIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
TORCHAO_OPTIMS = ("adamw_torch_8bit", "adamw_torch_4bit")

def _tristate(name: str, value) -> bool | None:
    if isinstance(value, bool) or value is None:
        return value
    low = str(value).strip().lower()
    if low in ("auto", "true", "1", "yes", "on", "false", "0", "no", "off"):
        return None if low == "auto" else low in ("true", "1", "yes", "on")
    raise MedsftError(f"--{name.lower()}={value}: expected auto, true or false")

def _gpu_facts(assume_gpu: bool) -> dict:
    import torch
    if torch.cuda.is_available():
        return {"cuda": True, "bf16": torch.cuda.is_bf16_supported(including_emulation=False),
                "ampere": torch.cuda.get_device_capability()[0] >= 8, "name": torch.cuda.get_device_name(0)}
    if assume_gpu:
        return {"cuda": True, "bf16": True, "ampere": True, "name": "a bf16 CUDA GPU (assumed: no GPU here)"}
    return {"cuda": False, "bf16": False, "ampere": False, "name": "CPU"}

def resolve_features(cfg, lora: bool = False, log: bool = True, assume_gpu: bool = False) -> dict:
    """``{NAME: value}`` of the concrete FEATURES here (auto's picks: docs/performance.md); explicit ones checked."""
    from transformers.utils import is_bitsandbytes_available, is_flash_attn_2_available, is_liger_kernel_available
    from transformers.utils.import_utils import is_torchao_available
    c = Config.of(cfg)
    gpu = _gpu_facts(assume_gpu)
    cuda = gpu["cuda"]
    engine = str(c.get("ENGINE", "auto"))
    if engine == "auto" or engine.endswith(".json"):
        engine = distributed.resolve_engine(c)["ENGINE"]
    precision = str(c.precision).lower()
    if precision == "auto":  # emulated bf16 (T4, V100) is slow: those get fp16 mixed precision
        precision = ("bf16" if gpu["bf16"] else "fp16") if cuda else "fp32"
    if precision not in PRECISIONS:
        raise MedsftError(f"--precision={precision}: expected auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and not cuda:
        raise MedsftError("--precision=fp16 needs a CUDA GPU; use --precision=fp32 (or auto) on CPU")
    attn = str(c.get("ATTN_IMPLEMENTATION", "auto"))  # a script without the constant lets auto pick
    if attn == "auto":  # flash-attn 2 kernels need sm80+ and half precision
        attn = "flash_attention_2" if gpu["ampere"] and precision != "fp32" and is_flash_attn_2_available() else "sdpa"
    if attn not in ATTENTIONS:
        raise MedsftError(f"--attn_implementation={attn}: expected auto, sdpa, eager, flash_attention_2, "
                          "flash_attention_3 or flex_attention")
    if attn.startswith("flash_attention") and (not cuda or precision == "fp32"):
        raise MedsftError(f"--attn_implementation={attn} needs a CUDA GPU and bf16/fp16; use "
                          "--attn_implementation=auto")
    if attn == "flash_attention_2" and not is_flash_attn_2_available():
        raise MedsftError("--attn_implementation=flash_attention_2 but flash-attn is not installed: "
                          "pip install flash-attn, or use --attn_implementation=auto")
    padding_free = _tristate("PADDING_FREE", c.get("PADDING_FREE", "auto"))
    if padding_free is None:  # sdpa would need a (tokens x tokens) mask per flattened batch: padding is cheaper
        padding_free = attn.startswith("flash_attention")
    loss = str(c.get("LOSS", "auto")).lower()
    if loss == "auto":
        sharded = engine in distributed.SHARDED
        loss = "liger" if cuda and is_liger_kernel_available() else "plain" if sharded else "chunked"
    if loss == "chunked" and engine in distributed.SHARDED:
        raise MedsftError(f"--loss=chunked with --engine={engine}: the chunked loss reads the output head's weight "
                          "outside its forward pass, where ZeRO-3 / FSDP2 keep only a shard of it; use --loss=auto "
                          "(Liger's fused loss when liger-kernel is installed, else plain) or --engine=ddp / zero2")
    if loss not in LOSSES:
        raise MedsftError(f"--loss={loss}: expected auto, {', '.join(LOSSES)}")
    if loss == "liger" and not is_liger_kernel_available() and not assume_gpu:
        raise MedsftError("--loss=liger but liger-kernel is not installed: pip install liger-kernel (needs a CUDA "
                          "GPU), or use --loss=auto (the chunked loss saves the same memory)")
    optim = str(c.optim)
    master = engine in ("zero2", "zero3")  # DeepSpeed steps fp32 master weights: no stochastic rounding needed
    if optim == "auto":
        if not lora and not master and weight_dtype(precision, lora) != weight_dtype("fp32", lora):
            optim = "adamw_torch_8bit"  # bf16 weights need stochastic rounding; its 8-bit moments are a bonus
        else:
            optim = "adamw_torch_fused"  # transformers' default too; on CPU, for-loop AdamW's temporaries cost more
    if optim in TORCHAO_OPTIMS and not is_torchao_available():
        raise MedsftError(f"--optim={optim} needs torchao: pip install -r requirements.txt, or use --optim=adamw_torch")
    if "8bit" in optim and optim not in TORCHAO_OPTIMS and not is_bitsandbytes_available():
        raise MedsftError(f"--optim={optim} needs bitsandbytes: pip install bitsandbytes, or use --optim=auto")
    if log:
        batching = "padding-free (flattened)" if padding_free else "length-grouped padded"
        print(f"efficiency on {gpu['name']}: precision={precision} attention={attn} batches={batching} "
              f"loss={loss} optim={optim} gradient_checkpointing={c.get('GRADIENT_CHECKPOINTING')}")
        if not lora and not master and precision == "bf16" and optim not in TORCHAO_OPTIMS:
            print(f"warning: bf16 weights with --optim={optim}: updates smaller than half a bf16 ulp round away "
                  "(most of them at LR 1e-5); --optim=auto uses stochastic rounding")
    return {"PRECISION": precision, "ATTN_IMPLEMENTATION": attn, "PADDING_FREE": padding_free, "LOSS": loss,
            "OPTIM": optim}

def resolved(cfg, lora: bool, log: bool = False, assume_gpu: bool = False) -> Config:
    """``cfg`` with concrete features (resolved here unless they already are)."""
    cfg = Config.of(cfg)
    if cfg.resolved:
        return cfg
    return cfg.replace(**resolve_features(cfg, lora=lora, log=log, assume_gpu=assume_gpu), resolved=True)
