"""The CMMLU benchmark's medical subjects: items, prompt, the strict answer reader, scores and paired comparisons.

CMMLU (Li et al., 2023) is CC BY-NC-SA 4.0: read from ModelScope or a local folder at run time, never shipped."""
from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

from . import generate as gen
from . import models
from .adapters import load_for_inference
from .chat import output_shape, split_output
from .config import TAGS
from .files import MedsftError, iter_jsonl

SUBJECTS = {"anatomy": "解剖学", "clinical_knowledge": "临床知识", "college_medicine": "大学医学", "genetics": "遗传学",
            "nutrition": "营养学", "traditional_chinese_medicine": "中医中药", "virology": "病毒学"}
LETTERS = "ABCD"
COLUMNS = ("Question", "A", "B", "C", "D", "Answer")
Z95 = 1.959963984540054  # two-sided 95% normal quantile
CHANCE = 0.25
PROMPT = ("以下是关于{subject}的单项选择题，请选出唯一正确的答案。\n\n{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n\n"
          "请先思考，然后在最后一行只写“答案：X”，X 为 A、B、C、D 中的一个字母。")
LOCAL_HINT = ("pass a local folder of CMMLU CSVs instead: --dataset=/path/to/CMMLU/data/test (files <subject>.csv "
              "with columns ,Question,A,B,C,D,Answer, as in github.com/haonan-li/CMMLU)")
SUMMARY_NAME = re.compile(r"^benchmark_([A-Za-z0-9_-]+)\.json$")  # not benchmark_<name>.config.json
PAIRS_NAME = "benchmark.pairs.json"  # the paired comparison of every two models (not a benchmark_<name>.json)
EXTRACTED_BY = ("marker", "option_line", "none")  # how a row's letter was read
SCORED = ("overall", "macro_accuracy", "by_subject", "extracted_by", "extraction")  # summary keys scores make

# A letter touching a letter, digit, hyphen or CJK character is part of a word (维生素D, B超, C反应蛋白, D-二聚体);
# after a letter only 项/选项 may follow ("答案：B项"). Letters joined by 或/和/、/or... are a hedge.
_WORD = r"A-Za-z0-9_\-\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Whitespace runs are possessive (*+): a long run is never re-split between two of them (polynomial backtracking).
_OPT = r"(?:[(（【\[][ \t]*+[A-D][ \t]*+[)）】\]]|[A-D])"  # one option letter, maybe bracketed
_JOIN = r"[ \t]*+(?:或者|或是|还是|以及|或|和|与|及|、|/|,|，|\+|&|or|and)?[ \t]*+"
# 答案：X as the prompt asks, bold (**答案：D**, **答案**：D), 是/为/应为, 选/选项 tolerated; or English "answer is X".
# The letter list is atomic: a list whose last letter is part of a word is no answer, never its first letter alone.
_MARKER = re.compile(rf"(?:答案\s*+(?:\*\*)?\s*+(?:应该|应当|应|就|即)?\s*+(?:[:：]|是|为)\s*+[:：]?|(?i:answer\s++is)\s*+[:：]?)"
                     rf"\s*+(?:\*\*)?\s*+(?:选项|选)?\s*+(?>({_OPT}(?:{_JOIN}{_OPT})*))(?:[ \t]*+(?:选项|项)|(?![{_WORD}]))")
# the fallback: a line that is an option letter alone: B, (B), B., **B**
_OPTION_LINE = re.compile(r"^[ \t*]*+[(（【\[]?[ \t]*+([A-D])[ \t]*+[)）】\]]?[ \t]*+[.．。、:：]?[ \t*]*+$", re.M)

def parse_subjects(text) -> list[str]:
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    bad = [s for s in names if not re.fullmatch(r"[a-z_]+", s)]
    if not names or bad or len(set(names)) != len(names):
        raise MedsftError(f"--subjects={text}: expected distinct comma-separated CMMLU subjects, e.g. "
                          f"{','.join(SUBJECTS)}")
    return names

def _item(subject: str, index: int, rec: dict, where: str) -> dict:
    vals = {c: rec.get(c, rec.get(c.lower())) for c in COLUMNS}  # ModelScope records may spell them in lower case
    for c, v in vals.items():
        if not isinstance(v, str) or not v.strip():
            raise MedsftError(f"{where}: empty or missing '{c}'; every item needs Question, A, B, C, D and Answer")
    gold = vals["Answer"].strip()
    if gold not in LETTERS:
        raise MedsftError(f"{where}: Answer {vals['Answer']!r} is not one of A, B, C, D")
    return {"subject": subject, "index": index, "question": vals["Question"].strip(),
            "choices": [vals[c].strip() for c in LETTERS], "gold": gold}

