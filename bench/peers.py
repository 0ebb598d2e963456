"""Side by side with TRL, LLaMA-Factory and ms-swift on train.py's job: the same supervised tokens, the same first
loss, and the memory and speed of each one's recipes against ours, measured in one run on one machine.

Each peer runs in its own venv (LLaMA-Factory pins transformers <= 5.6 and trl <= 0.24: never a dependency of this
project) through bench/peers_driver.py, in a fresh process per measurement; TRL is already in the project's venv.
  1. Model: the real Qwen3-1.7B architecture (../shared/qwen3-1.7b/config.json) on a CUDA GPU; on CPU the published
     Qwen3-0.6B architecture (hidden 1024, 28 layers, 16 heads, 8 KV heads, head_dim 128, MLP 3072, vocab 151,936,
     tied embeddings, rope_theta 1e6: written here from those values, no download). Random weights from SEED, saved
     once in bf16 (as the published checkpoints) so every peer loads the same tensors; the real tokenizer.
  2. Masks: every row of DATA in each of Qwen3's three modes (think, /no_think, enable_thinking=False), through each
     peer's own Qwen3 data path (variants below), compared with medsft.chat.tokenize_example token by token: input
     ids and supervised (label != -100) positions; each difference grouped, with rows, modes, tokens and a verdict.
  3. Loss: LOSS_ROWS rows as one batch, fp32, one step: the first micro-batch's loss of each peer's own trainer on
     its own tokens, beside ours and beside our loss computed on the peer's tokens (equal where the masks agree).
  4. Speed and memory: per peer its default full fine-tuning recipe, its documented lowest-memory full recipe and
     LoRA at LORA_R, and ours (default as it resolves here, lean = train.py's GPU default, LoRA default); MAX_LENGTH,
     BATCH_SIZE, GRAD_ACCUM and STEPS the same for all. Peak RSS above the process's RSS before the model loads (and
     torch.cuda.max_memory_allocated on CUDA), tokens/s over the steps after the first, ratios ours/theirs.
Writes OUTPUT (bench/results/peers-<device>.json) and prints the tables docs/performance.md shows.

    python3 -m venv ../venvs/llamafactory && ../venvs/llamafactory/bin/pip install torch==2.13.0 llamafactory==0.9.5
    ../venvs/llamafactory/bin/pip uninstall -y torchvision torchaudio   # CPU torch 2.13: PyPI's builds fail to load
    python3 -m venv ../venvs/swift && ../venvs/swift/bin/pip install torch==2.13.0 ms-swift==4.6.0
    python bench/peers.py --layers=12 --max_length=512 --grad_accum=1 --steps=2   # this 2-core CPU: ~25 min
    python bench/peers.py --tables=bench/results/peers-cpu.json    # the Markdown tables of a results JSON
    python bench/peers.py                              # a CUDA GPU: Qwen3-1.7B, every layer
    python bench/peers.py --peers=trl --parts=masks --mask_rows=20   # one peer, one part
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))  # run as `python bench/peers.py` from anywhere: the medsft package is in the root

from medsft.config import configure  # noqa: E402
from medsft.files import MedsftError, read_jsonl, write_json  # noqa: E402

MODEL = "auto"  # architecture config.json dir; auto = ../shared/qwen3-1.7b on a CUDA GPU, the published Qwen3-0.6B values on CPU
TOKENIZER = "auto"  # tokenizer dir (the whole Qwen3 family shares one); auto = ../shared/qwen3-1.7b
DATA = "auto"  # JSONL rows {question, think, answer}; auto = ../shared/data/medical_r1_sample.jsonl
LAYERS = 0  # decoder layers kept (the first N, same shapes); 0 = all of the architecture's
PEERS = "trl,llamafactory,swift"  # peers to compare with ours, each needs its python (below)
TRL_PYTHON = "auto"  # python of TRL's venv; auto = this interpreter (trl is a project dependency)
LLAMAFACTORY_PYTHON = "auto"  # python of LLaMA-Factory's venv; auto = ../venvs/llamafactory/bin/python beside the repo
SWIFT_PYTHON = "auto"  # python of ms-swift's venv; auto = ../venvs/swift/bin/python beside the repo
PARTS = "masks,loss,speed"  # what to run: masks (same tokens), loss (first-step loss), speed (memory and tokens/s)
MASK_ROWS = 0  # rows compared in each mode; 0 = every row of DATA
MASK_MAX_LENGTH = 8192  # token limit of the mask comparison: above the longest row, so no side drops or cuts one
MAX_LENGTH = 512  # tokens per example at most in the loss and speed parts (rows' thinks are trimmed to fit, never cut by a peer)
BATCH_SIZE = 1  # examples per micro-batch (speed part)
GRAD_ACCUM = 2  # micro-batches per optimizer step (speed part)
STEPS = 3  # optimizer steps per recipe; tokens/s counts the steps after the first
LOSS_ROWS = 2  # rows of the one batch whose first-step loss is compared (one micro-batch, fp32)
LOSS_RTOL = 1e-5  # relative tolerance of "equal" first-step losses
RECIPES = "default,lowest,lora"  # speed recipes per side: default full, lowest-memory full, LoRA
LORA_R = 16  # LoRA rank for every side (train_lora.py's default), alpha below, all linear layers
LORA_ALPHA = 32  # LoRA alpha for every side
LEARNING_RATE = 1e-5  # full fine-tuning LR for every side (train.py's)
LORA_LEARNING_RATE = 1e-4  # LoRA LR for every side (train_lora.py's)
SEED = 42  # seed of the random weights, data order and adapters
THREADS = 2  # torch threads in every process
TIMEOUT = 3600  # seconds one peer process may run before it is killed and recorded as failed
OUTPUT = "auto"  # results JSON; auto = bench/results/peers-<device>.json (device: cpu or the GPU's name)
TABLES = ""  # a results JSON: print its tables (docs/performance.md's) and exit, running nothing

# The published Qwen3-0.6B architecture (Qwen/Qwen3-0.6B config.json): what runs on a CPU of 24 GiB
_QWEN3_0_6B = {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
              "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
              "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
              "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
              "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
              "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
              "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "generation_config.json")
_MODES = ("think", "no_think_soft", "no_think_hard")
# Each side's recipes. lowest = the lowest-memory single-device full fine-tuning its own docs give that runs here
_RECIPE_TABLE = {
    "ours": {"default": {"lora": False, "note": "train.py's defaults as they resolve on this device"},
             "lowest": {"lora": False, "assume_gpu": True,
                        "note": "train.py's GPU default: bf16 weights + torchao 8-bit AdamW (stochastic rounding), "
                                "chunked loss, gradient checkpointing"},
             "lora": {"lora": True, "assume_gpu": True,
                      "note": "train_lora.py's defaults as they resolve on a bf16 GPU: bf16 base, chunked loss"},
             "loss": {"lora": False, "overrides": {"PRECISION": "fp32", "OPTIM": "adamw_torch"}}},
    "trl": {"default": {"lora": False, "note": "SFTConfig defaults: fp32 weights, bf16 autocast, AdamW, gradient "
                                               "checkpointing; prompt-completion rows (completion-only loss)"},
            "lowest": {"lora": False, "overrides": {"model_init_kwargs": {"dtype": "bfloat16"}, "padding_free": True,
                                                    "max_length": None},
                       "note": "its 'reducing memory' page: bf16 weights, padding-free batches (rows already fit "
                               "MAX_LENGTH: padding-free refuses to truncate); activation offloading and Liger need "
                               "CUDA"},
            "lora": {"lora": True, "note": "SFTConfig defaults + peft LoraConfig"},
            "loss": {"lora": False, "overrides": {"bf16": False}}},
    "llamafactory": {"default": {"lora": False, "overrides": {"bf16": True},
                                 "note": "examples/train_full/qwen3_full_sft.yaml without DeepSpeed: bf16 autocast, "
                                         "fp32 master weights, AdamW"},
                     "lowest": {"lora": False, "overrides": {"bf16": True, "pure_bf16": True},
                                "note": "pure_bf16 (its README's lowest full-parameter row: 16-bit)"},
                     "lora": {"lora": True, "overrides": {"bf16": True},
                              "note": "examples/train_lora/qwen3_lora_sft.yaml at rank LORA_R"},
                     "loss": {"lora": False, "overrides": {"bf16": False}}},
    "swift": {"default": {"lora": False, "note": "swift sft --train_type full defaults: the checkpoint's bf16"},
              "lowest": {"lora": False, "same_as": "default",
                         "note": "its default is already bf16 weights + AdamW; its lower ones need CUDA (DeepSpeed "
                                 "ZeRO-3 offload, Liger, flash-attn padding-free) or replace AdamW (GaLore)"},
              "lora": {"lora": True, "note": "swift sft --train_type lora defaults at rank LORA_R"},
              "loss": {"lora": False, "overrides": {"torch_dtype": "float32", "fp16": "false", "bf16": "false"}}},
}


def _paths(cfg: dict, cuda: bool) -> dict:
    shared = _ROOT.parent / "shared"
    tokenizer = Path(cfg["TOKENIZER"]) if cfg["TOKENIZER"] != "auto" else shared / "qwen3-1.7b"
    data = Path(cfg["DATA"]) if cfg["DATA"] != "auto" else shared / "data" / "medical_r1_sample.jsonl"
    for what, p in (("tokenizer", tokenizer / "tokenizer_config.json"), ("rows", data)):
        if not p.is_file():
            raise MedsftError(f"{p} not found: pass --{'tokenizer' if what == 'tokenizer' else 'data'}=... "
                              f"(../shared beside the repo has both)")
    if cfg["MODEL"] != "auto":
        arch = json.loads((Path(cfg["MODEL"]) / "config.json").read_text())
        arch_name = str(cfg["MODEL"])
    elif cuda:
        arch, arch_name = json.loads((shared / "qwen3-1.7b" / "config.json").read_text()), "Qwen3-1.7B"
    else:
        arch, arch_name = dict(_QWEN3_0_6B), "Qwen3-0.6B (published values)"
    pythons = {"ours": sys.executable, "trl": sys.executable if cfg["TRL_PYTHON"] == "auto" else cfg["TRL_PYTHON"],
               "llamafactory": str(_ROOT.parent / "venvs" / "llamafactory" / "bin" / "python")
               if cfg["LLAMAFACTORY_PYTHON"] == "auto" else cfg["LLAMAFACTORY_PYTHON"],
               "swift": str(_ROOT.parent / "venvs" / "swift" / "bin" / "python")
               if cfg["SWIFT_PYTHON"] == "auto" else cfg["SWIFT_PYTHON"]}
    return {"tokenizer": tokenizer, "data": data, "arch": arch, "arch_name": arch_name, "pythons": pythons}


def build_model(arch: dict, layers: int, tokenizer: Path, seed: int, out: Path) -> dict:
    """The architecture with random weights from ``seed``, saved in bf16 with the tokenizer files beside it."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(arch)
    if layers:
        arch["num_hidden_layers"] = layers
        arch["max_window_layers"] = min(arch.get("max_window_layers", layers), layers)
        arch.pop("layer_types", None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(arch))
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for name in _TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, out / name)
    params = sum(p.numel() for p in model.parameters())
    del model
    return {"params": params, "layers": arch["num_hidden_layers"], "hidden_size": arch["hidden_size"],
            "vocab_size": arch["vocab_size"]}


