"""File I/O of every stage: atomic writes, all-or-nothing publishing of a set of files, JSONL reading with file:line
errors, one clear message for a non-UTF-8 file, and a full or read-only disk told as one error."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

# checked in this order: UTF-32 little-endian's BOM starts with UTF-16 little-endian's
OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
              (b"\xfe\xff", "UTF-16"))
# the longest JSONL line read: a row here is a few KB (a 2,048-token prediction ~10 KB); longer is not a row
MAX_LINE_BYTES = 16 * 2 ** 20
# what a terminal obeys rather than shows: C0 but tab and line feed, DEL, C1, and the bidi overrides that reorder text
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")

class MedsftError(Exception):
    """A problem the user can fix; scripts print it as ``error: <message>`` without a traceback."""

class DiskWriteError(MedsftError, OSError):
    """A full disk or an unwritable folder; still an OSError with the original errno."""

    def __str__(self):
        return BaseException.__str__(self)  # the message alone, not OSError's "[Errno N] ..." form

DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# the hidden names atomic_write_bytes (.NAME.HEX.tmp) and publish_files (.publish-TXN/new/NAME) write first
_TEMP_NAME = re.compile(r"^\.(.+)\.[0-9a-f]+\.tmp$")
# safetensors and tokenizers (Rust) put the errno only in their text
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# torch.save reports a full disk without an errno; believed only while the disk is nearly full
_TORCH_WRITE_FAILED = ("inline_container", "file write failed")

def _shown(filename, folder: Path) -> Path:
    """The file a user knows: the real name behind one of our temp names (else ``folder`` itself)."""
    if not filename:
        return folder
    path = Path(os.fsdecode(filename))
    if path.parent.name == "new" and path.parent.parent.name.startswith(".publish-"):
        return path.parent.parent.parent / path.name
    m = _TEMP_NAME.match(path.name)
    return path.with_name(m.group(1)) if m else path

def _free_bytes(folder) -> int | None:
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None

def _write_problem(e: BaseException, folder: Path) -> tuple[int, BaseException] | None:
    """(errno, the exception holding it) when ``e`` or one it chains is a full disk or a refused write."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = getattr(e, "errno", None) if isinstance(e, OSError) else None
        m = code is None and _OS_ERROR.search(str(e))
        code = int(m.group(1)) if m else code
        if code in DISK_FULL or code in NOT_WRITABLE:
            return code, e
        if code is None and any(t in str(e) for t in _TORCH_WRITE_FAILED):
            free = _free_bytes(folder)
            if free is not None and free < 2 ** 30:
                return errno.ENOSPC, e
        e = e.__cause__ or e.__context__
    return None

@contextlib.contextmanager
def disk_errors(folder, what: str | None, option: str | None, *, resume: bool = False,
                then: str = "then re-run the same command"):
    """A full disk or a refused write inside the block becomes one DiskWriteError naming ``folder``, ``what`` was
    written, the ``--option`` that picks another place (None: none) and ``then`` (``resume``: --resume=true)."""
    folder = Path(folder)
    try:
        yield
    except Exception as e:  # noqa: BLE001 - torch/safetensors raise their own types; anything else is re-raised
        found = _write_problem(e, folder)
        if found is None:
            raise
        then = "then continue with --resume=true (it skips a half-written checkpoint)" if resume else then
        raise _disk_error(found, folder, what, option, then) from e

def _disk_error(found, folder: Path, what, option, then) -> DiskWriteError:
    code, e = found
    free = _free_bytes(folder)
    free = "free space unknown" if free is None else f"{free / 2 ** 30:.2f} GiB free"
    notes = "".join(f"; {n}" for n in getattr(e, "__notes__", ()))  # e.g. publish_files' failed rollback
    target = f"{what} in {folder}" if what else _shown(getattr(e, "filename", None), folder)
    strerror = getattr(e, "strerror", None) or os.strerror(code)
    if code in DISK_FULL:
        where = f"{free} now" if what else f"{free} on the disk of {folder}"
        elsewhere = f", or point --{option} at a disk with room" if option else ""
        message = f"disk full while writing {target} ({where}){notes}: free up space there{elsewhere}, {then}"
    else:
        elsewhere = f" or pass another --{option}" if option else ""
        message = (f"cannot write {target} ({strerror}){notes}: give yourself write access to {folder}{elsewhere}, "
                   f"{then}")
    err = DiskWriteError(message)
    err.errno, err.strerror, err.filename = code, strerror, getattr(e, "filename", None)
    return err

