"""Evaluation metrics shared by rouge_eval*.py and evaluate*.py.

ROUGE: rouge-chinese on jieba-segmented, space-joined text (ROUGE-1/2/L precision, recall and F ×100,
macro-averaged over samples) in three views: answer, think, and the whole output.

Chain of thought (offline, deterministic): texts are split into steps, two steps are compared with an
IDF-weighted character-bigram Dice coefficient, and recall / precision / F1 say how many reference steps the
generated reasoning covers and how many generated steps the reference supports. "Supported by the reference" is
all that precision means: nothing here checks medical correctness.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import random
import re
import unicodedata
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
import multiprocessing

ROUGE_VIEWS = ("answer", "think", "full")  # answer is the headline view
ROUGE_METRICS = ("rouge-1", "rouge-2", "rouge-l")
ROUGE_STATS = ("p", "r", "f")
THINK_TAGS = re.compile(r"</?think>")
MIN_PAIRS_FOR_WORKERS = 60  # fewer (prediction, reference) pairs are scored in this process


# ----------------------------------------------------------------------------------------------------------------
# ROUGE
# ----------------------------------------------------------------------------------------------------------------

_JIEBA_READY = False


def segment(text: str) -> list[str]:
    """jieba words of `text` (default dictionary, precise mode), whitespace dropped.

    rouge-chinese splits on single spaces, so whitespace tokens (line breaks, runs of spaces) would become
    empty "words"; they carry no content and are dropped.
    """
    global _JIEBA_READY
    import jieba

    if not _JIEBA_READY:
        jieba.setLogLevel(logging.WARNING)  # jieba logs its dictionary loading to stderr otherwise
        jieba.initialize()
        _JIEBA_READY = True
    words = []
    for token in jieba.lcut(text):
        words.extend(token.split())
    return words


def rouge_versions() -> dict:
    return {"rouge-chinese": importlib.metadata.version("rouge-chinese"),
            "jieba": importlib.metadata.version("jieba")}


def lcs_length(x, y) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel, Allison-Dix / Hyyrö).

    Exactly the number rouge-chinese's own `_len_lcs` returns, in O(len(y) * len(x)/64) word operations instead of
    a Python dict of len(x)*len(y) cells (~0.4 s and ~100 MB for a 900-word reasoning pair).
    """
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


@contextlib.contextmanager
def _fast_lcs(enabled: bool):
    """Temporarily replace rouge-chinese's ROUGE-L LCS length with `lcs_length` (same value, ~150x faster)."""
    from rouge_chinese import rouge_score

    if not enabled or not callable(getattr(rouge_score, "_len_lcs", None)):  # another layout: use it as it is
        yield
        return
    original = rouge_score._len_lcs
    rouge_score._len_lcs = lcs_length
    try:
        yield
    finally:
        rouge_score._len_lcs = original


def _zero_scores() -> dict:
    return {m: {s: 0.0 for s in ROUGE_STATS} for m in ROUGE_METRICS}


def _rouge_chunk(args) -> list[tuple]:
    """Worker: (scores ×100, empty side or None) for (prediction, reference) text pairs.

    Segmentation happens here, in the workers, because jieba costs more than ROUGE itself once the LCS is fast.
    """
    pairs, fast = args
    from rouge_chinese import Rouge

    rouge = Rouge(metrics=list(ROUGE_METRICS))
    out = []
    with _fast_lcs(fast):
        for pred, ref in pairs:
            hyp_words, ref_words = segment(pred), segment(ref)
            if not hyp_words or not ref_words:
                # rouge-chinese raises on an empty side; an empty answer is a real outcome and scores 0.
                out.append((_zero_scores(), "prediction" if not hyp_words else "reference"))
                continue
            score = rouge.get_scores(" ".join(hyp_words), " ".join(ref_words))[0]
            out.append(({m: {s: score[m][s] * 100.0 for s in ROUGE_STATS} for m in ROUGE_METRICS}, None))
    return out


def rouge_texts(row: dict) -> dict:
    """(prediction, reference) texts of each view for one prediction row."""
    full_pred = THINK_TAGS.sub("\n", row.get("output") or "")
    return {
        "answer": (row.get("answer") or "", row.get("ref_answer") or ""),
        "think": (row.get("think") or "", row.get("ref_think") or ""),
        "full": (full_pred, (row.get("ref_think") or "") + "\n" + (row.get("ref_answer") or "")),
    }


