"""Mode adherence: the share of a model's test predictions, per thinking mode, that finished in the shape the mode
asks for (``chat.output_shape`` / ``chat.obeying_shapes``); no-think predictions are inference.py's
``<stem>.<mode>.jsonl`` beside each file (``predict.mode_output``). The report draws them (report.py)."""
from __future__ import annotations

from collections import Counter

from .chat import MODES, SHORT, obeying_shapes, output_shape, split_output

# every shape an output can have, in the order the summaries list them and think_status.png stacks them
SHAPES = ("think", "empty_think", "no_think", "unclosed", "no_answer", "stray_tag", "cut_off")

def measure(rows_by_mode: dict) -> dict:
    """{mode: {"rate", "ok", "n", "shapes", "answer_chars"} or None (no predictions in that mode)}; only rows
    recorded in that mode count, and only a finished answer (end of turn before max_new_tokens) obeys.
    answer_chars: the mean answer length, so reasoning moved from the think into the answer shows."""
    out = {}
    for mode in MODES:
        rows = rows_by_mode.get(mode)
        if rows is None:
            out[mode] = None
            continue
        rows = [r for r in rows if r.get("mode", "think") == mode]
        shapes = Counter(output_shape(r["output"], r.get("finished", True) is not False) for r in rows)
        ok = sum(shapes[key] for key in obeying_shapes(mode))
        out[mode] = {"rate": ok / len(rows) if rows else None, "ok": ok, "n": len(rows),
                     "shapes": {key: shapes.get(key, 0) for key in SHAPES},
                     "answer_chars": sum(len(split_output(r["output"])[1]) for r in rows) / len(rows) if rows else None}
    return out

def line(adherence: dict) -> str:
    """``think-on=1.00 (4/4), no-think-soft=0.75 (3/4), no-think-hard=n/a``"""
    parts = []
    for mode in MODES:
        a = adherence.get(mode)
        value = "n/a" if not a or a["rate"] is None else f"{a['rate']:.2f} ({a['ok']}/{a['n']})"
        parts.append(f"{SHORT[mode]}={value}")
    return ", ".join(parts)
