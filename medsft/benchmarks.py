"""The medical multiple-choice benchmarks (CMMLU's medical subjects, MedQA-MCMLE, CMB-Exam, CMExam): where each comes
from, its items read and sampled, and its scores (accuracy with intervals, samples, majority, paired McNemar tests).

Licenses differ, so every set is read at run time from its authors' layout and never shipped."""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from . import mcq, models, rows
from .config import TAGS
from .files import MedsftError, iter_jsonl


@dataclass(frozen=True)
class Benchmark:
    title: str  # as papers name it
    split: str  # the split scored (what papers report)
    license: str
    source: str  # default: a ModelScope dataset id, or a local folder relative to the working directory
    download: str  # how to get a local copy (printed when none is found)


BENCHMARKS = {
    "cmmlu": Benchmark("CMMLU (7 medical subjects)", "test", "CC BY-NC-SA 4.0 (non-commercial)", "opencompass/cmmlu",
                       "git clone https://github.com/haonan-li/CMMLU, then --benchmarks=cmmlu=CMMLU/data/test"),
    "medqa_mcmle": Benchmark("MedQA-MCMLE", "test", "MIT", "benchmarks/medqa_mcmle",
                             "download data_clean.zip from the link in https://github.com/jind11/MedQA's README, unzip "
                             "it into benchmarks/medqa_mcmle (data_clean/questions/Mainland/test.jsonl is read)"),
    "cmb": Benchmark("CMB-Exam", "test", "Apache-2.0", "benchmarks/cmb",
                     "git clone https://github.com/FreedomIntelligence/CMB benchmarks/cmb && unzip benchmarks/cmb/data/"
                     "CMB.zip -d benchmarks/cmb/data (the test questions and data/CMB-test-choice-answer.json are read)"),
    "cmexam": Benchmark("CMExam", "test", "Apache-2.0, for research use", "benchmarks/cmexam",
                        "git clone https://github.com/williamliujl/CMExam benchmarks/cmexam (unzip its data/ if zipped; "
                        "the test CSV is read)"),
}
CMMLU_SUBJECTS = {"anatomy": "解剖学", "clinical_knowledge": "临床知识", "college_medicine": "大学医学",
                  "genetics": "遗传学", "nutrition": "营养学", "traditional_chinese_medicine": "中医中药",
                  "virology": "病毒学"}
# CMB's six exam types in English, for the chart (its fonts may have no Chinese glyphs)
GROUP_LABELS = {"医师考试": "physician", "护理考试": "nursing", "药师考试": "pharmacist", "医技考试": "technician",
                "专业知识考试": "discipline", "医学考研": "postgraduate"}
Z95 = 1.959963984540054  # two-sided 95% normal quantile
SUMMARY_NAME = re.compile(r"^benchmark_([A-Za-z0-9_-]+)\.json$")  # not benchmark_<name>.config.json
PAIRS_NAME = "benchmark.pairs.json"  # the paired comparison of every two models, per benchmark


# --- which benchmarks, from where -------------------------------------------------------------------------------
def parse_suite(text) -> dict[str, str]:
    """``cmmlu,cmb=/data/CMB`` -> {name: source}: a bare name reads its default source."""
    suite = {}
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        name, _, source = part.partition("=")
        name = name.strip()
        if name not in BENCHMARKS or name in suite:
            raise MedsftError(f"--benchmarks={text}: {name!r} is {'twice' if name in suite else 'unknown'}; expected "
                              f"distinct names of {', '.join(BENCHMARKS)}, each optionally =<file or folder>")
        suite[name] = source.strip() or BENCHMARKS[name].source
    return suite


def _find(folder: Path, names: list[str], bench: str) -> Path:
    """The one file of ``names`` (glob patterns, best first) below ``folder``."""
    for pattern in names:
        found = sorted(p for p in folder.rglob(pattern) if "4_options" not in p.parts and not p.name.startswith("."))
        if len(found) == 1:
            return found[0]
        if found:
            raise MedsftError(f"{folder}: several {pattern} files ({', '.join(map(str, found[:4]))}); pass the one "
                              f"to score: --benchmarks={bench}=<file>")
    raise MedsftError(f"{folder}: no {' or '.join(names)} below it; {BENCHMARKS[bench].download}")


def _records(bench: str, path: Path):
    """(where, record) of a local file or folder in the benchmark's published layout (CMB's test answers joined)."""
    if path.is_dir():
        path = _find(path, {"medqa_mcmle": ["Mainland/test.jsonl", "test.jsonl"],
                            "cmb": ["CMB-test-choice-question-merge.json"],
                            "cmexam": ["test.csv", "test*.csv"]}[bench], bench)
    records = list(rows.read_records(path))
    if bench == "cmb" and records and not any(isinstance(r, dict) and r.get("answer") for _, r in records):
        answers = _cmb_answers(path)
        records = [(w, {**r, "answer": answers.get(r.get("id"))} if isinstance(r, dict) else r) for w, r in records]
    return records


