"""Scoring at scale: the multiple-choice reader and statistics on OUTPUTS answers of MODELS models, no model loaded.

Writes MODELS prediction files of OUTPUTS / MODELS rows each (a ~1,000-character think, then an answer drawn from
committed, hedged, rejected and malformed shapes) into a temporary folder, then times what benchmark.py does with
them: every row re-read by the reader (``benchmarks.rescored``), each model's summary per benchmark, and the paired
McNemar comparison of every two models from their files. Prints one JSON line.

    python bench/mcq_scale.py                        # 100,000 outputs, 5 models
    python bench/mcq_scale.py --outputs=500000       # 500,000
"""

import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medsft import benchmarks  # noqa: E402
from medsft.config import configure  # noqa: E402
from medsft.files import iter_jsonl, write_jsonl  # noqa: E402

OUTPUTS = 100_000  # answers in all, split evenly over the models
MODELS = 5  # prediction files compared pairwise
SEED = 0  # the synthetic answers' seed

SHAPES = ["答案：{g}", "**答案：{g}**", "答案是{o}，也可能是{g}", "答案：{g}项错误，{o}项正确", "{g}", "答案：{g}或{o}",
          "维生素{g}缺乏", "综上，A项错误，B项错误。\n答案：{g}", "答案：{o}。不对，应该选{g}"]


def main():
    configure(globals())
    rng = random.Random(SEED)
    n_items = OUTPUTS // MODELS
    benches = ["cmmlu", "medqa_mcmle", "cmb", "cmexam"]
    items = [{"benchmark": benches[i % 4], "id": str(i), "group": "all", "question": f"题{i}",
              "choices": ["甲", "乙", "丙", "丁", "戊"][:4 + (i % 2)], "gold": "ABCD"[i % 4], "multi": False}
             for i in range(n_items)]
    think = "<think>\n" + "分析每个选项，排除不符合的。" * 70 + "\n</think>\n\n"
    with tempfile.TemporaryDirectory() as tmp:
        for m in range(MODELS):
            rows = [{**it, "sample": 0, "output": think + rng.choice(SHAPES).format(g=rng.choice("ABCD"), o="ABCD"[
                (i + 1) % 4]), "finished": True, "think_tokens": 400} for i, it in enumerate(items)]
            write_jsonl(Path(tmp) / f"benchmark_m{m}.jsonl", rows)
        start = time.perf_counter()
        cpu = time.process_time()
        for m in range(MODELS):
            rows = [benchmarks.rescored(r) for _, r, _ in iter_jsonl(Path(tmp) / f"benchmark_m{m}.jsonl")]
            summary = {b: benchmarks.summarize([r for r in rows if r["benchmark"] == b]) for b in benches}
            write_jsonl(Path(tmp) / f"benchmark_m{m}.jsonl", rows)
        pairs = benchmarks.compare_pairs(tmp, [f"m{m}" for m in range(MODELS)])
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"outputs": n_items * MODELS, "models": MODELS, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                      "pairs": sum(map(len, pairs.values())), "unextractable_share_last_model": summary["cmmlu"]["overall"]
                      ["unextractable_rate"]}))


if __name__ == "__main__":
    main()
