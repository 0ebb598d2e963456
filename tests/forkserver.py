"""Stage scripts run as `python SCRIPT ARGS` would, forked from a server that has imported torch and transformers.

A fresh interpreter spends ~4 s of CPU importing torch, transformers, peft and TRL before a stage does anything;
the tests start a few hundred stage processes on two cores. `run` forks each one from a server process (one per
test worker) that imported those libraries once and nothing of the project's: the child chdirs, takes the caller's
environment and file descriptors, runs the script with runpy as `__main__` and exits as the interpreter would
(exit code, excepthook, atexit handlers, threads, output; not the module teardown, see `_child`). The server is
used only where that is the same as a fresh process:
- the script is one of FORKED (a stage that imports torch anyway), run as `[sys.executable, SCRIPT, ARGS...]`;
- the environment equals the test worker's but for MEDSFT_* (read only by the project's own code, imported fresh
  in the child) and pytest's PYTEST_CURRENT_TEST: a call that sets anything else (PYTHONPATH, HF_*, OMP_*, ...: what
  a library may read at import) gets a fresh interpreter, and a server started before the worker's own
  environment changed is replaced;
- no stdin is given.
Anything else, or MEDSFT_TEST_NO_FORK=1, runs `subprocess.run` as before.

    python tests/forkserver.py     the server: one JSON request per line on stdin, JSON replies on stdout
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORKED = {"train.py", "train_lora.py", "train_grpo.py", "inference.py", "inference_lora.py", "benchmark.py",
          "data.py", "export.py"}
_OURS = ("MEDSFT_", "PYTEST_CURRENT_TEST")  # read by the project's code, or by no library at import
_ROOT = Path(__file__).resolve().parent.parent
_server: dict = {}


def _preload():
    import matplotlib
    matplotlib.use("Agg")
    import datasets, matplotlib.pyplot, peft, safetensors.torch, torch, transformers, trl  # noqa: F401,E401
    import transformers.modeling_utils, transformers.trainer  # noqa: F401,E401


def serve(preload=_preload):
    """Run ``preload`` (the imports) once, then fork one child per request line on stdin; the child returns the
    request with its cwd, stdio and environment in place, the server returns None when stdin ends. Replies on
    stdout: {"ready": true} once, then {"pid": N} and {"rc": N} per request. tests/test_faults.py serves with it too."""
    import gc

    preload()
    gc.freeze()  # the libraries' objects: never scanned by a child's collections, never copied by them
    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                os.chdir(req["cwd"])
                fds = [os.open(os.devnull, os.O_RDONLY),
                       os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                       os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)]
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                sys.stdin = open(os.devnull, encoding="utf-8")
                os.environ.clear()
                os.environ.update(req["env"])
            except BaseException:
                os._exit(99)
            return req
        print(json.dumps({"pid": pid}), file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), file=out, flush=True)
    return None


def _child(req):
    """Run the script as `__main__`, then end as the interpreter would, less its module teardown: a forked child
    would spend ~2 s of CPU tearing down the preloaded libraries (a fresh `--help` takes 0.2 s)."""
    import gc
    import runpy
    import threading

    # Ctrl-C as in a fresh interpreter: the test worker that started the server may have left SIGINT ignored
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = [req["script"], *req["args"]]
    sys.path[0] = os.path.dirname(req["script"])
    code, interrupted = 0, False
    try:
        runpy.run_path(req["script"], run_name="__main__")
    except SystemExit as e:  # as the interpreter reads it: None, a number, or a message printed to stderr
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:  # noqa: BLE001 (the interpreter's own top level: sys.excepthook, exit 1)
        tb = e.__traceback__  # from the script's frame on, as a fresh interpreter shows it
        while tb is not None and tb.tb_frame.f_code.co_filename != req["script"]:
            tb = tb.tb_next
        e = e.with_traceback(tb or e.__traceback__)
        sys.excepthook(type(e), e, e.__traceback__)
        code, interrupted = 1, isinstance(e, KeyboardInterrupt)
    gc.collect()  # the script's objects are finalized, as at interpreter exit
    threading._shutdown()  # non-daemon threads are joined, then the atexit handlers run
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if interrupted:  # an uncaught Ctrl-C ends the process by SIGINT, as CPython does
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def _reply(timeout: float):
    srv = _server
    deadline = time.monotonic() + timeout
    fd = srv["proc"].stdout.fileno()
    while b"\n" not in srv["buf"]:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            _server.clear()
            raise RuntimeError("the test fork server died (tests/forkserver.py)")
        srv["buf"] += chunk
    line, srv["buf"] = srv["buf"].split(b"\n", 1)
    return json.loads(line)


@atexit.register
def _close():
    proc = _server.pop("proc", None)
    _server.clear()
    if proc:
        proc.stdin.close()
        proc.wait(timeout=60)


def _same(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in set(a) | set(b) if not k.startswith(_OURS))


def _forkable(cmd, env: dict, kwargs: dict) -> bool:
    if os.environ.get("MEDSFT_TEST_NO_FORK", "").strip() in ("1", "true", "yes") or set(kwargs) - {"timeout"}:
        return False
    if len(cmd) < 2 or cmd[0] != sys.executable or Path(cmd[1]).name not in FORKED:
        return False
    return _same(env, dict(os.environ))  # a variable this call sets itself gets a fresh interpreter


def run(cmd: list, cwd=None, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, cwd=, env=, capture_output=True, text=True, **kwargs), forked from the server where
    that is the same as a fresh interpreter (see the module's docstring)."""
    cmd = [str(c) for c in cmd]
    env = dict(os.environ if env is None else env)
    if not _forkable(cmd, env, kwargs):
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if _server and not _same(_server["env"], env):  # the worker's own environment changed: a new server
        _close()
    if not _server:
        proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                cwd=_ROOT, env=env)
        _server.update(proc=proc, env=env, buf=b"")
        if _reply(300) != {"ready": True}:
            raise RuntimeError("the test fork server did not start (tests/forkserver.py)")
    timeout = kwargs.get("timeout")
    with tempfile.TemporaryDirectory(prefix="medsft-fork-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        where = os.path.abspath(cwd or os.getcwd())
        req = {"script": os.path.join(where, cmd[1]), "args": cmd[2:], "cwd": where, "env": env,  # __file__ as given
               "stdout": str(out), "stderr": str(err)}
        proc = _server["proc"]
        proc.stdin.write(json.dumps(req).encode() + b"\n")
        proc.stdin.flush()
        pid = _reply(60)["pid"]
        reply = _reply(timeout if timeout is not None else 10 ** 6)
        if reply is None:
            os.kill(pid, signal.SIGKILL)
            _reply(60)
            raise subprocess.TimeoutExpired(cmd, timeout, out.read_bytes(), err.read_bytes())
        read = lambda p: p.read_text(encoding="utf-8", errors="replace")  # noqa: E731
        return subprocess.CompletedProcess(cmd, reply["rc"], read(out), read(err))


if __name__ == "__main__":
    request = serve()
    if request is None:
        sys.exit(0)
    _child(request)