def _cmb_answers(questions: Path) -> dict:
    """CMB's test answers, published apart in CMB-test-choice-answer.json (a list of {id, answer, ...})."""
    for folder in [questions.parent, *questions.parents][:5]:
        found = sorted(folder.rglob("CMB-test-choice-answer.json"))
        if found:
            return {r.get("id"): r.get("answer") for _, r in rows.read_records(found[0]) if isinstance(r, dict)}
    raise MedsftError(f"{questions}: no answers in it and no CMB-test-choice-answer.json near it; "
                      f"{BENCHMARKS['cmb'].download}")


def _cmmlu_records(source: str, subjects: list[str], revision: str, probe):
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not any(folder.glob("*.csv")) and (folder / "test").is_dir():
            folder = folder / "test"  # CMMLU's data/ (or ../shared/cmmlu-medical) holds test/ and dev/
        absent = [s for s in subjects if not (folder / f"{s}.csv").is_file()]
        if absent:
            have = ", ".join(sorted(p.stem for p in folder.glob("*.csv"))) or "none"
            raise MedsftError(f"{folder}: no {', '.join(s + '.csv' for s in absent)} (subjects there: {have}); pass "
                              "--subjects=... or another cmmlu source")
        for s in subjects:
            for where, rec in rows.read_records(folder / f"{s}.csv"):
                yield s, where, rec
        return
    for s in subjects:
        for where, rec in rows.read_hub(source, split="test", subset=s, revision=revision, probe=probe,
                                        fix=f"or {BENCHMARKS['cmmlu'].download}"):
            yield s, where, rec


def hub_probes(suite: dict[str, str]) -> dict[str, object]:
    """{name: models.hub_probe(source)} for each benchmark of ``suite`` read from ModelScope: the hub asked now, in
    the background, its answer collected by ``load(..., probe=)``."""
    return {bench: models.hub_probe(source, "dataset") for bench, source in suite.items()
            if bench == "cmmlu" and not Path(source).expanduser().exists() and models.is_hub_id(source)}


def load(bench: str, source: str, *, subjects=tuple(CMMLU_SUBJECTS), revision: str = "",
         probe=None) -> tuple[list[dict], list]:
    """(items, bad rows) of one benchmark from a local file/folder in its published layout, or (CMMLU) ModelScope at
    ``revision``. A bad row is printed with its file:line and reason, counted, and left out. ``probe``: the hub's
    answer for ``source`` asked earlier (``hub_probes``); None: asked here when needed."""
    path = Path(str(source)).expanduser()
    if revision and (bench != "cmmlu" or path.exists()):
        raise MedsftError(f"--dataset_revision={revision}: applies to CMMLU read from ModelScope only")
    if bench == "cmmlu":
        if not path.exists() and not models.is_hub_id(str(source)):
            raise MedsftError(f"cmmlu={source}: no such folder, and not a ModelScope id; "
                              f"{BENCHMARKS['cmmlu'].download}")
        probe = None if path.exists() else probe or models.hub_probe(str(source), "dataset")
        if probe and (problem := probe.result()):  # asked once: each subject's read below reuses the answer
            raise MedsftError(f"cannot load '{source}' from ModelScope ({problem}); {BENCHMARKS['cmmlu'].download}")
        found = _cmmlu_records(str(source), list(subjects), revision, probe)
    elif not path.exists():
        raise MedsftError(f"{bench}={source}: not found; {BENCHMARKS[bench].download}, or pass "
                          f"--benchmarks={bench}=<file or folder>, or leave {bench} out of --benchmarks")
    else:
        found = ((None, w, r) for w, r in _records(bench, path))
    items, bad, counts = [], [], Counter()
    for subject, where, rec in found:
        got = rec if isinstance(rec, str) else mcq.parse_record(rec)
        if isinstance(got, str):
            bad.append({"where": where, "reason": got})
            print(f"{where}: {got}; item left out (counted)")
            continue
        group = subject or (rec.get("exam_type") if bench == "cmb" else None) or "all"
        index = counts[group]
        counts[group] += 1
        ident = f"{subject}:{index}" if subject else str(rec.get("id", len(items)))
        prompt_subject = (CMMLU_SUBJECTS.get(subject, subject) if subject else
                          rec.get("exam_class") if bench == "cmb" and rec.get("exam_class") else "医学")
        items.append({"benchmark": bench, "id": ident, "group": group, "subject": prompt_subject, **got})
    if not items:
        raise MedsftError(f"{bench}={source}: no valid items ({len(bad)} bad, listed above)")
    return items, bad


