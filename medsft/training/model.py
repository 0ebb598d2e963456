"""The model to train: ``cfg["MODEL"]`` loaded in the resolved precision and attention, optionally wrapped with a
LoRA adapter."""

from __future__ import annotations

from .. import models
from ..io import MedsftError
from .features import resolve_features, weight_dtype

# peft and transformers are imported inside add_lora: importing this module stays fast (train.py --help).


def load_training_model(cfg: dict):
    """Load ``cfg["MODEL"]`` for training in the resolved precision (``weight_dtype``) and attention."""
    lora = "LORA_R" in cfg
    feats = resolve_features(cfg, lora=lora, log=False)
    model = models.load_model(cfg["MODEL"], dtype=weight_dtype(feats["PRECISION"], lora),
                              device=models.pick_device(), attn_implementation=feats["ATTN_IMPLEMENTATION"])
    model.config.use_cache = False  # no KV cache while training (and incompatible with gradient checkpointing)
    return model


def add_lora(model, cfg: dict):
    """Wrap ``model`` with a trainable LoRA adapter (LORA_R, LORA_ALPHA, LORA_DROPOUT, LORA_TARGET_MODULES).

    LORA_TARGET_MODULES is ``"all-linear"`` (every linear layer of the decoder, not the output head) or a
    comma-separated list of module names. The base weights are frozen; peft keeps the adapter in fp32.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import set_seed

    targets = cfg.get("LORA_TARGET_MODULES", "all-linear")
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    set_seed(cfg["SEED"])  # the adapter's random init (lora_A) is part of "same seed, same run"
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg["LORA_R"], lora_alpha=cfg["LORA_ALPHA"],
                        lora_dropout=cfg["LORA_DROPOUT"], target_modules=targets, bias="none")
    try:
        model = get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules not found in the model
        raise MedsftError(f"LoRA: {e}; check --lora_target_modules") from None
    trainable, total = model.get_nb_trainable_parameters()
    print(f"LoRA r={cfg['LORA_R']} alpha={cfg['LORA_ALPHA']} targets={targets}: {trainable:,} trainable of "
          f"{total:,} parameters ({100 * trainable / total:.2f}%)")
    return model


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
