"""Offline chain-of-thought scores: the steps of the generated think matched one-to-one against those of the reference
think by IDF-weighted character-bigram Dice, with three baselines on the same rows (chance, answer-as-think,
reference-as-think); docs/metrics.md defines them."""
from __future__ import annotations

import math
import multiprocessing
import random
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from .think_steps import content_chars, split_steps

SCORE_KEYS = ("recall", "precision", "f1", "soft_recall", "soft_precision", "soft_f1")
BASELINES = ("chance", "answer_as_think", "reference_as_think")
# A step this similar to an earlier one of the same think copies it. Of the 5,050 steps of the 200 sample reference
# thinks 3 are (2 verbatim, one less a word); from 0.8 on restatements that add a clause come in
COPY_SIMILARITY = 0.9
MATCHING = ("one-to-one: greedy, most similar pair first; a pair matches from similarity tau; a step that copies an "
            f"earlier step of its think (similarity >= {COPY_SIMILARITY}) is never matched")
MIN_ROWS_FOR_WORKERS = 400  # fewer rows are scored in this process: starting a worker costs ~1 s

_PLANE = 0x110000  # code points: a bigram (a, b) is the integer (a + 1) * _PLANE + b, a lone character its code
_LEVEL = 1 << 41  # above every bigram key: the k-th occurrence of a bigram in a step is key + (k - 1) * _LEVEL,
#                   so sum(min(count_a, count_b) * weight) becomes the weight of a set intersection (a dot product)

def _codes(chars: str) -> np.ndarray:
    return np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)

def _gram_keys(codes: np.ndarray) -> np.ndarray:
    if len(codes) == 1:
        return codes.copy()
    return (codes[:-1] + 1) * _PLANE + codes[1:]

class BigramIdf:
    """Smoothed IDF of character bigrams, ln((1 + N) / (1 + df)) + 1 over N documents, as arrays of integer keys."""

    def __init__(self, documents):
        seen = [np.unique(_gram_keys(_codes(content_chars(doc)))) for doc in documents]
        self.n_docs = n_docs = len(seen)
        self.keys, df = np.unique(np.concatenate(seen) if seen else np.zeros(0, np.int64), return_counts=True)
        # math.log: numpy's vectorised log may differ in the last bit between CPUs, and results must be the same bytes
        counts, where = np.unique(df, return_inverse=True)
        self.key_weights = np.array([math.log((1 + n_docs) / (1 + int(d))) + 1 for d in counts])[where]
        self.unseen = math.log(1 + n_docs) + 1  # bigrams in no document weigh the most

    def weights(self, keys: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return np.full(len(keys), self.unseen)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, self.key_weights[pos], self.unseen)

class StepSet:
    """The steps of one text as arrays: one feature per bigram occurrence (key with its level), its step and IDF
    weight, and each step's total weight."""

    __slots__ = ("n", "feats", "step", "w", "total", "_cols", "_dense")

    def __init__(self, steps: list[str], idf: BigramIdf):
        contents = [content_chars(s) for s in steps]
        self.n = n = len(contents)
        self._cols = self._dense = None
        lens = np.fromiter(map(len, contents), dtype=np.int64, count=n)
        codes = _codes("".join(contents))
        step_of = np.repeat(np.arange(n), lens)
        inside = step_of[1:] == step_of[:-1]
        keys = ((codes[:-1] + 1) * _PLANE + codes[1:])[inside]
        kstep = step_of[:-1][inside]
        single = np.flatnonzero(lens == 1)  # a one-character step is that character
        if len(single):
            starts = np.cumsum(lens) - lens
            keys = np.concatenate([keys, codes[starts[single]]])
            kstep = np.concatenate([kstep, single])
        order = np.lexsort((keys, kstep))
        keys, kstep = keys[order], kstep[order]
        index = np.arange(len(keys))
        first = np.ones(len(keys), dtype=bool)
        first[1:] = (keys[1:] != keys[:-1]) | (kstep[1:] != kstep[:-1])
        level = index - np.maximum.accumulate(np.where(first, index, 0))
        self.feats = keys + level * _LEVEL
        self.step = kstep
        self.w = idf.weights(keys)
        self.total = np.bincount(kstep, weights=self.w, minlength=n)

    def dense(self):
        """(sorted unique features, steps x features matrix of weights), built on first use."""
        if self._dense is None:
            cols, inv = np.unique(self.feats, return_inverse=True)
            dense = np.zeros((self.n, len(cols)))
            dense[self.step, inv] = self.w
            self._cols, self._dense = cols, dense
        return self._cols, self._dense

