"""RESULTS_DIR's summaries -> its charts (charts.py) and README.md, the report of every number; same summaries,
same bytes."""
from __future__ import annotations

from pathlib import Path

from . import benchmarks, charts
from .chat import FLAGS, MODE_LABELS, MODES
from .charts import COT_BASELINES, LABELS, ROUGE_METRICS, STATS, adherences, cot_baselines, read_summary
from .config import TAGS
from .cot import COPY_SIMILARITY
from .files import atomic_write_bytes, atomic_write_text, write_json

OLD_MARK = "†"  # a summary written before the metric definitions of this version: its numbers are not comparable

def collect(results_dir) -> dict:
    """{"rouge": {tag: summary}, "cot": {...}, "train": {...}} for the summaries present, in base/full/lora order."""
    d = Path(results_dir)
    out = {kind: {t: read_summary(p) for t in tags if (p := d / f"{kind}_{t}.json").is_file()}
           for kind, tags in (("rouge", TAGS), ("cot", TAGS), ("train", ("full", "lora")))}
    out["benchmark"] = benchmarks.load_summaries(d)  # benchmark_<name>.json of benchmark.py, any names
    out["benchmark_pairs"] = benchmarks.compare_pairs(d, out["benchmark"])  # from their rows, item by item
    grpo = d / "train_grpo.json"
    out["grpo"] = read_summary(grpo, "re-run train_grpo.py") if grpo.is_file() else None
    return out

def _fmt(v, digits=2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v).replace("|", "\\|").replace("\n", " ")

def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]

def _same_file(a: dict, b: dict) -> bool:
    keys = ("path", "model", "adapter", "n") + (("sha256",) if "sha256" in a and "sha256" in b else ())
    return all(a.get(k) == b.get(k) for k in keys)

def _runs(data: dict) -> list[str]:
    keys = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "seed")
    rows, notes = [], []
    for t in TAGS:
        found = {kind: data[kind][t].get("predictions") or {} for kind in ("rouge", "cot") if t in data[kind]}
        one = len(found) < 2 or _same_file(found["rouge"], found["cot"])
        for kind, p in list(found.items())[1:] if one else found.items():  # one file: cot's row
            label = LABELS[t] + ("" if one else f" ({'ROUGE' if kind == 'rouge' else 'chain of thought'})")
            rows.append([label, _fmt(p.get("model")), _fmt(p.get("adapter")), f"`{_fmt(p.get('path'))}`",
                         _fmt(p.get("n"))] + [_fmt((p.get("decoding") or {}).get(k)) for k in keys])
        if not one:
            notes.append(f"**{LABELS[t]}: ROUGE and the chain of thought scored different predictions** (the two rows "
                         "above): its numbers below are not one run's; score one file with both scripts.")
    return _table(["model", "model spec", "adapter", "predictions", "n", *keys], rows) + [n + "\n" for n in notes]

def _label(tag: str, summary: dict, current_key: str) -> str:
    return LABELS[tag] + ("" if current_key in summary else f" {OLD_MARK}")

def _old_note(summaries: dict, current_key: str, what: str) -> list[str]:
    return [] if all(current_key in s for s in summaries.values()) else [
        f"{OLD_MARK} written by an older version ({what}): not comparable with the other rows; rerun its evaluation "
        "script.", ""]

