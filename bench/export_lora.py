"""Benchmark: the peak memory of a LoRA export (the adapter merged tensor by tensor while writing) against the full
export of the same base, on the real Qwen3-1.7B architecture, q8_0.

Builds the real architecture with RANDOM bf16 weights and the real tokenizer (bench/export_vs_convert.py's folder,
reused when present) and a random LoRA adapter on it as train_lora.py's defaults make it (r 16, alpha 32, every
linear layer of the 28 blocks; non-zero B, so every targeted weight really changes). Then runs, one after the other,
`export.py --model_dir=<base>` and `export.py --model_dir=<adapter>`, each under /usr/bin/time -v (wall time, peak
RSS, CPU time), and checks that both files hold the same tensor names and types, that every targeted weight differs
and every other tensor is byte-identical.

Reads   MODEL_CONFIG (config.json, generation_config.json, tokenizer files).
Writes  WORK_DIR/model (the random base, reused), WORK_DIR/adapter, WORK_DIR/out-lora/*.gguf; OUTPUT (JSON).

    nice -n 19 python bench/export_lora.py                        # -> bench/results/export_lora.json
    python bench/export_lora.py --work_dir=/big/disk --quantization=f16
"""

import json
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))  # run as `python bench/export_lora.py` from anywhere: the medsft package is in the root
sys.path.insert(0, str(_ROOT / "bench"))

from export_vs_convert import build_model, machine, timed  # noqa: E402
from medsft.config import configure  # noqa: E402
from medsft.files import MedsftError, write_json  # noqa: E402

MODEL_CONFIG = str(_ROOT.parent / "shared" / "qwen3-1.7b")  # config.json + tokenizer of the architecture (no weights needed)
WORK_DIR = "/tmp/export-bench"  # the random base (shared with export_vs_convert.py), the adapter and both GGUF files
OUTPUT = str(_ROOT / "bench" / "results" / "export_lora.json")  # results JSON
QUANTIZATION = "q8_0"  # the export's quantization, the same for both runs
LORA_R = 16  # adapter rank (train_lora.py's default)
LORA_ALPHA = 32  # adapter scale numerator (train_lora.py's default)
SEED = 42  # seed of the random weights
KEEP = False  # keep the two GGUF files (the base and the adapter are always kept for a re-run)

_TARGETS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def build_adapter(model: Path, out: Path, r: int, alpha: int, seed: int) -> tuple[Path, list[str]]:
    """A random LoRA adapter on every linear layer of ``model``, saved as peft saves one; returns the HF names of the
    weights it changes."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(model / "model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    targets = sorted(k for k in shapes if k.endswith(".weight") and
                     any(f".{block}.{m}." in k for block, mods in _TARGETS.items() for m in mods))
    if (out / "adapter_model.safetensors").is_file():
        return out, targets
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name in targets:
        rows, cols = shapes[name]
        prefix = "base_model.model." + name[:-len(".weight")]
        state[f"{prefix}.lora_A.weight"] = torch.randn(r, cols, generator=gen) / cols ** 0.5
        state[f"{prefix}.lora_B.weight"] = torch.randn(rows, r, generator=gen) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
              "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
              "target_modules": sorted({m for mods in _TARGETS.values() for m in mods}),
              "base_model_name_or_path": str(model)}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out, targets


def compare(full: Path, lora: Path, targets: list[str], n_layers: int) -> dict:
    import gguf
    import numpy as np

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, n_layers)
    changed = {names.get_name(t, try_suffixes=(".weight",)) for t in targets}
    a, b = ({t.name: t for t in gguf.GGUFReader(p).tensors} for p in (full, lora))
    same = {n for n in a if n in b and np.array_equal(np.asarray(a[n].data).view(np.uint8),
                                                       np.asarray(b[n].data).view(np.uint8))}
    return {"tensors": len(a), "same_names_and_types": sorted((n, t.tensor_type) for n, t in a.items()) ==
            sorted((n, t.tensor_type) for n, t in b.items()),
            "targeted": len(changed), "targeted_identical": sorted(changed & same)[:5],
            "others_differing": sorted(set(a) - changed - same)[:5]}


def main():
    cfg = configure(globals())
    if not (Path(MODEL_CONFIG) / "config.json").is_file():
        raise MedsftError(f"--model_config={MODEL_CONFIG} has no config.json (../shared/qwen3-1.7b is the real one)")
    work = Path(WORK_DIR)
    # 1. The random base and adapter (kept for re-runs)
    model = build_model(Path(MODEL_CONFIG), work / "model", SEED)
    adapter, targets = build_adapter(model, work / "adapter", LORA_R, LORA_ALPHA, SEED)
    out = work / "out-lora"
    out.mkdir(parents=True, exist_ok=True)
    # 2. The full export, then the LoRA export of the same base, one after the other
    cmds = {"full": [sys.executable, "export.py", f"--model_dir={model}", f"--output_dir={out}", "--name=full",
                     f"--quantization={QUANTIZATION}"],
            "lora": [sys.executable, "export.py", f"--model_dir={adapter}", f"--output_dir={out}", "--name=lora",
                     f"--quantization={QUANTIZATION}"]}
    runs = {}
    for label, cmd in cmds.items():
        runs[label] = timed(cmd, out / f"{label}.log")
        print(f"{label:<5} {runs[label]}")
    full, lora = out / f"full-{QUANTIZATION}.gguf", out / f"lora-{QUANTIZATION}.gguf"
    # 3. Same layout; the targeted weights changed, nothing else
    n_layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    check = compare(full, lora, targets, n_layers)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "model": "Qwen3-1.7B architecture (28 layers, hidden 2048, vocab 151,936, tied), random bf16 weights; "
                       f"random LoRA r={LORA_R} alpha={LORA_ALPHA} on {len(targets)} linear weights",
              "commands": {k: " ".join(v[1:]) for k, v in cmds.items()}, "runs": runs,
              "bytes": {"full": full.stat().st_size, "lora": lora.stat().st_size},
              "ratio": {"peak_rss": round(runs["lora"]["peak_rss_gib"] / runs["full"]["peak_rss_gib"], 2),
                        "wall": round(runs["lora"]["wall_s"] / runs["full"]["wall_s"], 2)},
              **check, "config": cfg}
    print(json.dumps({k: result[k] for k in ("runs", "ratio", "bytes")}))
    print(f"wrote {write_json(OUTPUT, result)}")
    if not KEEP:
        full.unlink()
        lora.unlink()
    if not check["same_names_and_types"] or check["targeted_identical"] or check["others_differing"]:
        raise MedsftError(f"unexpected files: {check}")


if __name__ == "__main__":
    main()
