"""Can TRL's SFTTrainer replace our loss and collator? Issue 36 item 5, measured: the same tiny-model examples
train.py builds, trained STEPS optimizer steps by our stack (medsft.training.sft.build_trainer, LOSS=chunked) and by
TRL's SFTTrainer (SFTConfig(loss_type=LOSS_TYPE), its own collator and fused LM head), each in a fresh process; the
loss histories compared (largest relative difference against RTOL), every collated micro-batch compared token by
token (did TRL train on exactly our input_ids and labels?), and each process's peak resident memory.

Reads DATA (split by data.py into a temporary folder, as tests do) and the tiny model (medsft's cache, built on
first use by demo/builtin.py); writes only temporary files, plus OUTPUT when set. Exits 1 when a micro-batch
differs or a loss differs by more than RTOL.

    python bench/trl_sft_check.py                       # fp32 on CPU: ~3 min on 2 shared cores (TRL's side ~2x ours)
    python bench/trl_sft_check.py --variants=full,lora,padding_free          # ~10 min
    python bench/trl_sft_check.py --variants= --head_dtypes=fp32,bf16        # the loss alone, Qwen3-1.7B's head
    python bench/trl_sft_check.py --tokenizer=project   # the project-built 2,048-token vocabulary (logits cost nothing)

How the two sides are made equal: TRL's SFTConfig is built from the very TrainingArguments our build_trainer uses
(``to_dict()``, TRL's own round trip), plus max_length=None (our rows are never cut) and loss_type; the model is the
same checkpoint loaded by medsft.training.sft.load_training_model (for lora: wrapped by sft.add_lora, the
same seeded adapter); the examples are the same list, given to TRL as a datasets.Dataset; TRL's sampler is replaced
by ours (medsft.training.trainer.EpochLengthGroupedSampler) (examples grouped by length per optimizer step, drawn from seed + epoch). Peak memory is VmHWM
above the resident set after the imports (transformers, trl, peft, datasets and medsft in both processes, before the
model loads), as bench/peers_driver.py measures it.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))  # run as `python bench/trl_sft_check.py` from anywhere

from medsft.chat import IGNORE_INDEX  # noqa: E402
from medsft.config import configure, script_defaults  # noqa: E402

_TRAIN = script_defaults(_ROOT / "train.py")
_LORA = script_defaults(_ROOT / "train_lora.py")
MODEL = "tiny"  # model spec both sides train (tiny: random 2-layer Qwen3 with tied embeddings, fp32 on CPU)
TOKENIZER = "auto"  # tiny's tokenizer: auto = $MEDSFT_TOKENIZER, else ../shared/qwen3-1.7b (Qwen3's 151,936 vocabulary, as tests use) when present, else the project-built one; project = the project-built one; or a directory
DATA = "demo/medical_demo.jsonl"  # rows {question, think, answer}, split by data.py (its train.jsonl is trained)
MAX_LENGTH = _TRAIN["MAX_LENGTH"]  # tokens per example at most (train.py's); longer rows are skipped by prepare_examples
NO_THINK_RATIO = _TRAIN["NO_THINK_RATIO"]  # share of non-thinking examples (train.py's)
STEPS = 8  # optimizer steps per side
BATCH_SIZE = 2  # examples per micro-batch
GRAD_ACCUM = 2  # micro-batches per optimizer step
LEARNING_RATE = 1e-4  # full fine-tuning LR: 10x train.py's, so 8 steps move the weights far above fp32 rounding
LORA_LEARNING_RATE = _LORA["LEARNING_RATE"]  # the lora variant's LR (train_lora.py's)
SCHEDULER = _TRAIN["SCHEDULER"]  # LR schedule (train.py's)
WARMUP = _TRAIN["WARMUP"]  # warmup, a fraction of the steps (train.py's)
GRADIENT_CHECKPOINTING = _TRAIN["GRADIENT_CHECKPOINTING"]  # recompute activations in backward (train.py's)
SEED = _TRAIN["SEED"]  # seed of data order, weights init of the adapter, everything (train.py's)
LOSS_TYPE = "chunked_nll"  # TRL's SFTConfig loss_type; in TRL 1.16 "chunked_nll" is a deprecated alias of "nll"
VARIANTS = "full"  # comma-separated: full (train.py) | lora (train_lora.py, frozen tied head) | padding_free (PADDING_FREE=true on both sides)
HEAD_DTYPES = ""  # also probe the loss alone at Qwen3-1.7B's head size (comma-separated fp32,bf16: weight dtype); "" = skip (~1 min per dtype)
HEAD_EXAMPLES = 2  # examples in the head probe's one padded batch (the first of ours)
RTOL = 1e-4  # largest relative difference of two logged losses called equal
THREADS = 2  # torch threads in each process
TIMEOUT = 600  # seconds one side may run before it is killed
OUTPUT = ""  # results JSON; "" = print only

# The head probe's model: Qwen3-1.7B's published shapes (Qwen/Qwen3-1.7B config.json) with one decoder layer, so the
# tied 151,936 x 2048 embedding/head dominates as it does in the real model's loss (random weights, no download)
_QWEN3_1_7B_ONE_LAYER = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=1,
                             num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                             rope_theta=1000000.0, max_position_embeddings=40960, rms_norm_eps=1e-6,
                             initializer_range=0.02, use_cache=False)
_SHARED_TOKENIZER = _ROOT.parent / "shared" / "qwen3-1.7b"  # the real Qwen3 tokenizer beside the repository
_BATCH_KEYS = ("input_ids", "labels", "attention_mask", "position_ids")
_RECORD = {"batches": [], "micro_losses": [], "num_items": []}


# --- one side, in its own process ----------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: this measurement needs Linux")


def _patch_trainer() -> None:
    """Every micro-batch as the trainer's collator made it, its loss and the step's target-token count."""
    import transformers

    step = transformers.Trainer.training_step

    def patched_step(self, model, inputs, num_items_in_batch=None, *args, **kwargs):
        _RECORD["batches"].append({k: inputs[k].tolist() for k in _BATCH_KEYS if k in inputs})
        _RECORD["num_items"].append(int(num_items_in_batch) if num_items_in_batch is not None else None)
        loss = step(self, model, inputs, num_items_in_batch, *args, **kwargs)
        _RECORD["micro_losses"].append(float(loss.detach().float()))
        return loss

    transformers.Trainer.training_step = patched_step


def _losses(trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]  # every step: LOGGING_STEPS=1


def _run_config(spec: dict) -> dict:
    lora = spec["variant"] == "lora"
    run = {**script_defaults(_ROOT / ("train_lora.py" if lora else "train.py")), "MODEL": spec["model"],
           "MAX_LENGTH": spec["max_length"], "BATCH_SIZE": spec["batch_size"], "GRAD_ACCUM": spec["grad_accum"],
           "MAX_STEPS": spec["steps"], "LOGGING_STEPS": 1, "SAVE_STEPS": 10 ** 9, "EVAL_STEPS": 10 ** 9,
           "OUTPUT_DIR": spec["scratch"], "SEED": spec["seed"], "SCHEDULER": spec["scheduler"],
           "WARMUP": spec["warmup"], "GRADIENT_CHECKPOINTING": spec["gradient_checkpointing"],
           "LEARNING_RATE": spec["lora_learning_rate"] if lora else spec["learning_rate"],
           "PRECISION": "fp32", "LOSS": "chunked", "PADDING_FREE": spec["variant"] == "padding_free"}
    from medsft.training import sft
    run.update(sft.resolve_features(run, lora=lora, log=True))
    return run


def _model(run: dict, lora: bool):
    from medsft.training import sft
    model = sft.load_training_model(run)
    return sft.add_lora(model, run) if lora else model


def _train_ours(spec: dict, examples: list[dict], tokenizer) -> dict:
    from medsft.training import sft
    lora = spec["variant"] == "lora"
    run = _run_config(spec)
    trainer = sft.build_trainer(_model(run, lora), tokenizer, examples, None, run)
    trainer.args.disable_tqdm = True
    trainer.train()
    return {"collator": type(trainer.data_collator).__name__, "losses": _losses(trainer)}


def _train_trl(spec: dict, examples: list[dict], tokenizer) -> dict:
    import warnings

    from datasets import Dataset
    from medsft.training import sft
    from trl import SFTConfig, SFTTrainer

    from medsft.training.trainer import EpochLengthGroupedSampler

    lora = spec["variant"] == "lora"
    run = _run_config(spec)
    ours = sft.training_arguments(run, lora=lora, has_eval=False)

    class SameOrderSFTTrainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            per_step = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            return EpochLengthGroupedSampler(per_step, [len(ids) for ids in dataset["input_ids"]], self.args.data_seed)

    kwargs = ours.to_dict()  # the TrainingArguments our build_trainer uses, field for field
    kwargs.update(max_length=None, loss_type=spec["loss_type"], padding_free=spec["variant"] == "padding_free")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = SFTConfig(**kwargs)
    config_warnings = sorted({str(w.message).splitlines()[0][:200] for w in caught
                              if "loss_type" in str(w.message) or "chunked" in str(w.message)})
    trainer = SameOrderSFTTrainer(model=_model(run, lora), args=args, train_dataset=Dataset.from_list(examples),
                                  processing_class=tokenizer)
    dataset = trainer.train_dataset
    untouched = (len(dataset) == len(examples)
                 and all(list(r["input_ids"]) == e["input_ids"] and list(r["labels"]) == e["labels"]
                         for r, e in zip(dataset, examples)))
    mine = args.to_dict()
    differing = {k: [v, mine.get(k)] for k, v in ours.to_dict().items() if mine.get(k) != v}  # [ours, TRL's]
    trainer.args.disable_tqdm = True
    trainer.train()
    return {"collator": type(trainer.data_collator).__name__, "losses": _losses(trainer),
            "loss_type_resolved": args.loss_type,
            "config_warnings": config_warnings, "dataset_columns": list(dataset.column_names),
            "dataset_untouched": untouched, "args_differing_from_ours": differing,
            "extra_logged": sorted({k for e in trainer.state.log_history for k in e} - {"loss", "grad_norm",
                                    "learning_rate", "epoch", "step", "num_input_tokens_seen"})}


def _head(side: str, spec: dict, examples: list[dict], tokenizer) -> dict:
    """One forward + backward of each side's loss on Qwen3-1.7B's tied head (one decoder layer): what the loss itself
    holds at peak, where the head's (vocab x hidden) gradient tensors dominate. On a CUDA GPU (TRL's Triton path) the
    peak is torch.cuda.max_memory_allocated above the model's; else the process's resident set."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(spec["seed"])
    model = Qwen3ForCausalLM(Qwen3Config(**_QWEN3_1_7B_ONE_LAYER)).to(dtype).to(device)  # same values on both sides
    model.train()
    rows = examples[:spec["head_examples"]]
    n = max(len(e["input_ids"]) for e in rows)
    pad = lambda seq, v: seq + [v] * (n - len(seq))  # noqa: E731  right padding, as both collators pad
    batch = {"input_ids": torch.tensor([pad(e["input_ids"], tokenizer.pad_token_id) for e in rows]),
             "attention_mask": torch.tensor([pad([1] * len(e["input_ids"]), 0) for e in rows]),
             "labels": torch.tensor([pad(e["labels"], IGNORE_INDEX) for e in rows])}
    batch = {k: v.to(device) for k, v in batch.items()}
    if side == "ours":
        from medsft.training.loss import install_chunked_loss
        install_chunked_loss(model)
    else:  # SFTTrainer.__init__'s call and compute_loss's reduction (trl/trainer/sft_trainer.py)
        from trl.trainer.utils import add_fused_lm_head
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    if side == "ours":
        loss = model(**batch).loss
    else:
        out = model(**batch, fused_lm_head=True)
        loss = -out.log_probs.sum() / out.label_mask.sum().clamp(min=1)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if device == "cpu":
        peak = _status_kib("VmHWM")
    else:  # KiB above the model's allocation, put on the same scale as the resident set's
        peak = baseline + (torch.cuda.max_memory_allocated() - cuda_base) / 1024
    weight = model.get_output_embeddings().weight
    assert weight is model.get_input_embeddings().weight  # tied
    targets = sorted({t for e in rows for t in e["labels"] if t != IGNORE_INDEX})[:64]
    layer = model.model.layers[0]
    return {"dtype": spec["dtype"], "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "tokens": int(batch["input_ids"].numel()),
            "supervised": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()), "loss": float(loss),
            "seconds": round(seconds, 1), "peak_above_baseline_mib": round((peak - baseline) / 1024, 1),
            "head_mib": round(weight.numel() * weight.element_size() / 2 ** 20, 1),
            "grad_head_rows": weight.grad[targets].float().tolist(),
            "grad_o_proj": layer.self_attn.o_proj.weight.grad[:64, :64].float().tolist()}


