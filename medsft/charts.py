"""Every chart of RESULTS_DIR (PNG) from its summaries, and the labels and colours the report shares with them;
the only matplotlib importer (inside the chart functions: the scripts' --help should not wait for it); same
summaries, same bytes."""
from __future__ import annotations

import io
import json
from pathlib import Path

from . import adherence, benchmarks
from .chat import MODE_LABELS, MODES, SHORT
from .config import KINDS, RESULTS_NAME
from .files import MedsftError, atomic_write_bytes, disk_errors
from .rouge import ROUGE_METRICS as _ROUGE_KEYS

LABELS = {"base": "base (untuned)", "full": "full fine-tune", "lora": "LoRA", "grpo": "GRPO"}
COLORS = {"base": "#9e9e9e", "full": "#1f77b4", "lora": "#ff7f0e", "grpo": "#2ca02c"}
ROUGE_METRICS = tuple((m, "R-" + m.split("-")[1].upper()) for m in _ROUGE_KEYS)  # (key, label)
STATS = (("p", "P"), ("r", "R"), ("f", "F"))
COT_MAIN = (("recall", "recall"), ("precision", "precision"), ("f1", "F1"))
# reference lines of cot.png: (summary key, legend label, line style, colour)
COT_BASELINES = (("chance", "chance (another question's reference)", "dashed", "black"),
                 ("answer_as_think", "answer-as-think (reference answer as the think)", "dotted", "#d62728"),
                 ("reference_as_think", "reference-as-think (ceiling)", "dashdot", "#2ca02c"))
LOSS_CHARTS = {"loss": "trainloss.png", "eval_loss": "evalloss.png"}  # history key -> chart of the training runs
CHART_SMOOTHING = 0.6  # TensorBoard-style EMA weight for the smoothed loss curves
# legend label and colour of each adherence.SHAPES in think_status.png
SHAPE_STYLES = {"think": ("closed think with text", "#1f77b4"), "empty_think": ("empty think block", "#2ca02c"),
                "no_think": ("no think block", "#98df8a"), "unclosed": ("think never closed", "#d62728"),
                "no_answer": ("no answer after the think", "#ff9896"),
                "stray_tag": ("think tag inside the answer", "#9467bd"), "cut_off": ("cut off at max_new_tokens", "#7f7f7f")}
def read_summary(path: Path, fix: str = "rerun the evaluation that wrote it") -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MedsftError(f"{path}: not a valid summary ({e}); delete it and {fix}") from None
def _png(fig, legend=None, ncol=1, fontsize=8) -> bytes:
    if legend:  # (handles, labels) of the figure's legend, below the axes
        fig.legend(*legend, loc="outside lower center", ncol=ncol, fontsize=fontsize)
    buf = io.BytesIO()
    # no "Software" text chunk (it carries the matplotlib version): same numbers, same bytes
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()
def _figure(figsize, *grid):
    import matplotlib
    matplotlib.use("Agg")  # files only; never a window
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(*grid)
def _axes(ax, ylabel: str, ymax: float) -> None:
    ax.set(ylabel=ylabel, ylim=(0, ymax))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
