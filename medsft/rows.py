"""Rows from wherever a stage reads them: a JSONL / JSON / CSV / parquet file, a folder of them, or a ModelScope
dataset; each row with where it came from (file:line, or dataset:row N), so every bad row can be named. The one row
reader of data.py, benchmark.py and train_grpo.py."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from . import models
from .files import MAX_LINE_BYTES, MedsftError, beyond_json_limits, check_utf8, iter_jsonl

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")  # the row files read_records reads


def _json_list(path: Path, text: str) -> list[tuple[int, object]]:
    """(line, value) of each element of the JSON list in ``text``, each line found as the element is decoded (a bad
    element, or text after the closing bracket, names its line)."""
    decoder, pos, n, found = json.JSONDecoder(), text.index("[") + 1, len(text), []
    line = text.count("\n", 0, pos) + 1
    while True:
        start = pos
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", start, pos)
        if pos >= n or text[pos] == "]":
            rest = text[pos + 1:]
            if rest.strip():
                after = line + text.count("\n", pos, pos + 1 + len(rest) - len(rest.lstrip()))
                raise MedsftError(f"{path}:{after}: text after the list's closing ']'; fix that line")
            return found
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise MedsftError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); fix that line") from None
        except (ValueError, RecursionError) as e:
            raise MedsftError(f"{path}:{line}: {beyond_json_limits(e)}; fix that element") from None
        found.append((line, obj))
        line += text.count("\n", pos, end)
        pos = end


def _first_char(path: Path) -> bytes:
    """The first character of ``path`` past a byte-order mark and blanks (b"" for none): '[' starts a JSON list."""
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            chunk = chunk.lstrip(b"\xef\xbb\xbf \t\r\n")
            if chunk:
                return chunk[:1]
    return b""


def _refuse_one_object(path: Path) -> None:
    """MedsftError when ``path`` is one JSON object over many lines (an export such as {"data": [...]}), which read
    as JSON lines would be one bad row per line; nothing when it does not parse as a whole."""
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, RecursionError):  # UnicodeDecodeError included
        return
    if isinstance(doc, dict):
        key, value = next(iter(doc.items())) if len(doc) == 1 else (None, None)
        hint = f"; the rows seem to be under {key!r}: save that list itself" if isinstance(value, list) else ""
        raise MedsftError(f"{path}: this file is one JSON object, not rows: a .json file must be a JSON list of row "
                          f"objects ([{{...}}, {{...}}]) or JSON lines (one object per line){hint}")


def read_records(path):
    """(where, record or why it is bad) of each row of a JSONL / JSON / CSV / parquet file, or of each such file in a
    folder (by name). ``where`` is file:line: the line of a JSONL row or of the start of a JSON list's element or a
    CSV record (whose cells may span lines), the row of a parquet file. A record is a dict; a row that is no JSON
    object is a string: why it is bad. Every CSV cell is text (no type guessing). A file that is not UTF-8 as a
    whole, or a JSON list that does not parse, is one MedsftError naming its file:line."""
    path = Path(path)
    if path.is_dir():
        try:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
        except OSError as e:
            raise MedsftError(_unreadable(path, e)) from None
        if not files:
            raise MedsftError(f"{path}: no {'/'.join(SUFFIXES)} files in this folder")
        for f in files:
            yield from _file_records(f)
    else:
        yield from _file_records(path)


def _unreadable(path: Path, e: OSError) -> str:
    return f"{path}: cannot read it ({e.strerror or e}); make it readable (e.g. chmod u+r) or move it out of the way"


def _file_records(path: Path):
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise MedsftError(f"{path}: unknown file type {suffix!r}; expected {', '.join(SUFFIXES)} or a folder of them")
    if not path.is_file():
        raise MedsftError(f"{path}: file not found")
    name = os.fsencode(path).decode("utf-8", "backslashreplace")  # a name that is no UTF-8 cannot be printed as it is
    try:
        records, first = None, _first_char(path) if suffix in (".jsonl", ".json") else b""
        if first == b"[":
            check_utf8(path, strict=True)  # one JSON document: a bad byte anywhere spoils it
            try:
                records = _json_list(path, path.read_text(encoding="utf-8-sig"))
            except MedsftError:
                if suffix == ".json":
                    raise
                # JSON lines whose first line is a list: each line is read (and named) on its own
        if records is not None:
            for line, rec in records:
                yield f"{name}:{line}", rec if isinstance(rec, dict) else \
                    f"expected a JSON object, got {type(rec).__name__}"
        elif suffix in (".jsonl", ".json"):
            for n, (lineno, obj, err) in enumerate(iter_jsonl(path)):
                if n == 0 and err and suffix == ".json" and first == b"{":  # a first line no row: JSON lines at all?
                    _refuse_one_object(path)
                yield f"{name}:{lineno}", err or obj
        elif suffix == ".csv":
            check_utf8(path, strict=True)  # the CSV parser cannot skip an undecodable row: any bad byte is fatal
            # a cell may hold what a row may (a long think); Python's default stops at 131,072 characters
            csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader, start = csv.reader(f), 1
                try:
                    header = [h.strip() for h in next(reader, [])]
                    start = reader.line_num + 1
                    for rec in reader:
                        where, start = f"{name}:{start}", reader.line_num + 1
                        if any(field.strip() for field in rec):
                            yield where, {h: rec[k] if k < len(rec) else None for k, h in enumerate(header) if h}
                except csv.Error as e:  # e.g. an unclosed quote that runs on past the field limit
                    raise MedsftError(f"{path}:{start}: unreadable CSV record ({e}); fix the record starting on "
                                      "that line (an unclosed quote?)") from None
        else:
            import pyarrow as pa  # a dependency of datasets
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except pa.ArrowException as e:  # empty, cut short, or no parquet at all
                raise MedsftError(f"{path}: not a readable parquet file ({e}); write it again, or move it out of "
                                  "the way") from None
            for i, rec in enumerate(table.to_pylist()):
                yield f"{name}:row {i + 1}", rec
    except UnicodeDecodeError as e:
        raise MedsftError(f"{path}: not valid UTF-8 (byte {e.start}); re-save it as UTF-8") from None
    except OSError as e:
        raise MedsftError(_unreadable(path, e)) from None


def read_hub(name: str, *, split: str, subset: str | None = None, revision: str = "", probe=None, fix: str):
    """(where, record) of a ModelScope dataset's ``split`` (``subset``: its configuration), ``where`` being
    ``name[/subset]:row N``. ``probe``: ``models.hub_probe(name, "dataset")`` asked earlier (None: asked now); an
    unreachable hub or a failed load is one MedsftError ending in ``fix``."""
    problem = probe.result() if probe else models.hub_problem(name, "dataset")
    if problem is not None:
        raise MedsftError(f"cannot download dataset '{name}' from ModelScope ({problem}); {fix}")
    from modelscope.msdatasets import MsDataset  # heavy: only for rows read from the hub

    try:  # a dataset's own loading script is code from the hub: never run it; a pinned revision reads the same rows
        records = MsDataset.load(name, subset_name=subset, split=split, trust_remote_code=False,
                                 **({"version": revision} if revision else {}))
    except Exception as e:  # noqa: BLE001 - modelscope raises many types; the user needs one clear message
        raise MedsftError(f"loading {name} ({subset + ', ' if subset else ''}{split}) from ModelScope failed: "
                          f"{type(e).__name__}: {e}; {fix}") from e
    label = f"{name}/{subset}" if subset else name
    for i, rec in enumerate(records, start=1):
        yield f"{label}:row {i}", dict(rec)