def read_csv(path: Path, subject: str) -> list[dict]:
    """Items of one CMMLU CSV; fields may hold line breaks, so errors name the line where a record starts."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise MedsftError(f"{path}:1: missing column(s) {', '.join(missing)} (header: {','.join(header)}); "
                                  "expected CMMLU's ,Question,A,B,C,D,Answer")
            items, start = [], reader.line_num + 1
            for rec in reader:
                where, start = f"{path}:{start}", reader.line_num + 1
                if any(field.strip() for field in rec):
                    row = {h: rec[k] if k < len(rec) else None for k, h in enumerate(header)}
                    items.append(_item(subject, len(items), row, where))
    except UnicodeDecodeError as e:
        raise MedsftError(f"{path}: not valid UTF-8 (byte {e.start}); re-save it as UTF-8") from None
    if not items:
        raise MedsftError(f"{path}: no items")
    return items

def _from_modelscope(dataset: str, subject: str, revision: str = "") -> list[dict]:
    from modelscope.msdatasets import MsDataset  # heavy: only for CMMLU from ModelScope

    pinned = {"version": revision} if revision else {}  # without it modelscope loads the hub's current
    try:  # a dataset's own loading script is code from the hub: never run it
        records = MsDataset.load(dataset, subset_name=subject, split="test", trust_remote_code=False, **pinned)
    except Exception as e:  # noqa: BLE001 - modelscope raises many types; the user needs one clear message
        raise MedsftError(f"loading {dataset} ({subject}, test) from ModelScope failed: {type(e).__name__}: {e}; "
                          f"or {LOCAL_HINT}") from e
    return [_item(subject, i, dict(r), f"{dataset}:{subject}:{i}") for i, r in enumerate(records)]

def load_items(dataset: str, subjects: list[str], limit: int = 0, revision: str = "") -> list[dict]:
    """The first ``limit`` (0 = all) test items of each subject, from a local folder or ModelScope (at ``revision``;
    "" = the hub's current)."""
    if limit < 0:
        raise MedsftError(f"--limit={limit}: must be >= 0 (0 = every item)")
    folder = Path(str(dataset)).expanduser()
    if revision and folder.is_dir():
        raise MedsftError(f"--dataset_revision applies to a ModelScope dataset, not to the local folder {folder}; "
                          "pass --dataset_revision= (empty)")
    if folder.is_dir() and not any(folder.glob("*.csv")) and (folder / "test").is_dir():
        folder = folder / "test"  # the CMMLU repo's data/ (or ../shared/cmmlu-medical) holds test/ and dev/
    if folder.is_dir():
        have = sorted(p.stem for p in folder.glob("*.csv"))
        absent = [s for s in subjects if s not in have]
        if absent:
            raise MedsftError(f"{folder}: no {', '.join(s + '.csv' for s in absent)} (subjects there: "
                              f"{', '.join(have) or 'none'}); pass --subjects=... or another --dataset")
        load = lambda s: read_csv(folder / f"{s}.csv", s)  # noqa: E731
    elif folder.exists() or not models.is_hub_id(str(dataset)):
        raise MedsftError(f"--dataset={dataset}: no such folder, and not a ModelScope id (org/name); {LOCAL_HINT}")
    elif problem := models.hub_problem(str(dataset), repo_type="dataset"):  # seconds, before any model loads
        raise MedsftError(f"cannot load '{dataset}' from ModelScope ({problem}); {LOCAL_HINT}")
    else:
        load = lambda s: _from_modelscope(str(dataset), s, revision)  # noqa: E731
    return [it for s in subjects for it in (load(s)[:limit] if limit else load(s))]

def prompt(item: dict) -> str:
    name = SUBJECTS.get(item["subject"], item["subject"].replace("_", " "))
    return PROMPT.format(subject=name, question=item["question"], **dict(zip(LETTERS, item["choices"])))

def extract(output: str) -> tuple[str | None, str]:
    """(letter or None, extracted_by), read after the think: the one letter the ``答案：X`` markers name, else the one
    letter of the lines holding only an option letter. None: no letter, several (a hedge), an unclosed think or a
    stray think tag."""
    if output_shape(output) in ("unclosed", "stray_tag"):
        return None, "none"
    answer = split_output(output)[1]
    for how, found in (("marker", _MARKER.findall(answer)), ("option_line", _OPTION_LINE.findall(answer))):
        letters = set(re.findall("[A-D]", "".join(found)))
        if letters:
            return (letters.pop(), how) if len(letters) == 1 else (None, "none")
    return None, "none"

def rescored(row: dict) -> dict:
    """``row`` re-read by today's reader (an older reader's ``extraction`` dropped): one file never mixes two readers."""
    pred, how = extract(row["output"])
    row = {k: v for k, v in row.items() if k != "extraction"}
    return {**row, "pred": pred, "correct": pred == row["gold"], "extracted_by": how}

def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (sound near 0% and 100%, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # exact ends at 0 of n and n of n, where the two terms cancel only up to rounding
    return (0.0 if k == 0 else center - half), (1.0 if k == n else center + half)

def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p: b items only the first model got right, c only the second (binomial test at 1/2)."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n)

def compare_pairs(results_dir, names) -> list[dict]:
    """Each two of ``names`` with rows in benchmark_<name>.jsonl, on the items both answered (same subject, index and
    question; a differing question is counted in question_differs)."""
    rows = {}
    for name in names:
        path = Path(results_dir) / f"benchmark_{name}.jsonl"
        if path.is_file():
            rows[name] = {(r.get("subject"), r.get("index")): r for _, r, err in iter_jsonl(path) if not err}
    out = []
    for first, second in combinations(rows, 2):
        x, y = rows[first], rows[second]
        keys = [k for k in x if k in y]
        same = [k for k in keys if None in (x[k].get("question"), y[k].get("question"))
                or x[k]["question"] == y[k]["question"]]  # a hand-made row may have no question
        both = [(x[k].get("correct") is True, y[k].get("correct") is True) for k in same]
        b, c = sum(p and not q for p, q in both), sum(q and not p for p, q in both)
        out.append({"first": first, "second": second, "n": len(both), "first_correct": sum(p for p, _ in both),
                    "second_correct": sum(q for _, q in both), "b": b, "c": c, "p": mcnemar(b, c),
                    "question_differs": len(keys) - len(same)})
    return out

def _stats(rows: list[dict]) -> dict:
    n, k = len(rows), sum(bool(r["correct"]) for r in rows)
    lo, hi = wilson(k, n)
    none = sum(r["pred"] is None for r in rows)
    return {"n": n, "correct": k, "accuracy": round(k / n, 6) if n else None, "ci95": [round(lo, 6), round(hi, 6)],
            "unextractable": none, "unextractable_rate": round(none / n, 6) if n else None,
            "option_line": sum(r["extracted_by"] == "option_line" for r in rows),
            "truncated": sum(r.get("finished") is False for r in rows)}

def summarize(rows: list[dict], meta: dict) -> dict:
    """Per subject and overall accuracy with 95% Wilson intervals; unextractable answers count as wrong."""
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    by_subject = {s: _stats([r for r in rows if r["subject"] == s]) for s in subjects}
    accs = [v["accuracy"] for v in by_subject.values()]
    how = Counter(r["extracted_by"] for r in rows)
    return {**meta, "overall": _stats(rows), "macro_accuracy": round(sum(accs) / len(accs), 6) if accs else None,
            "by_subject": by_subject, "extracted_by": {k: how[k] for k in EXTRACTED_BY}}

def make_row(item: dict, result: dict, model: str, adapter: str | None) -> dict:
    row = rescored({**item, "output": result["output"], "pred": None, "correct": False, "extracted_by": None,
                   "new_tokens": result.get("new_tokens"), "finished": result.get("finished"), "model": model})
    return {**row, "adapter": adapter} if adapter else row

def load_generator(model: str, adapter: str | None, *, max_new_tokens: int, do_sample: bool, seed: int,
                   batch_size: int, enable_thinking: bool = True):
    """(decoding settings used, run(todo, on_rows)): run generates the items' rows and hands them to ``on_rows`` after
    each batch."""
    net, tokenizer = load_for_inference(model, adapter)
    used = gen.used_settings(gen.generation_config(net, tokenizer, max_new_tokens=max_new_tokens, do_sample=do_sample))
    mode = "think" if enable_thinking else "no_think_hard"

    def run(todo: list[dict], on_rows) -> None:
        gen.generate(net, tokenizer, [prompt(it) for it in todo], max_new_tokens=max_new_tokens, do_sample=do_sample,
                     seed=seed, batch_size=batch_size, progress=False, modes=[mode] * len(todo),
                     on_batch=lambda pairs: on_rows([make_row(todo[i], r, model, adapter) for i, r in pairs]))

    return used, run

def _summary(p: Path) -> dict:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MedsftError(f"{p}: not a valid summary ({e}); delete it and rerun benchmark.py") from None

def load_summaries(results_dir) -> dict[str, dict]:
    """Every benchmark_<name>.json in ``results_dir``: base, full, lora first, then the others by name."""
    found = {}
    for p in sorted(Path(results_dir).glob("benchmark_*.json")):
        match = SUMMARY_NAME.match(p.name)
        if match:
            found[match.group(1)] = _summary(p)
    return dict(sorted(found.items(), key=lambda kv: (TAGS.index(kv[0]) if kv[0] in TAGS else len(TAGS), kv[0])))