def _bars(ax, groups: list[str], series: dict[str, list[float]], ylabel: str, ymax: float, fmt: str):
    width = 0.8 / max(1, len(series))
    for k, (tag, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(groups))]
        # None: nothing to score (e.g. the think of rows asked not to think), drawn as an empty, labelled slot
        bars = ax.bar(xs, [0 if v is None else v for v in values], width, label=LABELS[tag], color=COLORS[tag])
        ax.bar_label(bars, labels=["n/a" if v is None else format(v, fmt) for v in values], fontsize=6, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    _axes(ax, ylabel, ymax)
def rouge_chart(rouge: dict) -> bytes:
    """Grouped bars per model: ROUGE-1/2/L P/R/F, answer view (top) and think view (bottom)."""
    fig, axes = _figure((11, 7.5), 2, 1)
    groups = [f"{m}-{s}" for _, m in ROUGE_METRICS for _, s in STATS]
    for ax, view, title in ((axes[0], "answer", "answer vs reference answer (headline)"),
                            (axes[1], "think", "think vs reference think")):
        series = {t: [s["views"][view][m][st] for m, _ in ROUGE_METRICS for st, _ in STATS] for t, s in rouge.items()}
        _bars(ax, groups, series, "score (x100)", 105, ".1f")
        ns = ", ".join(f"{t} n={s['n']}" for t, s in rouge.items())
        ax.set_title(f"ROUGE, {title} ({ns})", fontsize=10)
    fig.suptitle("ROUGE (clipped n-gram counts on jieba words, macro-averaged)", fontsize=11)
    return _png(fig, axes[0].get_legend_handles_labels(), len(rouge), 9)
def cot_baselines(summary: dict) -> dict:
    """{baseline: scores} of a cot summary; an older summary has only its chance floor."""
    found = summary.get("baselines") or {"chance": summary.get("chance_floor")}
    return {name: found[name] for name, *_ in COT_BASELINES if found.get(name)}
def cot_chart(cot: dict) -> bytes:
    """Recall / precision / F1 per model, with each model's baselines drawn across its bar."""
    fig, ax = _figure((9, 5.5))
    series = {t: [s["scores"][k] for k, _ in COT_MAIN] for t, s in cot.items()}
    _bars(ax, [label for _, label in COT_MAIN], series, "score (0-1)", 1.08, ".2f")
    width, drawn = 0.8 / max(1, len(cot)), set()
    for k, (tag, s) in enumerate(cot.items()):
        baselines = cot_baselines(s)
        for name, label, style, color in (b for b in COT_BASELINES if b[0] in baselines):
            for i, y in enumerate(baselines[name][key] for key, _ in COT_MAIN):
                x = i - 0.4 + width * (k + 0.5)
                if y is not None:
                    ax.hlines(y, x - width / 2, x + width / 2, colors=color, linestyles=style, linewidth=1.2,
                              label=None if name in drawn else label)
                    drawn.add(name)
    ns = ", ".join(f"{t} n={s['n']}" for t, s in cot.items())
    ax.set_title(f"Chain of thought vs reference think steps (offline, one-to-one, "
                 f"tau={next(iter(cot.values())).get('tau')}; {ns})", fontsize=10)
    return _png(fig, ax.get_legend_handles_labels(), 3)
def adherences(cot: dict) -> dict:
    return {tag: s["adherence"] for tag, s in cot.items() if s.get("adherence")}  # tag -> adherence.measure
def adherence_chart(cot: dict) -> bytes:
    """Grouped bars: adherence per mode, one bar per model; a mode without predictions is marked, not drawn as 0."""
    found = adherences(cot)
    fig, ax = _figure((8, 4.5))
    width = 0.8 / max(1, len(found))
    for k, (tag, adh) in enumerate(found.items()):
        for i, a in enumerate(map(adh.get, MODES)):
            x = i - 0.4 + width * (k + 0.5)
            if not a or a["rate"] is None:
                ax.text(x, 0.02, "not\nmeasured", ha="center", va="bottom", fontsize=6, color="#555555")
                continue
            bar = ax.bar([x], [a["rate"]], width, color=COLORS[tag], label=LABELS[tag] if i == 0 else None)
            ax.bar_label(bar, labels=[f"{a['rate']:.2f}\n{a['ok']}/{a['n']}"], fontsize=6, padding=1)
    ax.set_xticks(range(len(MODES)), [MODE_LABELS[m] for m in MODES], fontsize=8)
    _axes(ax, "share of right-shaped answers", 1.15)
    ax.set_title("Mode adherence: does the model obey Qwen3's thinking switches?", fontsize=10)
    return _png(fig, ax.get_legend_handles_labels(), max(1, len(found)))
def think_status_chart(cot: dict) -> bytes:
    """One stacked bar per (model, mode): the shares of the shapes its outputs took."""
    found = adherences(cot)
    bars = [(f"{LABELS[tag]}\n{SHORT[mode]}", adh[mode]) for tag, adh in found.items() for mode in MODES
            if adh.get(mode) and adh[mode]["n"]]
    fig, ax = _figure((8, 1.2 + 0.45 * max(1, len(bars))))
    ys, left = list(range(len(bars))), [0.0] * len(bars)
    for key in adherence.SHAPES:
        label, color = SHAPE_STYLES[key]
        shares = [a["shapes"][key] / a["n"] for _, a in bars]
        ax.barh(ys, shares, left=left, color=color, label=label, height=0.7)
        left = [lo + s for lo, s in zip(left, shares)]
    ax.set_yticks(ys, [name for name, _ in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="share of test answers")
    ax.set_title("Think status of the outputs, per model and mode", fontsize=10)
    return _png(fig, ax.get_legend_handles_labels(), 3, 7)
def benchmark_chart(summaries: dict[str, dict]) -> bytes:
    """One panel per benchmark: accuracy by subject or category and overall, a bar per model with its 95% interval,
    the chance level of a uniform guess."""
    benches = list(dict.fromkeys(b for v in summaries.values() for b in v["benchmarks"]))
    fig, axes = _figure((12, 4.2 * len(benches)), len(benches), 1)
    axes = [axes] if len(benches) == 1 else list(axes)
    spare = iter(["#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"])
    colors = {name: COLORS.get(name) or next(spare, "#7f7f7f") for name in summaries}
    for ax, bench in zip(axes, benches):
        runs = {name: v["benchmarks"][bench] for name, v in summaries.items() if bench in v["benchmarks"]}
        groups = list(dict.fromkeys(g for r in runs.values() for g in r.get("by_group", {}))) + ["overall"]
        width = 0.8 / max(1, len(runs))
        for k, (name, r) in enumerate(runs.items()):
            cells = [(i, c) for i, g in enumerate(groups)
                     if (c := r["overall"] if g == "overall" else r["by_group"].get(g)) and c["n"]]
            xs = [i - 0.4 + width * (k + 0.5) for i, _ in cells]
            acc = [c["accuracy"] for _, c in cells]
            err = [[a - c["ci95"][0] for a, (_, c) in zip(acc, cells)],
                   [c["ci95"][1] - a for a, (_, c) in zip(acc, cells)]]
            bars = ax.bar(xs, acc, width, yerr=err, capsize=2, color=colors[name], ecolor=colors[name],
                          label=LABELS.get(name, name))  # an interval stays its model's when the bar is 0
            ax.bar_label(bars, labels=[f"{100 * a:.0f}" for a in acc], fontsize=6, padding=1)
        if (level := next(iter(runs.values())).get("chance")) is not None:
            ax.axhline(level, color="black", linestyle="dashed", linewidth=1, label="chance (a uniform guess)")
        ax.set_xticks(range(len(groups)), [benchmarks.GROUP_LABELS.get(g, g).replace("_", "\n") for g in groups])
        _axes(ax, "accuracy", 1.05)
        n = "/".join(str(v) for v in sorted({r["overall"]["n"] for r in runs.values()}))
        ax.set_title(f"{bench}: accuracy with 95% intervals (n={n}; unextractable counts as wrong)", fontsize=10)
    legend = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
    return _png(fig, (list(legend.values()), list(legend)), len(legend))
def write_benchmark_chart(results_dir) -> Path:
    """benchmark.png from every benchmark summary now in ``results_dir``."""
    return atomic_write_bytes(Path(results_dir) / "benchmark.png", benchmark_chart(benchmarks.load_summaries(results_dir)))
def _smooth(values: list[float], weight: float = CHART_SMOOTHING) -> list[float]:
    """TensorBoard's debiased exponential moving average."""
    out, last = [], 0.0
    for n, v in enumerate(values, 1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out
def _curves(title: str, ylabel: str, curves: list[tuple[str, str, list, list]], marker=None) -> bytes:
    """One line chart: each (label, colour, steps, values) raw (thin) and smoothed (EMA)."""
    import matplotlib
    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt
    with plt.rc_context({"svg.hashsalt": "medsft", "path.simplify": False}):
        fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
        for label, color, steps, vals in curves:
            ax.plot(steps, vals, color=color, alpha=0.3, linewidth=1, marker=marker, markersize=3, label=f"{label} (raw)")
            ax.plot(steps, _smooth(list(vals)), color=color, linewidth=2, label=f"{label} (smoothed)")
        ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
        ax.grid(True, alpha=0.3)
        _ = ax.legend() if ax.lines else ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes)
        png = _png(fig)
        plt.close(fig)
    return png
def _points(hist: list[dict], key: str) -> tuple[list, list]:
    pts = [(e["step"], e[key]) for e in hist if e.get(key) is not None]
    return (list(s) for s in zip(*pts)) if pts else ([], [])
def write_charts(results_dir) -> list[Path]:
    """trainloss.png and evalloss.png: every run with a train_<kind>.json, raw (thin) and smoothed (EMA)."""
    results_dir, colors = Path(results_dir), {"full": "tab:blue", "lora": "tab:orange"}
    runs = {kind: read_summary(p, "re-run its training").get("log_history", []) for kind in KINDS
            if (p := results_dir / RESULTS_NAME.format(kind=kind)).is_file()}
    pngs = ((name, _curves("Train loss" if key == "loss" else "Eval loss (val.jsonl)", "cross-entropy loss",
                           [c for kind, hist in runs.items() if (c := (kind, colors[kind], *_points(hist, key)))[2]],
                           marker="o" if key == "eval_loss" else None)) for key, name in LOSS_CHARTS.items())
    return _write_pngs(results_dir, pngs)  # each chart made as it is written
def write_grpo_charts(results_dir, results: dict) -> list[Path]:
    """rewards.png (each reward's mean per step) and completion_length.png (mean completion tokens) of a GRPO run."""
    results_dir, steps = Path(results_dir), results.get("steps") or []
    palette = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"])
    rewards = [(name, next(palette, "tab:gray"), *_points(steps, f"{name}_mean")) for name in results["rewards"]]
    lengths = [("mean completion", "tab:blue", *_points(steps, "completion_mean_length"))]
    return _write_pngs(results_dir, (("rewards.png", _curves("GRPO rewards (mean per step)", "reward", rewards)),
                                     ("completion_length.png", _curves("GRPO completion length", "tokens", lengths))))
def _write_pngs(results_dir: Path, pngs) -> list[Path]:
    written = []
    for name, png in pngs:
        with disk_errors(results_dir, name, "results_dir"):
            written.append(atomic_write_bytes(results_dir / name, png))
    return written