# --- rows in each mode, as every side receives them -----------------------------------------------------------------

def make_item(row: dict, mode: str) -> dict:
    """One row in one mode: the fields each peer's data path takes (ours re-derives the same from the row)."""
    from medsft.chat import SOFT_SWITCH, SYSTEM_PROMPT, format_reference

    think = row["think"] if mode == "think" else ""
    return {"question": row["question"], "think": think, "answer": row["answer"], "mode": mode,
            "system": SYSTEM_PROMPT, "user": row["question"] + SOFT_SWITCH.get(mode, ""),
            "enable_thinking": mode != "no_think_hard",
            "response": format_reference(think, row["answer"]) if mode == "think" else row["answer"]}


def fit_row(tokenizer, row: dict, max_length: int, mode: str) -> dict | None:
    """``row`` with its think cut (at a character) to the longest that keeps our example within ``max_length``."""
    from medsft.chat import tokenize_example

    if tokenize_example(tokenizer, row, max_length, mode=mode) is not None:
        return row
    lo, hi = 0, len(row["think"])
    if tokenize_example(tokenizer, {**row, "think": row["think"][:1]}, max_length, mode=mode) is None:
        return None
    while lo < hi:  # the longest think prefix that fits
        mid = (lo + hi + 1) // 2
        fits = tokenize_example(tokenizer, {**row, "think": row["think"][:mid]}, max_length, mode=mode) is not None
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    return {**row, "think": row["think"][:lo].rstrip()}


