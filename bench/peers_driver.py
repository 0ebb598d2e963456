"""One peer's side of bench/peers.py, run by that peer's own Python (its own venv) in a fresh process.

    <venv>/bin/python bench/peers_driver.py masks PEER SPEC.json OUT.json   # ids + labels of every item, per variant
    <venv>/bin/python bench/peers_driver.py train PEER SPEC.json OUT.json   # one training recipe, measured

PEER is ours, trl, llamafactory or swift. Only the standard library, torch, transformers and the peer's own package
are imported (``ours`` imports medsft from the repository root), so the script runs in any of the venvs. SPEC and OUT
are JSON; bench/peers.py writes the one and reads the other.

train measures what every peer gets in the same way: transformers' ``Trainer`` (which all three peers subclass) is
patched before the peer is imported, so a callback records the time at the end of every optimizer step, the
non-padding tokens of every micro-batch, the first micro-batch's loss, the parameter dtype and the optimizer class;
peak memory is the process's peak resident set (VmHWM, reset after the imports) above the resident set at that
point, and on CUDA ``torch.cuda.max_memory_allocated``.
"""

import functools
import importlib.machinery
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
IGNORE_INDEX = -100
_RECORD = {"step_end": [], "micro_tokens": [], "micro_losses": [], "param_dtype": None, "optimizer": None,
           "trainable": None, "first_batch": None}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: this measurement needs Linux")


def _stub_torchaudio() -> None:
    # LLaMA-Factory imports torchaudio at module level (audio inputs only); no torchaudio build exists for the only
    # CPU torch here (2.13), and a mismatched one fails to load its library: text SFT never calls it
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = stub


def _patch_trainer() -> None:
    """Record step times, tokens and the first losses of whatever Trainer subclass the peer builds."""
    import torch
    import transformers
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _RECORD["step_end"].append((time.perf_counter(), sum(_RECORD["micro_tokens"]), time.process_time()))
            opt = kwargs.get("optimizer")
            opt = getattr(opt, "optimizer", opt)  # accelerate wraps the optimizer
            _RECORD["optimizer"] = f"{type(opt).__module__}.{type(opt).__name__}" if opt is not None else None

        def on_train_begin(self, args, state, control, **kwargs):
            model = kwargs.get("model")
            if model is not None:
                params = [p for p in model.parameters() if p.requires_grad]
                _RECORD["param_dtype"] = str(params[0].dtype) if params else None
                _RECORD["trainable"] = sum(p.numel() for p in params)
            _RECORD["train_begin"] = time.perf_counter()

    init, step = transformers.Trainer.__init__, transformers.Trainer.training_step

    @functools.wraps(init)  # the peer may inspect the signature (ms-swift picks processing_class vs tokenizer)
    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(Probe())

    @functools.wraps(step)
    def patched_step(self, model, inputs, *args, **kwargs):
        mask = inputs.get("attention_mask")
        ids = inputs["input_ids"]
        _RECORD["micro_tokens"].append(int(mask.sum()) if mask is not None and mask.dim() == 2 else int(ids.numel()))
        if _RECORD["first_batch"] is None:  # the tokens and labels the peer's own pipeline trained on first
            _RECORD["first_batch"] = {k: inputs[k].tolist() for k in ("input_ids", "labels", "attention_mask")
                                      if k in inputs and hasattr(inputs[k], "tolist")}
        loss = step(self, model, inputs, *args, **kwargs)
        if len(_RECORD["micro_losses"]) < 8:
            _RECORD["micro_losses"].append(float(loss.detach().float()))
        return loss

    transformers.Trainer.__init__ = patched_init
    transformers.Trainer.training_step = patched_step
    torch.manual_seed(0)


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _versions(*names) -> dict:
    from importlib import metadata
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# --- masks: each peer's own data path ---------------------------------------------------------------------------

