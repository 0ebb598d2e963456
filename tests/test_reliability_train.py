"""Reliability of train.py / train_lora.py (issue 11): re-runs of a finished run, Ctrl-C with a dead pipe, damaged
checkpoints, unwritable or full disks, --overwrite and concurrent runs, SwanLab resume/interrupt/offline."""

from __future__ import annotations

import errno
import json
import os
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, run_script
from oracles import assert_exit, lines_naming, numbers_in, raises_naming

MAX_STEPS = 4
# tiny and fast: 2 examples per step, a checkpoint every 2 steps, no eval until the end, no preview
COMMON = ["--model=tiny", "--max_length=256", "--batch_size=2", "--grad_accum=1", "--logging_steps=1",
          "--eval_steps=100", "--save_steps=2", "--save_total_limit=3", "--preview_questions=0",
          "--learning_rate=1e-3"]
TOPICS = ["高血压", "糖尿病", "感冒", "胃炎", "偏头痛", "哮喘", "贫血", "失眠", "湿疹", "痛风", "肺炎", "关节炎"]
FINAL_OUTPUTS = ("model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json",
                 "trainer_state.json", "train_config.json")


def _row(i: int, topic: str) -> dict:
    return {"id": f"r{i}", "question": f"{topic}有哪些常见症状？应该如何处理？",
            "think": f"用户问的是{topic}的症状和处理。先说典型表现，再给就医建议。",
            "answer": f"{topic}的常见症状因人而异。建议及时就医，遵医嘱治疗，注意休息和饮食。"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    for name, rows in (("train.jsonl", [_row(i, t) for i, t in enumerate(TOPICS[:8])]),
                       ("val.jsonl", [_row(100 + i, t) for i, t in enumerate(TOPICS[8:])])):
        (d / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return d


def _args(data_dir, out, results, *extra, max_steps=MAX_STEPS):
    return [*COMMON, f"--max_steps={max_steps}", f"--data_dir={data_dir}", f"--output_dir={out}",
            f"--results_dir={results}", *extra]


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished train.py run (checkpoint-2, checkpoint-4 and the final model)."""
    work = tmp_path_factory.mktemp("finished")
    out, results = work / "out", work / "results"
    run_script("train.py", *_args(data_dir, out, results))
    return out, results


def _losses(out: Path) -> list:
    state = json.loads((out / "trainer_state.json").read_text())
    return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]


def _snapshot(*dirs: Path) -> dict:
    """Every file under ``dirs`` with its size, mtime and bytes: any write shows up."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for d in dirs for p in
            sorted(d.rglob("*")) if p.is_file()}


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _cfg(data_dir, out, results, **over):
    from medsft.config import script_defaults

    cfg = script_defaults(ROOT / "train.py")
    cfg.update(MODEL="tiny", DATA_DIR=str(data_dir), OUTPUT_DIR=str(out), RESULTS_DIR=str(results), MAX_LENGTH=256,
               BATCH_SIZE=2, GRAD_ACCUM=1, LOGGING_STEPS=1, EVAL_STEPS=100, SAVE_STEPS=2, SAVE_TOTAL_LIMIT=3,
               PREVIEW_QUESTIONS=0, LEARNING_RATE=1e-3, MAX_STEPS=MAX_STEPS)
    cfg.update(over)
    return cfg


# --- 5. a finished run is left alone --------------------------------------------------------------------------------


def test_rerun_of_a_finished_run_touches_nothing(data_dir, finished):
    out, results = finished
    before = _snapshot(out, results)
    for extra in (["--resume=true"], []):  # the pipeline re-run (--resume=true) and a plain re-run
        proc = run_script("train.py", *_args(data_dir, out, results, *extra))
        # one line naming the run, where its results are, and the option that would train it again
        assert len(lines_naming(proc.stdout, out, results / "train_full.json", "--overwrite=true")) == 1, proc.stdout
        assert str(data_dir / "train.jsonl") not in proc.stdout  # stopped before tokenizing (or loading) anything
        assert _snapshot(out, results) == before  # results/train_full.json keeps its real tokens/s and wall time
    res = json.loads((results / "train_full.json").read_text())
    assert res["tokens_per_s"] > 0 and res["steps"] == MAX_STEPS


def test_rerun_of_a_finished_run_with_other_settings_is_refused(data_dir, finished):
    out, results = finished
    before = _snapshot(out, results)
    resumed = run_script("train.py", *_args(data_dir, out, results, "--resume=true", "--learning_rate=5e-3"),
                         check=False)
    assert_exit(resumed, 1, out, "LEARNING_RATE", "--overwrite=true", "--output_dir")  # what changed, the ways out
    plain = run_script("train.py", *_args(data_dir, out, results, "--learning_rate=5e-3"), check=False)
    assert_exit(plain, 1, out, "trainer_state.json", "--resume=true", "--overwrite=true", "--output_dir")
    assert _snapshot(out, results) == before


def test_a_finished_output_dir_holds_no_pickle(finished):
    """The Trainer's save_model writes training_args.bin (a pickle); the published model does not carry it."""
    import zipfile

    out, _ = finished
    top = [p for p in out.iterdir() if p.is_file()]
    assert {"model.safetensors", "train_config.json", "trainer_state.json"} <= {p.name for p in top}
    assert not [p.name for p in top if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle") or
                zipfile.is_zipfile(p)]  # torch.save writes zips
    assert (out / "checkpoint-2" / "training_args.bin").is_file()  # checkpoints keep the Trainer's own files


def test_resume_is_refused_when_the_tokenizer_or_chat_template_changed(data_dir, tmp_path):
    from medsft.config import Config
    from medsft.files import MedsftError
    from medsft.models import resolve_model
    from medsft.training.run import check_same_run
    from medsft.training.sft import run_fingerprint

    model = tmp_path / "model"
    shutil.copytree(resolve_model("tiny"), model)
    out = tmp_path / "out"
    out.mkdir()
    cfg = _cfg(data_dir, out, tmp_path / "r", MODEL=str(model), RESUME=True, QUANTIZATION="none")
    fp = lambda c: run_fingerprint(Config(c), model)  # noqa: E731
    check_same_run(cfg, None, fp(cfg))  # the run starts: its fingerprint is recorded
    check_same_run(cfg, out / "checkpoint-2", fp(cfg))  # nothing changed: the resume goes ahead
    template = model / "chat_template.jinja"
    if template.is_file():  # transformers 5 writes the template beside tokenizer_config.json
        template.write_text(template.read_text(encoding="utf-8") + "{# edited #}", encoding="utf-8")
    else:
        conf = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
        conf["chat_template"] += "{# edited #}"
        (model / "tokenizer_config.json").write_text(json.dumps(conf), encoding="utf-8")
    with raises_naming(MedsftError, out, "tokenizer_sha256", "--overwrite=true", "--output_dir"):
        check_same_run(cfg, out / "checkpoint-2", fp(cfg))
    for key, value in (("MAX_GRAD_NORM", 0.5), ("QUANTIZATION", "4bit")):
        with raises_naming(MedsftError, out, key, "--overwrite=true"):
            check_same_run({**cfg, key: value}, out / "checkpoint-2", fp({**cfg, key: value}))


def test_a_session_that_trained_nothing_keeps_the_timing_it_replaces(tmp_path):
    """Killed after writing its results but before its finished marker, a run resumes from its final checkpoint
    and trains nothing: its results keep the real tokens/s instead of 0."""
    import torch
    from transformers import TrainerState

    from medsft.config import script_defaults
    from medsft.training.results import write_results

    cfg = {**script_defaults(ROOT / "train.py"), "MODEL": "tiny", "OUTPUT_DIR": str(tmp_path / "out"),
           "RESULTS_DIR": str(tmp_path / "results"), "BATCH_SIZE": 2, "GRAD_ACCUM": 1}
    trainer = SimpleNamespace(state=TrainerState(global_step=4, max_steps=4, num_input_tokens_seen=600),
                              model=torch.nn.Linear(2, 2))
    real = {"wall_time_s": 9.0, "train_time_s": 8.0, "tokens_per_s": 75.0, "session_tokens": 600}
    path = write_results(trainer, cfg, "full", real, {})
    write_results(trainer, cfg, "full", {"wall_time_s": 0.01, "train_time_s": 0.01, "tokens_per_s": 0.0,
                                         "session_tokens": 0, "resumed_from": "checkpoint-4"}, {})
    res = json.loads(path.read_text())
    assert {k: res[k] for k in real} == real and res["resumed_from"] == "checkpoint-4"


# --- 6. Ctrl-C with the reader of stdout gone -------------------------------------------------------------------------


def test_ctrl_c_with_a_dead_pipe_saves_a_checkpoint_and_resumes(data_dir, tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    steps = 6
    args = [sys.executable, str(ROOT / "train.py"), *_args(data_dir, out, results, "--save_steps=1000",
                                                              max_steps=steps)]
    r, w = os.pipe()  # `python train.py 2>&1 | tee log`
    proc = subprocess.Popen(args, cwd=ROOT, stdout=w, stderr=w)
    os.close(w)
    seen, deadline = b"", time.time() + 300
    try:
        while b"'loss'" not in seen:  # training has started
            assert proc.poll() is None and time.time() < deadline, seen.decode(errors="replace")[-3000:]
            if select.select([r], [], [], 0.5)[0]:
                seen += os.read(r, 1 << 16)
    finally:
        os.close(r)  # Ctrl-C kills tee too: every later write to the pipe fails with EPIPE
    proc.send_signal(signal.SIGINT)
    assert proc.wait(300) == 130
    from medsft.training.checkpoints import checkpoint_problem, checkpoints

    ckpts = checkpoints(out)
    assert len(ckpts) == 1 and ckpts[0][2], ckpts  # saved on Ctrl-C, long before SAVE_STEPS
    step, path, _ = ckpts[0]
    assert 0 < step < steps and checkpoint_problem(path) is None
    assert not (out / "trainer_state.json").exists()

    resumed = run_script("train.py", *_args(data_dir, out, results, "--save_steps=1000", "--resume=true",
                                            max_steps=steps))
    assert lines_naming(resumed.stdout, "resume", path), resumed.stdout
    assert [s for s, _ in _losses(out)] == list(range(1, steps + 1))


# --- 7. damaged checkpoints ---------------------------------------------------------------------------------------


def _truncate(path: Path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


def test_checkpoint_problem_names_the_damaged_file(finished, tmp_path):
    import torch
    from safetensors.torch import save_file

    from medsft.training.checkpoints import checkpoint_problem

    out, _ = finished
    good = out / "checkpoint-2"
    assert checkpoint_problem(good) is None
    cases = {
        "model.safetensors": lambda p: _truncate(p),
        "optimizer.pt": lambda p: _truncate(p),
        "scheduler.pt": lambda p: p.unlink(),
        "rng_state.pth": lambda p: p.write_bytes(b"not a zip"),
        "trainer_state.json": lambda p: p.write_text("{"),
    }
    for i, (name, damage) in enumerate(cases.items()):
        ckpt = _copy_run(good, tmp_path / f"checkpoint-{i}")
        damage(ckpt / name)
        why = checkpoint_problem(ckpt)
        assert why and name in why, (name, why)
    header = _copy_run(good, tmp_path / "checkpoint-header")
    data = (header / "model.safetensors").read_bytes()
    (header / "model.safetensors").write_bytes((10 ** 12).to_bytes(8, "little") + data[8:])  # header length garbage
    assert "model.safetensors" in checkpoint_problem(header)

    # a LoRA checkpoint holds the adapter instead of the model
    lora = _copy_run(good, tmp_path / "checkpoint-lora")
    (lora / "model.safetensors").unlink()
    (lora / "adapter_config.json").write_text("{}")
    assert "adapter_model.safetensors" in checkpoint_problem(lora)
    save_file({"lora_A": torch.zeros(4, 8), "lora_B": torch.ones(8, 4)}, lora / "adapter_model.safetensors")
    assert checkpoint_problem(lora) is None
    _truncate(lora / "adapter_model.safetensors", keep=0.9)
    assert "adapter_model.safetensors" in checkpoint_problem(lora)


def _unfinished_copy(finished_out: Path, dst: Path) -> Path:
    """The finished run as if killed after its last checkpoint: the final outputs are gone."""
    out = _copy_run(finished_out, dst)
    for name in FINAL_OUTPUTS:
        (out / name).unlink(missing_ok=True)
    return out


def _tree(path: Path) -> dict:
    """Every file under ``path`` (relative name -> sha256 of its bytes): a folder moved aside byte for byte keeps it."""
    import hashlib

    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.rglob("*"))
            if f.is_file()}


def test_resume_falls_back_past_a_truncated_newest_checkpoint(data_dir, finished, tmp_path):
    from medsft.training.checkpoints import checkpoints

    ref, _ = finished
    out = _unfinished_copy(ref, tmp_path / "out")
    newest = out / f"checkpoint-{MAX_STEPS}"
    _truncate(newest / "model.safetensors")  # the disk filled during its save
    before = _tree(newest)
    # --save_total_limit=1: the Trainer's rotation runs when checkpoint-4 is saved again, beside the moved-aside one
    proc = run_script("train.py", *_args(data_dir, out, tmp_path / "results", "--resume=true",
                                         "--save_total_limit=1"))
    aside = out / f"unreadable-checkpoint-{MAX_STEPS}"
    assert re.search(rf"checkpoint-{MAX_STEPS}.*model\.safetensors", proc.stdout), proc.stdout
    lines = [line for line in proc.stdout.splitlines() if "model.safetensors" in line and "moved" in line]
    assert len(lines) == 1 and newest.name in lines[0] and str(aside) in lines[0], proc.stdout
    assert lines_naming(proc.stdout, "resume", out / "checkpoint-2"), proc.stdout
    assert "Traceback" not in proc.stderr
    assert _losses(out) == _losses(ref)  # steps 3-4 replayed exactly from checkpoint-2
    assert _tree(aside) == before  # kept byte for byte, through the rotation ...
    assert not (out / "checkpoint-2").exists()  # ... which did run
    assert [step for step, _, _ in checkpoints(out)] == [MAX_STEPS]


def _failing_reads(monkeypatch, victim: Path, err: int = errno.EIO) -> None:
    """Every open of ``victim`` fails with ``err``, as on a network disk having a bad moment."""
    import builtins
    import io

    real_open = io.open

    def failing_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == victim:
            raise OSError(err, os.strerror(err), str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", failing_open)
    monkeypatch.setattr(builtins, "open", failing_open)


def test_an_unreadable_checkpoint_is_moved_aside_byte_for_byte_never_deleted(data_dir, finished, tmp_path,
                                                                             monkeypatch, capsys):
    from medsft.training.run import check_output_dir

    out = _unfinished_copy(finished[0], tmp_path / "out")
    newest = out / f"checkpoint-{MAX_STEPS}"
    before = _tree(newest)
    cfg = _cfg(data_dir, out, tmp_path / "r", RESUME=True)
    with monkeypatch.context() as m:
        _failing_reads(m, newest / "optimizer.pt")  # a transient EIO: the files themselves are fine
        assert check_output_dir(cfg) == out / "checkpoint-2"
    text = capsys.readouterr().out
    aside = out / f"unreadable-checkpoint-{MAX_STEPS}"
    assert not newest.exists() and _tree(aside) == before
    said = lines_naming(text, newest.name, aside)  # the folder, where it went, and why (the file, the OS error)
    assert len(said) == 1 and "optimizer.pt" in said[0] and os.strerror(errno.EIO) in said[0], text

    # damaged again later: the earlier moved-aside folder is never overwritten
    shutil.copytree(out / "checkpoint-2", newest)
    _truncate(newest / "optimizer.pt")
    second = _tree(newest)
    assert check_output_dir(cfg) == out / "checkpoint-2"
    assert _tree(aside) == before and _tree(out / f"unreadable-checkpoint-{MAX_STEPS}.2") == second
    said = lines_naming(capsys.readouterr().out, newest.name, "optimizer.pt", f"unreadable-checkpoint-{MAX_STEPS}.2")
    assert len(said) == 1


def test_saves_the_trainer_never_finished_are_moved_aside_and_need_no_choice(data_dir, finished, tmp_path, capsys):
    """A kill -9 or a full disk during a save leaves a checkpoint without trainer_state.json (written last): resume
    goes on from the one before, or from scratch when it was the first save, keeping the folder (hidden)."""
    from medsft.training.run import check_output_dir

    out = _unfinished_copy(finished[0], tmp_path / "out")
    cfg = _cfg(data_dir, out, tmp_path / "r", RESUME=True)
    for step in (MAX_STEPS, 2):
        (out / f"checkpoint-{step}" / "trainer_state.json").unlink()
    trees = {step: _tree(out / f"checkpoint-{step}") for step in (MAX_STEPS, 2)}
    assert check_output_dir(cfg) is None
    text = capsys.readouterr().out
    # one line each: the folder moved aside, why (no trainer_state.json) and where it went; then the fresh start
    for step in (MAX_STEPS, 2):
        assert len(lines_naming(text, f"checkpoint-{step}", "trainer_state.json",
                                out / f".interrupted-checkpoint-{step}")) == 1, text
    assert len(lines_naming(text, "resume", out)) == 3, text
    for step, tree in trees.items():
        assert _tree(out / f".interrupted-checkpoint-{step}") == tree


def test_transformers_rotation_never_matches_a_moved_aside_checkpoint(tmp_path):
    from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints, sort_checkpoints

    for name in ("checkpoint-2", "checkpoint-4", "unreadable-checkpoint-6", "unreadable-checkpoint-6.2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    for use_mtime in (True, False):
        assert [Path(p).name for p in sort_checkpoints(str(tmp_path), use_mtime=use_mtime)] == \
               ["checkpoint-2", "checkpoint-4"]
    assert Path(get_last_checkpoint(str(tmp_path))).name == "checkpoint-4"
    rotate_checkpoints(str(tmp_path), save_total_limit=1, use_mtime=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "unreadable-checkpoint-6",
                                                          "unreadable-checkpoint-6.2"]


def test_resume_without_a_usable_checkpoint_is_refused_and_changes_nothing(data_dir, finished, tmp_path, capsys):
    from medsft.files import MedsftError
    from medsft.training.run import check_output_dir

    out = _unfinished_copy(finished[0], tmp_path / "out")
    _truncate(out / "checkpoint-2" / "optimizer.pt")
    (out / f"checkpoint-{MAX_STEPS}" / "rng_state.pth").unlink()
    before = _snapshot(out)
    with raises_naming(MedsftError, out, "checkpoint-2", "optimizer.pt", f"checkpoint-{MAX_STEPS}", "rng_state.pth",
                       "--overwrite=true", "--output_dir"):  # each checkpoint and its fault; the ways out
        check_output_dir(_cfg(data_dir, out, tmp_path / "r", RESUME=True))
    assert _snapshot(out) == before  # nothing deleted, nothing moved: the user decides

    empty = tmp_path / "empty"  # no checkpoint at all: --resume=true starts fresh (pipeline.sh's first run)
    empty.mkdir()
    assert check_output_dir(_cfg(data_dir, empty, tmp_path / "r", RESUME=True)) is None
    assert len(lines_naming(capsys.readouterr().out, "resume", empty)) == 1  # the fresh start is said


# --- 8. unwritable folders, too little disk, disk full while saving ------------------------------------------------


@pytest.mark.parametrize("option", ["output_dir", "results_dir"])
def test_unwritable_folder_fails_before_loading(data_dir, tmp_path, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    dirs = {"output_dir": tmp_path / "out", "results_dir": tmp_path / "results"}
    dirs[option] = blocker / "sub"  # root ignores permissions; a file in the path stops anyone
    proc = run_script("train.py", *_args(data_dir, dirs["output_dir"], dirs["results_dir"]), check=False)
    assert_exit(proc, 1, blocker / "sub", f"--{option}")
    assert str(data_dir / "train.jsonl") not in proc.stdout  # nothing tokenized or loaded


def test_too_little_free_disk_fails_before_loading(data_dir, tmp_path, monkeypatch):
    from medsft.files import MedsftError
    from medsft.training import sft

    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10 ** 9, used=10 ** 9, free=1000))
    out = tmp_path / "out"
    with raises_naming(MedsftError, out, "--output_dir"):
        sft.start_run(_cfg(data_dir, out, tmp_path / "results"), kind="full")
    assert not (out / "run_fingerprint.json").exists()


def test_disk_full_while_saving_is_a_clear_error(data_dir, tmp_path, monkeypatch):
    import torch

    from medsft import files as medsft_io
    from medsft.files import DiskWriteError
    from medsft.models import load_tokenizer
    from medsft.training import features, results, run, sft

    tokenizer = load_tokenizer("tiny")
    examples, _ = sft.prepare_examples(data_dir / "train.jsonl", tokenizer, 256)
    out, results_dir = tmp_path / "out", tmp_path / "results"
    cfg = _cfg(data_dir, out, results_dir, SAVE_STEPS=1, MAX_STEPS=1)
    cfg.update(features.resolve_features(cfg, log=False))
    trainer = sft.build_trainer(sft.load_training_model(cfg), tokenizer, examples, None, cfg)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", full)  # the optimizer state of checkpoint-1
        with raises_naming(DiskWriteError, out, "--resume=true") as e:
            run.train(trainer, None, cfg, lora=False)
    assert e.value.errno == errno.ENOSPC  # a full disk, not a refused write

    with monkeypatch.context() as m:
        m.setattr(medsft_io, "_write_durably", full)
        with raises_naming(DiskWriteError, out, "--output_dir") as e:
            run.save_final(trainer, tokenizer, cfg)
        assert e.value.errno == errno.ENOSPC
        summary = {"wall_time_s": 1.0, "train_time_s": 1.0, "tokens_per_s": 1.0, "session_tokens": 1}
        with raises_naming(DiskWriteError, results_dir, "--results_dir"):
            results.write_results(trainer, cfg, "full", summary, {})


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    Exception("No space left on device (os error 28)"),  # safetensors, as raised on a full tmpfs
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 546752 vs 546640"),  # torch.save
])
def test_disk_full_is_recognised_in_the_forms_torch_and_safetensors_raise(tmp_path, monkeypatch, error):
    from medsft import files

    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10 ** 9, used=10 ** 9, free=0))
    with raises_naming(files.DiskWriteError, tmp_path, "--output_dir", "--resume=true") as e:
        with files.disk_errors(tmp_path, "a checkpoint", "output_dir", resume=True):
            raise error
    assert e.value.errno == errno.ENOSPC  # recognised as a full disk, whatever form it came in
    with pytest.raises(RuntimeError, match="something else"):  # other errors pass through untouched
        with files.disk_errors(tmp_path, "a checkpoint", "output_dir"):
            raise RuntimeError("something else")


