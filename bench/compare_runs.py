"""Did a change alter any result? Compares two `MODEL=tiny bash pipeline.sh` run folders file by file: JSON(L)
parsed, measured keys (times, throughput, memory) dropped, key order kept; Markdown with numbers masked; every other
file byte for byte. Prints each difference; exit 1 if any.
    python bench/compare_runs.py BASE_RUN NEW_RUN BASE_SOURCE NEW_SOURCE   (sources: their absolute paths are masked)
"""
import hashlib, json, re, sys
from pathlib import Path
MEASURED = {"wall_time_s", "train_time_s", "tokens_per_s", "tokens_per_second", "generate_s", "wall_s",
            "peak_memory_gib", "seconds", "elapsed_s", "time_s", "train_runtime", "train_samples_per_second",
            "train_steps_per_second", "train_tokens_per_second", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
            "total_flos", "load_s", "score_s", "scoring_s", "duration_s", "step_time"}
def clean(o):
    if isinstance(o, dict): return {k: clean(v) for k, v in o.items() if k not in MEASURED}
    if isinstance(o, list): return [clean(v) for v in o]
    return o
def norm(p, root, text):  # absolute paths of the source tree (data_config.json holds the dataset's)
    return text.replace(str(root), "<ROOT>")
base, new, broot, nroot = map(Path, sys.argv[1:5])
bad = 0
files = sorted({p.relative_to(base) for p in base.rglob("*") if p.is_file()} | {p.relative_to(new) for p in new.rglob("*") if p.is_file()})
for rel in files:
    a, b = base / rel, new / rel
    if not a.exists() or not b.exists():
        print("ONLY IN", "new" if b.exists() else "base", rel); bad += 1; continue
    if rel.suffix in (".json", ".jsonl"):
        ta, tb = norm(a, broot, a.read_text()).replace(str(base), "<RUN>"), norm(b, nroot, b.read_text()).replace(str(new), "<RUN>")
        if rel.suffix == ".json":
            ja, jb = [clean(json.loads(ta))], [clean(json.loads(tb))]
        else:
            ja = [clean(json.loads(l)) for l in ta.splitlines() if l.strip()]; jb = [clean(json.loads(l)) for l in tb.splitlines() if l.strip()]
        if json.dumps(ja) != json.dumps(jb):
            print("DIFF", rel); bad += 1
            for x, y in zip(ja, jb):
                if json.dumps(x) != json.dumps(y): print("   base:", json.dumps(x)[:600]); print("   new: ", json.dumps(y)[:600]); break
    elif rel.suffix == ".md":
        mask = lambda t: re.sub(r"\d+(\.\d+)?", "N", t)
        la = a.read_text().replace(str(broot), "<ROOT>").splitlines(); lb = b.read_text().replace(str(nroot), "<ROOT>").splitlines()
        if la != lb:
            d = [(x, y) for x, y in zip(la, lb) if x != y]
            real = [(x, y) for x, y in d if mask(x) != mask(y)]
            print("MD", rel, f"{len(d)} lines differ, {len(real)} beyond numbers", "" if len(la) == len(lb) else f"(lines {len(la)} vs {len(lb)})")
            for x, y in d[:6]: print("   base:", x[:300]); print("   new: ", y[:300])
            bad += bool(real) or len(la) != len(lb)
    elif a.read_bytes() != b.read_bytes():
        print("BYTES", rel, a.stat().st_size, b.stat().st_size); bad += 1
print("differences:", bad); sys.exit(1 if bad else 0)
