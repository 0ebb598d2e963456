"""File I/O shared by every stage: atomic writes, all-or-nothing publishing of a set of files, JSONL reading with
file:line errors and one clear message for a file that is not UTF-8."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

JOURNAL = ".publish-journal.json"  # present in a folder only while publish_files is replacing its files
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class MedsftError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option).

    Scripts print it as ``error: <message>`` without a traceback (see ``medsft.config.configure``).
    """


class DiskWriteError(MedsftError, OSError):
    """A full disk or an unwritable folder, told as a MedsftError (one line, the folder and the fix). Still an
    OSError with the original errno, so code that handles write failures as OSError keeps working."""

    def __str__(self):
        return BaseException.__str__(self)  # the message alone, not OSError's "[Errno N] ..." form


# --- writing -----------------------------------------------------------------------------------------------------

DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# the hidden names atomic_write_bytes (.NAME.HEX.tmp) and publish_files (.NAME.TXN.new/old) write before renaming
_TEMP_NAME = re.compile(r"^\.(.+)\.[0-9a-f-]+\.(tmp|new|old)$")


def _shown(filename, folder: Path) -> Path:
    """The file a user knows: the real name behind one of our temp names (else ``folder`` itself)."""
    if not filename:
        return folder
    path = Path(os.fsdecode(filename))
    m = _TEMP_NAME.match(path.name)
    return path.with_name(m.group(1)) if m else path