def rouge_scores(rows: list[dict], *, workers: int = 2, fast_lcs: bool = True, progress: bool = True):
    """ROUGE of every prediction row in every view, spread over `workers` processes (results in input order).

    Returns (summary, per_sample). An empty prediction or reference side of a view (no word after
    segmentation) scores 0 in that view and is counted in its n_empty; it is never skipped.
    """
    from tqdm import tqdm

    jobs = [(i, view, texts) for i, row in enumerate(rows) for view, texts in rouge_texts(row).items()]
    pairs = [texts for _, _, texts in jobs]
    results: list[tuple] = []
    # Small chunks keep both workers busy even when a few long reasoning pairs dominate.
    size = max(1, min(24, math.ceil(len(pairs) / (max(1, workers) * 8))))
    chunks = [(pairs[k:k + size], fast_lcs) for k in range(0, len(pairs), size)]
    bar = tqdm(total=len(pairs), desc="rouge", unit="pair", disable=not progress)
    # Starting a worker (a fresh interpreter + jieba's dictionary) costs ~2 s: not worth it for a few pairs.
    if workers <= 1 or len(pairs) < MIN_PAIRS_FOR_WORKERS:
        for chunk in chunks:
            results.extend(_rouge_chunk(chunk))
            bar.update(len(chunk[0]))
    else:
        # spawn, not fork: the caller may hold torch threads, which fork does not copy safely.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for part in pool.map(_rouge_chunk, chunks):
                results.extend(part)
                bar.update(len(part))
    bar.close()

    per_sample = [{"id": row.get("id"), "empty": {}} for row in rows]
    for (i, view, _), (score, empty) in zip(jobs, results):
        per_sample[i][view] = score
        if empty:
            per_sample[i]["empty"][view] = empty

    n = len(rows)
    views = {}
    for view in ROUGE_VIEWS:
        views[view] = {m: {s: (sum(item[view][m][s] for item in per_sample) / n if n else 0.0) for s in ROUGE_STATS}
                       for m in ROUGE_METRICS}
        views[view]["n_empty"] = sum(1 for item in per_sample if view in item["empty"])
    from rouge_chinese import rouge_score

    patched = fast_lcs and callable(getattr(rouge_score, "_len_lcs", None))
    summary = {"n": n, "tokenizer": "jieba", "lcs": "bit-parallel, exact (ROUGE-L)" if patched else "rouge-chinese",
               "versions": rouge_versions(), "scale": "x100, macro-averaged over samples", "views": views}
    return summary, per_sample


# ----------------------------------------------------------------------------------------------------------------
# Chain of thought: steps
# ----------------------------------------------------------------------------------------------------------------

MIN_STEP_CHARS = 4  # pieces with fewer content characters are merged into the previous step

_CN_NUM = "一二三四五六七八九十"
_MARKER = re.compile(
    r"^\s*(?:"
    r"[（(]\s*(?:\d{1,3}|[" + _CN_NUM + r"]{1,3}|[a-zA-Z])\s*[)）]"  # (1) （1） （一）
    r"|\d{1,3}\s*[.．、)）](?!\d)"  # 1. 1、 1) but not 1.5
    r"|[" + _CN_NUM + r"]{1,3}\s*[、.．]"  # 一、
    r"|[-*+](?=\s)"  # markdown bullets (a "-" glued to a word is a minus sign or hyphen)
    r"|[•·●○▪◦]"
    r")\s*")
# A sentence end: an ellipsis, a run of terminal marks, or one "."; closing quotes/brackets stay with the sentence.
_END = re.compile(r"(?:\.{3,}|…+|[。！？；!?;]+|[.．])[”’」』）)】\]]*")
_LINE = re.compile(r"\r\n|\r|\n")


def content_chars(text: str) -> str:
    """Letters and digits of `text` (NFKC, case-folded): what a step says, without punctuation or spacing."""
    return "".join(c for c in unicodedata.normalize("NFKC", text).casefold() if unicodedata.category(c)[0] in "LN")


def _is_sentence_dot(line: str, start: int) -> bool:
    """Is the single "." at line[start] a sentence end? Not between digits (1.5), not a list marker's (…：2. xx)."""
    before = line[start - 1] if start > 0 else ""
    after = line[start + 1] if start + 1 < len(line) else ""
    if before.isdigit() and after.isdigit():
        return False
    if before.isdigit():
        k = start - 1
        while k > 0 and line[k - 1].isdigit():
            k -= 1
        prev = line[k - 1] if k > 0 else ""
        # a short number that starts a word ("：2. 用药") is a list marker, not the end of "血压为120."
        if start - k <= 3 and (prev == "" or prev.isspace() or prev in "：:，,；;、（("):
            return False
    return True