def similarity_matrix(a: StepSet, b: StepSet) -> np.ndarray:
    """The IDF-weighted bigram Dice of every step pair, shape (a.n, b.n)."""
    num = np.zeros((a.n, b.n))
    if a.n == 0 or b.n == 0:
        return num
    cols, dense_a = a.dense()
    pos = np.minimum(np.searchsorted(cols, b.feats), len(cols) - 1)
    hit = cols[pos] == b.feats
    if hit.any():
        # column sums per step of b, not a matrix product: BLAS would start threads for a 30x30 result
        steps = b.step[hit]
        starts = np.flatnonzero(np.concatenate(([True], steps[1:] != steps[:-1])))
        num[:, steps[starts]] = np.add.reduceat(dense_a[:, pos[hit]], starts, axis=1)
    return 2.0 * num / (a.total[:, None] + b.total[None, :])

def one_to_one(sim: np.ndarray) -> np.ndarray:
    """Similarities of a greedy one-to-one matching of rows to columns, most similar pair first (ties: lower row,
    then column); pairs of similarity 0 never match."""
    s = np.array(sim, dtype=float)
    if s.size == 0:
        return np.zeros(0)
    rows_all = np.arange(s.shape[0])
    taken = []
    # each round takes every pair that is the best of its row and its column: each is the next greedy choice
    while True:
        best_col = s.argmax(axis=1)
        best_row = s.argmax(axis=0)
        value = s[rows_all, best_col]
        rows = np.flatnonzero((best_row[best_col] == rows_all) & (value > 0))
        if not len(rows):
            break
        cols = best_col[rows]
        taken.append(value[rows])
        s[rows, :] = -1.0
        s[:, cols] = -1.0
    return np.concatenate(taken) if taken else np.zeros(0)

def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0

def match_scores(sim: np.ndarray, tau: float, copies: np.ndarray | None = None) -> dict:
    """Recall, precision, F1 (pairs matched at similarity >= tau) and their soft versions (sum of the matched
    similarities) of generated steps (rows of `sim`) against reference steps (columns), one-to-one. ``copies``:
    the generated steps that copy an earlier one (``repeats``); never matched, they count against precision only
    (else a copy would pair with another reference step it resembles)."""
    n_gen, n_ref = sim.shape
    if not n_gen or not n_ref:
        return dict.fromkeys(SCORE_KEYS, 0.0)
    pairs = one_to_one(sim if copies is None else np.where(copies[:, None], 0.0, sim))
    hits = int(np.count_nonzero(pairs >= tau))
    soft = float(pairs.sum())
    recall, precision = hits / n_ref, hits / n_gen
    soft_recall, soft_precision = soft / n_ref, soft / n_gen
    return {"recall": recall, "precision": precision, "f1": _f1(precision, recall),
            "soft_recall": soft_recall, "soft_precision": soft_precision, "soft_f1": _f1(soft_precision, soft_recall)}

def repeats(self_sim: np.ndarray, threshold: float) -> np.ndarray:
    """Which steps repeat an earlier step (similarity >= threshold), from a reasoning's own similarity matrix."""
    return np.tril(self_sim >= threshold, k=-1).any(axis=1)

def repeated_steps(self_sim: np.ndarray, threshold: float) -> int:
    """How many steps repeat an earlier step (similarity >= threshold)."""
    return int(np.count_nonzero(repeats(self_sim, threshold)))