def _rouge_section(rouge: dict) -> list[str]:
    first = next(iter(rouge.values()))
    versions = ", ".join(f"{k} {v}" for k, v in sorted(first.get("versions", {}).items()))
    out = ["## ROUGE", "",
           f"ROUGE-1/2/L precision (P), recall (R) and F ×100 on {first.get('tokenizer')}-segmented words "
           f"({versions}), macro-averaged over samples, as ROUGE-1.5.5 and Google's rouge-score define them: n-grams are counted "
           "with their multiplicity and clipped, so an answer repeated k times has about 1/k of the precision; "
           "ROUGE-L is the longest common subsequence of the word sequences. An empty prediction (or an unclosed "
           "think, which has no answer) scores 0 and is counted in `empty`, never skipped. A question asked not to "
           "think (its own /no_think) has no think to score: `n/a` in the think views, left out of their means.", ""]
    for view, title in (("answer", "Answer vs reference answer (headline)"), ("think", "Think vs reference think"),
                        ("full", "Whole output vs reference think + answer")):
        out += [f"### {title}", ""]
        header = ["model"] + [f"{m} {s}" for _, m in ROUGE_METRICS for _, s in STATS] + ["n", "empty", "n/a"]
        rows = [[_label(t, s, "definition")] + [_fmt(v[m][st]) for m, _ in ROUGE_METRICS for st, _ in STATS]
                + [s["n"], v["n_empty"], v.get("n_na", 0)] for t, s in rouge.items() for v in [s["views"][view]]]
        out += _table(header, rows)
    out += _old_note(rouge, "definition", "rouge-chinese's n-gram sets")
    old = {t: s["rouge_chinese_exclusive"]["views"] for t, s in rouge.items() if s.get("rouge_chinese_exclusive")}
    if old:
        out += ["### For comparison: rouge-chinese's old numbers (F)", "",
                "rouge-chinese 1.0.3 with `exclusive=True` on the same words counts each n-gram once (a set), so "
                "repetition costs it nothing. Earlier results used it; it is not the headline.", ""]
        rows = [[LABELS[t]] + [_fmt(v[view][m]["f"]) for view in ("answer", "think") for m, _ in ROUGE_METRICS]
                for t, v in old.items()]
        out += _table(["model"] + [f"{view} {m}" for view in ("answer", "think") for _, m in ROUGE_METRICS], rows)
    return out

def _cot_section(cot: dict) -> list[str]:
    first = next(iter(cot.values()))
    out = ["## Chain of thought (offline)", "",
           f"Steps of the generated think vs steps of the reference think (IDF-weighted character-bigram Dice). Each "
           f"generated step is paired with at most one reference step (greedy, most similar pair first) and a pair "
           f"matches from similarity {first.get('tau')}; a step copying an earlier step of its think (similarity ≥ "
           f"{COPY_SIMILARITY}) is never paired, so a repeated or copied step matches once and its copies count "
           "against precision only. Recall: share of reference think steps matched. Precision: share of generated "
           "steps matched — supported by the reference, not medically verified. F1 is the headline. Soft: the "
           "matched similarities summed instead of counted. A sample without generated think scores 0 "
           "(`no think`); a question asked not to think is `n/a`, left out of the means and baselines.", ""]
    header = ["model", "recall", "precision", "F1", "soft R", "soft P", "soft F1", "n", "no think", "n/a"]
    keys = ("recall", "precision", "f1", "soft_recall", "soft_precision", "soft_f1")
    rows = [[_label(t, s, "copy_similarity")] + [_fmt(s["scores"][k], 3) for k in keys]
            + [s["n"], s["n_no_think"], s.get("n_think_na", 0)] for t, s in cot.items()]
    out += _table(header, rows) + _old_note(cot, "copy_similarity", "a copied step could match another reference step")
    out += ["### Baselines on the same split", "",
            "Chance: the model's think against another question's reference (a fixed permutation, seed "
            f"{first.get('floor_seed')}); a score near it means nothing was learned. Answer-as-think: the reference "
            "answer's sentences used as the think — what restating the answer earns. Reference-as-think: the "
            "reference think itself, the ceiling.", ""]
    header = ["model"] + [f"{short} {k}" for short in ("chance", "answer", "ceiling") for k in ("R", "P", "F1")]
    rows = [[_label(t, s, "copy_similarity")] + [_fmt(b.get(name, {}).get(k), 3) for name, *_ in COT_BASELINES
                                          for k in keys[:3]] for t, s in cot.items() for b in [cot_baselines(s)]]
    out += _table(header, rows)
    judged = {t: s["judge"] for t, s in cot.items() if s.get("judge")}
    if judged:
        out += ["### LLM judge", "", "Averaged over the scored samples only: those the judge labelled, plus those without a think (0). "
                "Failed calls (fallback) and rows not asked to think are left out and counted.", ""]
        rows = [[LABELS[t], _fmt(j.get("model")), _fmt(j["recall"], 3), _fmt(j["precision"], 3), _fmt(j["f1"], 3),
                 j.get("n_scored"), j.get("n_judged"), j.get("n_fallback"), j.get("n_think_na")]
                for t, j in judged.items()]
        out += _table(["model", "judge", "recall", "precision", "F1", "n scored", "judged", "fallback, left out",
                       "not asked to think"], rows)
    out += ["### Reasoning format", ""]
    keys = (("closed_rate", "think closed"), ("unclosed_rate", "unclosed"), ("absent_rate", "absent"),
            ("truncation_rate", "truncated"), ("mean_think_chars", "think chars"),
            ("ref_mean_think_chars", "ref think chars"), ("mean_gen_steps", "steps"), ("mean_ref_steps", "ref steps"),
            ("repeated_step_share", "repeated steps"), ("mean_new_tokens", "new tokens"))
    rows = [[LABELS[t]] + [_fmt(s["format"].get(k), 3 if k.endswith(("rate", "share")) else 1) for k, _ in keys]
            for t, s in cot.items()]
    out += _table(["model"] + [label for _, label in keys], rows)
    out += [f"Rates are shares of samples; think chars count all samples (0 when absent); repeated steps: share of "
            f"generated steps with similarity ≥ {first.get('repeat_threshold')} to an earlier step of the same "
            "reasoning.", ""]
    return out