def check_writable(path, option: str, *, file: bool = False) -> Path:
    """Fail now, not after the stage's work, if the folder ``path`` (``file``: the file) cannot be written. Folders
    created for the test are removed again."""
    path = Path(path)
    if file:
        if path.is_dir():
            raise MedsftError(f"output {path} is a directory: pass --{option}=<file.jsonl>")
        if path.exists() and not os.access(path, os.W_OK):
            raise MedsftError(f"output {path} is not writable; pass another --{option}")
        check_writable(path.parent, option)
        return path
    created = []
    try:
        for d in reversed([path, *path.parents]):
            if not d.exists():
                d.mkdir()
                created.append(d)
        # an unnamed temp file (O_TMPFILE) leaves nothing behind even after kill -9
        with tempfile.TemporaryFile(dir=path, prefix=".medsft-write-test-") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())  # a full disk may refuse the data only when it is flushed
    except OSError as e:
        found = _write_problem(e, path)
        if found:
            raise _disk_error(found, path, None, option, "then run the command again") from None
        raise MedsftError(f"{path} cannot be written ({e.strerror or e}): pass another --{option}") from None
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:  # not empty after all (another process wrote there): it is no longer only ours
                break
    return path


def _create_new(path: Path) -> int:
    # 0o666: the kernel applies the umask (and default ACLs) as for any file the user creates; mkstemp forces 0600
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o666)

