"""Reasoning text -> steps, the unit the chain-of-thought scores (medsft.cot) and the LLM judge count: a step ends at
a line break or a sentence end, list markers are stripped, and pieces too short to say anything join a neighbour."""
from __future__ import annotations

import re
import unicodedata

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
# Python's \w is exactly Unicode categories L* and N* plus "_" (a test checks every code point)
_NOT_CONTENT = re.compile(r"[\W_]+")

def content_chars(text: str) -> str:
    """Letters and digits of ``text`` (NFKC, case-folded): what a step says, without punctuation or spacing."""
    # NFKC is NFC of NFKD by definition, and CPython's own NFKC is ~10x slower on Chinese text (a test compares them)
    nfkc = unicodedata.normalize("NFC", unicodedata.normalize("NFKD", text))
    return _NOT_CONTENT.sub("", nfkc.casefold())

def _is_sentence_dot(line: str, start: int) -> bool:
    # a single "." ends a sentence, except between digits (1.5) or after a list number (…：2. xx)
    before, after = line[start - 1:start], line[start + 1:start + 2]
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
    stripped = (_MARKER.sub("", piece, count=1).strip() for piece in pieces)
    return [piece for piece in stripped if piece]

def _join(a: str, b: str) -> str:
    # Latin text keeps a space between merged pieces; Chinese text has none to keep
    return a + (" " if a[-1:].isascii() and b[:1].isascii() and b[:1].isalnum() else "") + b

def split_steps(text: str) -> list[str]:
    """Reasoning steps of ``text``: a piece with fewer than MIN_STEP_CHARS content characters joins the previous
    step (the next one when it comes first); pieces without any letter or digit are dropped."""
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