# --- running a peer ------------------------------------------------------------------------------------------------

def run_driver(python: str, task: str, peer: str, spec: dict, work: Path, timeout: int) -> dict:
    """bench/peers_driver.py TASK PEER in ``python``'s venv; the result, or {"error": ...} with the output's tail."""
    if not Path(python).is_file():
        return {"error": f"{python} not found: create the peer's venv (bench/peers.py's docstring has the command)"}
    tag = f"{task}-{peer}-{spec.get('recipe_name', 'masks')}-{time.time_ns()}"
    spec_path, out_path = work / f"{tag}.spec.json", work / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    # a fixed mmap threshold returns freed blocks to the system, so RSS follows live tensors (as in cpu_real.py)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "SWANLAB_MODE": "disabled", "WANDB_DISABLED": "true",
           "OMP_NUM_THREADS": str(spec.get("threads", 2)), "PYTHONPATH": ""}
    t = time.perf_counter()
    try:
        proc = subprocess.run([python, str(_ROOT / "bench" / "peers_driver.py"), task, peer, str(spec_path),
                               str(out_path)], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=str(work))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0 or not out_path.is_file():
        tail = (proc.stdout[-1500:] + "\n" + proc.stderr[-3000:]).strip()
        return {"error": f"exit {proc.returncode}", "output_tail": tail}
    result = json.loads(out_path.read_text(encoding="utf-8"))
    result["wall_s"] = round(time.perf_counter() - t, 1)
    return result