def _pieces(text: str) -> list[str]:
    pieces = []
    for line in _LINE.split(text):
        pos = 0
        for m in _END.finditer(line):
            single_dot = m.group(0)[0] in ".．" and len(m.group(0).rstrip("”’」』）)】]")) == 1
            if single_dot and not _is_sentence_dot(line, m.start()):
                continue
            pieces.append(line[pos:m.end()])
            pos = m.end()
        pieces.append(line[pos:])
    out = []
    for piece in pieces:
        piece = _MARKER.sub("", piece, count=1).strip()
        if piece:
            out.append(piece)
    return out


def _join(a: str, b: str) -> str:
    # Latin text keeps a space between merged pieces; Chinese text has none to keep.
    return a + (" " if a[-1:].isascii() and b[:1].isascii() and b[:1].isalnum() else "") + b


def split_steps(text: str) -> list[str]:
    """Reasoning steps of `text`.

    Breaks at line breaks and sentence ends (。！？；!?; …, "...", and "." unless between digits or after a list
    number); strips list markers (1. 1、 1) （1） (1) 一、 - * •); a piece with fewer than MIN_STEP_CHARS
    content characters joins the previous step (the next one when it comes first); pieces without any letter or
    digit are dropped.
    """
    steps: list[str] = []
    pending = ""  # short pieces seen before the first real step
    for piece in _pieces(text or ""):
        n = len(content_chars(piece))
        if n == 0:
            continue
        if n < MIN_STEP_CHARS:
            if steps:
                steps[-1] = _join(steps[-1], piece)
            else:
                pending = _join(pending, piece) if pending else piece
            continue
        if pending:
            piece, pending = _join(pending, piece), ""
        steps.append(piece)
    if pending:
        steps.append(pending)
    return steps


# ----------------------------------------------------------------------------------------------------------------
# Chain of thought: similarity
# ----------------------------------------------------------------------------------------------------------------

def bigrams(text: str) -> Counter:
    """Character bigrams of the content characters (a single character counts as its own feature)."""
    chars = content_chars(text)
    if len(chars) == 1:
        return Counter([chars])
    return Counter(chars[i:i + 2] for i in range(len(chars) - 1))


class Idf:
    """Smoothed inverse document frequency of bigrams: ln((1 + N) / (1 + df)) + 1 over N documents."""

    def __init__(self, documents: list[str]):
        self.n_docs = len(documents)
        df: Counter = Counter()
        for doc in documents:
            df.update(set(bigrams(doc)))
        self.df = df
        self.unseen = math.log((1 + self.n_docs) / 1) + 1  # bigrams in no document weigh the most

    def weight(self, gram: str) -> float:
        d = self.df.get(gram)
        return self.unseen if d is None else math.log((1 + self.n_docs) / (1 + d)) + 1


class Step:
    """A step ready for comparison: its bigram counts, their IDF weights and the total weight."""

    __slots__ = ("text", "grams", "weights", "total")

    def __init__(self, text: str, idf: Idf):
        self.text = text
        self.grams = bigrams(text)
        self.weights = {g: idf.weight(g) for g in self.grams}
        self.total = sum(c * self.weights[g] for g, c in self.grams.items())


def similarity(a: Step, b: Step) -> float:
    """IDF-weighted bigram Dice (= F1 of weighted bigram precision and recall), in [0, 1]; 1 for identical texts."""
    den = a.total + b.total
    if den <= 0:
        return 0.0
    if len(a.grams) > len(b.grams):
        a, b = b, a
    bg = b.grams
    num = 0.0
    for g, c in a.grams.items():
        other = bg.get(g)
        if other:
            num += min(c, other) * a.weights[g]
    return 2.0 * num / den


def text_similarity(x: str, y: str, idf: Idf) -> float:
    return similarity(Step(x, idf), Step(y, idf))


# ----------------------------------------------------------------------------------------------------------------
# Chain of thought: scores
# ----------------------------------------------------------------------------------------------------------------

SCORE_KEYS = ("recall", "precision", "f1", "soft_recall", "soft_precision", "soft_f1")


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def match_scores(gen: list[Step], ref_think: list[Step], ref_all: list[Step], tau: float) -> dict:
    """Recall of reference think steps by generated steps and precision of generated steps against the reference
    think+answer steps, thresholded at tau and soft (mean best similarity)."""
    if not gen or not ref_think:
        return {k: 0.0 for k in SCORE_KEYS}
    best_ref = {id(s): 0.0 for s in ref_all}
    gen_best = []
    for g in gen:
        best = 0.0
        for r in ref_all:
            s = similarity(g, r)
            if s > best:
                best = s
            if s > best_ref[id(r)]:
                best_ref[id(r)] = s
        gen_best.append(best)
    ref_best = [best_ref[id(r)] for r in ref_think]
    recall = sum(1 for s in ref_best if s >= tau) / len(ref_best)
    precision = sum(1 for s in gen_best if s >= tau) / len(gen_best)
    soft_recall = sum(ref_best) / len(ref_best)
    soft_precision = sum(gen_best) / len(gen_best)
    return {"recall": recall, "precision": precision, "f1": _f1(precision, recall),
            "soft_recall": soft_recall, "soft_precision": soft_precision,
            "soft_f1": _f1(soft_precision, soft_recall)}


