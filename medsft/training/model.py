"""The model to train: ``cfg["MODEL"]`` loaded in the resolved precision and attention (QLoRA: an NF4 base),
optionally wrapped with a LoRA adapter, its forward computing the chunked loss when that loss is chosen."""

from __future__ import annotations

from .. import models
from ..files import MedsftError
from .features import resolve_features, weight_dtype

# peft and transformers are imported inside add_lora: importing this module stays fast (train.py --help).


def load_training_model(cfg: dict):
    """Load ``cfg["MODEL"]`` for training in the resolved precision (``weight_dtype``) and attention.

    QUANTIZATION=4bit (LoRA) loads the base in bitsandbytes NF4 with double quantization and bf16 compute (fp32
    compute where the precision is fp32, i.e. on CPU). Under ZeRO-3 the TrainingArguments exist before the weights
    load, so that each GPU only ever holds its shard.
    """
    lora = "LORA_R" in cfg
    feats = resolve_features(cfg, lora=lora, log=False)
    dtype = weight_dtype(feats["PRECISION"], lora)
    kwargs = {"attn_implementation": feats["ATTN_IMPLEMENTATION"]}
    zero3_args = None
    if cfg.get("ENGINE") == "zero3":
        from .trainer import training_arguments

        zero3_args = training_arguments(cfg, lora)  # noqa: F841 - must stay alive while from_pretrained runs
    if str(cfg.get("QUANTIZATION", "none")).lower() == "4bit":
        model = _load_4bit(cfg, dtype, kwargs)
    else:
        model = models.load_model(cfg["MODEL"], dtype=dtype, device=models.pick_device(), **kwargs)
    model.config.use_cache = False  # no KV cache while training (and incompatible with gradient checkpointing)
    return model


def _load_4bit(cfg: dict, dtype, kwargs: dict):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = torch.float32 if dtype == torch.float32 else torch.bfloat16
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=torch.uint8)
    # peft's prepare_model_for_kbit_training is left out on purpose: it would upcast the frozen embedding and
    # head to fp32 (+2.3 GiB each on Qwen3-8B); gradient checkpointing is switched on by the Trainer as usual
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"  # this process's GPU
    model = AutoModelForCausalLM.from_pretrained(models.resolve_model(str(cfg["MODEL"])), dtype=compute,
                                                 quantization_config=quant, device_map={"": device},
                                                 use_safetensors=True, **kwargs)
    n4 = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
    print(f"QLoRA: base in NF4 ({n4} linear layers, double quantization, {str(compute)[6:]} compute): "
          f"{model.get_memory_footprint() / 2 ** 30:.2f} GiB of weights")
    return model


def install_chunked_loss(model) -> None:
    """Make the causal LM's own forward compute the chunked loss (``medsft.loss``) when it gets labels.

    The loss then runs inside whatever wraps the model (DDP, DeepSpeed): the wrapper's forward does its gradient
    sync bookkeeping around it, where a loss computed beside the wrapper would leave DDP's gradients unsynchronised.
    The Trainer's own compute_loss passes num_items_in_batch and scales for the processes as for any model.
    Without labels (generation) the original forward runs.
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from ..loss import causal_parts, chunked_causal_lm_loss

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "_medsft_chunked", False):
        return
    original = base.forward

    def forward(input_ids=None, attention_mask=None, labels=None, num_items_in_batch=None, **kwargs):
        if labels is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in ("return_dict", "use_cache")}
        decoder, head = causal_parts(base)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return CausalLMOutputWithPast(loss=chunked_causal_lm_loss(hidden, head.weight, labels, num_items_in_batch))

    base.forward = forward
    base._medsft_chunked = True


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


def _numel(p) -> int:
    # ZeRO-3 leaves an empty placeholder in each parameter and keeps the real size in ds_numel; a 4-bit weight
    # stores two values per byte
    n = getattr(p, "ds_numel", None) or p.numel()
    return n * 2 if p.__class__.__name__ == "Params4bit" else n


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model``."""
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(_numel(p) for p in model.parameters())
