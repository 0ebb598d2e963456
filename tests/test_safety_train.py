"""Issue 34, training side: resume never starts over silently (3), a run knows its weights (4), no symlink followed
at OUTPUT_DIR's fixed names (6), a live writer's publish is never rolled back (12). No model is trained here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT
from oracles import CountingFile, assert_names, lines_naming, numbers_in, raises_naming

from medsft.files import MedsftError


def _cfg(out, **over):
    from medsft.config import script_defaults

    cfg = script_defaults(ROOT / "train.py")
    cfg.update(MODEL="tiny", DATA_DIR=str(out.parent / "data"), OUTPUT_DIR=str(out), RESULTS_DIR=str(out.parent / "r"))
    cfg.update(over)
    return cfg


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _checkpoint(out: Path, step: int, trainer_state: str | None) -> Path:
    ck = out / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"\0" * 64)
    if trainer_state is not None:
        (ck / "trainer_state.json").write_text(trainer_state, encoding="utf-8")
    return ck


# --- 3. resume never starts over silently ---------------------------------------------------------------------------


def test_resume_refuses_when_every_trainer_state_is_empty_or_not_json(tmp_path, capsys):
    from medsft.training.run import check_output_dir

    out = tmp_path / "out"
    _checkpoint(out, 2, "")  # what a host crash leaves: the file exists, its bytes never reached the disk
    newest = _checkpoint(out, 4, '{"global_step": 4, "log_hi')
    hidden = out / ".interrupted-checkpoint-6"  # moved aside by an earlier resume: invisible to ls
    hidden.mkdir()
    (hidden / "optimizer.pt").write_bytes(b"\0" * (3 * 2 ** 20))
    before = _snapshot(out)
    with pytest.raises(MedsftError) as e:
        check_output_dir(_cfg(out, RESUME=True))
    text = str(e.value)
    assert "checkpoint-2" in text and "checkpoint-4" in text and "trainer_state.json" in text, text
    assert "--overwrite=true" in text and str(newest) in text, text  # the choices: start over, or inspect the newest
    assert str(hidden) in text and "3.0 MiB" in text, text  # hidden folders and what they cost
    assert_names(text, out)
    assert _snapshot(out) == before  # nothing moved, nothing deleted
    assert not lines_naming(capsys.readouterr().out, "resume", out)  # no fresh start announced either


def test_a_null_trainer_state_is_not_a_whole_checkpoint(tmp_path):
    from medsft.training.checkpoints import checkpoint_problem, checkpoints

    ck = _checkpoint(tmp_path, 2, "null")
    assert checkpoints(tmp_path) == [(2, ck, False)]
    why = checkpoint_problem(ck)
    assert why is not None and "trainer_state.json" in why
    with pytest.raises(MedsftError):  # and resume refuses rather than starting over
        from medsft.training.run import check_output_dir
        check_output_dir(_cfg(tmp_path, RESUME=True))


def test_a_missing_trainer_state_still_means_an_interrupted_first_save(tmp_path, capsys):
    from medsft.training.run import check_output_dir

    out = tmp_path / "out"
    _checkpoint(out, 2, None)  # kill -9 before the Trainer wrote its last file
    assert check_output_dir(_cfg(out, RESUME=True)) is None
    assert (out / ".interrupted-checkpoint-2").is_dir()
    said = capsys.readouterr().out  # where the save went, then the fresh start, each said once
    assert len(lines_naming(said, "checkpoint-2", "trainer_state.json", out / ".interrupted-checkpoint-2")) == 1, said
    assert len(lines_naming(said, "resume", out)) == 2, said


# --- 4. a run knows its weights -------------------------------------------------------------------------------------


def _model_dir(d: Path, value: float) -> Path:
    import torch
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text('{"model_type": "qwen3"}', encoding="utf-8")
    save_file({"w": torch.full((64, 64), value), "b": torch.full((64,), value)}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    return d


def _data(out: Path) -> None:
    data = out.parent / "data"
    data.mkdir(exist_ok=True)
    for name in ("train.jsonl", "val.jsonl"):
        (data / name).write_text('{"question": "q", "think": "t", "answer": "a"}\n', encoding="utf-8")


def _fingerprint(cfg: dict) -> dict:
    from medsft.config import Config
    from medsft.training.sft import run_fingerprint

    return run_fingerprint(Config(cfg), Path(cfg["MODEL"]))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-base"])
def test_resume_is_refused_when_the_weights_were_retrained_in_place(tmp_path, lora):
    from medsft.training.run import check_same_run

    base = _model_dir(tmp_path / "base", 1.0)
    out = tmp_path / "out"
    _data(out)
    over = dict(MODEL=str(base), LORA_R=8) if lora else dict(MODEL=str(base))
    fp = _fingerprint(_cfg(out, **over))
    assert fp.get("weights_sha256")
    check_same_run(_cfg(out, **over), None, fp)  # the run starts: its fingerprint is recorded
    _model_dir(base, 2.0)  # the base folder retrained in place: same names, sizes and header
    with raises_naming(MedsftError, out, "weights_sha256", "--overwrite=true", "--output_dir"):
        check_same_run(_cfg(out, RESUME=True, **over), out / "checkpoint-2", _fingerprint(_cfg(out, **over)))


def test_the_weights_identity_is_cheap_and_survives_a_copy(tmp_path, monkeypatch):
    import shutil

    from medsft.model_checks import weights_identity

    a = _model_dir(tmp_path / "a", 1.0)
    big = a / "model-00002-of-00002.safetensors"  # 48 MiB of tensor data: it must not be read whole
    header = json.dumps({"x": {"dtype": "U8", "shape": [48 * 2 ** 20], "data_offsets": [0, 48 * 2 ** 20]}}).encode()
    with open(big, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + 48 * 2 ** 20)
    copy = tmp_path / "b"
    shutil.copytree(a, copy)  # new mtimes, same bytes: the same weights
    read, real_open = [], open
    monkeypatch.setattr("builtins.open", lambda *a, **k: CountingFile(real_open(*a, **k), read))
    ident = weights_identity(a)
    assert sum(read) < 8 * 2 ** 20, sum(read)
    monkeypatch.undo()
    assert weights_identity(copy) == ident
    (copy / "model.safetensors.index.json").write_text('{"weight_map": {}}', encoding="utf-8")
    assert weights_identity(copy) != ident


def test_an_old_fingerprint_without_weights_still_resumes(tmp_path):
    from medsft.training.run import check_same_run

    base = _model_dir(tmp_path / "base", 1.0)
    out = tmp_path / "out"
    _data(out)
    fp = _fingerprint(_cfg(out, MODEL=str(base)))
    old = {k: v for k, v in fp.items() if k != "weights_sha256"}  # written before weights were fingerprinted
    out.mkdir()
    (out / "run_fingerprint.json").write_text(json.dumps(old), encoding="utf-8")
    check_same_run(_cfg(out, MODEL=str(base), RESUME=True), out / "checkpoint-2", fp)
    assert json.loads((out / "run_fingerprint.json").read_text())["weights_sha256"] == fp["weights_sha256"]


# --- 6. no symlink followed at a fixed name -------------------------------------------------------------------------


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(tmp_path):
    from medsft.training.run import LOCK_NAME, lock_output_dir

    victim = tmp_path / "precious.txt"
    victim.write_text("the user's notes\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    code = ("import sys; from medsft.training.run import lock_output_dir; from medsft.files import MedsftError\n"
            f"try:\n    lock_output_dir({str(out)!r})\nexcept MedsftError as e:\n    print('error:', e); sys.exit(1)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert victim.read_text(encoding="utf-8") == "the user's notes\n"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    # the link, where it points, the command that removes it, and the way round it
    assert_names(proc.stdout, out / LOCK_NAME, victim, f"rm {out / LOCK_NAME}", "--output_dir")


def test_final_save_temp_names_follow_no_symlink(tmp_path):
    from medsft.training import run as finish

    victim = tmp_path / "precious.json"
    victim.write_text("keep", encoding="utf-8")
    out = tmp_path / "out"
    stage = out / finish.STAGING
    stage.mkdir(parents=True)
    (out / ".trainer_state.json.tmp").symlink_to(victim)

    class State:
        def save_to_json(self, path):
            Path(path).write_text('{"global_step": 1}\n', encoding="utf-8")

    finish._publish(SimpleNamespace(state=State()), {"MODEL": "tiny"}, stage, out)
    assert victim.read_text(encoding="utf-8") == "keep"
    assert json.loads((out / "trainer_state.json").read_text()) == {"global_step": 1}

    (out / finish.STAGING).symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "mine.txt").write_text("mine", encoding="utf-8")
    with raises_naming(MedsftError, out / finish.STAGING, tmp_path / "elsewhere", f"rm {out / finish.STAGING}",
                       "--resume=true"):  # the link, its target, the command that removes it, how to go on
        finish._fresh_folder(out / finish.STAGING)
    assert (tmp_path / "elsewhere" / "mine.txt").read_text(encoding="utf-8") == "mine"


# --- 12. publish_files never rolls back a live writer's publish -----------------------------------------------------


def test_publish_files_leaves_a_live_writers_publish_alone(tmp_path):
    from medsft.files import publish_files

    d = tmp_path / "data"
    d.mkdir()
    (d / "train.jsonl").write_text("new-by-the-other-writer\n", encoding="utf-8")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stage = d / f".publish-{sleeper.pid}-abcd1234"  # the other writer, mid-publish: its manifest written
        (stage / "old").mkdir(parents=True)
        (stage / "new").mkdir()
        (stage / "old" / "train.jsonl").write_text("old\n", encoding="utf-8")
        (stage / "manifest.json").write_text(json.dumps({"writer": "data.py", "files": ["train.jsonl"],
                                                         "had_old": ["train.jsonl"]}), encoding="utf-8")
        with raises_naming(MedsftError, d, "data.py", stage.name) as e:  # the folder, its writer and stage ...
            publish_files(d, {"train.jsonl": b"mine\n"}, "data.py")
        assert sleeper.pid in numbers_in(e.value, stage.name, d), e.value  # ... and the writer's process
        assert (d / "train.jsonl").read_text(encoding="utf-8") == "new-by-the-other-writer\n"
        assert stage.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    publish_files(d, {"train.jsonl": b"mine\n"}, "data.py")  # the writer died: its publish is rolled back first
    assert (d / "train.jsonl").read_bytes() == b"mine\n" and not stage.exists()


def test_weights_sha256_folds_in_an_adapter_a_run_starts_from(tmp_path):
    from medsft.training.run import weights_sha256

    base = _model_dir(tmp_path / "base", 1.0)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}" + b"a" * 64)
    first = weights_sha256(base, adapter)
    assert first != weights_sha256(base)
    (adapter / "adapter_model.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}" + b"b" * 64)  # retrained adapter
    assert weights_sha256(base, adapter) != first


def test_every_constant_but_the_bookkeeping_ones_is_in_the_fingerprint():
    """A new training constant needs no edit outside the scripts that use it: it is fingerprinted by default, so a
    resume with another value is refused; where outputs go and how often to log never are."""
    from medsft.config import Config, script_defaults
    from medsft.training.run import fingerprint

    for script in ("train.py", "train_lora.py", "train_grpo.py"):
        cfg = Config({**script_defaults(ROOT / script), "NEW_TRAINING_KNOB": 0.5})
        fp = fingerprint(cfg, {"data_sha256": "d"})
        assert fp["NEW_TRAINING_KNOB"] == 0.5 and fp["SEED"] == cfg.seed and fp["data_sha256"] == "d", script
        for name in ("OUTPUT_DIR", "RESULTS_DIR", "RESUME", "OVERWRITE", "SAVE_STEPS", "LOGGING_STEPS", "RUN_NAME"):
            assert name not in fp, (script, name)
        assert fingerprint(cfg.replace(OUTPUT_DIR="elsewhere", SAVE_STEPS=7), {"data_sha256": "d"}) == fp
        assert fingerprint(cfg.replace(NEW_TRAINING_KNOB=0.6), {"data_sha256": "d"}) != fp
