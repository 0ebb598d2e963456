"""Training examples: the {question, think, answer} rows of a JSONL file tokenized with the chat template, prompt
masked, in the thinking / non-thinking mix NO_THINK_RATIO asks for."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from ..chat import IGNORE_INDEX, MODES, control_tokens, example_modes, find_control_token, tokenize_example
from ..files import MedsftError, iter_jsonl


def prepare_examples(path, tokenizer, max_length: int, system=None, no_think_ratio: float = 0.0,
                     seed: int = 0) -> tuple[list[dict], dict]:
    """Tokenize the {question, think, answer} rows of a JSONL file for SFT.

    A ``no_think_ratio`` share of rows, chosen by seed and row id (``medsft.chat.example_modes``), become
    non-thinking examples (half Qwen3's hard switch, half the soft ``/no_think``), so the tuned model keeps
    obeying both; rows with an empty think are always non-thinking. A row's own ``mode`` field (one of
    ``medsft.chat.MODES``), when present, wins over that choice. ``stats["modes"]`` counts each kind.

    Returns ``(examples, stats)``: examples are ``{"input_ids", "labels", "attention_mask"}`` lists (prompt
    labels -100, see ``medsft.chat.tokenize_example``); stats are ``{"path", "rows", "kept",
    "skipped_too_long", "skipped_control_tokens", "tokens", "supervised_tokens", "longest"}``. Rows longer than
    ``max_length`` are skipped and counted (a truncated answer would teach the model not to stop), and so are rows
    whose text holds a chat control token (``medsft.chat.control_tokens``: a fake turn would be learned as the
    assistant's output), each named ``path:line`` as data.py names them: a hand-made file with one such row still
    trains on the rest. A bad line or field raises MedsftError naming ``path:line``.
    """
    path = Path(path)
    rows, n_control, tokens = [], 0, control_tokens(tokenizer)
    for lineno, obj, err in iter_jsonl(path):
        if err:
            raise MedsftError(f"{path}:{lineno}: {err}; fix or remove that line")
        for key in ("question", "think", "answer"):
            if not isinstance(obj.get(key), str) or (key != "think" and not obj[key].strip()):
                raise MedsftError(f"{path}:{lineno}: field '{key}' must be a non-empty string; re-run data.py "
                                  "or fix that line")
        if obj.get("mode") is not None and obj["mode"] not in MODES:
            raise MedsftError(f"{path}:{lineno}: field 'mode' is {obj['mode']!r}; use one of {', '.join(MODES)} "
                              "or remove the field (then NO_THINK_RATIO decides)")
        hit = find_control_token(obj, ("question", "think", "answer"), tokens)
        if hit:
            n_control += 1
            print(f"skip {path}:{lineno}: field '{hit[0]}' holds the chat control token {hit[1]!r}, which would be "
                  "trained as a real turn; remove it from that line (data.py rejects such rows)")
            continue
        rows.append(obj)
    if not rows:
        raise MedsftError(f"{path}: all {n_control} rows hold chat control tokens (named above); re-run data.py, "
                          "which rejects them" if n_control else f"{path} has no rows: re-run data.py")
    if not 0 <= no_think_ratio <= 1:
        raise MedsftError(f"--no_think_ratio={no_think_ratio}: must be between 0 and 1")
    modes = example_modes([str(r.get("id") or r["question"]) for r in rows], no_think_ratio, seed)
    examples, skipped, counts = [], 0, {}
    for row, mode in tqdm(list(zip(rows, modes)), desc=f"tokenize {path.name}", unit="row", disable=len(rows) < 200):
        mode = row.get("mode") or mode
        mode = mode if row["think"].strip() or mode != "think" else "no_think_hard"  # never an empty think trained
        ex = tokenize_example(tokenizer, row, max_length, system=system, mode=mode)
        if ex is None:
            skipped += 1
        else:
            examples.append(ex)
            counts[mode] = counts.get(mode, 0) + 1
    stats = {"path": str(path), "rows": len(rows) + n_control, "kept": len(examples), "skipped_too_long": skipped,
             "skipped_control_tokens": n_control,
             "tokens": sum(len(e["input_ids"]) for e in examples),
             "supervised_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples),
             "longest": max((len(e["input_ids"]) for e in examples), default=0),
             "modes": {m: counts.get(m, 0) for m in MODES}}
    print(f"{path}: {stats['kept']}/{stats['rows']} rows kept, {skipped} skipped as longer than "
          f"MAX_LENGTH={max_length} tokens" + (f", {n_control} as holding chat control tokens" if n_control else "")
          + f"; {stats['tokens']:,} tokens ({stats['supervised_tokens']:,} trained)"
          + (f"; modes {stats['modes']}" if set(counts) != {"think"} else ""))
    if not examples:
        raise MedsftError(f"{path}: all {len(rows)} usable rows are longer than MAX_LENGTH={max_length} tokens; raise "
                          f"--max_length (the longest row needs more)")
    return examples, stats