# --- masks ------------------------------------------------------------------------------------------------------------

def our_tokens(tokenizer, rows: list[dict], modes, max_length: int) -> list[dict]:
    from medsft.chat import tokenize_example

    out = []
    for mode in modes:
        for row in rows:
            ex = tokenize_example(tokenizer, row, max_length, mode=mode)
            out.append({"input_ids": ex["input_ids"], "labels": ex["labels"]} if ex else None)
    return out


def _span(tokenizer, ids: list[int], limit: int = 12) -> str:
    """``ids`` as text, a long run shortened to its first tokens and its length (so rows group by kind)."""
    if len(ids) <= limit:
        return repr(tokenizer.decode(ids))
    return f"{tokenizer.decode(ids[:4])!r}…({len(ids)} tokens)"


def _supervised(labels: list[int]) -> list[int]:
    return [i for i, t in enumerate(labels) if t != -100]


def diff_one(tokenizer, ours: dict, theirs: dict | None) -> dict | None:
    """How ``theirs`` differs from ``ours`` for one example (None when ids and supervised positions are equal)."""
    if theirs is None:
        return {"kind": "the peer dropped this example", "parts": ["the peer dropped this example"]}
    a, b = ours["input_ids"], theirs["input_ids"]
    parts, facts = [], {}
    if a != b:
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        facts["ids_first_difference"] = n
        facts["ids_ours_from_there"] = tokenizer.decode(a[n:n + 12])
        facts["ids_theirs_from_there"] = tokenizer.decode(b[n:n + 12])
        extra = len(a) - len(b)
        if extra > 0 and a[n + extra:] == b[n:]:  # ours has tokens theirs lacks, the rest equal
            parts.append(f"input: only ours has {_span(tokenizer, a[n:n + extra])}")
        elif extra < 0 and b[n - extra:] == a[n:]:
            parts.append(f"input: only theirs has {_span(tokenizer, b[n:n - extra])}")
        else:
            parts.append(f"input: ours {_span(tokenizer, a[n:n + 4])} where theirs has {_span(tokenizer, b[n:n + 4])}")
    # supervised tokens compared as (distance from the end, token): a prompt difference does not shift them
    sa = {(len(a) - i, a[i]) for i in _supervised(ours["labels"])}
    sb = {(len(b) - i, b[i]) for i in _supervised(theirs["labels"])}
    if sa != sb:
        for side, only in (("theirs", sb - sa), ("ours", sa - sb)):
            for last, run in _runs(sorted(only, reverse=True)):
                where = " (the sequence's last token)" if last == 1 else ""
                parts.append(f"supervised only by {side}: {_span(tokenizer, run)}{where}")
        facts["supervised_ours"], facts["supervised_theirs"] = len(sa), len(sb)
    if not parts:
        return None
    return {"kind": "; ".join(parts), "parts": parts, **facts}