def _adherence_section(cot: dict) -> list[str]:
    if not (found := adherences(cot)):
        return []
    out = ["## Thinking switches (mode adherence)", "",
           "Share of test questions answered in the shape each mode asks for, and the mean answer length (reasoning "
           "moved into a no-think answer shows there). Thinking on: `<think>`, a think of at least 16 letters (CJK "
           "or Latin, not digits), `</think>`, a non-empty answer. /no_think: an empty think block or none, then an answer. "
           "enable_thinking=False (the prompt closed the think): an answer with no think tag. A think tag inside the "
           "answer, a `</think>` never opened, or an answer cut off at max_new_tokens obeys no mode. A fine-tune that forgot "
           "Qwen3's switches keeps thinking when told not to. `not measured`: no predictions in that mode; make "
           "them with inference.py and the flag in the header.", ""]
    header = ["model"] + [f"{MODE_LABELS[m]}{' `' + FLAGS[m] + '`' if FLAGS[m] else ''}" for m in MODES]
    chars = lambda a: f"; answer {a['answer_chars']:.0f} chars" if a.get("answer_chars") is not None else ""  # noqa: E731
    rows = [[LABELS[tag]] + ["not measured" if not a else "n/a (0 rows)" if a["rate"] is None
                             else f"{a['rate']:.2f} ({a['ok']}/{a['n']}){chars(a)}" for a in map(adh.get, MODES)]
            for tag, adh in found.items()]
    return out + _table(header, rows)

def _cell(c: dict | None) -> str:
    return f"{100 * c['accuracy']:.1f} [{100 * c['ci95'][0]:.1f}, {100 * c['ci95'][1]:.1f}]" if c and c["n"] else "–"

def _pairs_table(bench: str, pairs: list[dict]) -> list[str]:
    acc = lambda p, k: f"{100 * p[k] / p['n']:.1f}" if p["n"] else "–"  # noqa: E731
    rows = [[f"{LABELS.get(p['first'], p['first'])} vs {LABELS.get(p['second'], p['second'])}", p["n"],
             f"{acc(p, 'first_correct')} / {acc(p, 'second_correct')}", p["b"], p["c"], f"{p['p']:.3g}"] for p in pairs]
    return [f"Paired on the same items ({bench}):", ""] + _table(
        ["models (first vs second)", "n", "accuracy % (first / second)", "b", "c", "p"], rows)

_WHICH = ("source", "revision", "split", "selection", "options")  # what makes two models' items the same items
_DECODING = ("max_new_tokens", "do_sample", "enable_thinking")

