"""stdout/stderr that outlive their reader, and one-line notices that are safe to write from a signal handler.

A training run must not die because ``python train.py | tee log`` lost its ``tee`` to Ctrl-C: scripts call
``guard_output()`` first thing, and the Ctrl-C handler writes through ``notice``.
"""

from __future__ import annotations

import errno
import os
import sys


class _PipeSafe:
    """sys.stdout/sys.stderr that keep the run alive when their reader dies (``python train.py | tee log`` and
    Ctrl-C kills tee too): on EPIPE (or EIO, a hung-up terminal) the stream's fd is pointed at /dev/null and
    writing goes on silently, so a checkpoint save never fails because a print did."""

    def __init__(self, stream):
        self._stream = stream

    def _silence(self) -> None:
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError):
            return
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)  # the stream's buffered bytes then flush into /dev/null instead of failing again
        finally:
            os.close(null)

    def write(self, data):
        try:
            return self._stream.write(data)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EIO):
                raise
            self._silence()
            return len(data)

    def flush(self):
        try:
            self._stream.flush()
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EIO):
                raise
            self._silence()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def guard_output() -> None:
    """Wrap sys.stdout and sys.stderr in ``_PipeSafe`` (once). Scripts call it first thing: progress bars and
    loggers created later write through it."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _PipeSafe):
            setattr(sys, name, _PipeSafe(stream))


def notice(text: str) -> None:
    """Write one line to fd 2 from a signal handler. Not print(): the handler may run in the middle of a print to
    the same buffered stream (a reentrant write raises RuntimeError), and a dead reader raises BrokenPipeError;
    either would abort the step instead of saving the checkpoint."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass  # nobody is reading: the message is lost, the checkpoint is not