def derangement(n: int, seed: int) -> list[int]:
    """A fixed permutation with no fixed point (Sattolo's single cycle), so no sample meets its own reference."""
    perm = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm

def _cycle_order(perm: list[int]) -> list[int]:
    """Indices along the cycles of ``perm``: a row's chance reference is the next row's own, so each reference is
    split into steps once."""
    seen = [False] * len(perm)
    order = []
    for start in range(len(perm)):
        i = start
        while not seen[i]:
            seen[i] = True
            order.append(i)
            i = perm[i]
    return order

def _score_rows(items: list[tuple], idf: BigramIdf, tau: float, repeat_threshold: float) -> list[dict]:
    """Scores of (row, think, ref_think, ref_answer, chance_row, chance_ref_think) items, given in cycle order."""
    out = []
    held: dict[int, StepSet] = {}  # the previous item's chance reference: this item's own, in cycle order
    for i, think, ref_think, ref_answer, j, chance_think in items:
        gen = StepSet(split_steps(think), idf)
        ref = held.pop(i, None) or StepSet(split_steps(ref_think), idf)
        answer = StepSet(split_steps(ref_answer), idf)
        gen_self, ref_self = similarity_matrix(gen, gen), similarity_matrix(ref, ref)
        copies = repeats(gen_self, COPY_SIMILARITY)
        item = {"n_ref_steps": ref.n, "n_gen_steps": gen.n, "no_think": not gen.n, "empty_reference": not ref.n,
                **match_scores(similarity_matrix(gen, ref), tau, copies),
                "repeated_steps": repeated_steps(gen_self, repeat_threshold)}
        held.clear()
        if j is not None:
            chance = StepSet(split_steps(chance_think), idf)
            floor = match_scores(similarity_matrix(gen, chance), tau, copies)
            item.update({"floor_" + k: v for k, v in floor.items()})
            held[j] = chance
        # the baselines are thinks too, under the same rule (the reference against itself: its own self-similarity)
        for name, sim, self_sim in (("answer_as_think", similarity_matrix(answer, ref),
                                     similarity_matrix(answer, answer)), ("reference_as_think", ref_self, ref_self)):
            scores = match_scores(sim, tau, repeats(self_sim, COPY_SIMILARITY))
            item.update({f"{name}_{k}": v for k, v in scores.items()})
        out.append(item)
    return out

_WORKER_IDF: BigramIdf | None = None

def _init_worker(idf: BigramIdf):
    global _WORKER_IDF
    _WORKER_IDF = idf

def _score_chunk(args) -> list[dict]:
    items, tau, repeat_threshold = args
    return _score_rows(items, _WORKER_IDF, tau, repeat_threshold)

def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0

