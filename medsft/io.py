"""File I/O shared by every stage: atomic writes, JSONL reading with file:line errors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


class MedsftError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option).

    Scripts print it as ``error: <message>`` without a traceback (see ``medsft.config.configure``).
    """


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def dumps_jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, dumps_jsonl(rows))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def iter_jsonl(path: str | os.PathLike):
    """Yield ``(line_number, obj_or_None, error_or_None)`` for every non-blank line of a JSONL file.

    Decoding problems are reported per line instead of raised, so a caller can keep the good rows.
    Raises MedsftError if the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise MedsftError(f"{path}: file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, None, f"not valid UTF-8 (byte {e.start}); re-save the file as UTF-8"
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, None, f"invalid JSON ({e.msg} at column {e.colno})"
                continue
            if not isinstance(obj, dict):
                yield lineno, None, f"expected a JSON object, got {type(obj).__name__}"
                continue
            yield lineno, obj, None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file of objects; the first bad line raises MedsftError naming ``path:line``."""
    rows = []
    for lineno, obj, err in iter_jsonl(path):
        if err:
            raise MedsftError(f"{path}:{lineno}: {err}; fix or remove that line")
        rows.append(obj)
    return rows
