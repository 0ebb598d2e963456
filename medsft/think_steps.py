"""Reasoning text -> steps: the unit the chain-of-thought scores (medsft.cot) and the LLM judge (medsft.judge) count.

A step ends at a line break or a sentence end; list markers are stripped; pieces too short to say anything join a
neighbour. `content_chars` is what a step says: its letters and digits, NFKC-normalised and case-folded.
"""
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
# Python's \w is exactly Unicode categories L* and N* plus "_" (a test checks every code point): one C-speed pass
# instead of a category lookup per character.
_NOT_CONTENT = re.compile(r"[\W_]+")


def content_chars(text: str) -> str:
    """Letters and digits of `text` (NFKC, case-folded): what a step says, without punctuation or spacing."""
    # NFKC is by definition NFC of NFKD; CPython's own NFKC is ~10x slower on Chinese text (its fullwidth
    # punctuation fails the quick check), the two steps are not (a test compares every code point).
    nfkc = unicodedata.normalize("NFC", unicodedata.normalize("NFKD", text))
    return _NOT_CONTENT.sub("", nfkc.casefold())


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