def suite_keys(suite: dict[str, str], *, subjects=tuple(CMMLU_SUBJECTS), probes=None,
               strict: bool = False) -> tuple[dict[str, str], dict[str, int], dict[str, str]]:
    """What finds a row that asks an item of ``suite`` (``mcq.overlaps``): the keys of every item, not a sample
    (``mcq.overlap_keys``), each with its benchmark; how many items each benchmark gave; why each one that could not
    be read was not checked. ``strict`` (RL must never train on what is scored): that error is raised instead.
    ``probes``: ``hub_probes(suite)``."""
    keys, checked, not_checked = {}, {}, {}
    for bench, source in suite.items():
        try:
            items, _ = load(bench, source, subjects=subjects, probe=(probes or {}).get(bench))
        except MedsftError as e:
            if strict:
                raise
            not_checked[bench] = str(e)
            continue
        checked[bench] = len(items)
        for key in mcq.overlap_keys(items):
            keys.setdefault(key, bench)
    return keys, checked, not_checked


def sample(items: list[dict], limit: int, seed: int) -> list[dict]:
    """``limit`` items (0 = all) chosen by a hash of (seed, item): the same items for every model, in file order."""
    if limit < 0:
        raise MedsftError(f"--limit={limit}: must be >= 0 (0 = every item)")
    if not limit or limit >= len(items):
        return items
    rank = lambda it: hashlib.sha256(f"{seed}:{it['benchmark']}:{it['id']}:{mcq.item_key(it['question'], it['choices'])}"  # noqa: E731
                                     .encode()).hexdigest()
    chosen = {id(it) for it in sorted(items, key=rank)[:limit]}
    return [it for it in items if id(it) in chosen]


def selection(items: list[dict]) -> str:
    """A fingerprint of exactly which items (ids, questions, options, golds) were asked."""
    payload = [[it["id"], it["question"], it["choices"], it["gold"]] for it in items]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