def _runs(positions: list[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """(distance from the end of the run's last token, its tokens) of (distance, token) pairs, split where the
    positions stop being consecutive."""
    runs = []
    for k, (dist, tok) in enumerate(positions):
        if k and positions[k - 1][0] == dist + 1:
            runs[-1] = (dist, runs[-1][1] + [tok])
        else:
            runs.append((dist, [tok]))
    return runs


# Verdicts for the kinds of difference met, judged against Qwen3's own chat template (tokenizer_config.json)
_EMPTY_THINK = "'<think>\\n\\n</think>\\n\\n'"
_NL = "'\\n'"
_VERDICTS = [
    (lambda k, m: k == f"supervised only by theirs: {_NL} (the sequence's last token)",
     "ours", "the '\\n' the template writes after the last <|im_end|> is never generated: <|im_end|> is the "
     "eos of generation_config.json, so decoding stops before it; supervising it trains a token the model never "
     "emits (harmless to the answer, one extra target per row)"),
    (lambda k, m: k == f"input: only ours has {_NL}",
     "equivalent", "Qwen3's template ends the turn with '<|im_end|>\\n'; the '\\n' comes after the last target, so "
     "no prediction sees it and loss and gradients are the same"),
    (lambda k, m: k == f"supervised only by theirs: {_EMPTY_THINK}" and m == "no_think_hard",
     "ours", "with enable_thinking=False Qwen3's template writes '<think>\\n\\n</think>\\n\\n' into the generation "
     "prompt: the model never writes it. Training it as output on a question without /no_think teaches an empty "
     "think where the thinking mode needs reasoning"),
    (lambda k, m: k == f"supervised only by ours: {_EMPTY_THINK}" and m == "no_think_soft",
     "ours", "after /no_think the generation prompt is '<|im_start|>assistant\\n' and the model itself writes the "
     "empty think block (Qwen3's soft switch): masking it leaves the switch's one visible effect untrained"),
    (lambda k, m: k == f"input: only ours has {_EMPTY_THINK}" and m != "think",
     "ours", "qwen3_nothink is LLaMA-Factory's template for Qwen3-Instruct-2507, which has no think block; the hybrid "
     "Qwen3's own template writes the empty think block before every final non-thinking answer (in the prompt "
     "with enable_thinking=False, as output after /no_think)"),
]


def verdict(parts: list[str], mode: str) -> tuple[str, str]:
    """(the side Qwen3's template agrees with, why) for a difference made of ``parts``, each judged by a rule."""
    sides, whys = [], []
    for part in parts:
        side, why = next(((s, w) for match, s, w in _VERDICTS if match(part, mode)),
                         ("unjudged", "no rule matches this kind yet: read the tokens and Qwen3's template"))
        sides.append(side)
        whys.append(f"{part} -> {side}: {why}")
    side = "unjudged" if "unjudged" in sides else "theirs" if "theirs" in sides else \
        "ours" if "ours" in sides else "equivalent"
    return side, " | ".join(whys)


def compare_masks(tokenizer, ours: list, theirs: list, keys: list[tuple[int, str]]) -> dict:
    """Per kind of difference: count, verdict, and every (row, mode) with its tokens."""
    kinds, agree = {}, 0
    for key, o, t in zip(keys, ours, theirs):
        d = diff_one(tokenizer, o, t)
        if d is None:
            agree += 1
            continue
        row, mode = key
        entry = kinds.setdefault(f"{mode}: {d['kind']}", {"mode": mode, "kind": d["kind"], "parts": d["parts"],
                                                          "rows": [], "detail": []})
        entry["rows"].append(row)
        entry["detail"].append({"row": row, **{k: v for k, v in d.items() if k not in ("kind", "parts")}})
    for entry in kinds.values():
        entry["count"] = len(entry["rows"])
        entry["side_right"], entry["why"] = verdict(entry.pop("parts"), entry["mode"])
    return {"examples": len(keys), "identical": agree, "differences": sorted(kinds.values(),
                                                                             key=lambda e: (_MODES.index(e["mode"]),
                                                                                            -e["count"]))}


# --- loss: our loss on any side's tokens --------------------------------------------------------------------------

def our_loss_on(model_dir: Path, batches: dict) -> dict:
    """The next-token loss of the saved model in fp32 (transformers' own loss: the mean over supervised tokens) on
    each side's first micro-batch, exactly as its pipeline padded it."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    out = {}
    with torch.no_grad():
        for name, batch in batches.items():
            tensors = {k: torch.tensor(v) for k, v in batch.items()}
            out[name] = float(model(**tensors).loss)
    del model
    return out


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12) if a is not None and b is not None else None


# --- main -------------------------------------------------------------------------------------------------------------

def main():
    cfg = configure(globals())
    if TABLES:
        print(tables(json.loads(Path(TABLES).read_text(encoding="utf-8"))))
        return None
    import torch
    from transformers import AutoTokenizer

    # 1. Fail fast: device, paths, peers; then the architecture with random weights, saved once for every side
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0).lower().replace(" ", "-") if cuda else "cpu"
    paths = _paths(cfg, cuda)
    peers = [p.strip() for p in PEERS.split(",") if p.strip()]
    parts = {p.strip() for p in PARTS.split(",") if p.strip()}
    recipes = [r.strip() for r in RECIPES.split(",") if r.strip()]
    if set(peers) - set(_RECIPE_TABLE) or "ours" in peers:
        raise MedsftError(f"--peers={PEERS}: expected some of trl, llamafactory, swift")
    if parts - {"masks", "loss", "speed"} or set(recipes) - {"default", "lowest", "lora"}:
        raise MedsftError(f"--parts={PARTS} / --recipes={RECIPES}: see --help")
    torch.set_num_threads(THREADS)
    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    rows = read_jsonl(paths["data"])
    work = Path(tempfile.mkdtemp(prefix="medsft-peers-"))
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device, "machine": _machine(cuda),
              "command": "python bench/peers.py " + " ".join(sys.argv[1:]),
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()},
              "architecture": paths["arch_name"], "peers": {}, "masks": {}, "loss": {}, "speed": {}}
    try:
        model_dir = work / "model"
        if parts & {"loss", "speed"}:
            result["model"] = build_model(paths["arch"], LAYERS, paths["tokenizer"], SEED, model_dir)
            print(f"model: {paths['arch_name']}, {result['model']['layers']} layers, "
                  f"{result['model']['params'] / 1e6:.0f} M parameters, random weights (seed {SEED})")
        common = {"tokenizer": str(paths["tokenizer"]), "threads": THREADS, "seed": SEED}
        # 2. Same tokens: every row in every mode, ours against each peer's own data path
        if "masks" in parts:
            mask_rows = rows[:MASK_ROWS] if MASK_ROWS else rows
            keys = [(i, mode) for mode in _MODES for i in range(len(mask_rows))]
            ours = our_tokens(tokenizer, mask_rows, _MODES, MASK_MAX_LENGTH)
            items = [make_item(mask_rows[i], mode) for i, mode in keys]
            for peer in peers:
                res = run_driver(paths["pythons"][peer], "masks", peer,
                                 {**common, "items": items, "max_length": MASK_MAX_LENGTH}, work, TIMEOUT)
                result["peers"].setdefault(peer, {})["versions"] = res.get("versions")
                if "error" in res:
                    result["masks"][peer] = {"error": res}
                    print(f"masks {peer}: FAILED {res['error']}\n{res.get('output_tail', '')[-800:]}")
                    continue
                for variant, theirs in res["variants"].items():
                    cmp = compare_masks(tokenizer, ours, theirs, keys)
                    result["masks"][f"{peer}:{variant}"] = cmp
                    print(f"masks {peer}:{variant}: {cmp['identical']}/{cmp['examples']} identical"
                          + "".join(f"\n  {d['mode']}: {d['count']} x {d['kind']} -> {d['side_right']}"
                                    for d in cmp["differences"]))
        # 3. First-step loss on one identical batch (fp32): each side's trainer on its own tokens, and ours on theirs
        fitted = [r for r in (fit_row(tokenizer, row, MAX_LENGTH, "think") for row in rows) if r is not None]
        run_spec = {**common, "model": str(model_dir), "max_length": MAX_LENGTH, "lora_r": LORA_R,
                    "lora_alpha": LORA_ALPHA, "lr": LEARNING_RATE, "lr_lora": LORA_LEARNING_RATE}
        if "loss" in parts:
            batch = [make_item(r, "think") for r in fitted[:LOSS_ROWS]]
            spec = {**run_spec, "items": batch, "batch_size": LOSS_ROWS, "grad_accum": 1, "steps": 1}
            losses = {}
            for peer in ["ours"] + peers:
                res = run_driver(paths["pythons"][peer], "train", peer, {**spec, "recipe": _RECIPE_TABLE[peer]["loss"],
                                                                          "recipe_name": "loss", "record_batch": True},
                                 work, TIMEOUT)
                losses[peer] = res
                print(f"loss {peer}: " + (f"{res['first_micro_losses'][:1]}" if "error" not in res
                                          else f"FAILED {res['error']}\n{res.get('output_tail', '')[-800:]}"))
            ours_on = our_loss_on(model_dir, {p: r["first_batch"] for p, r in losses.items() if r.get("first_batch")})
            ours_first = (losses["ours"].get("first_micro_losses") or [None])[0]
            result["loss"] = {"rows": LOSS_ROWS, "precision": "fp32", "rtol": LOSS_RTOL, "sides": {}}
            for peer, res in losses.items():
                first = (res.get("first_micro_losses") or [None])[0]
                batch = res.get("first_batch") or {}
                reference = ours_on.get(peer)
                result["loss"]["sides"][peer] = {
                    "first_step_loss": first, "error": res.get("error"), "output_tail": res.get("output_tail"),
                    "versions": res.get("versions"), "param_dtype": res.get("param_dtype"),
                    "supervised_tokens": sum(t != -100 for row in batch.get("labels", []) for t in row),
                    "our_loss_on_its_batch": reference, "rel_diff_vs_ours": _rel(first, ours_first),
                    "equal_to_ours": None if first is None else _rel(first, ours_first) <= LOSS_RTOL,
                    "equal_to_our_loss_on_its_batch": None if first is None or reference is None
                    else _rel(first, reference) <= LOSS_RTOL}
            result["loss"]["our_loss_on"] = ours_on
        # 4. Memory and speed: every recipe of every side, one fresh process each, the same rows and settings
        if "speed" in parts:
            need = BATCH_SIZE * GRAD_ACCUM * STEPS
            if len(fitted) < need:
                raise MedsftError(f"{len(fitted)} rows fit MAX_LENGTH={MAX_LENGTH}; {need} are needed")
            # the longest rows, thinks trimmed to fit: every micro-batch is close to MAX_LENGTH tokens
            by_len = sorted(fitted, key=lambda r: -len(our_tokens(tokenizer, [r], ["think"], MAX_LENGTH)[0]["input_ids"]))
            spec = {**run_spec, "items": [make_item(r, "think") for r in by_len[:need]], "batch_size": BATCH_SIZE,
                    "grad_accum": GRAD_ACCUM, "steps": STEPS}
            for peer in ["ours"] + peers:
                for name in recipes:
                    recipe = _RECIPE_TABLE[peer][name]
                    if recipe.get("same_as") in result["speed"].get(peer, {}):  # the same settings: not run twice
                        result["speed"][peer][name] = {**result["speed"][peer][recipe["same_as"]], "recipe": recipe}
                        continue
                    res = run_driver(paths["pythons"][peer], "train", peer,
                                     {**spec, "recipe": recipe, "recipe_name": name}, work, TIMEOUT)
                    res["recipe"] = recipe
                    result["speed"].setdefault(peer, {})[name] = res
                    print(f"speed {peer}/{name}: " + (
                        f"peak {res['peak_gib']:.2f} GiB, {res['tokens_per_s']} tokens/s, {res['param_dtype']}, "
                        f"{res['optimizer']}" if "error" not in res
                        else f"FAILED {res['error']}\n{res.get('output_tail', '')[-800:]}"))
            result["ratios"] = ratios(result["speed"], peers, cuda)
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    out = Path(OUTPUT) if OUTPUT != "auto" else _ROOT / "bench" / "results" / f"peers-{device}.json"
    print(tables(result))
    print(f"wrote:\n  {write_json(out, result)}")
    return result


def tables(result: dict) -> str:
    """The Markdown tables of a results JSON: same tokens, first-step loss, memory and speed with ratios."""
    lines = ["| peer data path | mode | identical | difference (rows) | right per Qwen3's template |", "|---|---|---:|---|---|"]
    for variant, cmp in result.get("masks", {}).items():
        if "error" in cmp:
            lines.append(f"| {variant} | all | failed | {cmp['error'].get('error')} | |")
            continue
        per_mode = {m: [d for d in cmp["differences"] if d["mode"] == m] for m in _MODES}
        n = cmp["examples"] // len(_MODES)
        for mode, diffs in per_mode.items():
            same = n - sum(d["count"] for d in diffs)
            text = "<br>".join(f"{d['kind']} ({d['count']})".replace("|", "\\|") for d in diffs) or "none"
            sides = ", ".join(sorted({d["side_right"] for d in diffs})) or "-"
            lines.append(f"| {variant} | {mode} | {same}/{n} | {text} | {sides} |")
    loss = result.get("loss") or {}
    if loss.get("sides"):
        lines += ["", "| side | first-step loss | supervised tokens | our loss on its batch | equal to it | vs ours |",
                  "|---|---:|---:|---:|---|---:|"]
        for side, r in loss["sides"].items():
            if r["first_step_loss"] is None:
                lines.append(f"| {side} | failed: {r['error']} | | | | |")
                continue
            lines.append(f"| {side} | {r['first_step_loss']:.6f} | {r['supervised_tokens']} | "
                         f"{r['our_loss_on_its_batch']:.6f} | {r['equal_to_our_loss_on_its_batch']} | "
                         f"{r['rel_diff_vs_ours']:.2e} |")
    speed = result.get("speed") or {}
    if speed:
        mem = (result.get("ratios") or {}).get("memory", "peak_gib")
        lines += ["", f"| side / recipe | weights, optimizer | peak above baseline ({mem}) | peak RSS | tokens/s | "
                      "tokens per CPU-s |", "|---|---|---:|---:|---:|---:|"]
        for side, recipes in speed.items():
            for name, r in recipes.items():
                if "error" in r:
                    err = (r.get("output_tail") or r["error"]).strip().splitlines()[-1][:160].replace("|", "\\|")
                    lines.append(f"| {side} / {name} | did not run: `{err}` | | | | |")
                    continue
                opt = (r.get("optimizer") or "").rsplit(".", 1)[-1]
                lines.append(f"| {side} / {name} | {str(r['param_dtype']).replace('torch.', '')}, {opt} | "
                             f"{r.get(mem) or 0:.2f} GiB | {r['peak_rss_gib']:.2f} GiB | {r['tokens_per_s'] or 0:,.1f} | "
                             f"{r.get('tokens_per_cpu_s') or 0:,.1f} |")
        ratios = result.get("ratios") or {}
        peers = [p for p in ratios if p != "memory"]
        if peers:
            lines += ["", "| ours / theirs | " + " | ".join(f"{p}: memory | {p}: tokens/s | {p}: per CPU-s"
                                                       for p in peers) + " |", "|---|" + "---:|" * (3 * len(peers))]
            for pair in ratios[peers[0]]:
                if pair == "goals":
                    continue
                cells = []
                for p in peers:
                    r = ratios[p][pair]
                    cells += [f"{r[k]:.2f}x" if r.get(k) else "-" for k in ("memory", "tokens_per_s", "tokens_per_cpu_s")]
                lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _machine(cuda: bool) -> str:
    import torch
    cpu = f"{platform.machine()}, {os.cpu_count()} cores, {THREADS} torch threads"
    return f"{torch.cuda.get_device_name(0)} + {cpu}" if cuda else f"CPU ({cpu})"


def ratios(speed: dict, peers: list[str], cuda: bool) -> dict:
    """ours/theirs for peak memory and tokens/s: lean and default against each peer's default and lowest; LoRA
    against LoRA. Only measured numbers: a missing side gives None."""
    mem_key = "cuda_max_allocated_gib" if cuda else "peak_gib"
    out = {"memory": mem_key}
    ours = speed.get("ours", {})
    for peer in peers:
        theirs = speed.get(peer, {})
        pairs = {"ours_lean/their_default": ("lowest", "default"), "ours_lean/their_lowest": ("lowest", "lowest"),
                 "ours_default/their_default": ("default", "default"),
                 "ours_default/their_lowest": ("default", "lowest"), "ours_lora/their_lora": ("lora", "lora")}
        out[peer] = {}
        for name, (a, b) in pairs.items():
            ra, rb = ours.get(a, {}), theirs.get(b, {})
            ma, mb = ra.get(mem_key), rb.get(mem_key)
            ta, tb = ra.get("tokens_per_s"), rb.get("tokens_per_s")
            ca, cb = ra.get("tokens_per_cpu_s"), rb.get("tokens_per_cpu_s")
            out[peer][name] = {"memory": round(ma / mb, 3) if ma and mb else None,
                               "tokens_per_s": round(ta / tb, 3) if ta and tb else None,
                               "tokens_per_cpu_s": round(ca / cb, 3) if ca and cb else None}
        lean_default = out[peer]["ours_lean/their_default"]["memory"]
        lean_lowest = out[peer]["ours_lean/their_lowest"]["memory"]
        out[peer]["goals"] = {"lean <= 0.5x their default peak": None if lean_default is None else lean_default <= 0.5,
                              "lean <= 1.0x their lowest peak": None if lean_lowest is None else lean_lowest <= 1.0}
    return out


if __name__ == "__main__":
    main()