def cot_scores(rows: list[dict], *, references=None, tau: float = 0.2, repeat_threshold: float = 0.8,
               floor_seed: int = 0, workers: int = 2, progress: bool = True):
    """(summary, per_sample) of prediction rows, with their baselines. IDF comes from ``references`` (the split's
    reference think+answer texts, so every model is on one scale; None: these rows'). A think without steps scores
    0 (n_no_think); a row asked not to think is n/a, left out of every mean (n_think_na)."""
    from tqdm import tqdm

    own = references is None
    idf = BigramIdf((r.get("ref_think") or "") + "\n" + (r.get("ref_answer") or "") for r in rows) if own else \
        BigramIdf(references)
    n = len(rows)
    perm = derangement(n, floor_seed) if n >= 2 else None
    items = [(i, rows[i].get("think") or "", rows[i].get("ref_think") or "", rows[i].get("ref_answer") or "",
              None if perm is None else perm[i], "" if perm is None else rows[perm[i]].get("ref_think") or "")
             for i in (_cycle_order(perm) if perm else range(n))]
    # consecutive items share references, so chunks are runs of the cycle; small enough to keep both workers busy
    size = max(1, min(256, math.ceil(n / (max(1, workers) * 8))))
    chunks = [(items[k:k + size], tau, repeat_threshold) for k in range(0, n, size)]
    results: list[dict] = []
    bar = tqdm(total=n, desc="chain of thought", unit="sample", disable=not progress)
    if workers <= 1 or n < MIN_ROWS_FOR_WORKERS:
        for chunk, _, _ in chunks:
            results.extend(_score_rows(chunk, idf, tau, repeat_threshold))
            bar.update(len(chunk))
    else:
        # spawn, not fork: the caller may hold torch threads, which fork does not copy safely
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(idf,)) as pool:
            for part in pool.map(_score_chunk, chunks):
                results.extend(part)
                bar.update(len(part))
    bar.close()
    per_sample: list = [None] * n
    for (i, *_), scores in zip(items, results):
        r = rows[i]
        item = {"id": r.get("id"), "think_status": r.get("think_status"), "finished": r.get("finished"), **scores}
        if perm is not None:
            item["floor_reference"] = rows[perm[i]].get("id")
        if r.get("mode", "think") != "think":  # asked not to think: no think to score ("n/a", not 0)
            item["think_na"] = True
            item.update({k: None for k in SCORE_KEYS + ("n_gen_steps", "no_think", "repeated_steps")})
            item.update({"floor_" + k: None for k in SCORE_KEYS})
        per_sample[i] = item
    # scores and baselines are means over the same rows: those asked to think
    scored = [item for item in per_sample if not item.get("think_na")]
    some = bool(scored) or not n  # no row at all keeps the old 0.0; only rows none of which thinks are n/a
    mean = (lambda key: _mean(item[key] for item in scored)) if some else (lambda key: None)
    scores = {k: mean(k) for k in SCORE_KEYS}
    floor = {k: mean("floor_" + k) for k in SCORE_KEYS} if perm is not None and some else None
    baselines = {"chance": floor}
    for name in BASELINES[1:]:
        baselines[name] = {k: mean(f"{name}_{k}") for k in SCORE_KEYS} if some else None
    summary = {
        "n": n, "n_scored": len(scored), "n_think_na": n - len(scored),
        "tau": tau, "repeat_threshold": repeat_threshold, "floor_seed": floor_seed, "copy_similarity": COPY_SIMILARITY,
        "similarity": "IDF-weighted character-bigram Dice; IDF from the reference think+answer texts of "
                      + ("these rows" if own else f"the split ({idf.n_docs} rows)"),
        "matching": MATCHING, "reference": "steps of the reference think (recall and precision alike)",
        "scores": scores, "chance_floor": floor, "baselines": baselines,
        "n_no_think": sum(1 for item in scored if item["no_think"]),
        "n_empty_reference": sum(1 for item in per_sample if item["empty_reference"]),
        "format": format_stats(rows, per_sample),
    }
    return summary, per_sample

def format_stats(rows: list[dict], per_sample: list[dict]) -> dict:
    """Think closed/unclosed/absent, truncation, length, step counts, repetition."""
    n = len(rows)
    status = Counter(r.get("think_status") for r in rows)
    total_steps = sum(item["n_gen_steps"] or 0 for item in per_sample)
    new_tokens = [r["new_tokens"] for r in rows if isinstance(r.get("new_tokens"), int)]
    return {
        "closed_rate": status["closed"] / n if n else 0.0,
        "unclosed_rate": status["unclosed"] / n if n else 0.0,
        "absent_rate": status["absent"] / n if n else 0.0,
        "truncation_rate": sum(1 for r in rows if r.get("finished") is False) / n if n else 0.0,
        "mean_think_chars": _mean(len(r.get("think") or "") for r in rows),
        "ref_mean_think_chars": _mean(len(r.get("ref_think") or "") for r in rows),
        "mean_gen_steps": _mean(item["n_gen_steps"] for item in per_sample if item["n_gen_steps"] is not None),
        "mean_ref_steps": _mean(item["n_ref_steps"] for item in per_sample),
        "repeated_step_share": (sum(item["repeated_steps"] or 0 for item in per_sample) / total_steps
                                if total_steps else 0.0),
        "mean_new_tokens": _mean(new_tokens) if new_tokens else None,
    }