# --- scores -----------------------------------------------------------------------------------------------------
def rescored(row: dict) -> dict:
    """``row`` read by today's reader: one file never mixes two readers."""
    n = len(row.get("choices") or ()) or max(4, *(mcq.LETTERS.index(g) + 1 for g in row["gold"]))
    pred, how = mcq.extract(row["output"], n, bool(row.get("multi")) or len(row["gold"]) > 1)
    row = {k: v for k, v in row.items() if k != "extraction"}
    return {**row, "pred": pred, "correct": pred == row["gold"], "extracted_by": how}


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (sound near 0% and 100%, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (0.0 if k == 0 else center - half), (1.0 if k == n else center + half)


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p: b items only the first model got right, c only the second (binomial test at 1/2)."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n)


def _by_item(rows: list[dict]) -> dict:
    """Rows grouped by item (benchmark, id): several when an item was sampled several times."""
    items = {}
    for r in rows:
        items.setdefault((r.get("benchmark"), r["id"]), []).append(r)
    return items


def majority(rows: list[dict]) -> str | None:
    """The letters most of an item's samples answered (None: no answer read, or a tie)."""
    votes = Counter(r["pred"] for r in rows if r["pred"] is not None).most_common(2)
    return votes[0][0] if votes and (len(votes) == 1 or votes[0][1] > votes[1][1]) else None


def _stats(rows: list[dict]) -> dict:
    """Accuracy over every answer (samples of an item averaged) with its 95% interval: Wilson for one sample per
    item, else the normal interval of the per-item means; what could not be read, cut off, think length."""
    items = _by_item(rows)
    n, k = len(items), sum(bool(r["correct"]) for r in rows)
    means = [sum(bool(r["correct"]) for r in rs) / len(rs) for rs in items.values()]
    acc = sum(means) / n if n else None
    if n and max(map(len, items.values())) > 1:
        sd = math.sqrt(sum((m - acc) ** 2 for m in means) / (n - 1)) if n > 1 else 0.0
        lo, hi = max(0.0, acc - Z95 * sd / math.sqrt(n)), min(1.0, acc + Z95 * sd / math.sqrt(n))
    else:
        lo, hi = wilson(k, n)
    thinks = [r["think_tokens"] for r in rows if r.get("think_tokens") is not None]
    share = lambda x: round(x / len(rows), 6) if rows else None  # noqa: E731
    return {"n": n, "answers": len(rows), "correct": k, "accuracy": None if acc is None else round(acc, 6),
            "ci95": [round(lo, 6), round(hi, 6)], "unextractable": sum(r["pred"] is None for r in rows),
            "unextractable_rate": share(sum(r["pred"] is None for r in rows)),
            "option_line": sum(r["extracted_by"] == "option_line" for r in rows),
            "cut_off": sum(r.get("finished") is False for r in rows),
            "cut_off_rate": share(sum(r.get("finished") is False for r in rows)),
            "mean_think_tokens": round(sum(thinks) / len(thinks), 1) if thinks else None}


def _majority_stats(rows: list[dict]) -> dict:
    items = _by_item(rows)
    k = sum(majority(rs) == rs[0]["gold"] for rs in items.values())
    lo, hi = wilson(k, len(items))
    return {"n": len(items), "correct": k, "accuracy": round(k / len(items), 6) if items else None,
            "ci95": [round(lo, 6), round(hi, 6)]}


def chance(rows: list[dict]) -> float:
    """A uniform guess's expected accuracy: 1/options for one answer, 1/(2^options - 1) for a set."""
    items = [rs[0] for rs in _by_item(rows).values()]
    n_opt = lambda r: len(r.get("choices") or "ABCD")  # noqa: E731
    return round(sum(1 / (2 ** n_opt(r) - 1) if r.get("multi") else 1 / n_opt(r) for r in items) / len(items), 6)


def summarize(rows: list[dict]) -> dict:
    """One benchmark's scores: overall, single- and multi-answer apart, per group (subject / category), the
    majority over samples when there are several, how the letters were read."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    out = {"overall": _stats(rows), "by_group": {g: _stats([r for r in rows if r["group"] == g]) for g in groups}
           if len(groups) > 1 else {}, "chance": chance(rows) if rows else None,
           "samples": max(map(len, _by_item(rows).values())) if rows else 0,
           "extracted_by": {k: sum(r["extracted_by"] == k for r in rows) for k in mcq.EXTRACTED_BY},
           "options": dict(sorted(Counter(len(r.get("choices") or "ABCD") for r in rows).items()))}
    multi = [r for r in rows if r.get("multi")]
    if multi:
        out["single"], out["multi"] = _stats([r for r in rows if not r.get("multi")]), _stats(multi)
    if out["samples"] > 1:
        out["majority"] = _majority_stats(rows)
    return out


def compare_pairs(results_dir, names) -> dict[str, list[dict]]:
    """Per benchmark, each two of ``names`` on the items both answered (same id and question; one whose question
    differs is counted as question_differs): the majority answer per item when there are several samples."""
    per_model = {}
    for name in names:
        path = Path(results_dir) / f"benchmark_{name}.jsonl"
        if path.is_file():
            rows = [r for _, r, err in iter_jsonl(path) if not err and "id" in r]
            per_model[name] = _by_item(rows)
    out = {}
    for first, second in combinations(per_model, 2):
        x, y = per_model[first], per_model[second]
        for bench in dict.fromkeys(b for b, _ in x):
            keys = [k for k in x if k[0] == bench and k in y]
            same = [k for k in keys if None in (qx := x[k][0].get("question"), qy := y[k][0].get("question"))
                    or qx == qy]  # a hand-made row may have no question
            right = lambda rs: (majority(rs) if len(rs) > 1 else rs[0].get("pred")) == rs[0]["gold"]  # noqa: E731
            both = [(right(x[k]), right(y[k])) for k in same]
            b, c = sum(p and not q for p, q in both), sum(q and not p for p, q in both)
            out.setdefault(bench, []).append(
                {"first": first, "second": second, "n": len(both), "first_correct": sum(p for p, _ in both),
                 "second_correct": sum(q for _, q in both), "b": b, "c": c, "p": mcnemar(b, c),
                 "question_differs": len(keys) - len(same)})
    return out


def load_summaries(results_dir) -> dict[str, dict]:
    """Every benchmark_<name>.json in ``results_dir`` (base, full, lora first, then by name); a summary of the
    CMMLU-only format before the suite is read as its cmmlu part, marked ``outdated``."""
    found = {}
    for p in sorted(Path(results_dir).glob("benchmark_*.json")):
        match = SUMMARY_NAME.match(p.name)
        if not match:
            continue
        try:
            s = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MedsftError(f"{p}: not a valid summary ({e}); delete it and rerun benchmark.py") from None
        if "benchmarks" not in s and "overall" in s:
            s = {**s, "benchmarks": {"cmmlu": {"overall": s["overall"], "by_group": s.get("by_subject", {}),
                                               "chance": 0.25, "outdated": True}}}
        found[match.group(1)] = s
    return dict(sorted(found.items(), key=lambda kv: (TAGS.index(kv[0]) if kv[0] in TAGS else len(TAGS), kv[0])))
