"""Mode adherence: does a model do what Qwen3's thinking switches ask, after fine-tuning as before it?

For each model (base / full / LoRA) and each mode (thinking on; ``/no_think``, the soft switch; enable_thinking=False,
the hard switch), the share of test predictions that finished in the right shape (``chat.output_shape``): thinking on
wants a closed, non-empty think, then a non-empty answer; off wants an empty think block or none, then a non-empty
answer; an answer with a think tag inside (a second ``</think>``) or an output cut off at max_new_tokens obeys
neither. The predictions of each mode are inference.py's files: OUTPUT for thinking on, ``<stem>.<mode>.jsonl``
beside it for the others (``predict.mode_output``). This module measures (``measure``) and presents: the report
section, adherence.png and think_status.png (what shape the outputs took, per model and mode).
"""
from __future__ import annotations

from collections import Counter

from .chat import obeying_shapes
from .chat import output_shape as shape  # which of SHAPES an output has

MODES = ("think", "no_think_soft", "no_think_hard")  # chat.MODES in the order the issue, tables and charts use

MODE_LABELS = {"think": "thinking on", "no_think_soft": "/no_think (soft switch)",
               "no_think_hard": "enable_thinking=False (hard switch)"}
SHORT = {"think": "think-on", "no_think_soft": "no-think-soft", "no_think_hard": "no-think-hard"}
FLAGS = {"think": "", "no_think_soft": "--soft_switch=/no_think", "no_think_hard": "--enable_thinking=false"}
# shape of one output, in the order think_status.png stacks them: (key, legend label, colour)
SHAPES = (("think", "closed think with text", "#1f77b4"), ("empty_think", "empty think block", "#2ca02c"),
          ("no_think", "no think block", "#98df8a"), ("unclosed", "think never closed", "#d62728"),
          ("no_answer", "no answer after the think", "#ff9896"),
          ("stray_tag", "think tag inside the answer", "#9467bd"), ("cut_off", "cut off at max_new_tokens", "#7f7f7f"))


def measure(rows_by_mode: dict) -> dict:
    """{mode: {"rate", "ok", "n", "shapes"} or None (no predictions in that mode)} from prediction rows by mode.

    A row obeys when it finished (end-of-turn before max_new_tokens) in a shape ``chat.obeying_shapes`` names.
    Only rows recorded in that mode count (a question of the thinking file that carried its own ``/no_think`` was
    asked something else)."""
    out = {}
    for mode in MODES:
        rows = rows_by_mode.get(mode)
        if rows is None:
            out[mode] = None
            continue
        rows = [r for r in rows if r.get("mode", "think") == mode]
        # only a finished answer obeys: text cut off at max_new_tokens without think tags is not a no-think answer
        shapes = Counter(shape(r["output"], r.get("finished", True) is not False) for r in rows)
        ok = sum(shapes[key] for key in obeying_shapes(mode))
        out[mode] = {"rate": ok / len(rows) if rows else None, "ok": ok, "n": len(rows),
                     "shapes": {key: shapes.get(key, 0) for key, *_ in SHAPES}}
    return out


def line(adherence: dict) -> str:
    """``think-on=1.00 (4/4), no-think-soft=0.75 (3/4), no-think-hard=n/a``"""
    parts = []
    for mode in MODES:
        a = adherence.get(mode)
        value = "n/a" if not a or a["rate"] is None else f"{a['rate']:.2f} ({a['ok']}/{a['n']})"
        parts.append(f"{SHORT[mode]}={value}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------------- presentation
def _adherence(cot: dict) -> dict:
    return {tag: s["adherence"] for tag, s in cot.items() if s.get("adherence")}


def section(cot: dict, labels: dict, table) -> list[str]:
    """The report's "Thinking switches" section from the cot summaries (empty when none measured adherence);
    ``table(header, rows)`` is the report's markdown table."""
    found = _adherence(cot)
    if not found:
        return []
    out = ["## Thinking switches (mode adherence)", "",
           "Share of test questions answered in the shape each mode asks for. Thinking on: a closed, non-empty think, "
           "then a non-empty answer. /no_think (appended to the question) and enable_thinking=False (the prompt "
           "closes an empty think): an empty think block or none, then a non-empty answer. An answer with a think tag "
           "inside it (a second `</think>`), or cut off at max_new_tokens, obeys no mode. A fine-tune that forgot "
           "Qwen3's switches keeps thinking when told not to. `not measured`: no predictions in that mode; make "
           "them with inference.py and the flag in the header.", ""]
    header = ["model"] + [f"{MODE_LABELS[m]}{' `' + FLAGS[m] + '`' if FLAGS[m] else ''}" for m in MODES]
    rows = []
    for tag, adh in found.items():
        cells = []
        for mode in MODES:
            a = adh.get(mode)
            cells.append("not measured" if not a else "n/a (0 rows)" if a["rate"] is None
                         else f"{a['rate']:.2f} ({a['ok']}/{a['n']})")
        rows.append([labels[tag]] + cells)
    return out + table(header, rows)


def adherence_chart(cot: dict, labels: dict, colors: dict, png, figure) -> bytes:
    """Grouped bars: adherence per mode, one bar per model; a mode without predictions is marked, not drawn as 0."""
    found = _adherence(cot)
    fig = figure((8, 4.5))
    ax = fig.subplots()
    width = 0.8 / max(1, len(found))
    for k, (tag, adh) in enumerate(found.items()):
        for i, mode in enumerate(MODES):
            x = i - 0.4 + width * (k + 0.5)
            a = adh.get(mode)
            if not a or a["rate"] is None:
                ax.text(x, 0.02, "not\nmeasured", ha="center", va="bottom", fontsize=6, color="#555555")
                continue
            bar = ax.bar([x], [a["rate"]], width, color=colors[tag], label=labels[tag] if i == 0 else None)
            ax.bar_label(bar, labels=[f"{a['rate']:.2f}\n{a['ok']}/{a['n']}"], fontsize=6, padding=1)
    ax.set_xticks(range(len(MODES)), [MODE_LABELS[m] for m in MODES], fontsize=8)
    ax.set_ylabel("share of right-shaped answers")
    ax.set_ylim(0, 1.15)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title("Mode adherence: does the model obey Qwen3's thinking switches?", fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=max(1, len(found)), fontsize=8)
    return png(fig)


def think_status_chart(cot: dict, labels: dict, png, figure) -> bytes:
    """One stacked bar per (model, mode): the shapes its outputs took (think with text, empty think, no think,
    unclosed, no answer), as shares."""
    found = _adherence(cot)
    bars = [(f"{labels[tag]}\n{SHORT[mode]}", adh[mode]) for tag, adh in found.items() for mode in MODES
            if adh.get(mode) and adh[mode]["n"]]
    fig = figure((8, 1.2 + 0.45 * max(1, len(bars))))
    ax = fig.subplots()
    ys = range(len(bars))
    left = [0.0] * len(bars)
    for key, label, color in SHAPES:
        shares = [a["shapes"][key] / a["n"] for _, a in bars]
        ax.barh(list(ys), shares, left=left, color=color, label=label, height=0.7)
        left = [lo + s for lo, s in zip(left, shares)]
    ax.set_yticks(list(ys), [name for name, _ in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of test answers")
    ax.set_title("Think status of the outputs, per model and mode", fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=7)
    return png(fig)