def repeated_steps(gen: list[Step], threshold: float) -> int:
    """How many steps repeat an earlier step of the same reasoning (similarity >= threshold)."""
    return sum(1 for i in range(1, len(gen)) if any(similarity(gen[i], gen[j]) >= threshold for j in range(i)))


def derangement(n: int, seed: int) -> list[int]:
    """A fixed permutation with no fixed point (Sattolo's single cycle), so no sample meets its own reference."""
    perm = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def cot_scores(rows: list[dict], *, tau: float = 0.2, repeat_threshold: float = 0.8, floor_seed: int = 0,
               progress: bool = True):
    """Offline chain-of-thought scores of prediction rows. Returns (summary, per_sample).

    IDF comes from the reference think+answer texts of these rows, so every model scored on the same split is on
    the same scale. A sample whose generated think has no step scores 0 and is counted in n_no_think.
    """
    from tqdm import tqdm

    idf = Idf([(r.get("ref_think") or "") + "\n" + (r.get("ref_answer") or "") for r in rows])
    gens, ref_thinks, ref_alls = [], [], []
    for r in rows:
        gens.append([Step(s, idf) for s in split_steps(r.get("think") or "")])
        think = [Step(s, idf) for s in split_steps(r.get("ref_think") or "")]
        ref_thinks.append(think)
        ref_alls.append(think + [Step(s, idf) for s in split_steps(r.get("ref_answer") or "")])

    n = len(rows)
    perm = derangement(n, floor_seed) if n >= 2 else None
    per_sample = []
    for i, r in enumerate(tqdm(rows, desc="chain of thought", disable=not progress)):
        real = match_scores(gens[i], ref_thinks[i], ref_alls[i], tau)
        item = {"id": r.get("id"), "think_status": r.get("think_status"), "finished": r.get("finished"),
                "n_ref_steps": len(ref_thinks[i]), "n_gen_steps": len(gens[i]),
                "no_think": not gens[i], "empty_reference": not ref_thinks[i], **real,
                "repeated_steps": repeated_steps(gens[i], repeat_threshold)}
        if perm is not None:
            j = perm[i]
            floor = match_scores(gens[i], ref_thinks[j], ref_alls[j], tau)
            item["floor_reference"] = rows[j].get("id")
            item.update({"floor_" + k: v for k, v in floor.items()})
        per_sample.append(item)

    scores = {k: _mean(item[k] for item in per_sample) for k in SCORE_KEYS}
    floor = ({k: _mean(item["floor_" + k] for item in per_sample) for k in SCORE_KEYS} if perm is not None else None)
    summary = {
        "n": n, "tau": tau, "repeat_threshold": repeat_threshold, "floor_seed": floor_seed,
        "similarity": "IDF-weighted character-bigram Dice; IDF from the reference think+answer texts of these rows",
        "scores": scores, "chance_floor": floor,
        "n_no_think": sum(1 for item in per_sample if item["no_think"]),
        "n_empty_reference": sum(1 for item in per_sample if item["empty_reference"]),
        "format": format_stats(rows, per_sample),
    }
    return summary, per_sample


def format_stats(rows: list[dict], per_sample: list[dict]) -> dict:
    """Shape of the reasoning: think closed/unclosed/absent, truncation, length, step counts, repetition."""
    n = len(rows)
    status = Counter(r.get("think_status") for r in rows)
    total_steps = sum(item["n_gen_steps"] for item in per_sample)
    new_tokens = [r["new_tokens"] for r in rows if isinstance(r.get("new_tokens"), int)]
    return {
        "closed_rate": status["closed"] / n if n else 0.0,
        "unclosed_rate": status["unclosed"] / n if n else 0.0,
        "absent_rate": status["absent"] / n if n else 0.0,
        "truncation_rate": sum(1 for r in rows if r.get("finished") is False) / n if n else 0.0,
        "mean_think_chars": _mean(len(r.get("think") or "") for r in rows),
        "ref_mean_think_chars": _mean(len(r.get("ref_think") or "") for r in rows),
        "mean_gen_steps": _mean(item["n_gen_steps"] for item in per_sample),
        "mean_ref_steps": _mean(item["n_ref_steps"] for item in per_sample),
        "repeated_step_share": (sum(item["repeated_steps"] for item in per_sample) / total_steps
                                if total_steps else 0.0),
        "mean_new_tokens": _mean(new_tokens) if new_tokens else None,
    }