def child(kind: str, side: str, spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import torch
    torch.set_num_threads(spec["threads"])
    _patch_trainer()
    # the same libraries in both processes, loaded before the baseline: the peak counts the run, not library code
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers.trainer  # noqa: F401
    import trl  # noqa: F401
    from trl import SFTTrainer  # noqa: F401
    from medsft.training import sft  # noqa: F401
    from medsft.models import load_tokenizer
    tokenizer = load_tokenizer(spec["model"])
    examples = json.loads(Path(spec["examples"]).read_text(encoding="utf-8"))
    if kind == "head":
        Path(out_path).write_text(json.dumps(_head(side, spec, examples, tokenizer)), encoding="utf-8")
        return
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on
    t0 = time.perf_counter()
    result = (_train_ours if side == "ours" else _train_trl)(spec, examples, tokenizer)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    from importlib import metadata
    result.update({"side": side, "variant": spec["variant"], "seconds": round(seconds, 1),
                   "baseline_rss_mib": round(baseline / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
                   "peak_above_baseline_mib": round((peak - baseline) / 1024, 1),
                   "micro_losses": _RECORD["micro_losses"], "num_items": _RECORD["num_items"],
                   "batches": _RECORD["batches"],
                   "versions": {p: metadata.version(p) for p in ("trl", "transformers", "torch", "peft")}})
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


# --- the comparison ------------------------------------------------------------------------------------------------

def _tokenizer_env() -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "SWANLAB_MODE": "disabled"}
    if TOKENIZER == "project":
        env.pop("MEDSFT_TOKENIZER", None)
    elif TOKENIZER != "auto":
        env["MEDSFT_TOKENIZER"] = str(Path(TOKENIZER).resolve())
    elif not env.get("MEDSFT_TOKENIZER") and (_SHARED_TOKENIZER / "tokenizer_config.json").is_file():
        env["MEDSFT_TOKENIZER"] = str(_SHARED_TOKENIZER)
    return env


def _examples(tmp: Path, env: dict) -> tuple[Path, dict]:
    """data.py's split of DATA, then prepare_examples on its train.jsonl exactly as train.py calls it."""
    proc = subprocess.run([sys.executable, str(_ROOT / "data.py"), f"--dataset={_ROOT / DATA}",
                           f"--data_dir={tmp / 'data'}"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"data.py failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    os.environ.pop("MEDSFT_TOKENIZER", None)
    os.environ.update(env)  # the tokenizer choice reaches demo/builtin.py in this process too
    from medsft.models import load_tokenizer
    from medsft.training.sft import prepare_examples
    tokenizer = load_tokenizer(MODEL)
    examples, stats = prepare_examples(tmp / "data" / "train.jsonl", tokenizer, MAX_LENGTH,
                                       no_think_ratio=NO_THINK_RATIO, seed=SEED)
    path = tmp / "examples.json"
    path.write_text(json.dumps(examples), encoding="utf-8")
    return path, {"rows": stats["kept"], "tokens": stats["tokens"], "supervised_tokens": stats["supervised_tokens"],
                  "longest": stats["longest"], "vocab": len(tokenizer), "tokenizer": env.get("MEDSFT_TOKENIZER") or
                  "project-built (demo/builtin.py)"}


def _run_side(side: str, spec_path: Path, tmp: Path, env: dict, kind: str = "train") -> dict:
    out = tmp / f"{kind}-{side}.json"
    proc = subprocess.run([sys.executable, __file__, "_child", kind, side, str(spec_path), str(out)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise SystemExit(f"the {side} side failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-6000:]}")
    return json.loads(out.read_text(encoding="utf-8"))


def _compare_batches(ours: list[dict], theirs: list[dict], examples: list[dict]) -> dict:
    """Micro-batch by micro-batch: same keys and values; and each of TRL's unpadded rows one of our examples."""
    problems = []
    if len(ours) != len(theirs):
        problems.append(f"{len(ours)} micro-batches on our side, {len(theirs)} on TRL's")
    known = {(tuple(e["input_ids"]), tuple(e["labels"])) for e in examples}
    known |= {(ids, (IGNORE_INDEX,) + labels[1:]) for ids, labels in known}  # as flattened (first label masked)
    rows_checked = 0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                problems.append(f"micro-batch {i}: {key} differs" + ("" if key in a and key in b else
                                                                     f" (only {'ours' if key in a else 'TRL'} has it)"))
        if "attention_mask" in b:  # padded: the real tokens of each row
            rows = [(ids[:sum(mask)], labels[:sum(mask)])
                    for ids, labels, mask in zip(b["input_ids"], b["labels"], b["attention_mask"])]
        else:  # flattened: rows start where position_ids restart at 0; their first label is masked on both sides
            starts = [j for j, pos in enumerate(b["position_ids"][0]) if pos == 0] + [len(b["position_ids"][0])]
            rows = [(b["input_ids"][0][s:e], b["labels"][0][s:e]) for s, e in zip(starts, starts[1:])]
        for ids, labels in rows:
            rows_checked += 1
            if (tuple(ids), tuple(labels)) not in known:
                problems.append(f"micro-batch {i}: a TRL row is none of our examples")
    return {"micro_batches": len(theirs), "rows_checked": rows_checked, "identical": not problems,
            "problems": problems[:20]}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


def compare(variant: str, tmp: Path, env: dict, examples_path: Path) -> dict:
    spec = {"variant": variant, "model": MODEL, "examples": str(examples_path), "max_length": MAX_LENGTH,
            "batch_size": BATCH_SIZE, "grad_accum": GRAD_ACCUM, "steps": STEPS, "learning_rate": LEARNING_RATE,
            "lora_learning_rate": LORA_LEARNING_RATE, "scheduler": SCHEDULER, "warmup": WARMUP,
            "gradient_checkpointing": GRADIENT_CHECKPOINTING, "seed": SEED, "loss_type": LOSS_TYPE,
            "threads": THREADS, "scratch": str(tmp / f"out-{variant}")}
    spec_path = tmp / f"spec-{variant}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    ours, theirs = _run_side("ours", spec_path, tmp, env), _run_side("trl", spec_path, tmp, env)
    examples = json.loads(examples_path.read_text(encoding="utf-8"))
    batches = _compare_batches(ours.pop("batches"), theirs.pop("batches"), examples)
    rel = [_rel(a, b) for a, b in zip(ours["losses"], theirs["losses"])]
    micro = [_rel(a, b) for a, b in zip(ours["micro_losses"], theirs["micro_losses"])]
    same_len = len(ours["losses"]) == len(theirs["losses"]) == STEPS
    return {"variant": variant, "ours": ours, "trl": theirs, "batches": batches,
            "max_rel_diff": max(rel) if rel else None, "max_rel_diff_micro": max(micro) if micro else None,
            "within_rtol": same_len and bool(rel) and max(rel) <= RTOL,
            "same_num_items": ours["num_items"] == theirs["num_items"]}


def _max_rel(a, b) -> float:
    """Largest |a - b| over nested lists, relative to the largest |a|."""
    import torch
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-30))


def head_probe(dtype: str, tmp: Path, env: dict, examples_path: Path) -> dict:
    spec = {"dtype": dtype, "model": MODEL, "examples": str(examples_path), "head_examples": HEAD_EXAMPLES,
            "seed": SEED, "threads": THREADS}
    spec_path = tmp / f"head-{dtype}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    ours, theirs = (_run_side(side, spec_path, tmp, env, kind="head") for side in ("ours", "trl"))
    r = {"dtype": dtype, "ours": ours, "trl": theirs, "loss_rel_diff": _rel(ours["loss"], theirs["loss"]),
         "grad_head_max_rel_diff": _max_rel(ours.pop("grad_head_rows"), theirs.pop("grad_head_rows")),
         "grad_o_proj_max_rel_diff": _max_rel(ours.pop("grad_o_proj"), theirs.pop("grad_o_proj"))}
    print(f"\n== head probe on {ours['device']}, {dtype} weights: Qwen3-1.7B's tied 151936 x 2048 head "
          f"({ours['head_mib']:.0f} MiB), one decoder layer, {ours['tokens']} tokens ({ours['supervised']} "
          "supervised), one forward + backward")
    what = "RSS" if ours["device"] == "cpu" else "CUDA memory"
    print(f"peak {what} above the model: ours {ours['peak_above_baseline_mib']:.0f} MiB, TRL "
          f"{theirs['peak_above_baseline_mib']:.0f} MiB; time {ours['seconds']:.0f} s / {theirs['seconds']:.0f} s; "
          f"loss {ours['loss']:.8f} / {theirs['loss']:.8f} (rel. {r['loss_rel_diff']:.1e}); gradient max rel. diff: "
          f"head rows {r['grad_head_max_rel_diff']:.1e}, o_proj {r['grad_o_proj_max_rel_diff']:.1e}")
    return r


def report(r: dict) -> None:
    ours, trl = r["ours"], r["trl"]
    print(f"\n== {r['variant']}: ours ({ours['collator']}, chunked loss) vs TRL {trl['versions']['trl']} "
          f"({trl['collator']}, loss_type={LOSS_TYPE} -> {trl['loss_type_resolved']})")
    print("| step | ours | TRL | rel. diff |\n|---|---|---|---|")
    for i, (a, b) in enumerate(zip(ours["losses"], trl["losses"]), 1):
        print(f"| {i} | {a:.8f} | {b:.8f} | {_rel(a, b):.2e} |")
    print(f"max rel. diff {r['max_rel_diff']:.2e} per step (RTOL {RTOL:g}: "
          f"{'within' if r['within_rtol'] else 'NOT within'}), {r['max_rel_diff_micro']:.2e} per micro-batch; "
          f"target tokens per step {'the same' if r['same_num_items'] else 'DIFFER'}")
    b = r["batches"]
    print(f"micro-batches: {b['micro_batches']}, {'identical input_ids/labels/masks' if b['identical'] else 'DIFFER'}"
          f" ({b['rows_checked']} TRL rows matched to our examples); TRL's prepared dataset "
          f"{'left our rows untouched' if trl['dataset_untouched'] else 'CHANGED our rows'} "
          f"(columns {trl['dataset_columns']})")
    for p in b["problems"]:
        print(f"  {p}")
    print(f"peak RSS above baseline: ours {ours['peak_above_baseline_mib']:.0f} MiB, TRL "
          f"{trl['peak_above_baseline_mib']:.0f} MiB (absolute {ours['peak_rss_mib']:.0f} / {trl['peak_rss_mib']:.0f} "
          f"MiB); time {ours['seconds']:.0f} s / {trl['seconds']:.0f} s")
    if trl["args_differing_from_ours"]:
        print(f"SFTConfig fields differing from our TrainingArguments: {trl['args_differing_from_ours']}")
    if trl["config_warnings"]:
        print(f"SFTConfig warned: {trl['config_warnings']}")
    print(f"TRL also logs: {trl['extra_logged']}")


def main():
    configure(globals())
    variants = [v.strip() for v in str(VARIANTS).split(",") if v.strip()]
    bad = set(variants) - {"full", "lora", "padding_free"}
    if bad:
        raise SystemExit(f"--variants: {sorted(bad)} unknown; use full, lora, padding_free")
    env = _tokenizer_env()
    results, ok = {}, True
    with tempfile.TemporaryDirectory(prefix="medsft-trlcheck-") as tmp:
        tmp = Path(tmp)
        examples_path, data = _examples(tmp, env)
        print(f"examples: {data}")
        for variant in variants:
            r = compare(variant, tmp, env, examples_path)
            report(r)
            results[variant] = r
            ok = ok and r["within_rtol"] and r["batches"]["identical"]
        for dtype in [d.strip() for d in str(HEAD_DTYPES).split(",") if d.strip()]:
            if dtype not in ("fp32", "bf16"):
                raise SystemExit(f"--head_dtypes: {dtype!r} is not fp32 or bf16")
            results[f"head-{dtype}"] = head_probe(dtype, tmp, env, examples_path)
    if OUTPUT:
        Path(OUTPUT).write_text(json.dumps({"data": data, "results": results}, indent=1), encoding="utf-8")
        print(f"wrote {OUTPUT}")
    if variants:
        print(f"\nverdict: {'PASS' if ok else 'FAIL'} (identical micro-batches and losses within RTOL={RTOL:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "_child":
        child(*sys.argv[2:])
    else:
        raise SystemExit(main())