def _masks_trl(spec: dict) -> dict:
    """TRL's SFTTrainer tokenization: messages + assistant_only_loss (its Qwen3 training template) and
    prompt-completion (completion-only loss, the original template), per-row enable_thinking."""
    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    config = AutoConfig.from_pretrained(spec["tokenizer"])
    config.update({"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                   "num_key_value_heads": 1, "head_dim": 8, "layer_types": ["full_attention"]})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # only to build the trainer
    out = {}
    for variant in ("assistant_only_loss", "prompt_completion"):
        rows = []
        for it in spec["items"]:
            system, user = {"role": "system", "content": it["system"]}, {"role": "user", "content": it["user"]}
            assistant = {"role": "assistant", "content": it["answer"], "reasoning_content": it["think"]}
            kw = {"chat_template_kwargs": {"enable_thinking": it["enable_thinking"]}}
            rows.append({"messages": [system, user, assistant], **kw} if variant == "assistant_only_loss"
                        else {"prompt": [system, user], "completion": [assistant], **kw})
        with tempfile.TemporaryDirectory() as tmp:
            args = SFTConfig(output_dir=tmp, max_length=None, report_to="none", bf16=False, use_cpu=True,
                             assistant_only_loss=variant == "assistant_only_loss", dataset_num_proc=None)
            trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
            ds = trainer.train_dataset
            out[variant] = [{"input_ids": ids, "labels": labels} for ids, labels in zip(ds["input_ids"], ds["labels"])]
    return out


def _lf_dataset_dir(tmp: str, items: list[dict]) -> str:
    rows = [{"instruction": it["user"], "output": it["response"], "system": it["system"]} for it in items]
    Path(tmp, "rows.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    info = {"peers": {"file_name": "rows.json", "formatting": "alpaca",
                      "columns": {"prompt": "instruction", "response": "output", "system": "system"}}}
    Path(tmp, "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return tmp


def _masks_llamafactory(spec: dict) -> dict:
    """LLaMA-Factory's SFT data path (template qwen3 with enable_thinking as the mode asks; qwen3_nothink beside it),
    one dataset per enable_thinking value: it is a data argument, not a per-row field."""
    _stub_torchaudio()
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    out = {}
    for template in ("qwen3", "qwen3_nothink"):
        rows = [None] * len(spec["items"])
        for thinking in (True, False):
            idx = [i for i, it in enumerate(spec["items"]) if it["enable_thinking"] == thinking]
            if not idx:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                data_dir = _lf_dataset_dir(tmp, [spec["items"][i] for i in idx])
                model_args, data_args, training_args, finetuning_args, _ = get_train_args({
                    "stage": "sft", "do_train": True, "model_name_or_path": spec["tokenizer"], "template": template,
                    "dataset": "peers", "dataset_dir": data_dir, "cutoff_len": spec["max_length"],
                    "enable_thinking": thinking, "output_dir": str(Path(tmp, "out")), "overwrite_cache": True,
                    "report_to": "none", "finetuning_type": "full", "use_cpu": True})
                tokenizer_module = load_tokenizer(model_args)
                tpl = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
                ds = get_dataset(tpl, model_args, data_args, training_args, stage="sft", **tokenizer_module)
                train = ds["train_dataset"]
                for i, ids, labels in zip(idx, train["input_ids"], train["labels"]):
                    rows[i] = {"input_ids": ids, "labels": labels}
        out[template] = rows
    return out


def _masks_swift(spec: dict) -> dict:
    """ms-swift's qwen3 template encoding in train mode: with the loss scale `swift sft` sets for a hybrid-thinking
    template (default+ignore_empty_think) and with --disable_ignore_empty_think (default); ``enable_thinking`` is
    an inference-only argument there, so a row's mode reaches swift only through its text."""
    from swift.model import get_processor
    from swift.template import get_template

    processor = get_processor(spec["tokenizer"])
    out = {}
    for loss_scale in ("default+ignore_empty_think", "default"):
        template = get_template(processor, default_system=None, max_length=None, template_type="qwen3",
                                loss_scale=loss_scale)
        template.set_mode("train")
        rows = []
        for it in spec["items"]:
            enc = template.encode({"messages": [{"role": "system", "content": it["system"]},
                                                {"role": "user", "content": it["user"]},
                                                {"role": "assistant", "content": it["response"]}]})
            rows.append({"input_ids": list(enc["input_ids"]), "labels": list(enc["labels"])})
        out[loss_scale] = rows
    return out


# --- train: one recipe of one peer ---------------------------------------------------------------------------------

def _train_ours(spec: dict, scratch: str) -> dict:
    sys.path.insert(0, str(_ROOT))
    from medsft import config
    from medsft.chat import tokenize_example
    from medsft.config import script_defaults
    from medsft.models import load_tokenizer
    from medsft.training import features, sft

    recipe, lora = spec["recipe"], spec["recipe"]["lora"]
    run = {**script_defaults(_ROOT / ("train_lora.py" if lora else "train.py")), "MODEL": spec["model"],
           "MAX_LENGTH": spec["max_length"], "BATCH_SIZE": spec["batch_size"], "GRAD_ACCUM": spec["grad_accum"],
           "MAX_STEPS": spec["steps"], "LOGGING_STEPS": 1, "SAVE_STEPS": 10 ** 9, "EVAL_STEPS": 10 ** 9,
           "OUTPUT_DIR": scratch, "WARMUP": 0, "SEED": spec["seed"],
           **({"LORA_R": spec["lora_r"], "LORA_ALPHA": spec["lora_alpha"]} if lora else {}), **recipe.get("overrides", {})}
    # lowest = the lean default as it resolves on a bf16 GPU (bf16 weights + torchao 8-bit AdamW, chunked loss)
    run.update(features.resolve_features(run, lora=lora, log=True, assume_gpu=recipe.get("assume_gpu", False)))
    tokenizer = load_tokenizer(spec["model"])
    examples = [tokenize_example(tokenizer, {"question": it["question"], "think": it["think"], "answer": it["answer"]},
                                 spec["max_length"], mode=it["mode"]) for it in spec["items"]]
    if any(e is None for e in examples):
        raise SystemExit("a row is longer than max_length: bench/peers.py must trim rows first")
    model = sft.load_training_model(run)
    if lora:
        model = sft.add_lora(model, run)
    trainer = sft.build_trainer(model, tokenizer, examples, None, run)
    trainer.args.disable_tqdm = True
    trainer.train()
    return {"resolved": {k: run[k] for k in config.FEATURES + ("GRADIENT_CHECKPOINTING",)},
            "logged_losses": [e["loss"] for e in trainer.state.log_history if "loss" in e]}


def _train_trl(spec: dict, scratch: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    recipe = spec["recipe"]
    tok = AutoTokenizer.from_pretrained(spec["model"])
    rows = [{"prompt": [{"role": "system", "content": it["system"]}, {"role": "user", "content": it["user"]}],
             "completion": [{"role": "assistant", "content": it["answer"], "reasoning_content": it["think"]}],
             "chat_template_kwargs": {"enable_thinking": it["enable_thinking"]}} for it in spec["items"]]
    kwargs = dict(output_dir=scratch, max_length=spec["max_length"], per_device_train_batch_size=spec["batch_size"],
                  gradient_accumulation_steps=spec["grad_accum"], max_steps=spec["steps"], logging_steps=1,
                  save_strategy="no", report_to="none", seed=spec["seed"], data_seed=spec["seed"],
                  learning_rate=spec["lr_lora"] if recipe["lora"] else spec["lr"], warmup_steps=0,
                  lr_scheduler_type="cosine", dataloader_num_workers=0, disable_tqdm=True,
                  use_cpu=not _cuda())  # bf16 autocast on a CPU needs the explicit CPU switch
    kwargs.update(recipe.get("overrides", {}))
    peft_config = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], target_modules="all-linear",
                             task_type="CAUSAL_LM") if recipe["lora"] else None
    trainer = SFTTrainer(model=spec["model"], args=SFTConfig(**kwargs), train_dataset=Dataset.from_list(rows),
                         processing_class=tok, peft_config=peft_config)
    trainer.train()
    return {"resolved": {k: kwargs.get(k) for k in recipe.get("overrides", {})},
            "logged_losses": [e["loss"] for e in trainer.state.log_history if "loss" in e]}


def _train_llamafactory(spec: dict, scratch: str) -> dict:
    _stub_torchaudio()
    from llamafactory.train.tuner import run_exp

    recipe = spec["recipe"]
    Path(scratch, "data").mkdir()
    data_dir = _lf_dataset_dir(str(Path(scratch, "data")), spec["items"])
    args = {"stage": "sft", "do_train": True, "model_name_or_path": spec["model"], "template": "qwen3",
            "dataset": "peers", "dataset_dir": data_dir, "cutoff_len": spec["max_length"],
            "enable_thinking": all(it["enable_thinking"] for it in spec["items"]),
            "output_dir": str(Path(scratch, "out")), "overwrite_output_dir": True, "report_to": "none",
            "per_device_train_batch_size": spec["batch_size"], "gradient_accumulation_steps": spec["grad_accum"],
            "max_steps": spec["steps"], "logging_steps": 1, "save_strategy": "no", "seed": spec["seed"],
            "learning_rate": spec["lr_lora"] if recipe["lora"] else spec["lr"], "lr_scheduler_type": "cosine",
            "warmup_steps": 0, "plot_loss": False, "dataloader_num_workers": 0, "disable_tqdm": True,
            "finetuning_type": "lora" if recipe["lora"] else "full", "overwrite_cache": True, "use_cpu": not _cuda()}
    if recipe["lora"]:
        args.update({"lora_rank": spec["lora_r"], "lora_alpha": spec["lora_alpha"], "lora_target": "all"})
    args.update(recipe.get("overrides", {}))
    run_exp(args)
    return {"resolved": recipe.get("overrides", {}), "logged_losses": None}


def _train_swift(spec: dict, scratch: str) -> dict:
    from swift import sft_main

    recipe = spec["recipe"]
    rows = [{"messages": [{"role": "system", "content": it["system"]}, {"role": "user", "content": it["user"]},
                          {"role": "assistant", "content": it["response"]}]} for it in spec["items"]]
    data = Path(scratch, "rows.jsonl")
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    argv = ["--model", spec["model"], "--model_type", "qwen3", "--template", "qwen3", "--dataset", str(data), "--tuner_type",
            "lora" if recipe["lora"] else "full", "--max_length", str(spec["max_length"]),
            "--per_device_train_batch_size", str(spec["batch_size"]), "--gradient_accumulation_steps",
            str(spec["grad_accum"]), "--max_steps", str(spec["steps"]), "--logging_steps", "1", "--save_strategy",
            "no", "--seed", str(spec["seed"]), "--learning_rate", str(spec["lr_lora"] if recipe["lora"] else spec["lr"]),
            "--lr_scheduler_type", "cosine", "--warmup_ratio", "0", "--output_dir", str(Path(scratch, "out")),
            "--report_to", "none", "--split_dataset_ratio", "0", "--dataloader_num_workers", "0",
            "--dataset_num_proc", "1", "--disable_tqdm", "true"] + (["--use_cpu", "true"] if not _cuda() else [])
    if recipe["lora"]:
        argv += ["--lora_rank", str(spec["lora_r"]), "--lora_alpha", str(spec["lora_alpha"]), "--target_modules",
                 "all-linear"]
    for k, v in recipe.get("overrides", {}).items():
        argv += [f"--{k}", str(v)]
    sft_main(argv)
    return {"resolved": recipe.get("overrides", {}), "logged_losses": None}


def _import(peer: str) -> None:
    """The peer's training modules, loaded before the baseline: the peak then counts the run, not library code."""
    import transformers.trainer  # noqa: F401
    if peer == "ours":
        sys.path.insert(0, str(_ROOT))
        import medsft.training.sft  # noqa: F401
        import torchao.optim  # noqa: F401
    elif peer == "trl":
        import trl  # noqa: F401
        from trl import SFTTrainer  # noqa: F401
    elif peer == "llamafactory":
        _stub_torchaudio()
        from llamafactory.train.tuner import run_exp  # noqa: F401
    elif peer == "swift":
        from swift import sft_main  # noqa: F401
    import peft  # noqa: F401


TRAINERS = {"ours": _train_ours, "trl": _train_trl, "llamafactory": _train_llamafactory, "swift": _train_swift}
MASKS = {"trl": _masks_trl, "llamafactory": _masks_llamafactory, "swift": _masks_swift}
PACKAGES = {"ours": ("torch", "transformers", "peft", "torchao"), "trl": ("trl", "torch", "transformers", "peft"),
            "llamafactory": ("llamafactory", "torch", "transformers", "trl", "peft"),
            "swift": ("ms-swift", "torch", "transformers", "trl", "peft")}


def main():
    task, peer, spec_path, out_path = sys.argv[1:5]
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import torch
    torch.set_num_threads(spec.get("threads", 2))
    result = {"peer": peer, "versions": _versions(*PACKAGES[peer])}
    if task == "masks":
        result["variants"] = MASKS[peer](spec)
    elif task == "train":
        _patch_trainer()
        _import(peer)
        cuda = torch.cuda.is_available()
        with tempfile.TemporaryDirectory(prefix="medsft-peers-") as scratch:
            baseline = _status_kib("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on: libraries are loaded, no model
            t0 = time.perf_counter()
            result.update(TRAINERS[peer](spec, scratch))
            result["seconds"] = round(time.perf_counter() - t0, 1)
        peak = _status_kib("VmHWM")
        ends = _RECORD["step_end"]
        # tokens/s over the steps after the first (the first one compiles, allocates optimizer state, warms caches)
        timed = (ends[-1][1] - ends[0][1]) / (ends[-1][0] - ends[0][0]) if len(ends) >= 2 else None
        # per CPU-second of this process (all its threads): what other jobs on a shared CPU cannot slow down
        per_cpu = (ends[-1][1] - ends[0][1]) / (ends[-1][2] - ends[0][2]) if len(ends) >= 2 else None
        result.update({"steps": len(ends), "micro_tokens": _RECORD["micro_tokens"],
                       "first_micro_losses": _RECORD["micro_losses"], "param_dtype": _RECORD["param_dtype"],
                       "first_batch": _RECORD["first_batch"] if spec.get("record_batch") else None,
                       "optimizer": _RECORD["optimizer"], "trainable_params": _RECORD["trainable"],
                       "tokens_per_s": round(timed, 2) if timed else None,
                       "tokens_per_cpu_s": round(per_cpu, 2) if per_cpu else None,
                       "timed_tokens": ends[-1][1] - ends[0][1] if len(ends) >= 2 else 0,
                       "baseline_rss_gib": round(baseline / 2 ** 20, 3), "peak_rss_gib": round(peak / 2 ** 20, 3),
                       "peak_gib": round((peak - baseline) / 2 ** 20, 3),
                       "cuda_max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 3) if cuda else None,
                       "device": torch.cuda.get_device_name(0) if cuda else "cpu"})
    else:
        raise SystemExit(f"unknown task {task!r}: expected masks or train")
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
