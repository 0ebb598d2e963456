"""Multiple-choice questions in every published layout: a record read and checked, the prompt, the one answer reader
(benchmark scores and GRPO's reward) and the question key that finds one question across files and option orders."""
from __future__ import annotations

import json
import re
import unicodedata

from .chat import CONTROL_TOKENS, THINK_CLOSE, THINK_OPEN, find_control_token, output_shape, split_output

LETTERS = "ABCDEF"  # CMB has up to six options; MedQA-MCMLE and CMExam five; CMMLU four
PROMPT = "以下是关于{subject}的{kind}，请选出{which}。\n\n{question}\n{options}\n\n请先思考，然后在最后一行只写{ask}。"
SINGLE = {"kind": "单项选择题", "which": "唯一正确的答案", "ask": "“答案：X”，X 为 {letters} 中的一个字母"}
MULTI = {"kind": "多项选择题", "which": "所有正确的答案", "ask": "“答案：XY”，XY 为 {letters} 中所有正确选项的字母（如 AC）"}
EXTRACTED_BY = ("marker", "option_line", "none")  # how a row's letters were read


# --- records of every layout ------------------------------------------------------------------------------------
_QUESTION_KEYS = ("question", "Question", "题目", "stem")
_ANSWER_KEYS = ("answer_idx", "answer", "Answer", "gold", "答案", "label")  # MedQA's answer is the option's text
_OPTIONS_KEYS = ("options", "Options", "option", "choices", "选项")
_OPTION_LINE_RE = re.compile(r"^\s*([A-F])\s*[.．、:：)）]?\s*(.*?)\s*$")  # CMExam's Options: lines "A 文本"


def _letters(value) -> str | None:
    """'B' / 'AC' / 'A,C' / 'A、C' / ['A', 'C'] -> sorted distinct letters ('AC'); None when not letters A-F."""
    if isinstance(value, (list, tuple)):
        value = "".join(str(v) for v in value)
    if not isinstance(value, str):
        return None
    bare = re.sub(r"[\s,，、;；/|]+", "", unicodedata.normalize("NFKC", value).strip().upper())
    if not bare or not re.fullmatch(f"[{LETTERS}]+", bare):
        return None
    return "".join(sorted(set(bare)))


def _options(rec: dict) -> list[str] | str:
    """The option texts in letter order, or why they cannot be read: an object or list, CMExam's "A 文本" lines,
    or columns A, B, C..."""
    for key in _OPTIONS_KEYS:
        value = rec.get(key)
        if isinstance(value, str) and value.strip().startswith(("[", "{")):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return f"'{key}' is not a JSON list or object"
        elif isinstance(value, str):
            lines = [m for line in value.splitlines() if line.strip() for m in [_OPTION_LINE_RE.match(line)]]
            if not lines or not all(lines):
                return f"'{key}' is not lines 'A 文本'"
            value = {m.group(1): m.group(2) for m in lines}
        if isinstance(value, dict):
            keys = sorted(str(k).strip().upper() for k in value)
            if keys != list(LETTERS[:len(keys)]):
                return f"'{key}' keys {sorted(map(str, value))} are not A, B, C... in order"
            value = [value[k] for k in sorted(value, key=lambda k: str(k).strip().upper())]
        if isinstance(value, (list, tuple)):
            return ["" if v is None else str(v) for v in value]
        if value is not None:
            return f"'{key}' is neither a list nor an object"
    cols = [rec.get(c) for c in LETTERS]
    while cols and cols[-1] in (None, ""):
        cols.pop()
    return ["" if c is None else str(c) for c in cols]


