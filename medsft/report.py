"""Charts and the results report, rebuilt from whatever evaluation summaries exist in a results directory.

Reads RESULTS_DIR/rouge_{base,full,lora}.json and cot_{base,full,lora}.json (and train_{full,lora}.json when the
training stage wrote them); writes rouge.png, cot.png, adherence.png, think_status.png and README.md, and for the
training scripts the loss curves trainloss.png and evalloss.png (``write_charts``); with benchmark.py's
benchmark_<name>.json(l), benchmark.pairs.json (every two models compared item by item, ``cmmlu.compare_pairs``).
The same summaries give the same bytes: no timestamps, PNG metadata without the software version, fixed styles and
colours.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from . import adherence, cmmlu
from .files import MedsftError, atomic_write_bytes, atomic_write_text, write_json
from .training.disk import disk_errors
from .training.outputs import KINDS, RESULTS_NAME

# matplotlib is imported inside the chart functions: it loads slowly, and the scripts' --help should not wait for it.

TAGS = ("base", "full", "lora")
LABELS = {"base": "base (untuned)", "full": "full fine-tune", "lora": "LoRA"}
COLORS = {"base": "#9e9e9e", "full": "#1f77b4", "lora": "#ff7f0e"}
ROUGE_METRICS = (("rouge-1", "R-1"), ("rouge-2", "R-2"), ("rouge-l", "R-L"))
STATS = (("p", "P"), ("r", "R"), ("f", "F"))
COT_MAIN = (("recall", "recall"), ("precision", "precision"), ("f1", "F1"))
# reference lines of cot.png: (summary key, legend label, line style, colour)
COT_BASELINES = (("chance", "chance (another question's reference)", "dashed", "black"),
                 ("answer_as_think", "answer-as-think (reference answer as the think)", "dotted", "#d62728"),
                 ("reference_as_think", "reference-as-think (ceiling)", "dashdot", "#2ca02c"))
OLD_MARK = "†"  # a summary written before the metric definitions of this version: its numbers are not comparable
LOSS_CHARTS = {"loss": "trainloss.png", "eval_loss": "evalloss.png"}  # history key -> chart of the training runs
CHART_SMOOTHING = 0.6  # TensorBoard-style EMA weight for the smoothed loss curves


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MedsftError(f"{path}: not a valid summary ({e}); delete it and rerun the evaluation that wrote it"
                          ) from None


def collect(results_dir) -> dict:
    """{"rouge": {tag: summary}, "cot": {...}, "train": {...}} for the summaries present, in base/full/lora order."""
    d = Path(results_dir)
    out = {}
    for kind in ("rouge", "cot"):
        out[kind] = {t: _read(d / f"{kind}_{t}.json") for t in TAGS if (d / f"{kind}_{t}.json").is_file()}
    out["train"] = {t: _read(d / f"train_{t}.json") for t in ("full", "lora") if (d / f"train_{t}.json").is_file()}
    out["benchmark"] = cmmlu.load_summaries(d)  # benchmark_<name>.json of benchmark.py, any names
    out["benchmark_pairs"] = cmmlu.compare_pairs(d, out["benchmark"])  # from their rows, item by item
    return out


# ---------------------------------------------------------------------------------------------------------- charts
def _png(fig) -> bytes:
    buf = io.BytesIO()
    # no "Software" text chunk (it carries the matplotlib version): same numbers, same bytes
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _figure(figsize):
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _bars(ax, groups: list[str], series: dict[str, list[float]], ylabel: str, ymax: float, fmt: str):
    n = max(1, len(series))
    width = 0.8 / n
    for k, (tag, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(groups))]
        # None: nothing to score (e.g. the think of rows asked not to think), drawn as an empty, labelled slot
        bars = ax.bar(xs, [0 if v is None else v for v in values], width, label=LABELS[tag], color=COLORS[tag])
        ax.bar_label(bars, labels=["n/a" if v is None else format(v, fmt) for v in values], fontsize=6, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, ymax)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def rouge_chart(rouge: dict) -> bytes:
    """Grouped bars per model: ROUGE-1/2/L P/R/F, answer view (top) and think view (bottom)."""
    fig = _figure((11, 7.5))
    axes = fig.subplots(2, 1)
    groups = [f"{m}-{s}" for _, m in ROUGE_METRICS for _, s in STATS]
    for ax, view, title in ((axes[0], "answer", "answer vs reference answer (headline)"),
                            (axes[1], "think", "think vs reference think")):
        series = {t: [s["views"][view][m][st] for m, _ in ROUGE_METRICS for st, _ in STATS] for t, s in rouge.items()}
        _bars(ax, groups, series, "score (x100)", 105, ".1f")
        ns = ", ".join(f"{t} n={s['n']}" for t, s in rouge.items())
        ax.set_title(f"ROUGE, {title} ({ns})", fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=len(rouge), fontsize=9)
    fig.suptitle("ROUGE (clipped n-gram counts on jieba words, macro-averaged)", fontsize=11)
    return _png(fig)


def _cot_baselines(summary: dict) -> dict:
    """{baseline: scores} of a cot summary; an older summary has only its chance floor."""
    found = dict(summary.get("baselines") or {})
    if not found and summary.get("chance_floor"):
        found["chance"] = summary["chance_floor"]
    return {name: found[name] for name, *_ in COT_BASELINES if found.get(name)}


def cot_chart(cot: dict) -> bytes:
    """Recall / precision / F1 per model, with each model's baselines drawn across its bar."""
    fig = _figure((9, 5.5))
    ax = fig.subplots()
    groups = [label for _, label in COT_MAIN]
    series = {t: [s["scores"][k] for k, _ in COT_MAIN] for t, s in cot.items()}
    _bars(ax, groups, series, "score (0-1)", 1.08, ".2f")
    width = 0.8 / max(1, len(cot))
    drawn = set()
    for k, (tag, s) in enumerate(cot.items()):
        baselines = _cot_baselines(s)
        for name, label, style, color in COT_BASELINES:
            if name not in baselines:
                continue
            for i, (key, _) in enumerate(COT_MAIN):
                x = i - 0.4 + width * (k + 0.5)
                if baselines[name][key] is None:
                    continue
                ax.hlines(baselines[name][key], x - width / 2, x + width / 2, colors=color, linestyles=style,
                          linewidth=1.2, label=None if name in drawn else label)
                drawn.add(name)
    tau = next(iter(cot.values())).get("tau")
    ns = ", ".join(f"{t} n={s['n']}" for t, s in cot.items())
    ax.set_title(f"Chain of thought vs reference think steps (offline, one-to-one, tau={tau}; {ns})", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    return _png(fig)


def _smooth(values: list[float], weight: float = CHART_SMOOTHING) -> list[float]:
    """TensorBoard's debiased exponential moving average."""
    out, last, n = [], 0.0, 0
    for v in values:
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out


def write_charts(results_dir) -> list[Path]:
    """Redraw ``trainloss.png`` and ``evalloss.png`` with every run whose ``train_{kind}.json`` exists.

    Each run is drawn raw (thin) and smoothed (EMA); same results ⇒ same PNG bytes.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    results_dir = Path(results_dir)
    runs = {}
    for kind in KINDS:
        p = results_dir / RESULTS_NAME.format(kind=kind)
        if p.is_file():
            try:
                runs[kind] = json.loads(p.read_text(encoding="utf-8")).get("log_history", [])
            except ValueError as e:
                raise MedsftError(f"{p}: invalid JSON ({e}); delete it and re-run its training") from None
    colors = {"full": "tab:blue", "lora": "tab:orange"}
    written = []
    for key, name in LOSS_CHARTS.items():
        with plt.rc_context({"svg.hashsalt": "medsft", "path.simplify": False}):
            fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
            for kind, hist in runs.items():
                pts = [(e["step"], e[key]) for e in hist if key in e and e[key] is not None]
                if not pts:
                    continue
                steps, vals = zip(*pts)
                ax.plot(steps, vals, color=colors[kind], alpha=0.3, linewidth=1,
                        marker="o" if key == "eval_loss" else None, markersize=3, label=f"{kind} (raw)")
                ax.plot(steps, _smooth(list(vals)), color=colors[kind], linewidth=2, label=f"{kind} (smoothed)")
            title = "Train loss" if key == "loss" else "Eval loss (val.jsonl)"
            ax.set_title(title)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("cross-entropy loss")
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend()
            else:
                ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes)
            png = _png(fig)
            plt.close(fig)
        with disk_errors(results_dir, name, "results_dir"):
            written.append(atomic_write_bytes(results_dir / name, png))
    return written


# ---------------------------------------------------------------------------------------------------------- report
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


def _runs(data: dict) -> list[str]:
    seen = {}
    for kind in ("cot", "rouge"):
        for tag, s in data[kind].items():
            seen.setdefault(tag, s.get("predictions") or {})
    rows = []
    for tag in TAGS:
        if tag not in seen:
            continue
        p = seen[tag]
        dec = p.get("decoding") or {}
        rows.append([LABELS[tag], _fmt(p.get("model")), _fmt(p.get("adapter")), f"`{_fmt(p.get('path'))}`",
                     _fmt(p.get("n"))] + [_fmt(dec.get(k)) for k in
                                          ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "seed")])
    return _table(["model", "model spec", "adapter", "predictions", "n", "max_new_tokens", "do_sample",
                   "temperature", "top_p", "top_k", "seed"], rows)


def _label(tag: str, summary: dict, current_key: str) -> str:
    return LABELS[tag] + ("" if current_key in summary else f" {OLD_MARK}")


def _old_note(summaries: dict, current_key: str, what: str) -> list[str]:
    if all(current_key in s for s in summaries.values()):
        return []
    return [f"{OLD_MARK} written by an older version ({what}): not comparable with the other rows; rerun its "
            "evaluation script.", ""]


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
        rows = [[_label(t, s, "definition")] + [_fmt(s["views"][view][m][st]) for m, _ in ROUGE_METRICS
                                                 for st, _ in STATS]
                + [s["n"], s["views"][view]["n_empty"], s["views"][view].get("n_na", 0)] for t, s in rouge.items()]
        out += _table(header, rows)
    out += _old_note(rouge, "definition", "rouge-chinese's n-gram sets")
    old = {t: s["rouge_chinese_exclusive"]["views"] for t, s in rouge.items() if s.get("rouge_chinese_exclusive")}
    if old:
        out += ["### For comparison: rouge-chinese's old numbers (F)", "",
                "rouge-chinese 1.0.3 with `exclusive=True` on the same words counts each n-gram once (a set), so "
                "repetition costs it nothing. Earlier results used it; it is not the headline.", ""]
        header = ["model"] + [f"{view} {m}" for view in ("answer", "think") for _, m in ROUGE_METRICS]
        rows = [[LABELS[t]] + [_fmt(v[view][m]["f"]) for view in ("answer", "think") for m, _ in ROUGE_METRICS]
                for t, v in old.items()]
        out += _table(header, rows)
    return out


def _cot_section(cot: dict) -> list[str]:
    first = next(iter(cot.values()))
    out = ["## Chain of thought (offline)", "",
           f"Steps of the generated think vs steps of the reference think (IDF-weighted character-bigram Dice). Each "
           f"generated step is paired with at most one reference step (greedy, most similar pair first) and a pair "
           f"matches from similarity {first.get('tau')}, so a repeated or copied step matches once and its copies "
           "count against precision. Recall: share of reference think steps matched. Precision: share of generated "
           "steps matched — supported by the reference, not medically verified. F1 is the headline. Soft: the "
           "matched similarities summed instead of counted. A sample without generated think scores 0 "
           "(`no think`); a question asked not to think is `n/a`, left out of the means and baselines.", ""]
    header = ["model", "recall", "precision", "F1", "soft R", "soft P", "soft F1", "n", "no think", "n/a"]
    rows = []
    for t, s in cot.items():
        sc = s["scores"]
        rows.append([_label(t, s, "matching")] + [_fmt(sc[k], 3) for k in ("recall", "precision", "f1", "soft_recall",
                                                                           "soft_precision", "soft_f1")]
                    + [s["n"], s["n_no_think"], s.get("n_think_na", 0)])
    out += _table(header, rows)
    out += _old_note(cot, "matching", "many-to-one matching, precision against think + answer")
    out += ["### Baselines on the same split", "",
            "Chance: the model's think against another question's reference (a fixed permutation, seed "
            f"{first.get('floor_seed')}); a score near it means nothing was learned. Answer-as-think: the reference "
            "answer's sentences used as the think — what restating the answer earns. Reference-as-think: the "
            "reference think itself, the ceiling.", ""]
    header = ["model"] + [f"{short} {k}" for short in ("chance", "answer", "ceiling") for k in ("R", "P", "F1")]
    rows = []
    for t, s in cot.items():
        b = _cot_baselines(s)
        rows.append([_label(t, s, "matching")] + [_fmt((b.get(name) or {}).get(k), 3) for name, *_ in COT_BASELINES
                                                  for k in ("recall", "precision", "f1")])
    out += _table(header, rows)
    judged = {t: s["judge"] for t, s in cot.items() if s.get("judge")}
    if judged:
        out += ["### LLM judge", ""]
        out += ["Averaged over the scored samples only: those the judge labelled, plus those without a think (0). "
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


def _train_section(train: dict) -> list[str]:
    """Every scalar field of train_<run>.json (written by train.py / train_lora.py), one row per field."""
    keys = []
    for summary in train.values():
        keys += [k for k, v in summary.items() if k not in keys and (v is None or isinstance(v, (int, float, str)))]
    rows = [[k] + [_fmt(s.get(k), 4) for s in train.values()] for k in keys]
    return ["## Training", ""] + _table(["field"] + [LABELS[t] for t in train], rows)


# What a run on a demo model can and cannot show, by the model spec it was trained from
DEMO_NOTES = {
    "tiny": "**This is the plumbing check** (`MODEL=tiny bash pipeline.sh`): a random-init 2-layer model trained for "
            "seconds. It shows that every stage runs and hands the next one its files, not that anything was "
            "learned: scores near 0 and outputs without a think are expected. For a model that visibly learns, "
            "run `bash demo/learn.sh`; for real numbers, Qwen3-1.7B on a GPU (`bash pipeline.sh`).",
    "small": "**This is the learning demo** (`bash demo/learn.sh`): a 2.9M-parameter random-init model, fully "
             "fine-tuned for minutes on the CPU on 32 demo rows, each in all three thinking modes, plus format-drill "
             "rows whose thinks and answers are shuffled runs of their sentences (`demo/augment.py`), and asked with "
             "sampling. What it can show: "
             "whether a model learns Qwen3's format and its two thinking switches (*Thinking switches*, beside the "
             "same model untrained: `base`). With 4 test questions each rate moves in steps of 0.25: a signal, not a "
             "measurement. What it cannot show: medical skill. At this size its thinks and answers are a sentence or "
             "two recalled from its training rows, often about another question, so ROUGE and chain-of-thought "
             "scores measure overlap with their style, not correctness.",
}


def _demo_note(data: dict) -> list[str]:
    specs = {str(s.get("model")) for s in data["train"].values()}
    specs |= {str((s.get("predictions") or {}).get("model")) for kind in ("cot", "rouge") for s in data[kind].values()}
    notes = [DEMO_NOTES[spec] for spec in DEMO_NOTES if spec in specs]
    return [n for note in notes for n in (note, "")]


def report_text(data: dict, charts: list[str]) -> str:
    out = ["# Results", "",
           "Rebuilt by evaluate.py / evaluate_lora.py / rouge_eval.py / rouge_eval_lora.py from the summaries in "
           "this folder (`rouge_<model>.json`, `cot_<model>.json`; per-sample scores in the `.jsonl` beside each). "
           "Do not edit by hand.", ""]
    out += _demo_note(data)
    out += ["## Runs", ""] + _runs(data)
    if data["rouge"]:
        out += _rouge_section(data["rouge"])
    if data["cot"]:
        out += adherence.section(data["cot"], LABELS, _table)
        out += _cot_section(data["cot"])
    if data["train"]:
        out += _train_section(data["train"])
    if data["benchmark"]:
        out += [cmmlu.markdown_section(data["benchmark"], data["benchmark_pairs"])]
    if charts:
        out += ["## Charts", ""] + [f"![{c}]({c})" for c in charts] + [""]
    return "\n".join(out)


def build(results_dir) -> list[Path]:
    """Rebuild rouge.png, cot.png, adherence.png + think_status.png (each when its summaries exist) and README.md;
    return the paths written."""
    d = Path(results_dir)
    data = collect(d)
    written, charts = [], []
    if data["rouge"]:
        written.append(atomic_write_bytes(d / "rouge.png", rouge_chart(data["rouge"])))
        charts.append("rouge.png")
    if data["cot"]:
        written.append(atomic_write_bytes(d / "cot.png", cot_chart(data["cot"])))
        charts.append("cot.png")
    if any(s.get("adherence") for s in data["cot"].values()):
        written.append(atomic_write_bytes(d / "adherence.png",
                                          adherence.adherence_chart(data["cot"], LABELS, COLORS, _png, _figure)))
        written.append(atomic_write_bytes(d / "think_status.png",
                                          adherence.think_status_chart(data["cot"], LABELS, _png, _figure)))
        charts += ["adherence.png", "think_status.png"]
    if data["benchmark"]:  # the paired comparison the report shows, as data (an empty list for one model)
        written.append(write_json(d / cmmlu.PAIRS_NAME, data["benchmark_pairs"]))
    charts += [c for c in ("benchmark.png", "trainloss.png", "evalloss.png") if (d / c).is_file()]
    written.append(atomic_write_text(d / "README.md", report_text(data, charts)))
    return written
