"""Clipped ROUGE-1/2/L (ROUGE-1.5.5's and rouge-score's definition) of generated text against the reference, on jieba
words, x100, macro-averaged, in three views: answer (the headline), think and the whole output; rouge-chinese's
n-gram-set numbers beside them as ``rouge_chinese_exclusive`` (docs/metrics.md)."""
from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from .chat import strip_think_tags

ROUGE_VIEWS = ("answer", "think", "full")  # answer is the headline view
THINK_VIEWS = ("think", "full")  # views that need a think: n/a for rows asked not to think
ROUGE_METRICS = ("rouge-1", "rouge-2", "rouge-l")
ROUGE_STATS = ("p", "r", "f")
MIN_ROWS_FOR_WORKERS = 20  # fewer rows are scored in this process
DEFINITION = ("ROUGE-1/2: clipped n-gram counts (ROUGE-1.5.5, rouge-score); ROUGE-L: longest common subsequence of "
              "the word sequences")

@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # jieba logs its dictionary loading to stderr otherwise
    return jieba

def segment(text: str) -> list[str]:
    """``jieba.lcut(text)`` (precise mode, HMM on) without whitespace tokens, which would count as words."""
    return [w for token in _jieba().lcut(text) for w in token.split()]

@functools.lru_cache(maxsize=4096)
def _reference_words(text: str) -> tuple[str, ...]:
    # a reference recurs in every model and mode scored in one process: cut once
    return tuple(segment(text))

def versions() -> dict:
    return {"jieba": importlib.metadata.version("jieba")}