def parse_record(rec) -> dict | str:
    """``{question, choices, gold, multi}`` from one record of any published layout, or why it is bad (a string).

    CMMLU (Question, A-D, Answer), MedQA (question, options {A..E}, answer_idx; answer is the option's text, checked),
    CMB (question, option {A..F}, answer, question_type 单项选择题|多项选择题), CMExam (Question, Options as lines
    "A 文本", Answer), or any file with question / options (list, object or columns) / answer letters."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    question = next((rec[k] for k in _QUESTION_KEYS if isinstance(rec.get(k), str)), None)
    if question is None or not question.strip():
        return "empty or missing 'question'"
    choices = _options(rec)
    if isinstance(choices, str):
        return choices
    if not 2 <= len(choices) <= len(LETTERS):
        return f"{len(choices)} options; expected 2 to {len(LETTERS)} (an object or list of options, or columns A-F)"
    if any(not c.strip() for c in choices):
        return f"option {LETTERS[[c.strip() for c in choices].index('')]} is empty"
    key, raw = next(((k, rec[k]) for k in _ANSWER_KEYS if rec.get(k) not in (None, "")), (None, None))
    gold = _letters(raw)
    if gold is None:
        return f"answer {raw!r} is not option letter(s) A-{LETTERS[len(choices) - 1]}"
    if any(LETTERS.index(g) >= len(choices) for g in gold):
        return f"answer {gold} names an option the item does not have ({len(choices)} options)"
    if key == "answer_idx" and isinstance(rec.get("answer"), str) and len(gold) == 1 \
            and rec["answer"].strip() != choices[LETTERS.index(gold)].strip():
        return f"'answer' {rec['answer']!r} is not option {gold}'s text (answer_idx {gold})"
    kind = rec.get("question_type")
    multi = kind == "多项选择题" or len(gold) > 1
    if kind == "单项选择题" and len(gold) > 1:
        return f"a 单项选择题 with several answers ({gold})"
    fields = {"question": question, **dict(zip(LETTERS, choices))}
    found = find_control_token(fields, list(fields), CONTROL_TOKENS + (THINK_OPEN, THINK_CLOSE))  # typed tags too
    if found:
        return f"'{found[0]}' holds the chat control token {found[1]}"
    return {"question": question.strip(), "choices": [c.strip() for c in choices], "gold": gold, "multi": multi}


# --- the prompt -------------------------------------------------------------------------------------------------
def prompt(item: dict, subject: str = "医学") -> str:
    """The user turn: the question, its options, and the last line to write (``答案：X``, or ``答案：XY`` for an
    item with several answers), for 2 to 6 options."""
    letters = LETTERS[:len(item["choices"])]
    words = MULTI if item.get("multi") else SINGLE
    return PROMPT.format(subject=subject, kind=words["kind"], which=words["which"], question=item["question"],
                         options="\n".join(f"{k}. {c}" for k, c in zip(letters, item["choices"])),
                         ask=words["ask"].format(letters="、".join(letters)))


# --- the answer reader ------------------------------------------------------------------------------------------
# A letter touching an ASCII letter, digit, _ or - is part of a word (DNA, HbA1c, D-二聚体). Touching a Chinese
# character it is part of a word (维生素D, B超, C反应蛋白, A型) unless that character is one that points at an
# option: 选C, 是C, C项, C正确, A或C...
_PRE = "案选是为或和及与跟择即了除比至到从在对把将且而仅只均都也还但项则次然时上后如若"
_POST = "项选或和及与跟是为正错对不也答可中的说描有无所均都还且而外之以至到"
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_NOT_PRE = rf"(?<![A-Za-z0-9_\-])(?<![{_CJK}](?<![{_PRE}]))"
_NOT_POST = rf"(?![A-Za-z0-9_\-])(?![{_CJK}](?<![{_POST}]))"
# an option letter reference: A, (A), 【A】, AC (a run of option letters counts as each of them)
# (blanks inside a bracket only: "B 卵巢" is B followed by its text)
_MENTION = re.compile(rf"{_NOT_PRE}(?:[(\[【][ \t]*+)?([A-F]++)(?:[ \t]*+[)\]】])?{_NOT_POST}")
_OPT = r"(?:[(\[【][ \t]*+)?[A-F](?:[ \t]*+[)\]】])?"
_HEDGE = r"或者|或是|还是|或|/|\bor\b"
_JOIN = rf"[ \t]*+(?:{_HEDGE}|以及|和|与|及|、|,|\+|&|\band\b)?[ \t]*+"  # a list stays on its line
# a commitment: 答案：X (bold, 是/为/应为, 选/选项 tolerated), 正确选项是X, 故选X, answer is X; then its letter list
_MARKER = re.compile(
    r"(?:(?:最终|正确|标准|参考)?答案|正确(?:的)?选项|(?:故|应|应当|应该|因此|所以|最终)选(?:择)?|(?i:answer\s++is|answer\s*+:))"
    r"(?:\s|\*)*+(?:应该|应当|应|就|即)?(?:\s|\*)*+(?:是|为|:)?(?:\s|\*)*+:?(?:\s|\*)*+(?:选项|选)?(?:\s|\*)*+"
    rf"(?>({_NOT_PRE}{_OPT}(?:{_JOIN}{_OPT})*+))(?:[ \t]*+(?:选项|项))?{_NOT_POST}")
# what makes a commitment no commitment: a negation just before it on its line (不应选A, 错误答案：A), or ending
# the line before an option line (我不选\nA) ...
_NEG = r"(?:不|非|没有?|未|别|勿|排除|错误|错)(?:正确|对)?的?(?:应该?|应当)?(?:选项|答案)?"
_NEGATED_BEFORE = {"marker": re.compile(rf"{_NEG}[ \t*:]*$"),
                   "option_line": re.compile(rf"{_NEG}(?:是|为|选择?)[ \t*:]*\n[ \t\n*]*$")}
# ... or just after it (选A是错误的, 应选A以外的), or a lower-case hedge (答案：A或c)
_NEGATED_AFTER = re.compile(rf"[ \t]*(?:(?:是|为)?[ \t]*(?:错|不对|不正确|不是|不选|以外|之外|除外|排除)"
                            rf"|(?:{_HEDGE}|、|,|和|与|及)[ \t]*[(\[【]?[a-f](?![A-Za-z]))")
# the fallback: a line that is option letters alone: B, (B), B., **B**, AC
_OPTION_LINE = re.compile(rf"^[ \t*]*+((?:{_OPT}(?:[ \t]*+(?:、|,)?[ \t]*+{_OPT})*+))[ \t]*+[.。、:]?[ \t*]*+$", re.M)


def _negated(answer: str, start: int, end: int, _letters: str, how: str) -> bool:
    """Whether the commitment at ``answer[start:end]`` is negated: a marker's own line before it, or the text before
    an option line (the line above it), ends in a negation; or what follows the letters retracts them."""
    line_start = answer.rfind("\n", 0, start) + 1 if how == "marker" else 0
    before = answer[max(0, start - 16, line_start):start]
    return bool(_NEGATED_BEFORE[how].search(before) or _NEGATED_AFTER.match(answer, end))


def extract(output: str, n_options: int = 4, multi: bool = False) -> tuple[str | None, str]:
    """(letters or None, extracted_by) read from the answer after the think.

    The first commitment (a ``答案：X``-style marker, else a line holding only option letters) is read, and only
    when nothing after it names another option: ``答案：A。不对，应该选C``, ``答案：C，也可能是A``, ``答案：C\\n\\nA``
    give nothing, as do hedges (``A或C``) and, for a single-answer item, several letters. Full-width text is read
    as half-width. None also for an unclosed think and a stray think tag (``chat.output_shape``)."""
    if output_shape(output) in ("unclosed", "stray_tag"):
        return None, "none"
    answer = unicodedata.normalize("NFKC", split_output(output)[1])
    options = LETTERS[:n_options]
    found = [(m.start(), m.end(), m.group(1), "marker") for m in _MARKER.finditer(answer)]
    found += [(m.start(), m.end(), m.group(1), "option_line") for m in _OPTION_LINE.finditer(answer)]
    found = [f for f in found if not _negated(answer, *f)]
    if not found:
        return None, "none"
    _, end, listed, how = min(found)
    chosen = set(re.findall("[A-F]", listed))
    if re.search(_HEDGE, listed) or not chosen <= set(options) or (len(chosen) > 1 and not multi):
        return None, "none"
    for m in _MENTION.finditer(answer, end):
        named = set(m.group(1))
        if named <= set(options) and not named <= chosen:
            return None, "none"
    return "".join(sorted(chosen)), how


# --- one question across files ----------------------------------------------------------------------------------
_ITEM_NUMBER = re.compile(r"^\s*(?:第\s*\d+\s*题|[(\[]\s*\d{1,4}\s*[)\]]|\d{1,4}\s*[.、:)](?!\d))\s*")
_APPENDED = re.compile(r"(?s)(?:^|(?<=[\s。?:)]))\(?A\)?\s*[.、:)]\s*\S.*?\(?B\)?\s*[.、:)]\s*\S.*$")
_DROPPED = {"Zs", "Zl", "Zp", "Cc", "Cf", "Po", "Ps", "Pe", "Pi", "Pf", "Pd", "Pc"}  # blanks, format, punctuation


def squash(text: str) -> str:
    """``text`` without blanks, format characters and punctuation, lower case: what two texts share as words."""
    return "".join(ch for ch in text if unicodedata.category(ch) not in _DROPPED).lower()


def question_key(question: str) -> str:
    """A question's identity across files: NFKC (full-width = half-width), zero-width characters, BOM, blanks and
    punctuation removed, lower case, without a leading item number (``12.``, ``(3)``, ``第5题``) or options written
    after it (``… A.卵巢 B.子宫``)."""
    text = _ITEM_NUMBER.sub("", unicodedata.normalize("NFKC", str(question)), count=1)
    return squash(_APPENDED.sub("", text))


def item_key(question: str, choices) -> str:
    """A multiple-choice item's identity: its question key and its option texts in any order."""
    return question_key(question) + "|" + "|".join(sorted(squash(unicodedata.normalize("NFKC", c)) for c in choices))


STEM_MIN = 12  # characters of question key from which a question alone names an item: shorter stems (下列哪项正确) recur


def overlap_keys(items) -> set[str]:
    """The keys by which a row matches one of ``items``: each item's question + options in any order, and its
    question alone when it is long enough to name the item."""
    keys = set()
    for it in items:
        keys.add(item_key(it["question"], it["choices"]))
        if len(stem := question_key(it["question"])) >= STEM_MIN:
            keys.add(stem)
    return keys


def overlaps(question: str, choices, keys: set[str]) -> bool:
    """Whether a row (a free-text question, or a multiple-choice one with ``choices``) is one of the keyed items."""
    return (choices is not None and item_key(question, choices) in keys) or question_key(question) in keys
