"""SwanLab experiment tracking of a training run: which mode (cloud, local, offline, disabled), starting without
ever prompting or hanging offline, continuing a resumed run, and finishing with the run's state."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from ..files import MedsftError, write_json
from .checkpoints import CHECKPOINT_DIR
from .distributed import is_main

# swanlab and transformers are imported inside the functions: both load slowly, and a run with SWANLAB_MODE=disabled
# never needs swanlab.


def swanlab_mode() -> tuple[str, str]:
    """``(mode, why)``: SWANLAB_MODE when set; else cloud when an API key is known (env or ``swanlab login``), else
    local. Reads swanlab's own settings (SWANLAB_API_KEY, ./.swanlab/.netrc, ~/.swanlab/.netrc) without network."""
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
    """Why the SwanLab API host cannot be reached (None when a TCP connection opens). One quick probe instead of
    swanlab's login, which retries with a warning line per attempt for ~15 s when the network is down."""
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


def start_swanlab(cfg: dict, kind: str, resume_from=None) -> list:
    """Start a SwanLab run for this training; returns the callbacks to pass to ``build_trainer``.

    Never prompts: cloud mode without working credentials or network falls back to local logging in swanlog/
    (view it with ``swanlab watch swanlog``), said in the one line this prints; ``disabled`` logs nothing.
    A resumed run (RESUME, with the run id kept in OUTPUT_DIR/swanlab_run.json) continues its experiment in cloud
    mode. Local mode cannot continue one (swanlab's local dashboard makes a new experiment per init), so the
    resumed part is a new experiment named "RUN_NAME (resumed at step N)", and the line says so. Offline mode saves
    each part under the same run id; ``swanlab sync`` uploads them into one cloud experiment.
    """
    if not is_main():  # one experiment per run: rank 0 logs (the Trainer's logs are rank 0's anyway)
        return []
    mode, why = swanlab_mode()
    if mode == "disabled":
        print(f"SwanLab: disabled ({why})")
        return []
    import swanlab
    from transformers.integrations import SwanLabCallback

    init = dict(project=cfg["SWANLAB_PROJECT"], name=cfg.get("RUN_NAME"), config={**cfg, "KIND": kind},
                log_dir=str(cfg.get("SWANLAB_LOG_DIR", "swanlog")), settings=swanlab.Settings(interactive=False))
    id_file = Path(cfg["OUTPUT_DIR"]) / "swanlab_run.json"
    resumed = bool(cfg.get("RESUME") and id_file.is_file())
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
            m = CHECKPOINT_DIR.match(Path(resume_from).name) if resume_from else None
            init["name"] = f"{cfg.get('RUN_NAME')} (resumed" + (f" at step {m.group(1)})" if m else ")")
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
    if "swanlab" not in sys.modules:
        return False
    import swanlab

    return swanlab.has_run()


def finish_swanlab(interrupted: bool = False, reason: str | None = None) -> None:
    """End the SwanLab run: "success", or for an interrupted run "aborted" with a reason. The reason matters in
    local mode, whose dashboard shows a run without an error text as Finished."""
    if swanlab_active():
        import swanlab

        if interrupted:
            swanlab.finish(state="aborted", error=reason or "interrupted (Ctrl-C or SIGTERM): a checkpoint was saved; "
                                                            "continue with --resume=true")
        else:
            swanlab.finish(state="success")