def benchmark_section(runs: dict[str, dict], pairs: dict[str, list[dict]] | None = None) -> str:
    """Per benchmark: accuracy per subject/category and model, how each ran, the paired table; a model measured on
    other items (source, revision, sample or options) is marked ‡, never plainly side by side."""
    if not runs:
        return ""
    out = ["## Medical knowledge (multiple choice)", "",
           "Accuracy (%) with its 95% interval per benchmark (`benchmark_<model>.json` here). Letters are read after "
           "the think only where the answer commits to them and nothing after names another option; a hedge, a change "
           "of mind, a letter inside a word (维生素D) or a think never closed is unextractable and wrong; several "
           "answers count only as the exact set (rules: docs/metrics.md).", ""]
    for bench in dict.fromkeys(b for v in runs.values() for b in v["benchmarks"]):
        have = {t: v["benchmarks"][bench] for t, v in runs.items() if bench in v["benchmarks"]}
        first = next(iter(have.values()))
        mark = {t: "" if all(r.get(k) == first.get(k) for k in _WHICH) else " ‡" for t, r in have.items()}
        out += [f"### {first.get('title', bench)}", "",
                f"{first.get('split', 'test')} split, license {first.get('license', '?')}; chance "
                f"{_fmt(first.get('chance'), 3)}."
                + (" ‡: measured on other items than the first column (another source, revision, sample or option "
                   "set): not comparable side by side." if any(mark.values()) else ""), ""]
        groups = list(dict.fromkeys(g for r in have.values() for g in r.get("by_group", {})))
        cells = {g: [r.get("by_group", {}).get(g) for r in have.values()] for g in groups}
        cells |= {k: [r.get(k) for r in have.values()] for k in ("single", "multi", "majority")
                  if any(k in r for r in have.values())} | {"**overall**": [r["overall"] for r in have.values()]}
        rows = [[name, "/".join(str(n) for n in sorted({c["n"] for c in cs if c}))] + [_cell(c) for c in cs]
                for name, cs in cells.items()]
        out += _table(["subset", "n"] + [LABELS.get(t, t) + mark[t] for t in have], rows)
        rows = [[LABELS.get(t, t) + mark[t] + (f" {OLD_MARK}" if r.get("outdated") else ""),
                 _fmt(runs[t].get("model")), _fmt(runs[t].get("adapter")), o["n"], _fmt(r.get("samples")),
                 f"{o['unextractable']} ({_fmt(o.get('unextractable_rate'), 3)})", _fmt(o.get("option_line")),
                 f"{_fmt(o.get('cut_off'))} ({_fmt(o.get('cut_off_rate'), 3)})", _fmt(o.get("mean_think_tokens"), 0),
                 f"`{_fmt(r.get('selection'))}`"] + [_fmt((runs[t].get("decoding") or {}).get(k)) for k in _DECODING]
                for t, r in have.items() for o in [r["overall"]]]
        out += _table(["model", "model spec", "adapter", "n", "samples", "unextractable", "option line", "cut off",
                       "think tokens", "items", "max_new_tokens", "do_sample", "thinking"], rows)
        if (pairs or {}).get(bench):
            out += _pairs_table(bench, pairs[bench])
    if any(r.get("outdated") for v in runs.values() for r in v["benchmarks"].values()):
        out += [f"{OLD_MARK} an older CMMLU-only summary: rescore it with `python benchmark.py --score=<its .jsonl>`.", ""]
    if any((pairs or {}).values()):
        out += ["Two overlapping intervals are not a comparison: models are compared item by item. b: items only the "
                "first got right; c: only the second; p: exact McNemar test, each pair on its own; with several samples "
                f"each item's majority. n: items both answered (`{benchmarks.PAIRS_NAME}`).", ""]
    return "\n".join(out)

def _train_section(train: dict) -> list[str]:
    """Every scalar field of train_<run>.json (written by train.py / train_lora.py), one row per field."""
    keys = dict.fromkeys(k for s in train.values() for k, v in s.items()
                         if v is None or isinstance(v, (int, float, str)))
    rows = [[k] + [_fmt(s.get(k), 4) for s in train.values()] for k in keys]
    return ["## Training", ""] + _table(["field"] + [LABELS[t] for t in train], rows)

def _grpo_section(g: dict) -> list[str]:
    """The held-out correctness reward and mode adherence of train_grpo.json, before and after GRPO."""
    h, steps = g.get("heldout") or {}, g.get("steps") or [{"step": 0}]
    if not (h.get("before") and h.get("after")):
        return []
    rows = [[w, _fmt(h[w]["correct"], 3) + f" {(h.get('change') or {}).get(w + '_ci95', '')}"]
            + [f"{_fmt(b['correct'], 3)} / {_fmt(b['adherence'])}" for b in (h[w]["by_mode"][m] for m in MODES)]
            for w in ("before", "after")]
    ch = h.get("change") or {}
    return ["## GRPO (held-out multiple choice)", "",
            f"`train_grpo.json`: {h['before']['n_rows']} rows of `{g['dataset']}` never trained on (whole questions), "
            f"each asked in the three modes of `{g['model']}` (before) and of the GRPO model after {steps[-1]['step']} "
            "steps, sampled as in training. Cells: correctness reward [95% interval] / adherence."
            + (f" Paired: {ch['better']} better, {ch['worse']} worse, McNemar p = {ch['p']:.3g}." if ch else ""), ""] + \
        _table(["", "correct (all modes)"] + [MODE_LABELS[m] for m in MODES], rows)

