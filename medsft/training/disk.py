"""Disk space and permissions: a read-only or full disk becomes a MedsftError that names the folder and the fix,
before the model loads when possible and instead of a traceback from deep inside torch or safetensors otherwise."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from ..files import MedsftError
from ..memory import GIB

_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "storagefull")


def _disk_full(e: BaseException, folder: Path) -> bool:
    """Whether ``e`` (or an exception it chains) is the disk running out. torch and safetensors report it in
    their own exception types, so their messages count too."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        text = str(e).lower()
        if any(t in text for t in _DISK_FULL_TEXT):
            return True
        # torch.save reports a full disk as "[enforce fail at inline_container.cc] unexpected pos ..." or
        # "file write failed", without errno: believed when the disk is indeed nearly full
        if any(t in text for t in ("inline_container", "file write failed", "failed writing file")):
            try:
                return shutil.disk_usage(folder).free < GIB
            except OSError:
                return False
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def disk_errors(folder, what: str, option: str, resume: bool = False):
    """Turn the disk filling up while writing ``what`` into ``folder`` into a MedsftError that names the folder
    and the fix, instead of a traceback from deep inside torch or safetensors."""
    folder = Path(folder)
    try:
        yield
    except Exception as e:  # noqa: BLE001 - torch/safetensors raise their own types; anything else is re-raised
        if not _disk_full(e, folder):
            raise
        try:
            free = f"{shutil.disk_usage(folder).free / GIB:.2f} GiB free now"
        except OSError:
            free = "free space unknown"
        then = (", then continue with --resume=true (it skips a half-written checkpoint)" if resume else
                ", then run the script again")
        raise MedsftError(f"disk full while writing {what} in {folder} ({free}): free up space there, or point "
                          f"--{option} at a disk with room{then}") from e


def check_writable(folder, option: str) -> None:
    """Create ``folder`` and write a file there now, so a read-only or missing path stops the run before the
    model loads rather than after hours of training."""
    d = Path(folder)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".medsft-write-test-")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)  # a full disk may only refuse the data when it is flushed
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise MedsftError(f"{d} is not writable ({e.strerror or e}): fix its permissions or free space there, or "
                          f"choose another --{option}=DIR") from None