def lcs_length(x, y) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel, Allison-Dix / Hyyrö)."""
    if not x or not y:
        return 0
    masks: dict = {}
    for i, token in enumerate(x):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(x)) - 1
    v = full
    for token in y:
        m = masks.get(token)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return len(x) - v.bit_count()

def _fmeasure(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0

def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(words) if n == 1 else Counter(zip(*(words[i:] for i in range(n))))

def pair_scores(hyp: list[str], ref: list[str], lcs: int | None = None) -> dict:
    """ROUGE-1/2/L P/R/F x100 of two word sequences (clipped counts; rouge-score's formulas); ``lcs`` if known."""
    out = {}
    for n, name in ((1, "rouge-1"), (2, "rouge-2")):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        if len(h) > len(r):
            h, r = r, h  # min() is symmetric: walk the smaller table
        overlap = sum(min(c, r[g]) for g, c in h.items() if g in r)
        p = overlap / max(len(hyp) - n + 1, 1)
        rec = overlap / max(len(ref) - n + 1, 1)
        out[name] = {"p": 100.0 * p, "r": 100.0 * rec, "f": 100.0 * _fmeasure(p, rec)}
    lcs = lcs_length(ref, hyp) if lcs is None else lcs
    p, rec = (lcs / len(hyp), lcs / len(ref)) if hyp and ref else (0.0, 0.0)
    out["rouge-l"] = {"p": 100.0 * p, "r": 100.0 * rec, "f": 100.0 * _fmeasure(p, rec)}
    return out

def exclusive_scores(hyp: list[str], ref: list[str], lcs: int | None = None) -> dict:
    """What rouge-chinese 1.0.3 (exclusive=True) reports for the same words, x100: n-gram sets, its F with +1e-8."""
    def prf(overlap, n_hyp, n_ref):
        p = overlap / n_hyp if n_hyp else 0.0
        r = overlap / n_ref if n_ref else 0.0
        return {"p": 100.0 * p, "r": 100.0 * r, "f": 100.0 * 2.0 * (p * r / (p + r + 1e-8))}

    out = {}
    for n, name in ((1, "rouge-1"), (2, "rouge-2")):
        h, r = set(_ngrams(hyp, n)), set(_ngrams(ref, n))
        out[name] = prf(len(h & r), len(h), len(r))
    out["rouge-l"] = prf(lcs_length(ref, hyp) if lcs is None else lcs, len(hyp), len(ref))
    return out

def _zero_scores() -> dict:
    return {m: {s: 0.0 for s in ROUGE_STATS} for m in ROUGE_METRICS}

def _joined(text: str, parts: list[str]) -> bool:
    """Is ``text``, stripped, the non-empty ``parts`` in order with only whitespace (at least one char) between them?
    jieba cuts at every whitespace character, so then its words are the parts' words joined."""
    text = text.strip()
    parts = [p for p in parts if p]
    if not parts:
        return not text
    if len(parts) == 1:
        return text == parts[0]
    first, last = parts
    return (len(text) > len(first) + len(last) and text.startswith(first) and text.endswith(last)
            and text[len(first):len(text) - len(last)].isspace())

def _score_rows(texts: list[tuple]) -> list[tuple]:
    """Per (output, think, answer, ref_think, ref_answer), per view: (scores, empty side, rouge-chinese scores).
    Segmenting, which costs more than ROUGE itself, happens here in the workers."""
    out = []
    for output, think, answer, ref_think, ref_answer in texts:
        think_w, answer_w = segment(think), segment(answer)
        ref_think_w, ref_answer_w = _reference_words(ref_think), _reference_words(ref_answer)
        full = strip_think_tags(output)
        full_w = think_w + answer_w if _joined(full, [think.strip(), answer.strip()]) else segment(full)
        pairs = {"answer": (answer_w, ref_answer_w), "think": (think_w, ref_think_w),
                 # the reference side is ref_think + "\n" + ref_answer: a line break always separates jieba words
                 "full": (full_w, ref_think_w + ref_answer_w)}
        row = {}
        for view, (hyp, ref) in pairs.items():
            if not hyp or not ref:  # an empty answer is a real outcome: it scores 0 and is counted
                row[view] = (_zero_scores(), "prediction" if not hyp else "reference", _zero_scores())
                continue
            lcs = lcs_length(ref, hyp)
            row[view] = (pair_scores(hyp, ref, lcs), None, exclusive_scores(hyp, ref, lcs))
        out.append(row)
    return out

def rouge_texts(row: dict) -> tuple:
    # an unclosed think has no answer, also in files an older split_output filled with the text before <think>
    answer = "" if row.get("think_status") == "unclosed" else row.get("answer") or ""
    return (row.get("output") or "", row.get("think") or "", answer, row.get("ref_think") or "",
            row.get("ref_answer") or "")

def rouge_scores(rows: list[dict], *, workers: int = 2, progress: bool = True):
    """(summary, per_sample): ROUGE of every row in every view, over ``workers`` processes. An empty side of a view
    scores 0 and is counted in n_empty; a row asked not to think is n/a (n_na) in the think and full views."""
    from tqdm import tqdm

    texts = [rouge_texts(row) for row in rows]
    # small chunks keep both workers busy to the end; large enough that pickling stays negligible
    size = max(1, min(32, math.ceil(len(texts) / (max(1, workers) * 8))))
    chunks = [texts[k:k + size] for k in range(0, len(texts), size)]
    results: list[dict] = []
    bar = tqdm(total=len(texts), desc="rouge", unit="sample", disable=not progress)
    # a worker (a fresh interpreter + jieba's dictionary) costs ~2 s to start: not worth it for a few rows
    if workers <= 1 or len(texts) < MIN_ROWS_FOR_WORKERS:
        for chunk in chunks:
            results.extend(_score_rows(chunk))
            bar.update(len(chunk))
    else:
        # spawn, not fork: the caller may hold torch threads, which fork does not copy safely
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for part in pool.map(_score_rows, chunks):
                results.extend(part)
                bar.update(len(part))
    bar.close()
    per_sample, old = [], []
    for row, result in zip(rows, results):
        item = {"id": row.get("id"), "empty": {}}
        # a row asked not to think has no think to score: its think and think+answer views are None ("n/a")
        na = THINK_VIEWS if row.get("mode", "think") != "think" else ()
        for view in ROUGE_VIEWS:
            item[view], empty, _ = (None, None, None) if view in na else result[view]
            if empty:
                item["empty"][view] = empty
        per_sample.append(item)
        old.append({view: None if view in na else result[view][2] for view in ROUGE_VIEWS})
    n = len(rows)

    def mean(items, view, m, s):
        values = [item[view][m][s] for item in items if item[view] is not None]
        return sum(values) / len(values) if values else (0.0 if not n else None)

    views, exclusive = {}, {}
    for view in ROUGE_VIEWS:
        views[view] = {m: {s: mean(per_sample, view, m, s) for s in ROUGE_STATS} for m in ROUGE_METRICS}
        views[view]["n_empty"] = sum(1 for item in per_sample if view in item["empty"])
        views[view]["n_na"] = sum(1 for item in per_sample if item[view] is None)
        exclusive[view] = {m: {s: mean(old, view, m, s) for s in ROUGE_STATS} for m in ROUGE_METRICS}
    summary = {"n": n, "tokenizer": "jieba", "definition": DEFINITION, "lcs": "bit-parallel, exact",
               "versions": versions(), "scale": "x100, macro-averaged over samples", "views": views,
               "rouge_chinese_exclusive": {
                   "note": "rouge-chinese 1.0.3 with exclusive=True (n-gram sets: repetition is not penalised), on the "
                           "same words; for comparison with older results only, not the headline",
                   "views": exclusive}}
    return summary, per_sample