def free_space(folder) -> str:
    """``'1.23 GiB free'`` on the disk of ``folder`` (or of its nearest existing parent)."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return f"{shutil.disk_usage(p).free / 2**30:.2f} GiB free"
    except OSError:
        return "free space unknown"


def write_error(e: OSError, folder, option: str | None,
                then: str = "then re-run the same command") -> DiskWriteError | None:
    """The one-line error for a full disk or an unwritable folder met while writing into ``folder`` (None for any
    other OSError: that one is not about the user's disk). ``option`` names the flag that picks another folder
    (None where only the same output can continue the run)."""
    folder = Path(folder)
    target = _shown(e.filename, folder)
    notes = "".join(f"; {n}" for n in getattr(e, "__notes__", ()))  # e.g. publish_files' failed rollback
    elsewhere = f" or pass another --{option}" if option else ""
    if e.errno in DISK_FULL:
        message = (f"disk full while writing {target} ({free_space(folder)} on the disk of {folder}){notes}: "
                   f"free up space there{elsewhere}, {then}")
    elif e.errno in NOT_WRITABLE:
        message = (f"cannot write {target} ({e.strerror or e}){notes}: give yourself write access to {folder}"
                   f"{elsewhere}, {then}")
    else:
        return None
    err = DiskWriteError(message)
    err.errno, err.strerror, err.filename = e.errno, e.strerror, e.filename
    return err


@contextlib.contextmanager
def disk_errors(folder, option: str | None, then: str = "then re-run the same command"):
    """Turn a full disk or an unwritable ``folder`` met inside the block into one DiskWriteError (see write_error)."""
    try:
        yield
    except OSError as e:
        err = write_error(e, folder, option, then)
        if err is None:
            raise
        raise err from e


def check_writable_dir(folder, option: str) -> Path:
    """Write a file in ``folder`` now, so a read-only folder or a full disk stops a stage before its work instead
    of at the end of it. Folders this creates for the test are removed again: a stage that fails later leaves
    nothing behind."""
    folder = Path(folder)
    created = []
    try:
        for d in reversed([folder, *folder.parents]):
            if not d.exists():
                d.mkdir()
                created.append(d)
        # an unnamed temp file (O_TMPFILE) leaves nothing behind even after kill -9
        with tempfile.TemporaryFile(dir=folder, prefix=".medsft-write-test-") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())  # a full disk may refuse the data only when it is flushed
    except OSError as e:
        err = write_error(e, folder, option, "then run the command again")
        raise (err or MedsftError(f"{folder} cannot be used as an output folder ({e.strerror or e}): pass another "
                                  f"--{option}")) from None
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:  # not empty after all (another process wrote there): it is no longer only ours
                break
    return folder


def _create_new(path: Path) -> int:
    """Open a brand-new file for writing. Mode 0o666 lets the kernel apply the umask (and default ACLs), so the
    file ends up with the same permissions as any other file the user creates; mkstemp would force 0600."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o666)


def _write_durably(path: Path, data: bytes) -> None:
    """Create ``path`` (which must not exist) with ``data``, flushed to disk before returning."""
    with os.fdopen(_create_new(path), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _unique_temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique_temp(path)
    try:
        _write_durably(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def dumps_jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, dumps_jsonl(rows))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps_json(obj))


# --- publishing several files as one unit ---------------------------------------------------------------------------
#
# Why not a directory swap: DATA_DIR may be the working directory or hold the user's own files (their raw data),
# and renaming a whole folder would take those along. Instead, in the folder itself:
#   1. stage each new file under a hidden name (written and fsynced);
#   2. hard-link each existing file to a hidden backup name (the old file stays in place; no copy on most disks);
#   3. write the journal (which files, which had an old version);
#   4. rename the staged files over the real names, in a fixed order, and fsync the folder;
#   5. delete the journal: the commit point. Then delete the backups.
# An exception in 1-5 rolls back: backups renamed over the real names, files that had no old version removed.
# If the rollback itself fails, or the process dies, the journal stays: readers (iter_jsonl) refuse the folder and
# the next publish_files (or recover_publish) rolls it back first. One writer per folder at a time.


def _temp_name(directory: Path, name: str, txn: str, kind: str) -> Path:
    return directory / f".{name}.{txn}.{kind}"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # file systems without hard links (FAT, some network mounts): a copy does the same job
        shutil.copyfile(src, dst)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its renames are durable enough for our purpose
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(paths: Iterable[Path]) -> list[str]:
    problems = []
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError as e:
            problems.append(f"{p}: {e}")
    return problems


def _roll_back(directory: Path, journal: dict) -> list[str]:
    """Put back the files a journal names; return what could not be undone (empty = the folder is as before)."""
    problems, txn, had_old = [], journal["txn"], set(journal["had_old"])
    for name in journal["files"]:
        target, backup = directory / name, _temp_name(directory, name, txn, "old")
        try:
            if name not in had_old:
                target.unlink(missing_ok=True)
            elif backup.exists():  # absent: already restored by an earlier, partial rollback
                os.replace(backup, target)
                # a rename between two hard links of one file is a no-op that leaves the backup name behind
                backup.unlink(missing_ok=True)
        except OSError as e:
            problems.append(f"{target}: {e}")
    problems += _remove(_temp_name(directory, n, txn, "new") for n in journal["files"])
    if not problems:
        problems += _remove([directory / JOURNAL])
    return problems


def _read_journal(directory: Path) -> dict | None:
    path = directory / JOURNAL
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MedsftError(f"{path}: unreadable publish journal ({e}); the files beside it may mix two runs: "
                          "delete the folder's outputs and run the stage again") from None


def recover_publish(directory: str | os.PathLike) -> bool:
    """Roll back a publish that was interrupted (journal left behind); True if there was one."""
    directory = Path(directory)
    journal = _read_journal(directory)
    if journal is None:
        return False
    problems = _roll_back(directory, journal)
    if problems:
        raise MedsftError(f"{directory}: cannot restore the files of an interrupted update ({'; '.join(problems)}); "
                          "fix the disk problem and run the stage again")
    return True


def _stage_and_swap(directory: Path, files: dict[str, bytes], journal: dict) -> None:
    txn = journal["txn"]
    for name, data in files.items():
        _write_durably(_temp_name(directory, name, txn, "new"), data)
    for name in journal["had_old"]:
        _link_or_copy(directory / name, _temp_name(directory, name, txn, "old"))
    atomic_write_text(directory / JOURNAL, json.dumps(journal))
    for name in files:
        os.replace(_temp_name(directory, name, txn, "new"), directory / name)
    _fsync_dir(directory)
    (directory / JOURNAL).unlink()


def publish_files(directory: str | os.PathLike, files: dict[str, bytes], writer: str) -> list[Path]:
    """Write ``files`` ({name: bytes}) into ``directory`` as one unit: afterwards every file is new, or (after any
    exception) every file is as before. ``writer`` names the script to re-run, for messages."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if recover_publish(directory):
        print(f"{directory}: restored the files of an interrupted earlier update before writing")
    # temp files of a process killed before it wrote its journal: nothing refers to them
    _remove(p for n in files for kind in ("new", "old") for p in directory.glob(f".{n}.*.{kind}"))
    txn = f"{os.getpid()}-{secrets.token_hex(4)}"
    journal = {"writer": writer, "txn": txn, "files": list(files),
               "had_old": [n for n in files if (directory / n).exists()]}
    try:
        _stage_and_swap(directory, files, journal)
    except BaseException as e:
        if (directory / JOURNAL).exists():
            problems = _roll_back(directory, journal)
        else:  # failed before any real name was touched: only temp files to drop
            problems = _remove(_temp_name(directory, n, txn, k) for n in files for k in ("new", "old"))
        if problems:
            e.add_note(f"{directory} could not be restored ({'; '.join(problems)}): its files may mix two runs "
                       f"until you run {writer} again, which restores the previous files first")
        raise
    _remove(_temp_name(directory, n, txn, "old") for n in files)  # committed: the backups are spare copies
    return [directory / n for n in files]


# --- reading -----------------------------------------------------------------------------------------------------


def refuse_unfinished_publish(path: str | os.PathLike) -> None:
    """Raise MedsftError if ``path`` is one of the files of an interrupted publish_files (they may mix two runs)."""
    path = Path(path)
    journal = _read_journal(path.parent)
    if journal and path.name in journal.get("files", ()):
        writer = journal.get("writer", "the stage that wrote it")
        raise MedsftError(f"{path}: {writer} was interrupted while replacing the files in {path.parent} (its "
                          f"{JOURNAL} is still there), so they may mix two runs; run {writer} again: it restores "
                          "the previous files first")


def _guess_encoding(path: Path) -> str | None:
    """The first legacy encoding the whole file decodes in: a hint for the user, not a certainty."""
    data = path.read_bytes()
    for encoding in ("gbk", "gb18030", "big5"):
        try:
            data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return encoding.upper()
    return None


def _not_utf8_message(path: Path, lineno: int, offset: int, bad: int, nonascii: int) -> str:
    guess = _guess_encoding(path)
    converted = path.with_name(f"{path.stem}.utf8{path.suffix}")
    return (f"{path}:{lineno}: this file is not UTF-8 text (line {lineno}, byte {offset} of the file, is the first "
            f"that does not decode; {bad} of {nonascii} lines with non-ASCII text do not)"
            + (f"; it decodes as {guess}" if guess else "")
            + f". Convert it to UTF-8 and pass the converted file: iconv -f {guess or 'GBK'} -t UTF-8 {path} > "
              f"{converted}  (or re-save it as UTF-8 in your editor or spreadsheet)")


def check_utf8(path: str | os.PathLike, *, strict: bool = False) -> None:
    """Raise one MedsftError if ``path`` as a whole is not UTF-8, naming the first bad line and byte offset.

    Policy: when most lines that hold non-ASCII bytes fail to decode, the file is in another encoding (a GBK
    export from Excel/WPS on Chinese Windows is the usual case); none of its rows is usable, so one message with
    the conversion command beats one error per row. When only a minority fail, the damage is local (a stray byte,
    a bad splice): those lines stay per-row errors (counted and skipped by the caller) and the good rows are kept.
    ``strict`` makes any bad line fatal, for parsers (CSV) that cannot skip a row.
    """
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(2) in UTF16_BOMS:
            raise MedsftError(f"{path}: this file is UTF-16 text, not UTF-8. Convert it and pass the converted "
                              f"file: iconv -f UTF-16 -t UTF-8 {path} > {path.with_name(path.stem + '.utf8' + path.suffix)}")
        f.seek(0)
        first, bad, nonascii, offset = None, 0, 0, 0
        for lineno, raw in enumerate(f, start=1):
            # an unterminated last line cut inside a character is a torn append (a killed writer), not an
            # encoding: it must not turn a one-row file into a whole-file error
            torn = not raw.endswith(b"\n") and not strict
            if not raw.isascii() and not torn:
                nonascii += 1
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad += 1
                    first = first or (lineno, offset + e.start)
            offset += len(raw)
    if first and (strict or 2 * bad > nonascii):
        raise MedsftError(_not_utf8_message(path, *first, bad, nonascii))


def iter_jsonl(path: str | os.PathLike):
    """Yield ``(line_number, obj_or_None, error_or_None)`` for every non-blank line of a JSONL file.

    Decoding problems of single lines are reported per line instead of raised, so a caller can keep the good
    rows. A byte-order mark is ignored (at the start of any line: `cat`-ed files carry one per part).
    Raises MedsftError if the file does not exist, is not UTF-8 as a whole (see ``check_utf8``), or belongs to an
    interrupted ``publish_files``.
    """
    path = Path(path)
    if not path.is_file():
        raise MedsftError(f"{path}: file not found")
    refuse_unfinished_publish(path)
    check_utf8(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").lstrip("\ufeff")
            except UnicodeDecodeError as e:
                yield lineno, None, f"not valid UTF-8 (byte {e.start} of the line); re-save the file as UTF-8"
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
