"""Where a run's reports go: stdout and stderr that outlive their reader, and SwanLab (cloud when logged in, else local
swanlog/; never a prompt)."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from ..config import Config
from ..files import MedsftError, write_json
from .distributed import is_main

class _PipeSafe:
    """A stdout/stderr whose dead reader (``| tee`` killed by Ctrl-C) or hung-up terminal points its fd at
    /dev/null, so a checkpoint save never fails because a print did."""
    def __init__(self, stream):
        self._stream = stream

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EIO):
                raise
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())  # the buffered bytes then flush into /dev/null
            except (OSError, ValueError):
                pass
            finally:
                os.close(null)
            return len(args[0]) if args else None

    def write(self, data):
        return self._guarded(self._stream.write, data)

    def flush(self):
        return self._guarded(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)

def notice(text: str) -> None:
    """One line to fd 2 from a signal handler: print() could re-enter a buffered write or raise on a dead reader."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass  # nobody is reading: the message is lost, the checkpoint is not

def guard_output() -> None:
    """Wrap sys.stdout and sys.stderr in ``_PipeSafe`` (once); scripts call it first thing."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _PipeSafe):
            setattr(sys, name, _PipeSafe(stream))

def swanlab_mode() -> tuple[str, str]:
    """``(mode, why)``: SWANLAB_MODE when set, else cloud when swanlab knows an API key (no network), else local."""
    env = os.environ.get("SWANLAB_MODE", "").strip()
    if env:
        mode = {"online": "cloud"}.get(env.lower(), env.lower())
        if mode not in ("cloud", "local", "offline", "disabled"):
            raise MedsftError(f"SWANLAB_MODE={env}: expected cloud, local, offline or disabled")
        return mode, "from SWANLAB_MODE"
    import swanlab
    try:
        logged_in = swanlab.Settings().api_key is not None
    except ValueError:  # unreadable swanlab settings: treat as not logged in
        logged_in = False
    return ("cloud", "logged in") if logged_in else ("local", "not logged in to SwanLab")

def _cloud_unreachable(timeout: float = 5.0) -> str | None:
    """Why the SwanLab API host refuses a TCP connection (swanlab's own login retries for ~15 s offline)."""
    import swanlab
    try:
        url = urlparse(swanlab.Settings().api_host)
    except ValueError:  # unreadable settings: let swanlab.init report it
        return None
    if not url.hostname:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"{url.hostname}:{port}: {e.strerror or e or type(e).__name__}"
    return None

def start_swanlab(cfg, kind: str, resume_from=None) -> list:
    """Start SwanLab without ever prompting (cloud without credentials or network falls back to local swanlog/);
    a resumed run continues its cloud experiment, or becomes "RUN_NAME (resumed at step N)" locally. The experiment
    records ``cfg``."""
    cfg = Config.of(cfg)
    if not is_main():  # one experiment per run: rank 0 logs
        return []
    mode, why = swanlab_mode()
    if mode == "disabled":
        print(f"SwanLab: disabled ({why})")
        return []
    import swanlab
    from transformers.integrations import SwanLabCallback
    init = dict(project=cfg.swanlab_project, name=cfg.run_name, config={**cfg, "KIND": kind},
                log_dir=str(cfg.swanlab_log_dir), settings=swanlab.Settings(interactive=False))
    id_file = Path(cfg.output_dir) / "swanlab_run.json"
    resumed = bool(cfg.resume and id_file.is_file())
    if resumed:
        init.update(id=json.loads(id_file.read_text(encoding="utf-8"))["id"], resume="allow")
    if mode == "cloud":
        unreachable = _cloud_unreachable()
        if unreachable:
            mode, why = "local", f"the SwanLab cloud is unreachable: {unreachable}"
    if mode == "cloud":
        try:
            swanlab.init(mode="online", **init)
        except Exception as e:  # noqa: BLE001 - login/network errors come in many types; training must go on
            first = (str(e).strip().splitlines() or [""])[0][:200]
            mode, why = "local", f"cloud login failed: {type(e).__name__}: {first}"
    if mode != "cloud":
        if resumed and mode == "local":
            step = Path(resume_from).name.removeprefix("checkpoint-") if resume_from else ""
            init["name"] = f"{cfg.run_name} (resumed" + (f" at step {step})" if step.isdigit() else ")")
        swanlab.init(mode=mode, **init)
    run_id = swanlab.get_run().id
    write_json(id_file, {"id": run_id})
    where = "the SwanLab cloud" if mode == "cloud" else f"{init['log_dir']}/ (view: swanlab watch {init['log_dir']})"
    note = ""
    if resumed:
        note = {"cloud": f"; continuing experiment {run_id}",
                "local": f"; local mode cannot continue an experiment, so this resumed part is a new experiment, "
                         f"'{init['name']}'",
                "offline": f"; saved under the interrupted part's run id {run_id}: swanlab sync uploads both into one "
                           "cloud experiment"}.get(mode, "")
    print(f"SwanLab: {mode} ({why}), logging to {where}{note}")
    return [SwanLabCallback()]

def swanlab_active() -> bool:
    return "swanlab" in sys.modules and sys.modules["swanlab"].has_run()

def finish_swanlab(interrupted: bool = False, reason: str | None = None) -> None:
    """End the SwanLab run: success, or aborted with a reason (local mode shows a run without one as Finished)."""
    if swanlab_active():
        import swanlab
        if interrupted:
            swanlab.finish(state="aborted", error=reason or "interrupted (Ctrl-C or SIGTERM): a checkpoint was saved; "
                                                            "continue with --resume=true")
        else:
            swanlab.finish(state="success")
