"""Test oracles: slow, direct definitions that the fast production code is checked against."""
from __future__ import annotations

import math
import re
from collections import Counter
from contextlib import contextmanager

from medsft.chat import obeying_shapes, output_shape
from medsft.think_steps import content_chars

def follows_mode(output: str, mode: str) -> bool:
    """Does a finished generated assistant text have the shape ``mode`` asks for (``chat.obeying_shapes``)?"""
    return output_shape(output) in obeying_shapes(mode)

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
    num = 0.0
    for g, c in a.grams.items():
        other = b.grams.get(g)
        if other:
            num += min(c, other) * a.weights[g]
    return 2.0 * num / den

def text_similarity(x: str, y: str, idf: Idf) -> float:
    return similarity(Step(x, idf), Step(y, idf))


class CountingFile:
    """A file whose every read (read, readline, iteration) appends its size to ``sizes``: a test of a reader that
    must not read a file whole patches ``open`` with ``lambda *a, **k: CountingFile(real_open(*a, **k), sizes)``."""

    def __init__(self, f, sizes: list):
        self.f, self.sizes = f, sizes

    def __iter__(self):
        for line in self.f:
            self.sizes.append(len(line))
            yield line

    def readline(self, *a):
        line = self.f.readline(*a)
        self.sizes.append(len(line))
        return line

    def read(self, *a):
        data = self.f.read(*a)
        self.sizes.append(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


# Error messages are checked by their key facts (the file and line, the field or constant, the offending value,
# the option that fixes it), never by their wording, which may change freely.

def assert_names(msg: str, *facts, lines: int | None = 1) -> str:
    """Assert that the user-facing message ``msg`` names every one of ``facts`` (each str()-ed: a path, a
    ``file:line``, a field or constant name, the offending value, the option to use instead), holds no traceback,
    and is ``lines`` lines long (None: any length). Returns ``msg``."""
    msg = str(msg)
    assert "Traceback" not in msg, msg
    missing = [str(f) for f in facts if str(f) not in msg]
    assert not missing, f"the message does not name {missing}: {msg!r}"
    if lines is not None:
        assert len(msg.strip().splitlines()) == lines, f"expected {lines} line(s): {msg!r}"
    return msg

def error_of(stderr: str) -> str:
    """The message a script printed as ``error: <message>`` (the one such line and what follows it), after
    checking that its stderr holds no traceback and exactly one ``error: `` line."""
    assert "Traceback" not in stderr, stderr[-4000:]
    starts = [i for i, line in enumerate(stderr.splitlines()) if line.startswith("error: ")]
    assert len(starts) == 1, stderr[-4000:]
    return "\n".join(stderr.splitlines()[starts[0]:])[len("error: "):]

def assert_exit(proc, code: int, *facts, lines: int | None = 1) -> str:
    """Assert that the finished script ``proc`` (a CompletedProcess) exited ``code`` with one ``error: `` message
    on stderr naming every one of ``facts`` (see ``assert_names``), and no traceback. Returns the message."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-4000:])
    return assert_names(error_of(proc.stderr), *facts, lines=lines)

def lines_naming(text: str, *facts) -> list[str]:
    """The lines of a script's output ``text`` that name every one of ``facts`` (each str()-ed): a notice is
    found by what it names, not by how it is worded."""
    return [line for line in text.splitlines() if all(str(f) in line for f in facts)]

def numbers_in(text: str, *paths) -> list[int]:
    """The whole numbers ``text`` names, in order, once ``paths`` (whose digits are not counts) are taken out: a
    message's counts checked as facts, whatever words surround them."""
    text = str(text)
    for p in sorted(map(str, paths), key=len, reverse=True):
        text = text.replace(p, " ")
    return [int(n) for n in re.findall(r"(?<![\w.])\d+(?![\w.])", text)]

@contextmanager
def raises_naming(exc_type, *facts, lines: int | None = 1):
    """``pytest.raises(exc_type)`` that then checks the exception's message with ``assert_names``."""
    import pytest

    with pytest.raises(exc_type) as info:
        yield info
    assert_names(str(info.value), *facts, lines=lines)