def _write_durably(path: Path, data: bytes) -> None:
    with os.fdopen(_create_new(path), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` via a temp file in the same folder and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        _write_durably(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))

def visible(text: str) -> str:
    """``text`` (a model's or a dataset's) for a terminal: control characters shown as escapes (``\\x1b``), never
    obeyed; line breaks and tabs kept."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)

_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}

def _bad(x) -> bool:
    return isinstance(x, float) and not math.isfinite(x)

def _finite(obj):
    """``obj`` with each NaN/Infinity float as None and, beside its key, ``<key>_null`` saying what it was."""
    if _bad(obj):
        return None
    if isinstance(obj, (list, tuple)):
        return [_finite(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        out[k] = _finite(v)
        found = [v] if _bad(v) else [x for x in v if _bad(x)] if isinstance(v, (list, tuple)) else []
        if found:
            what = ", ".join(dict.fromkeys(_NON_FINITE[repr(x)] for x in found))
            where = "" if _bad(v) else f" at item(s) {', '.join(str(i) for i, x in enumerate(v) if _bad(x))}"
            out[f"{k}_null"] = (f"null{where}: the value was {what}, which JSON cannot hold (e.g. a mean over no "
                                "tokens or no samples)")
    return out

def _dumps(obj: Any, **kw) -> str:
    # strict JSON for every reader (Python alone accepts NaN); rebuilt only when a non-finite number is in it
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, **kw)
    except ValueError:
        return json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False, **kw)

def dumps_jsonl(rows: Iterable[dict], default=None) -> str:
    """``default``: as json.dumps's, what a value JSON cannot hold becomes (e.g. ``str``); None: a TypeError."""
    return "".join(_dumps(row, default=default) + "\n" for row in rows)

def dumps_json(obj: Any) -> str:
    return _dumps(obj, indent=2) + "\n"

def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, dumps_jsonl(rows))

def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps_json(obj))

# --- publishing several files as one unit ---------------------------------------------------------------------------
# DATA_DIR may hold the user's own files, so the folder itself is never swapped. Its files are, one by one, through
# DIR/.publish-TXN/: new/ (staged, fsynced), manifest.json, old/ (the files replaced), COMMITTED (written last).
# A stage folder with a manifest and no COMMITTED is an interrupted publish: readers refuse the folder and the next
# publish_files (or recover_publish) moves old/ back first. One writer per folder at a time.

_STAGE = ".publish-"

def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its renames are durable enough for our purpose
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

def _interrupted(directory: Path) -> Iterator[tuple[Path, dict | None]]:
    for stage in sorted(directory.glob(_STAGE + "*")):
        manifest = None
        if stage.is_dir() and not (stage / "COMMITTED").exists():
            try:  # no complete manifest: the publish died before it touched a real name
                manifest = json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
        yield stage, manifest

def _roll_back(directory: Path, stage: Path, manifest: dict | None) -> list[str]:
    """Put back the files ``manifest`` names, then delete ``stage``; return what could not be undone."""
    problems = []
    for name in manifest["files"] if manifest else ():
        target, old = directory / name, stage / "old" / name
        try:
            if old.exists():
                os.replace(old, target)
            elif name not in manifest["had_old"]:
                target.unlink(missing_ok=True)
        except OSError as e:
            problems.append(f"{target}: {e}")
    if not problems:
        try:
            shutil.rmtree(stage)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"{stage}: {e}")
    return problems

def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), from /proc; None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text(encoding="ascii").splitlines()
                     if line.startswith("btime "))
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the "(comm)" field
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None

def _live_writer(stage: Path) -> int | None:
    """The pid in ``stage``'s name (.publish-PID-HEX) when that process is alive and older than the stage (a pid
    reused after a reboot is younger), i.e. a writer still publishing; None: its writer is gone."""
    try:
        pid = int(stage.name[len(_STAGE):].split("-", 1)[0])
    except ValueError:
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return None
    started = _process_start(pid)
    try:
        created = stage.stat().st_mtime
    except OSError:
        return None
    return None if started is not None and started > created + 2 else pid

def recover_publish(directory: str | os.PathLike) -> bool:
    """Roll back a publish that was interrupted; True if there was one. A publish whose writer is still running
    is never rolled back: MedsftError naming its pid."""
    directory, found = Path(directory), False
    for stage, manifest in _interrupted(directory):
        pid = _live_writer(stage)
        if pid is not None:
            writer = manifest["writer"] if manifest else "another stage"
            raise MedsftError(f"{directory}: {writer} (pid {pid}) is replacing the files there right now ({stage.name}"
                              "); wait for it to finish, or stop it, then run again: one writer per folder at a time")
        problems = _roll_back(directory, stage, manifest)
        if problems:
            raise MedsftError(f"{directory}: cannot restore the files of an interrupted update "
                              f"({'; '.join(problems)}); fix the disk problem and run the stage again")
        found = found or manifest is not None
    return found

def publish_files(directory: str | os.PathLike, files: dict[str, bytes], writer: str) -> list[Path]:
    """Write ``files`` ({name: bytes}) into ``directory`` as one unit: afterwards every file is new, or (after any
    exception) every file is as before. ``writer`` names the script to re-run, for messages."""
    directory = Path(directory)
    for name in files:  # a user's folder of that name would be moved into old/ and deleted with it
        if (directory / name).is_dir():
            raise MedsftError(f"{directory / name} is a folder, not a file {writer} writes, so it is left as it is and "
                              f"nothing was written: move it away, or have {writer} write to another folder")
    directory.mkdir(parents=True, exist_ok=True)
    if recover_publish(directory):
        print(f"{directory}: restored the files of an interrupted earlier update before writing")
    stage = directory / f"{_STAGE}{os.getpid()}-{secrets.token_hex(4)}"
    manifest = {"writer": writer, "files": list(files), "had_old": [n for n in files if (directory / n).exists()]}
    try:
        (stage / "new").mkdir(parents=True)
        (stage / "old").mkdir()
        for name, data in files.items():
            _write_durably(stage / "new" / name, data)
        _write_durably(stage / "manifest.json", json.dumps(manifest).encode())
        _fsync_dir(stage)
        for name in files:
            if name in manifest["had_old"]:
                os.replace(directory / name, stage / "old" / name)
            os.replace(stage / "new" / name, directory / name)
        _fsync_dir(directory)
        _write_durably(stage / "COMMITTED", b"")
    except BaseException as e:
        problems = _roll_back(directory, stage, manifest)
        if problems:
            e.add_note(f"{directory} could not be restored ({'; '.join(problems)}): its files may mix two runs "
                       f"until you run {writer} again, which restores the previous files first")
        raise
    shutil.rmtree(stage, ignore_errors=True)  # committed: only the replaced files are left in it
    return [directory / n for n in files]

def refuse_unfinished_publish(path: str | os.PathLike) -> None:
    """Raise MedsftError if ``path`` is one of the files of an interrupted publish_files (they may mix two runs)."""
    path = Path(path)
    for stage, manifest in _interrupted(path.parent):
        if manifest and path.name in manifest["files"]:
            writer = manifest["writer"]
            raise MedsftError(f"{path}: {writer} was interrupted while replacing the files in {path.parent} (its "
                              f"{stage.name} is still there), so they may mix two runs; run {writer} again: it "
                              "restores the previous files first")

def _not_utf8_message(path: Path, lineno: int, offset: int, bad: int, nonascii: int) -> str:
    converted = path.with_name(f"{path.stem}.utf8{path.suffix}")
    return (f"{path}:{lineno}: this file is not UTF-8 text (line {lineno}, byte {offset} of the file, is the first "
            f"that does not decode; {bad} of {nonascii} lines with non-ASCII text do not). Convert it to UTF-8 and "
            f"pass the converted file, e.g. from GBK: iconv -f GBK -t UTF-8 {path} > {converted}  (or re-save it "
            "as UTF-8 in your editor or spreadsheet)")

def check_utf8(path: str | os.PathLike, *, strict: bool = False) -> None:
    """One MedsftError if most non-ASCII lines of ``path`` are not UTF-8 (the file is in another encoding); a
    minority stay per-row errors. ``strict`` (parsers that cannot skip a row, CSV): any bad line."""
    path = Path(path)
    with open(path, "rb") as f:
        start = f.read(4)
        for bom, codec in OTHER_BOMS:
            if start.startswith(bom):
                raise MedsftError(f"{path}: this file is {codec} text, not UTF-8. Convert it and pass the converted "
                                  f"file: iconv -f {codec} -t UTF-8 {path} > "
                                  f"{path.with_name(path.stem + '.utf8' + path.suffix)}")
        f.seek(0)
        first, bad, nonascii, offset, lineno = None, 0, 0, 0, 0
        while raw := f.readline(MAX_LINE_BYTES + 1):  # bounded: a huge line is refused, never read whole
            lineno += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise MedsftError(f"{path}:{lineno}: this line is over {MAX_LINE_BYTES:,} bytes, the most one row "
                                  "may hold (a row here is a few KB): the file is probably not one row per line, or "
                                  "rows lost their line breaks; fix or remove that line")
            # an unterminated last line cut inside a character is a torn append, not an encoding
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

def beyond_json_limits(e: ValueError | RecursionError) -> str:
    """Why json.loads read nothing from well-formed text (``e`` no JSONDecodeError): a number over Python's digit
    limit (ValueError) or nesting deeper than its recursion limit."""
    what = "nested deeper than Python's recursion limit" if isinstance(e, RecursionError) else str(e).split(";")[0]
    return f"JSON beyond what Python can read ({what})"

def iter_jsonl(path: str | os.PathLike):
    """``(lineno, obj or None, error or None)`` for each non-blank line; a BOM at the start of any line (`cat`-ed
    parts) is ignored. MedsftError for a missing or non-UTF-8 file, or one of an interrupted publish_files."""
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
            except (ValueError, RecursionError) as e:
                yield lineno, None, beyond_json_limits(e)
                continue
            if not isinstance(obj, dict):
                yield lineno, None, f"expected a JSON object, got {type(obj).__name__}"
                continue
            yield lineno, obj, None

def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The objects of a JSONL file; the first bad line raises MedsftError naming ``path:line``."""
    rows = []
    for lineno, obj, err in iter_jsonl(path):
        if err:
            raise MedsftError(f"{path}:{lineno}: {err}; fix or remove that line")
        rows.append(obj)
    return rows

def resume_rows(path, keys, row: str, again: str) -> Iterator[tuple[int, dict]]:
    """The good rows of a resumable JSONL (none if it is missing); a line that is not JSON or lacks one of
    ``keys`` is skipped with a warning that it will be ``again`` again."""
    path = Path(path)
    if not path.is_file():
        return
    for lineno, obj, err in iter_jsonl(path):
        if err or any(k not in obj for k in keys):
            print(f"warning: {path}:{lineno}: {err or 'not ' + row}; it will be {again} again")
            continue
        yield lineno, obj

def write_outputs(folder, stem: str, summary: dict, rows: Iterable[dict], *, option: str = "results_dir") -> list[Path]:
    """``<stem>.jsonl`` (rows), then ``<stem>.json`` (summary, written last: it marks the pair complete)."""
    folder = Path(folder)
    with disk_errors(folder, None, option):
        return [write_jsonl(folder / f"{stem}.jsonl", rows), write_json(folder / f"{stem}.json", summary)]