# What a run on a demo model can and cannot show, by the model spec it was trained from
DEMO_NOTES = {
    "tiny": "**This is the plumbing check** (`MODEL=tiny bash pipeline.sh`): a random-init 2-layer model trained for "
            "seconds. It shows that every stage runs and hands the next one its files, not that anything was learned: "
            "scores near 0 and outputs without a think are expected. For a model that visibly learns, run `bash "
            "demo/learn.sh`; for real numbers, Qwen3-1.7B on a GPU (`bash pipeline.sh`).",
    "small": "**This is the learning demo** (`bash demo/learn.sh`): a 2.9M-parameter random-init model, fully "
             "fine-tuned for minutes on the CPU on 32 demo rows, each in all three thinking modes, plus format-drill "
             "rows whose thinks and answers are shuffled runs of their sentences (`demo/augment.py`), and asked with "
             "sampling. What it can show: whether a model learns Qwen3's format and its two thinking switches "
             "(*Thinking switches*, beside the same model untrained: `base`). With 4 test questions each rate moves in "
             "steps of 0.25: a signal, not a measurement. What it cannot show: medical skill. At this size its thinks "
             "and answers are a sentence or two recalled from its training rows, often about another question, so "
             "ROUGE and chain-of-thought scores measure overlap with their style, not correctness.",
}

def _demo_note(data: dict) -> list[str]:
    specs = {str(s.get("model")) for s in data["train"].values()}
    specs |= {str((s.get("predictions") or {}).get("model")) for kind in ("cot", "rouge") for s in data[kind].values()}
    return [n for spec, note in DEMO_NOTES.items() if spec in specs for n in (note, "")]

def report_text(data: dict, pngs: list[str]) -> str:
    out = ["# Results", "",
           "Rebuilt by evaluate.py / evaluate_lora.py / rouge_eval.py / rouge_eval_lora.py from the summaries in "
           "this folder (`rouge_<model>.json`, `cot_<model>.json`; per-sample scores in the `.jsonl` beside each). "
           "Do not edit by hand.", ""]
    out += _demo_note(data) + ["## Runs", ""] + _runs(data)
    for kind, section in (("rouge", _rouge_section), ("cot", lambda c: _adherence_section(c) + _cot_section(c)),
                          ("train", _train_section), ("grpo", _grpo_section),
                          ("benchmark", lambda b: [benchmark_section(b, data["benchmark_pairs"])])):
        if data[kind]:
            out += section(data[kind])
    if pngs:
        out += ["## Charts", ""] + [f"![{c}]({c})" for c in pngs] + [""]
    return "\n".join(out)

def build(results_dir) -> list[Path]:
    """Rebuild the charts whose summaries exist, benchmark.pairs.json and README.md; return the paths written."""
    d = Path(results_dir)
    data = collect(d)
    written, shown, adh = [], [], data["cot"] if adherences(data["cot"]) else {}
    for name, chart, summaries in (("rouge.png", charts.rouge_chart, data["rouge"]),
                                   ("cot.png", charts.cot_chart, data["cot"]),
                                   ("adherence.png", charts.adherence_chart, adh),
                                   ("think_status.png", charts.think_status_chart, adh)):
        if summaries:
            written.append(atomic_write_bytes(d / name, chart(summaries)))
            shown.append(name)
    if data["benchmark"]:  # the paired comparison the report shows, as data (an empty list for one model)
        written.append(write_json(d / benchmarks.PAIRS_NAME, data["benchmark_pairs"]))
    shown += [c for c in ("benchmark.png", "trainloss.png", "evalloss.png", "rewards.png", "completion_length.png")
               if (d / c).is_file()]
    written.append(atomic_write_text(d / "README.md", report_text(data, shown)))
    return written

