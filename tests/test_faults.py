"""Fault injection for every stage: kill -9, Ctrl-C, a full disk and a read-only folder, at seeded random points.

    .venv/bin/python -m pytest -m faults          # this module alone (it is also part of the full run)
    MEDSFT_FAULT_SEED=7 ... -m faults             # other random points (the default seed is fixed)
    MEDSFT_FAULT_NO_FORK=1 ... -m faults          # every run a fresh `python` process (slower; see "Runs" below)

What is promised (README): outputs are written atomically; kill -9 or Ctrl-C at any point loses at most one
checkpoint interval; a re-run of a finished stage changes nothing; same seed => same bytes; errors name the file and
the fix. Each test below checks one fault on one stage against that:

* after the fault, no output file is half-written: every visible file under the stage's output folders is whole
  (JSON parses, every JSONL line parses and the file ends with a newline, a safetensors header is readable and its
  tensors fit the file, torch zip archives pass their CRC check, PNGs end with IEND). Hidden temp files and
  training checkpoints without a readable trainer_state.json (the documented "incomplete checkpoint", moved aside
  to a hidden .interrupted-checkpoint-N on resume) are not outputs;
* the documented re-run (the same command; `--resume=true` for training) completes and reproduces the
  uninterrupted run: the same bytes for data, predictions (greedy) and evaluation files; for training the same
  loss history, bit-identical weights, the same charts and the same set of files (which checkpoints remain
  depends on where the run stopped, so those are not compared);
* errors: a non-zero exit, `error:` with the folder or file named and a way out, and no Python traceback.

How faults are injected. Every stage runs as `python SCRIPT --flags` in a scratch folder (relative paths, so
the files of two runs can be compared byte for byte) through FAULT_RUNNER (below), which wraps the Python-level
write calls — open()/os.open() for writing, os.replace/rename/link/mkdir/unlink/rmdir, torch.save and safetensors'
save_file — for paths under the stage's output folders. Each such call is a numbered "write event"; the
uninterrupted reference run logs them. A faulted run then, at event K (drawn by a seeded RNG from the reference
run's events):
  kill   sends itself SIGKILL before the call, or after it (a file opened for writing is then left as opened,
         empty; a torch.save file, which torch writes in place, is cut to half its bytes);
  sigint sends itself SIGINT there (Ctrl-C at that exact moment);
  raise  makes that call and every later one that needs space fail with ENOSPC (disk full), or every write in the
         folder fail with EACCES (read-only folder: a real chmod 0555 when not running as root; root ignores
         chmod, so there the EACCES comes from the wrapper). torch.save and save_file raise what those libraries
         raise on a full disk (RuntimeError / SafetensorError), not an OSError.
Training's Ctrl-C comes right after a random logged optimizer step (counted on its stdout); in one variant stdout is
also a pipe whose reader is gone (`python train.py | tee log`, where Ctrl-C killed tee too).
Stage faults found by these tests are strict xfails (KNOWN_FAULTS): fixing one makes its test XPASS, i.e. fail,
until the mark is removed.

Runs. Importing torch + transformers + peft takes ~10 s on the shared 2-core machine, so by default the runs of
the stages that use torch (training, inference) fork from one server process that has imported those libraries
(not the project's own modules) and then run the script exactly as `python FAULT_RUNNER SCRIPT ARGS` would,
interpreter exit included; the other stages run in a fresh interpreter (faster for them: a forked child pays ~2 s
to tear down the preloaded libraries). MEDSFT_FAULT_NO_FORK=1 runs every stage in a fresh interpreter. Runs use
the tiny model with the project-built tokenizer (MEDSFT_TOKENIZER unset) and one torch thread (OMP_NUM_THREADS=1:
on this loaded 2-core machine two OpenMP threads made a 4-step tiny training run 4x slower).
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import DEMO_DATA, ROOT
from oracles import lines_naming, numbers_in

pytestmark = pytest.mark.faults

SEED = int(os.environ.get("MEDSFT_FAULT_SEED", "20240611"))
FORK = os.environ.get("MEDSFT_FAULT_NO_FORK", "").strip().lower() not in ("1", "true", "yes", "on")
RUN_TIMEOUT = 300

# --- the stages, on tiny inputs ---------------------------------------------------------------------------------

MAX_STEPS = 4
TRAIN_COMMON = ("--model=tiny", "--data_dir=dset", "--results_dir=res_out", "--max_length=256", "--batch_size=2",
                "--grad_accum=2", "--logging_steps=1", "--eval_steps=2", "--save_steps=2", "--save_total_limit=2",
                f"--max_steps={MAX_STEPS}", "--preview_questions=1", "--preview_max_new_tokens=4")
EVAL_COMMON = ("--predictions=preds/predictions_full.jsonl", "--base_predictions=preds/predictions_base.jsonl",
               "--test_file=dset/test.jsonl", "--results_dir=res_out", "--workers=1")


@dataclass(frozen=True)
class Stage:
    name: str
    script: str
    args: tuple
    outputs: tuple  # folders the stage writes: watched, checked for whole files, compared
    rerun: tuple = ()  # extra flags of the documented re-run / continue command
    torch: bool = False  # wrap torch.save / safetensors save_file too
    read_only: tuple = ()  # folders made read-only in the EACCES test

    @property
    def training(self) -> bool:
        return self.script in ("train.py", "train_lora.py")


STAGES = {s.name: s for s in (
    Stage("data", "data.py", ("--dataset=raw.jsonl", "--data_dir=dset", "--seed=7"), ("dset",), read_only=("dset",)),
    Stage("train", "train.py", (*TRAIN_COMMON, "--output_dir=model_out/full", "--learning_rate=1e-3"),
          ("model_out/full", "res_out"), ("--resume=true",), torch=True, read_only=("model_out/full", "res_out")),
    Stage("train_lora", "train_lora.py", (*TRAIN_COMMON, "--output_dir=model_out/lora", "--learning_rate=1e-2"),
          ("model_out/lora", "res_out"), ("--resume=true",), torch=True, read_only=("model_out/lora",)),
    Stage("inference", "inference.py", ("--model_dir=tiny", "--input=dset/test.jsonl",
                                        "--output=res_out/predictions_full.jsonl", "--max_new_tokens=12",
                                        "--do_sample=false", "--batch_size=1"), ("res_out",), torch=True,
          read_only=("res_out",)),
    Stage("evaluate", "evaluate.py", EVAL_COMMON, ("res_out",), read_only=("res_out",)),
    Stage("rouge_eval", "rouge_eval.py", EVAL_COMMON, ("res_out",), read_only=("res_out",)),
)}

TOPICS = ["高血压", "糖尿病", "感冒", "胃炎", "偏头痛", "哮喘", "贫血", "失眠", "湿疹", "痛风"]
QUESTIONS = ["头痛三天，伴有低烧，应该怎么办？", "高血压患者日常饮食需要注意哪些方面？", "糖尿病的早期症状有哪些？",
             "孩子咳嗽一周不见好转，夜间加重，需要做哪些检查？", "失眠", "长期服用阿司匹林有什么副作用？"]


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def setup_inputs(stage: Stage, d: Path) -> Path:
    """The stage's inputs in a fresh scratch folder ``d`` (the same bytes for every run of a stage)."""
    d.mkdir(parents=True)
    if stage.name == "data":
        shutil.copyfile(DEMO_DATA, d / "raw.jsonl")
    elif stage.training:
        row = lambda i, t: {"id": f"t{i}", "question": f"{t}有哪些常见症状？应该如何处理？",  # noqa: E731
                            "think": f"用户问的是{t}的症状和处理。先说典型表现，再给就医建议。",
                            "answer": f"{t}的常见症状因人而异。建议及时就医，遵医嘱治疗。"}
        _jsonl(d / "dset/train.jsonl", [row(i, t) for i, t in enumerate(TOPICS[:8])])
        _jsonl(d / "dset/val.jsonl", [row(20 + i, t) for i, t in enumerate(TOPICS[8:])])
    elif stage.name == "inference":
        _jsonl(d / "dset/test.jsonl", [{"id": f"q{i}", "question": q, "think": f"参考思考{i}", "answer": f"参考回答{i}"}
                                       for i, q in enumerate(QUESTIONS)])
    else:  # evaluation: predictions made by hand (full = the reference itself, base = another row's, one empty)
        from medsft.chat import format_reference, split_output

        rows = [json.loads(line) for line in DEMO_DATA.read_text(encoding="utf-8").splitlines()[:8]]
        _jsonl(d / "dset/test.jsonl", [{"id": f"q{i}", "question": r["question"], "think": r["think"],
                                        "answer": r["answer"]} for i, r in enumerate(rows)])

        def pred(i, r, output, model):
            think, answer, status = split_output(output)
            return {"id": f"q{i}", "question": r["question"], "ref_think": r["think"], "ref_answer": r["answer"],
                    "output": output, "think": think, "answer": answer, "think_status": status,
                    "new_tokens": len(output) // 2, "finished": True, "model": model}

        _jsonl(d / "preds/predictions_full.jsonl",
               [pred(i, r, format_reference(r["think"], r["answer"]), "output/full") for i, r in enumerate(rows)])
        _jsonl(d / "preds/predictions_base.jsonl",
               [pred(i, r, "" if i == 3 else format_reference(rows[(i + 3) % 8]["think"], rows[(i + 3) % 8]["answer"]),
                     "Qwen/Qwen3-1.7B") for i, r in enumerate(rows)])
        (d / "preds/predictions_full.summary.json").write_text(json.dumps(
            {"model": "output/full", "n": 8, "max_new_tokens": 2048, "do_sample": False, "temperature": None,
             "top_p": None, "top_k": None, "seed": 42, "backend": "transformers"}), encoding="utf-8")
    return d


# --- the runner: wrapped write calls, a fork server ---------------------------------------------------------------

FAULT_RUNNER = r'''
"""Run a stage script with its write calls wrapped for fault injection (see tests/test_faults.py).

    python fault_runner.py SCRIPT [ARGS...]     spec in $MEDSFT_FAULT (JSON)
    python fault_runner.py --serve              fork server: one JSON request per line on stdin
"""
import builtins, errno, io, json, os, pathlib, re, runpy, shutil, signal, sys, tempfile

_open, _os_open = builtins.open, os.open
_OS = {n: getattr(os, n) for n in ("replace", "rename", "link", "mkdir", "unlink", "remove", "rmdir")}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
NEEDS_SPACE = ("open", "mkdir", "link", "save")  # a rename or a delete does not fail on a full disk


def install(spec):
    watch = [os.path.realpath(p) for p in spec.get("watch", ())]
    action, at, match, when = spec.get("action"), spec.get("at"), spec.get("match"), spec.get("when", "before")
    code = getattr(errno, spec.get("errno", "ENOSPC"))
    log = _open(spec["log"], "a", buffering=1) if spec.get("log") else None
    st = {"n": 0, "fired": False}

    def watched(path, dir_fd=None):
        if isinstance(path, int):
            return None
        try:
            path = os.fsdecode(path)
        except TypeError:
            return None
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        path = os.path.abspath(path)
        path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        return path if any(path == w or path.startswith(w + os.sep) for w in watch) else None

    def decide(kind, path):
        st["n"] += 1
        n = st["n"]
        if log:
            log.write(json.dumps({"n": n, "kind": kind, "path": path}) + "\n")
        if action is None:
            return None
        if action == "raise":  # sticky: the disk stays full, the folder stays read-only
            hit = n >= at and (code != errno.ENOSPC or kind in NEEDS_SPACE)
        elif st["fired"]:
            hit = False
        elif match is not None:
            hit = re.search(match, f"{kind} {path}") is not None
        else:
            hit = n == at
        if hit and not st["fired"]:
            st["fired"] = True
            if log:
                log.write(json.dumps({"fired": action, "when": when, "n": n, "kind": kind, "path": path}) + "\n")
        return action if hit else None

    def signal_self(act):
        os.kill(os.getpid(), signal.SIGKILL if act == "kill" else signal.SIGINT)

    def guarded(kind, path, shown, call, cut=None, error=None):
        act = decide(kind, path) if path else None
        if act is None:
            return call()
        if act == "raise":
            raise error() if error else OSError(code, os.strerror(code), os.fsdecode(shown))
        if when == "before":
            signal_self(act)
            return call()
        result = call()
        if act == "kill" and cut:
            cut()
        signal_self(act)
        return result

    def w_open(file, mode="r", *a, **k):
        path = watched(file) if isinstance(mode, str) and any(c in mode for c in "wax+") else None
        return guarded("open", path, file, lambda: _open(file, mode, *a, **k))

    def w_os_open(path, flags, mode=0o777, *, dir_fd=None):
        p = watched(path, dir_fd) if flags & WRITE_FLAGS else None
        return guarded("open", p, path, lambda: _os_open(path, flags, mode, dir_fd=dir_fd))

    def w_move(orig):
        def move(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            p = watched(dst, dst_dir_fd) or watched(src, src_dir_fd)
            return guarded("rename", p, dst, lambda: orig(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd))
        return move

    def w_link(src, dst, *, src_dir_fd=None, dst_dir_fd=None, follow_symlinks=True):
        return guarded("link", watched(dst, dst_dir_fd), dst, lambda: _OS["link"](
            src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=follow_symlinks))

    def w_mkdir(path, mode=0o777, *, dir_fd=None):
        p = watched(path, dir_fd)
        if p and os.path.lexists(p):
            p = None  # an existing folder: mkdir fails with EEXIST and writes nothing
        return guarded("mkdir", p, path, lambda: _OS["mkdir"](path, mode, dir_fd=dir_fd))

    def w_remove(orig):
        def remove(path, *, dir_fd=None):
            p = watched(path, dir_fd)
            if p and not os.path.lexists(p):
                p = None  # nothing there: ENOENT, nothing changes
            return guarded("remove", p, path, lambda: orig(path, dir_fd=dir_fd))
        return remove

    trigger = spec.get("on_output")
    if trigger:  # Ctrl-C once stdout has shown `trigger` `count` times (e.g. the k-th logged optimizer step)
        class Watched:
            def __init__(self, inner):
                self._inner, self._seen, self._done = inner, 0, False

            def write(self, text):
                n = self._inner.write(text)
                if not self._done:
                    self._seen += text.count(trigger)
                    if self._seen >= spec.get("count", 1):
                        self._done = True
                        if log:
                            log.write(json.dumps({"fired": "sigint", "when": "output", "n": self._seen,
                                                  "kind": "output", "path": trigger}) + "\n")
                        self._inner.flush()
                        if spec.get("break_stdout"):  # the reader of stdout is gone (`| tee log`: Ctrl-C killed tee)
                            r, w = os.pipe()
                            os.close(r)
                            os.dup2(w, 1)
                            os.close(w)
                        os.kill(os.getpid(), signal.SIGINT)
                return n

            def __getattr__(self, name):
                return getattr(self._inner, name)

        sys.stdout = Watched(sys.stdout)
        action = None  # no write event fires anything
    patches = {builtins.open: w_open, _os_open: w_os_open, _OS["replace"]: w_move(_OS["replace"]),
               _OS["rename"]: w_move(_OS["rename"]), _OS["link"]: w_link, _OS["mkdir"]: w_mkdir,
               _OS["unlink"]: w_remove(_OS["unlink"]), _OS["remove"]: w_remove(_OS["remove"]),
               _OS["rmdir"]: w_remove(_OS["rmdir"])}
    if spec.get("torch"):
        import torch, safetensors, safetensors.torch

        tsave, ssave = torch.save, safetensors.torch.save_file

        def w_tsave(obj, f, *a, **k):
            p = watched(f) if isinstance(f, (str, os.PathLike)) else None

            def cut():  # torch writes in place: a kill in the middle leaves the first part of the file
                with _open(f, "r+b") as fh:
                    fh.truncate(os.path.getsize(f) // 2)

            def error():  # what torch.save raises on a full disk / in a folder it may not write
                return RuntimeError(f"File {os.fsdecode(f)} cannot be opened." if code == errno.EACCES
                                    else "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
            return guarded("save", p, f, lambda: tsave(obj, f, *a, **k), cut, error)

        def w_ssave(tensors, filename, *a, **k):
            def error():  # safetensors writes a temp file beside the target, then renames it
                tmp = os.path.join(os.path.dirname(os.fsdecode(filename)), ".tmpX9f2Qa")
                return safetensors.SafetensorError(f"Error while serializing: I/O error: {os.strerror(code)} "
                                                   f"(os error {code}) at path \"{tmp}\"")
            return guarded("save", watched(filename), filename, lambda: ssave(tensors, filename, *a, **k), None,
                           error)
        patches[tsave], patches[ssave] = w_tsave, w_ssave
    by_id = {id(old): (old, new) for old, new in patches.items()}
    mine = globals()
    for mod in list(sys.modules.values()):  # also names bound by `from x import f` before this ran
        d = getattr(mod, "__dict__", None)
        if not isinstance(d, dict) or d is mine:
            continue
        for key, value in list(d.items()):
            hit = by_id.get(id(value))
            if hit is not None and hit[0] is value:
                d[key] = hit[1]


def run(script, args, spec):
    # Ctrl-C as in a shell: the launching pytest worker may have left SIGINT ignored or blocked, both inherited
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install(spec)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")


def preload():
    import jieba, matplotlib, peft, safetensors.torch, torch, tqdm, transformers  # noqa: F401
    import transformers.modeling_utils, transformers.trainer  # noqa: F401
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    jieba.setLogLevel(60)
    jieba.initialize()


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        sys.path.insert(0, @TESTS@)
        import forkserver
        del sys.path[0]
        request = forkserver.serve(preload)
        if request is None:
            sys.exit(0)
        run(request["script"], request["args"], request["spec"])
    else:
        run(sys.argv[1], sys.argv[2:], json.loads(os.environ.pop("MEDSFT_FAULT", "") or "{}"))
'''


@dataclass
class Result:
    rc: int
    out: str
    err: str
    events: list  # the write events of the run, in order
    fired: dict | None  # the event the fault fired at

    def where(self) -> str:
        return f"fault at {self.fired}" if self.fired else "fault never fired"

    def tail(self) -> str:
        return f"{self.where()}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-5000:]}"


class Runner:
    """Runs stage scripts through FAULT_RUNNER, forked from a server that has the heavy libraries imported."""

    def __init__(self, path: Path, env: dict):
        self.path, self.env, self.server, self.count, self._buf = path, env, None, 0, b""

    def _start(self):
        self.server = subprocess.Popen([sys.executable, str(self.path), "--serve"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, cwd=ROOT, env=self.env)
        ready = self._reply(RUN_TIMEOUT)
        assert ready == {"ready": True}, f"the fault runner's fork server did not start: {ready}"

    def _reply(self, timeout):
        """The server's next JSON line, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        fd = self.server.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            assert chunk, "the fault runner's fork server died"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        if self.server:
            self.server.stdin.close()
            self.server.wait(timeout=60)

    def run(self, stage: Stage, d: Path, *extra: str, fault: dict | None = None, timeout=RUN_TIMEOUT) -> Result:
        self.count += 1
        tag = f"_run{self.count}"
        log = d / f"{tag}.events"
        spec = {"watch": [str(d / o) for o in stage.outputs], "torch": stage.torch, "log": str(log), **(fault or {})}
        spec["watch"] = [str(d / w) for w in spec["watch"]]  # relative folders (a fault's own watch) -> absolute
        args = [*stage.args, *extra]
        out, err = d / f"{tag}.out", d / f"{tag}.err"
        if FORK and stage.torch:  # a fresh interpreter is faster for the stages that do not import torch
            if self.server is None:
                self._start()
            self.server.stdin.write(json.dumps({"script": str(ROOT / stage.script), "args": args, "spec": spec,
                                                "cwd": str(d), "env": self.env, "stdout": str(out),
                                                "stderr": str(err)}).encode() + b"\n")
            self.server.stdin.flush()
            pid = self._reply(60)["pid"]
            reply = self._reply(timeout)
            if reply is None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._reply(60)
                raise AssertionError(f"{stage.script} {' '.join(args)} ran over {timeout} s")
            rc = reply["rc"]
        else:
            with open(out, "wb") as fo, open(err, "wb") as fe:
                rc = subprocess.run([sys.executable, str(self.path), str(ROOT / stage.script), *args], cwd=d,
                                    env={**self.env, "MEDSFT_FAULT": json.dumps(spec)}, stdout=fo, stderr=fe,
                                    timeout=timeout).returncode
        events, fired = [], None
        if log.is_file():
            for line in log.read_text(encoding="utf-8").splitlines():
                try:
                    e = json.loads(line)
                except ValueError:  # the last line of a killed run may be cut
                    continue
                if "fired" in e:
                    fired = e
                else:
                    events.append(e)
        return Result(rc, out.read_text(encoding="utf-8", errors="replace"),
                      err.read_text(encoding="utf-8", errors="replace"), events, fired)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "MEDSFT_TOKENIZER"}  # the project-built tokenizer: fast
    # one torch thread: on 2 shared cores, 2 OpenMP threads make a tiny training run ~4x slower (7.3 s vs 1.7 s)
    env.update(PYTHONUNBUFFERED="1", SWANLAB_MODE="disabled", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    path = tmp_path_factory.mktemp("runner") / "fault_runner.py"
    path.write_text(FAULT_RUNNER.replace("@TESTS@", repr(str(ROOT / "tests"))), encoding="utf-8")
    r = Runner(path, env)
    yield r
    r.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


_REFS: dict = {}


@pytest.fixture
def ref(runner, work):
    """ref(stage) -> (folder, Result) of the stage's uninterrupted run, made once per module."""

    def get(stage: Stage):
        if stage.name not in _REFS:
            d = setup_inputs(stage, work / f"{stage.name}-reference")
            result = runner.run(stage, d)
            assert result.rc == 0, f"the uninterrupted {stage.script} failed\n{result.tail()}"
            assert result.events, "no write events logged: the runner watches the wrong folders"
            _REFS[stage.name] = d, result
        return _REFS[stage.name]

    return get


def scratch(stage: Stage, work: Path, name: str) -> Path:
    return setup_inputs(stage, work / f"{stage.name}-{name}")


def rng(*key) -> random.Random:
    return random.Random(":".join(map(str, (SEED, *key))))


# --- checks ----------------------------------------------------------------------------------------------------

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
PNG_END = b"IEND\xaeB`\x82"


def _safetensors_problem(data: bytes) -> str | None:
    if len(data) < 8:
        return "shorter than a safetensors header"
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        return "unreadable safetensors header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return None if len(data) == 8 + n + end else f"{len(data)} bytes, the header needs {8 + n + end}"


def whole_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole file of its kind (None: whole)."""
    data = path.read_bytes()
    if not data:
        return "empty"
    suffix = path.suffix
    try:
        if suffix == ".json":
            json.loads(data.decode("utf-8"))
        elif suffix == ".jsonl":
            if not data.endswith(b"\n"):
                return "last line not terminated"
            for i, line in enumerate(data.decode("utf-8").splitlines(), 1):
                json.loads(line)
        elif suffix == ".safetensors":
            return _safetensors_problem(data)
        elif suffix == ".png":
            if not (data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(PNG_END)):
                return "not a whole PNG"
        elif suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            if bad:
                return f"CRC error in {bad}"
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _checkpoint_complete(d: Path) -> bool:
    try:
        json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def visible_files(root: Path, folders) -> list[Path]:
    """The output files (not hidden temp files) under ``folders`` of ``root``, as paths relative to ``root``."""
    out = []
    for folder in folders:
        base = root / folder
        if not base.is_dir():
            continue
        for p in base.rglob("*"):
            rel = p.relative_to(base)
            if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                out.append(p.relative_to(root))
    return sorted(out)


def half_written(root: Path, stage: Stage) -> list[str]:
    """Every output file that is not whole. Checkpoints without a readable trainer_state.json are incomplete by
    design (the documented mark of a save cut short; --resume=true moves them aside) and are skipped."""
    problems = []
    for rel in visible_files(root, stage.outputs):
        ck = next((p for p in rel.parents if CHECKPOINT.match(p.name)), None)
        if ck is not None and not _checkpoint_complete(root / ck):
            continue
        problem = whole_file_problem(root / rel)
        if problem:
            problems.append(f"{rel}: {problem}")
    return problems


def tensors(path: Path) -> dict:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return {k: (v["dtype"], v["shape"], data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


def loss_history(path: Path) -> list[tuple]:
    """(step, epoch, loss, eval_loss, grad_norm, learning_rate, tokens seen) of every train and eval log entry."""
    entries = json.loads(path.read_text(encoding="utf-8"))["log_history"]
    keys = ("step", "epoch", "loss", "eval_loss", "grad_norm", "learning_rate", "num_input_tokens_seen")
    return [tuple(e.get(k) for k in keys) for e in entries if "loss" in e or "eval_loss" in e]


def differences(stage: Stage, ref: Path, d: Path) -> list[str]:
    """How the run in ``d`` differs from the uninterrupted reference run in ``ref`` (empty: it reproduces it)."""
    diffs = []
    ref_files, files = visible_files(ref, stage.outputs), visible_files(d, stage.outputs)
    if stage.training:  # which checkpoints remain depends on where the run stopped: not part of the result
        ref_files, files = ([f for f in fs if not any(CHECKPOINT.match(p.name) for p in f.parents)]
                            for fs in (ref_files, files))
    if ref_files != files:
        diffs.append(f"other files: missing {sorted(set(ref_files) - set(files))}, "
                     f"extra {sorted(set(files) - set(ref_files))}")
    if stage.training:
        out = Path(stage.outputs[0])
        kind = "lora" if stage.name == "train_lora" else "full"
        weights = out / ("adapter_model.safetensors" if kind == "lora" else "model.safetensors")
        for rel, how in ((out / "trainer_state.json", loss_history), (Path(f"res_out/train_{kind}.json"), loss_history),
                         (weights, tensors), (Path("res_out/trainloss.png"), Path.read_bytes),
                         (Path("res_out/evalloss.png"), Path.read_bytes)):
            if not (d / rel).is_file() or not (ref / rel).is_file():
                diffs.append(f"{rel}: missing")
            elif how(d / rel) != how(ref / rel):
                diffs.append(f"{rel}: differs ({how.__name__})" + (
                    f"\n  reference {how(ref / rel)}\n  this run  {how(d / rel)}" if how is loss_history else ""))
        return diffs
    if stage.name == "inference":  # the summary holds this run's timings and resume counts: compare the rest
        same = ("model", "adapter", "output", "n", "n_input", "n_truncated", "think_status", "max_new_tokens",
                "do_sample", "temperature", "top_p", "top_k", "seed", "batch_size", "backend", "weights")
        rel = Path("res_out/predictions_full.summary.json")
        if (d / rel).is_file() and (ref / rel).is_file():
            a, b = (json.loads((x / rel).read_text(encoding="utf-8")) for x in (ref, d))
            changed = [k for k in same if a.get(k) != b.get(k)]
            if changed:
                diffs.append(f"{rel}: {', '.join(f'{k}={b.get(k)!r} (uninterrupted {a.get(k)!r})' for k in changed)}")
        ref_files = [f for f in ref_files if f != rel]
    for rel in ref_files:
        if (d / rel).is_file() and (d / rel).read_bytes() != (ref / rel).read_bytes():
            diffs.append(f"{rel}: other bytes")
    return diffs


def assert_reproduces(stage: Stage, ref: Path, d: Path, what: str) -> None:
    diffs = differences(stage, ref, d)
    assert not diffs, f"{what} does not reproduce the uninterrupted {stage.script}:\n" + "\n".join(diffs)


def assert_whole(stage: Stage, d: Path, what: str) -> None:
    problems = half_written(d, stage)
    assert not problems, f"{what} left half-written output files:\n" + "\n".join(problems)


WAY_OUT = re.compile(r"free (up|some)|make room|--[a-z_]{3,}|chmod|elsewhere|another (folder|directory|disk|drive|"
                     r"location)|write access|permission to write", re.I)


def assert_clean_error(result: Result, folder: str, what: str) -> None:
    """A user-facing error: non-zero exit (not a signal), `error:` naming the folder or a file in it, a way out,
    and no Python traceback."""
    assert result.rc > 0, f"{what}: exit code {result.rc}\n{result.tail()}"
    assert "Traceback" not in result.err + result.out, \
        f"{what}: a Python traceback instead of a message\n{result.tail()}"
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert lines, f"{what}: no 'error:' line\n{result.tail()}"
    message = "\n".join(lines)
    assert folder in message, f"{what}: the message does not name {folder}: {message}"
    assert WAY_OUT.search(message), f"{what}: the message gives no way out: {message}"


def rerun(runner: Runner, stage: Stage, d: Path, what: str) -> Result:
    """The documented way on after an interruption: the same command (training: with --resume=true)."""
    result = runner.run(stage, d, *stage.rerun)
    assert result.rc == 0, f"re-running {stage.script} after {what} failed\n{result.tail()}"
    return result


@contextmanager
def read_only(folder: Path):
    """A folder that cannot be written: chmod 0555, or (as root, which chmod does not stop) a fault spec that
    makes every write in it fail with EACCES."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield None
        finally:
            folder.chmod(0o755)
    else:
        yield {"action": "raise", "errno": "EACCES", "at": 1}


# --- faults of the stage code that these tests found (strict: a fix makes the test XPASS, i.e. fail) -----------

TRACEBACK = "is not turned into an `error:` message: the user gets a Python traceback ending in "
KNOWN_FAULTS = {
}


def cases(values, ids, fault_key):
    """pytest.param for each value; the ones with a known stage fault are strict xfails with that fault."""
    out = []
    for value, id_ in zip(values, ids):
        reason = KNOWN_FAULTS.get(fault_key(id_))
        out.append(pytest.param(*(value if isinstance(value, tuple) else (value,)), id=id_,
                                marks=[pytest.mark.xfail(strict=True, reason=reason)] if reason else []))
    return out


# --- kill -9 ----------------------------------------------------------------------------------------------------

KILL_SAMPLES = [("data", 0), ("data", 1), ("data", 2), ("train", 0), ("train_lora", 0), ("inference", 0),
                ("evaluate", 0), ("evaluate", 1), ("rouge_eval", 0), ("rouge_eval", 1)]


@pytest.mark.parametrize("name,sample", KILL_SAMPLES, ids=[f"{n}-{s}" for n, s in KILL_SAMPLES])
def test_kill9_at_a_random_write_then_rerun_reproduces(name, sample, runner, work, ref):
    stage = STAGES[name]
    ref_dir, ref_run = ref(stage)
    r = rng("kill", name, sample)
    at, when = r.randint(1, len(ref_run.events)), r.choice(["before", "after"])
    d = scratch(stage, work, f"kill-{sample}")
    killed = runner.run(stage, d, fault={"action": "kill", "at": at, "when": when})
    assert killed.rc == -signal.SIGKILL, f"the run was not killed\n{killed.tail()}"
    assert_whole(stage, d, f"kill -9 {when} write {at} ({killed.fired})")
    rerun(runner, stage, d, f"kill -9 {killed.where()}")
    assert_reproduces(stage, ref_dir, d, f"the re-run after kill -9 {when} write {at} ({killed.fired})")


FINAL_SAVE_TARGETS = {  # id: (stage, the write event: its kind and path, temp names included)
    "train-trainer_state": ("train", r"^open .*/model_out/full/\.?trainer_state\.json(\.[^/]*)?$"),
    # save_final stages the files in OUTPUT_DIR/.final-staging, then renames them into place
    "train-config": ("train", r"^open .*/model_out/full/(\.final-staging/)?\.?config\.json(\.[^/]*)?$"),
    "train_lora-adapter_config": ("train_lora",
                                  r"^open .*/model_out/lora/(\.final-staging/)?\.?adapter_config\.json(\.[^/]*)?$"),
}


@pytest.mark.parametrize("target", cases(list(FINAL_SAVE_TARGETS), list(FINAL_SAVE_TARGETS),
                                          lambda t: f"final-save-{t}"))
def test_kill9_while_training_saves_the_final_model(target, runner, work, ref):
    """kill -9 right after the training script opened a top-level file of its final save for writing (its temp
    file, if it writes atomically), before any byte of it was written. OUTPUT_DIR's top level is what inference and
    evaluation read. (model.safetensors is not a target: safetensors >= 0.8 itself writes a temp file and renames
    it.)"""
    name, event = FINAL_SAVE_TARGETS[target]
    stage = STAGES[name]
    ref_dir, _ = ref(stage)
    d = scratch(stage, work, f"kill-final-{target}")
    killed = runner.run(stage, d, fault={"action": "kill", "match": event, "when": "after"})
    assert killed.rc == -signal.SIGKILL, f"the run was not killed\n{killed.tail()}"
    assert_whole(stage, d, f"kill -9 during the final save ({killed.fired})")
    rerun(runner, stage, d, f"kill -9 {killed.where()}")
    assert_reproduces(stage, ref_dir, d, "the resumed run after kill -9 during the final save")


def _tree_bytes(root: Path) -> dict:
    # .lock holds the pid of the last run that took it: bookkeeping, not the run
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def test_host_crash_that_empties_every_trainer_state_refuses_resume_and_changes_nothing(runner, work, ref):
    """A host crash can leave every checkpoint's trainer_state.json empty (its bytes never reached the disk). The
    resume then refuses, naming the folder, the newest checkpoint and --overwrite=true, and changes nothing: it never
    starts over at step 0 on its own. --overwrite=true then reproduces the uninterrupted run."""
    stage = STAGES["train"]
    ref_dir, _ = ref(stage)
    d = scratch(stage, work, "host-crash")
    killed = runner.run(stage, d, fault={"action": "kill", "match": r"^mkdir .*/model_out/full/checkpoint-4$"})
    assert killed.rc == -signal.SIGKILL, f"the run was not killed\n{killed.tail()}"
    out = d / stage.outputs[0]
    states = sorted(out.glob("checkpoint-*/trainer_state.json"))
    assert states, f"no checkpoint was saved before the kill\n{killed.tail()}"
    for state in states:
        state.write_bytes(b"")
    before = _tree_bytes(out)
    refused = runner.run(stage, d, *stage.rerun)
    assert_clean_error(refused, stage.outputs[0], "a resume after every trainer_state.json was emptied")
    assert "--overwrite=true" in refused.err and states[-1].parent.name in refused.err, refused.tail()
    assert _tree_bytes(out) == before, "the refused resume changed OUTPUT_DIR"
    again = runner.run(stage, d, "--overwrite=true")
    assert again.rc == 0, again.tail()
    assert_reproduces(stage, ref_dir, d, "--overwrite=true after a host crash")


def test_kill9_between_the_rows_and_the_summary_never_mixes_settings(runner, work, ref):
    """kill -9 right after the first predictions reached OUTPUT: its summary (settings and weights) is already on
    disk, so a re-run with other settings is refused and changes nothing, and the same command completes the file
    exactly as the uninterrupted run."""
    stage = STAGES["inference"]
    ref_dir, _ = ref(stage)
    d = scratch(stage, work, "kill-first-rows")
    killed = runner.run(stage, d, fault={"action": "kill", "when": "after",
                                         "match": r"^rename .*/res_out/predictions_full\.jsonl$"})
    assert killed.rc == -signal.SIGKILL, f"the run was not killed\n{killed.tail()}"
    preds = d / "res_out/predictions_full.jsonl"
    assert preds.is_file() and (d / "res_out/predictions_full.summary.json").is_file(), killed.tail()
    before = preds.read_bytes()
    other = runner.run(stage, d, "--max_new_tokens=13")
    assert_clean_error(other, "res_out", "a re-run with other settings over the first rows")
    assert "max_new_tokens" in other.err and preds.read_bytes() == before, other.tail()
    rerun(runner, stage, d, f"kill -9 {killed.where()}")
    assert_reproduces(stage, ref_dir, d, "the re-run after kill -9 between the rows and the summary")


@pytest.mark.parametrize("name", ["data", "evaluate", "rouge_eval"])
def test_kill9_during_a_rerun_of_a_finished_stage_changes_nothing(name, runner, work, ref):
    """Re-running a finished stage writes the same bytes atomically: a kill at any point of that re-run leaves
    every output file exactly as it was."""
    stage = STAGES[name]
    ref_dir, _ = ref(stage)
    probe = work / f"{name}-rerun-probe"
    shutil.copytree(ref_dir, probe)
    again = runner.run(stage, probe)
    assert again.rc == 0 and again.events, again.tail()
    r = rng("kill-rerun", name)
    at, when = r.randint(1, len(again.events)), r.choice(["before", "after"])
    d = work / f"{name}-kill-rerun"
    shutil.copytree(ref_dir, d)
    killed = runner.run(stage, d, fault={"action": "kill", "at": at, "when": when})
    assert killed.rc == -signal.SIGKILL, f"the run was not killed\n{killed.tail()}"
    assert_reproduces(stage, ref_dir, d, f"the finished outputs after kill -9 {when} write {at} of a re-run "
                                         f"({killed.fired})")
    rerun(runner, stage, d, f"kill -9 {killed.where()}")
    assert_reproduces(stage, ref_dir, d, "the re-run after kill -9 during a re-run")


@pytest.mark.parametrize("name", list(STAGES))
def test_rerun_of_a_finished_stage_changes_nothing(name, runner, work, ref):
    """The documented re-run (pipeline.sh's: training with --resume=true) of a finished stage leaves every output
    file byte for byte as it was."""
    stage = STAGES[name]
    ref_dir, _ = ref(stage)
    d = work / f"{name}-rerun"
    shutil.copytree(ref_dir, d)
    rerun(runner, stage, d, "the stage finished")
    before, after = visible_files(ref_dir, stage.outputs), visible_files(d, stage.outputs)
    changed = [str(rel) for rel in before
               if not (d / rel).is_file() or (d / rel).read_bytes() != (ref_dir / rel).read_bytes()]
    extra = sorted(map(str, set(after) - set(before)))
    assert not changed and not extra, f"re-running the finished {stage.script} changed {changed}, added {extra}"


# --- Ctrl-C -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,break_stdout", [("train", False), ("train_lora", False), ("train", True)],
                         ids=["train", "train_lora", "train-stdout-pipe-gone"])
def test_ctrl_c_during_training_saves_a_checkpoint_exits_130_and_resumes_exactly(name, break_stdout, runner, work,
                                                                                  ref):
    """Ctrl-C right after a random logged optimizer step: the step in progress finishes, a checkpoint is saved, the
    exit code is 130 and --resume=true ends with the uninterrupted run's losses and weights. The -pipe-gone variant
    is `python train.py | tee log` where Ctrl-C also killed tee: stdout is a pipe nobody reads any more."""
    stage = STAGES[name]
    ref_dir, _ = ref(stage)
    after = rng("ctrl-c", name, break_stdout).randint(1, MAX_STEPS - 1)
    d = scratch(stage, work, "ctrl-c" + ("-pipe-gone" if break_stdout else ""))
    stopped = runner.run(stage, d, fault={"action": "sigint", "on_output": "{'loss':", "count": after,
                                          "break_stdout": break_stdout})
    assert stopped.fired, f"the run ended before its step {after} was logged\n{stopped.tail()}"
    assert stopped.rc == 130, f"Ctrl-C after step {after}: exit code {stopped.rc}, not 130\n{stopped.tail()}"
    out_dir = d / stage.outputs[0]
    assert not (out_dir / "trainer_state.json").exists(), "the run finished despite Ctrl-C"
    complete = sorted(int(CHECKPOINT.match(p.name).group(1)) for p in out_dir.glob("checkpoint-*")
                      if _checkpoint_complete(p))
    assert complete and after <= complete[-1] <= MAX_STEPS, \
        f"no checkpoint at the step Ctrl-C stopped: {complete}\n{stopped.tail()}"
    if not break_stdout:
        said = lines_naming(stopped.out, stage.outputs[0], "--resume=true")  # the step, where it is, how to go on
        assert len(said) == 1 and complete[-1] in numbers_in(said[0], d, stage.outputs[0]), stopped.tail()
    assert_whole(stage, d, f"Ctrl-C after step {after}")
    rerun(runner, stage, d, f"Ctrl-C after step {after}")
    assert_reproduces(stage, ref_dir, d, f"the resumed run after Ctrl-C at step {after}")


@pytest.mark.parametrize("name", ["data", "inference", "evaluate", "rouge_eval"])
def test_ctrl_c_at_a_random_write_fails_cleanly_and_rerun_reproduces(name, runner, work, ref):
    stage = STAGES[name]
    ref_dir, ref_run = ref(stage)
    r = rng("sigint", name)
    at, when = r.randint(1, len(ref_run.events)), r.choice(["before", "after"])
    d = scratch(stage, work, "ctrl-c")
    stopped = runner.run(stage, d, fault={"action": "sigint", "at": at, "when": when})
    assert stopped.fired and stopped.rc != 0, f"Ctrl-C {when} write {at}: exit code {stopped.rc}\n{stopped.tail()}"
    assert_whole(stage, d, f"Ctrl-C {when} write {at} ({stopped.fired})")
    rerun(runner, stage, d, f"Ctrl-C {stopped.where()}")
    assert_reproduces(stage, ref_dir, d, f"the re-run after Ctrl-C {when} write {at} ({stopped.fired})")


# --- disk full, read-only folder ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", cases(list(STAGES), list(STAGES), lambda n: f"enospc-{n}"))
def test_disk_full_mid_run_fails_cleanly_and_rerun_reproduces(name, runner, work, ref):
    """The disk fills up at a random write in the middle of the run, and stays full: the stage
    stops with a message that names the file or folder and the way out; after space is freed, the re-run
    completes as if nothing had happened."""
    stage = STAGES[name]
    ref_dir, ref_run = ref(stage)
    needs_space = [e for e in ref_run.events if e["kind"] in ("open", "mkdir", "link", "save")]
    published = next(e["n"] for e in ref_run.events if e["kind"] == "rename")
    # mid-run: after the first file was published (the writes before it are mostly the stages' own checks that
    # the folder is writable); data.py publishes all its files at once, so there: after its first write
    candidates = [e for e in needs_space if e["n"] > published] or needs_space[1:]
    event = rng("enospc", name).choice(candidates)
    d = scratch(stage, work, "enospc")
    failed = runner.run(stage, d, fault={"action": "raise", "errno": "ENOSPC", "at": event["n"]})
    assert failed.fired, f"the disk never filled up\n{failed.tail()}"
    folder = next(o for o in stage.outputs if failed.fired["path"].startswith(os.path.realpath(d / o)))
    assert_clean_error(failed, folder, f"disk full from write {event['n']} ({failed.fired})")
    assert_whole(stage, d, f"disk full from write {event['n']}")
    rerun(runner, stage, d, f"a full disk ({failed.fired})")
    assert_reproduces(stage, ref_dir, d, "the re-run after a full disk")


READ_ONLY = [(s.name, f) for s in STAGES.values() for f in s.read_only]


@pytest.mark.parametrize("name,folder", cases(READ_ONLY, [f"{n}-{f}" for n, f in READ_ONLY],
                                               lambda i: f"eacces-{i.split('-')[0]}"))
def test_read_only_output_folder_fails_cleanly(name, folder, runner, work, ref):
    stage = STAGES[name]
    ref_dir, _ = ref(stage)
    d = scratch(stage, work, "eacces-" + folder.replace("/", "-"))
    with read_only(d / folder) as fault:
        failed = runner.run(stage, d, fault=fault and {**fault, "watch": [folder]})
    assert_clean_error(failed, folder, f"read-only {folder}")
    assert_whole(stage, d, f"read-only {folder}")
    if not stage.torch:  # cheap: also check that the stage then runs as if nothing had happened
        rerun(runner, stage, d, f"read-only {folder}")
        assert_reproduces(stage, ref_dir, d, f"the re-run after read-only {folder}")