# --- 10. --overwrite removes the old outputs first; one run per OUTPUT_DIR --------------------------------------------


def test_overwrite_removes_the_previous_outputs_before_training(data_dir, finished, tmp_path):
    from medsft.training import run, sft

    out = _copy_run(finished[0], tmp_path / "out")
    (out / "notes.txt").write_text("the user's own file")
    try:
        assert sft.start_run(_cfg(data_dir, out, tmp_path / "results", OVERWRITE=True), kind="full")[1] is None
    finally:
        run.unlock_output_dir(out)
    # a run killed from here on must not look finished, nor leave the old model for inference to pick up
    assert not run.is_finished(out)
    for name in FINAL_OUTPUTS:
        assert not (out / name).exists(), name
    assert not list(out.glob("checkpoint-*")) and (out / "notes.txt").is_file()


def test_second_run_in_the_same_output_dir_is_refused(data_dir, finished, tmp_path):
    from medsft.training import run

    out = _copy_run(finished[0], tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from medsft.training.run import "
                               "lock_output_dir; lock_output_dir(sys.argv[1]); print('locked', flush=True); "
                               "time.sleep(600)", str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(out)
        proc = run_script("train.py", *_args(data_dir, out, tmp_path / "results", "--overwrite=true"), check=False)
        msg = assert_exit(proc, 1, out / ".lock", "--output_dir")  # the lock file, the way out ...
        assert holder.pid in numbers_in(msg, out / ".lock", out), msg  # ... and the process holding it
        assert {k: v for k, v in _snapshot(out).items() if not k.endswith(".lock")} == \
               {k: v for k, v in before.items() if not k.endswith(".lock")}  # the holder's files untouched
    finally:
        holder.kill()
        holder.wait()
    run.lock_output_dir(out)  # the lock dies with its holder
    run.unlock_output_dir(out)


# --- 12. SwanLab ----------------------------------------------------------------------------------------------------


def _experiments(log_dir: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(log_dir / "runs.swanlab") as db:
        return list(db.execute("select name, status from experiment order by id"))


def test_swanlab_local_marks_interrupts_and_says_what_a_resume_does(data_dir, tmp_path, monkeypatch, capsys):
    from medsft.training.tracking import finish_swanlab, start_swanlab

    log_dir = tmp_path / "swanlog"
    monkeypatch.setenv("SWANLAB_MODE", "local")
    monkeypatch.setenv("SWANLAB_LOG_DIR", str(log_dir))  # swanlab sets it for its dashboard; restored after
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(data_dir, tmp_path / "out", tmp_path / "results", SWANLAB_LOG_DIR=str(log_dir), RUN_NAME="run")
    start_swanlab(cfg, kind="full")
    finish_swanlab(interrupted=True)  # Ctrl-C
    capsys.readouterr()
    start_swanlab({**cfg, "RESUME": True}, kind="full", resume_from=tmp_path / "out" / "checkpoint-2")
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("SwanLab:")]
    finish_swanlab()
    assert len(said) == 1 and "local" in said[0] and str(log_dir) in said[0], said
    (name, status), (resumed_name, resumed_status) = _experiments(log_dir)
    assert (name, status) == ("run", -1)  # shown as stopped, not "Finished"
    assert resumed_name in said[0] and resumed_status == 1


def test_swanlab_cloud_unreachable_says_so_in_one_line(data_dir, tmp_path, monkeypatch, capfd, caplog):
    from medsft.training.tracking import finish_swanlab, start_swanlab

    monkeypatch.delenv("SWANLAB_MODE", raising=False)
    monkeypatch.setenv("SWANLAB_API_KEY", "a-key")  # logged in ...
    monkeypatch.setenv("SWANLAB_API_HOST", "http://127.0.0.1:9")  # ... but nothing answers there
    monkeypatch.setenv("SWANLAB_LOG_DIR", str(tmp_path / "swanlog"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(data_dir, tmp_path / "out", tmp_path / "results", SWANLAB_LOG_DIR=str(tmp_path / "swanlog"))
    t = time.time()
    start_swanlab(cfg, kind="full")
    finish_swanlab()
    assert time.time() - t < 30
    text = "\n".join(capfd.readouterr())
    ours = [line for line in text.splitlines() if line.startswith("SwanLab:")]
    assert len(ours) == 1 and "local" in ours[0] and "127.0.0.1:9" in ours[0], text  # the fallback and the host
    assert str(tmp_path / "swanlog") in ours[0], text
    noise = [r.getMessage() for r in caplog.records if "retry" in r.getMessage().lower()]
    assert not noise and "retry" not in text.lower(), noise or text
