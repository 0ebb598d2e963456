"""A hub model is downloaded once per machine, only what a stage needs, at the revision the script pins; the
revision is recorded beside the results. ModelScope is unreachable from tests: ``hub_standin.HubStandin`` stands in
for snapshot_download and logs what it was asked for (the real download code path runs around it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import ROOT
from hub_standin import HubStandin, network_calls
from oracles import lines_naming, raises_naming
from medsft import models
from medsft.files import MedsftError

SPEC = "FakeOrg/Fake-Model"  # a hub id: no such folder here
TINY_CONFIG = dict(vocab_size=2048, max_position_embeddings=8192, **models.demo_builders().TINY_SIZE)


def _repo(folder: Path, weights: bytes = b"weights of revision 1") -> Path:
    """The files of a fake hub repo: a real (tiny) Qwen3 config.json, so the memory estimate can read it."""
    from transformers import Qwen3Config

    folder.mkdir(parents=True, exist_ok=True)
    Qwen3Config(**TINY_CONFIG).to_json_file(folder / "config.json")
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def _serve(repo: Path, tmp_path: Path, monkeypatch) -> HubStandin:
    """The stand-in as the modelscope module medsft imports (the real one takes seconds to import), reachable."""
    standin = HubStandin(repo, tmp_path / "ms-cache", tmp_path / "calls.jsonl")
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "medsft-cache"))  # its own download lock, per test
    monkeypatch.setitem(sys.modules, "modelscope", types.SimpleNamespace(snapshot_download=standin))
    monkeypatch.setattr(models, "hub_problem", lambda *a, **k: None)
    monkeypatch.setattr(models, "_PINNED", {})  # a test's pin never leaks into the next
    return standin


@pytest.fixture
def hub(tmp_path, monkeypatch):
    return _serve(_repo(tmp_path / "repo"), tmp_path, monkeypatch)


def _snapshot(standin: HubStandin, revision="master") -> Path:
    return standin.cache / SPEC.replace("/", "--") / "snapshots" / revision


def test_a_dry_run_downloads_config_json_only(hub, tmp_path, capsys):
    from medsft.config import script_defaults
    from medsft.training import sft

    cfg = {**script_defaults(ROOT / "train.py"), "MODEL": SPEC, "DRY_RUN": True,
           "OUTPUT_DIR": str(tmp_path / "out"), "RESULTS_DIR": str(tmp_path / "results")}
    with pytest.raises(SystemExit) as done:
        sft.start_run(cfg, kind="full")
    assert done.value.code == 0 and lines_naming(capsys.readouterr().out, "GiB")  # the estimate, from config.json
    calls = network_calls(hub.log)
    assert [c["allow_patterns"] for c in calls] == [["config.json"]], calls
    assert sorted(p.name for p in _snapshot(hub).iterdir()) == ["config.json"]
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_cache_holding_config_json_only_is_not_taken_for_the_model(hub):
    models.pin_revision(SPEC, "v1.0")
    assert models.resolve_model(SPEC, config_only=True) == _snapshot(hub, "v1.0")  # what a dry run leaves
    got = models.resolve_model(SPEC)  # a real run must still download the weights
    calls = network_calls(hub.log)
    assert [(c["revision"], c["allow_patterns"]) for c in calls] == [("v1.0", ["config.json"]), ("v1.0", None)]
    assert (got / "model.safetensors").read_bytes() == b"weights of revision 1"
    assert models.resolve_model(SPEC) == got and len(network_calls(hub.log)) == 2  # now the cache serves it


def test_the_pinned_revision_is_downloaded_and_recorded(hub, tmp_path):
    from medsft.model_checks import weights_fingerprint

    master = models.resolve_model(SPEC)  # unpinned: the hub's current (master)
    assert models.hub_revision(SPEC) == "unpinned:master"
    unpinned = weights_fingerprint(SPEC, None)
    assert unpinned.startswith(f"{SPEC}@unpinned:master#")
    (master / "model.safetensors").write_bytes(b"master moved on")  # no revision fixes an unpinned model's files
    assert weights_fingerprint(SPEC, None) != unpinned
    models.pin_revision(SPEC, "v2")
    v2 = models.resolve_model(SPEC)  # the cached master is not v2
    assert v2 == _snapshot(hub, "v2") and network_calls(hub.log)[-1]["revision"] == "v2"
    assert models.hub_revision(SPEC) == "v2" and weights_fingerprint(SPEC, None) == f"{SPEC}@v2"
    assert models.hub_revision("tiny") is None and models.hub_revision(str(tmp_path)) is None
    with raises_naming(MedsftError, "--model_revision='../../elsewhere'"):
        models.pin_revision(SPEC, "../../elsewhere")


def test_a_legacy_cache_of_another_revision_is_not_used(tmp_path, monkeypatch):
    """modelscope <= 1.37 keeps one folder per model, whatever revision was asked for, and records the one it
    holds in .mv: a pinned revision downloads when that record names another."""
    legacy = _repo(tmp_path / "Qwen3-1___7B")
    (legacy / ".mv").write_text("Revision:master,CreatedAt:1745000000")
    asked = []

    def snapshot_download(spec, revision=None, local_files_only=False, **kw):
        asked.append((revision, local_files_only))
        return str(legacy)

    monkeypatch.setitem(sys.modules, "modelscope", types.SimpleNamespace(snapshot_download=snapshot_download))
    monkeypatch.setattr(models, "hub_problem", lambda *a, **k: None)
    monkeypatch.setattr(models, "_PINNED", {})
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "medsft-cache"))
    assert models.resolve_model(SPEC) == legacy and asked == [(None, True)]
    assert models.hub_revision(SPEC) == "unpinned:master"
    models.pin_revision(SPEC, "v2")
    models.resolve_model(SPEC)
    assert asked[-2:] == [("v2", True), ("v2", False)]


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return models.ensure_builtin("tiny")


def test_predictions_record_the_revision_and_never_resume_into_another(tiny_dir, tmp_path, monkeypatch):
    import runpy

    _serve(tiny_dir, tmp_path, monkeypatch)  # the hub serves the tiny model's files
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": i, "question": q}, ensure_ascii=False) + "\n"
                                 for i, q in enumerate(["头痛怎么办？", "发烧怎么办？"])), encoding="utf-8")
    out = tmp_path / "results" / "predictions_base.jsonl"

    def inference(revision):
        monkeypatch.setattr(sys, "argv", ["inference.py", f"--model_dir={SPEC}", f"--model_revision={revision}",
                                          f"--input={questions}", f"--output={out}", "--max_new_tokens=4",
                                          "--do_sample=false", "--batch_size=2"])
        runpy.run_path(str(ROOT / "inference.py"), run_name="__main__")

    inference("v1")
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["n"] == 2 and summary["model_revision"] == "v1" and summary["weights"] == f"{SPEC}@v1"
    assert json.loads(out.with_suffix(".config.json").read_text())["RESOLVED_REVISION"] == "v1"
    assert [c["revision"] for c in network_calls(tmp_path / "calls.jsonl")] == ["v1"]
    out.write_text(out.read_text().splitlines()[0] + "\n")  # an interrupted file: one row left to predict
    with raises_naming(MedsftError, out, SPEC, "--output"):  # the file, whose predictions it holds, the way out
        inference("v2")


def _standin_env(tmp_path: Path, **extra) -> dict:
    conf = {"repo": str(_repo(tmp_path / "repo")), "cache": str(tmp_path / "ms-cache"),
            "log": str(tmp_path / "calls.jsonl"), **extra}
    return {**os.environ, "HUB_STANDIN": json.dumps(conf), "MEDSFT_CACHE": str(tmp_path / "medsft-cache"),
            "PYTHONPATH": str(ROOT)}


def test_two_processes_download_the_model_once(tmp_path):
    env = _standin_env(tmp_path, delay=2.0)  # a slow download: the second process arrives while it runs
    cmd = [sys.executable, str(ROOT / "tests" / "hub_standin.py"), "--download", SPEC]
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0].splitlines()[-1] == outs[1][0].splitlines()[-1]  # both got the same folder
    calls = network_calls(tmp_path / "calls.jsonl")
    assert len(calls) == 1 and calls[0]["allow_patterns"] is None, calls


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_downloads_once_outside_any_collective(tmp_path):
    """Two processes of one launch, a dry run of a hub id whose download outlasts the process group's timeout
    (shortened to 4 s): the process that waits for it waits on the download lock, not in a collective, so the
    launch succeeds; config.json is downloaded once; the group was started with an explicit timeout."""
    from medsft.training.distributed import PROCESS_GROUP_TIMEOUT

    env = _standin_env(tmp_path, delay=6.0, pg_timeout=4.0, barrier=str(tmp_path / "barrier"), world=2)
    env.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(ROOT / "tests" / "hub_standin.py"), str(ROOT / "train.py"), f"--model={SPEC}",
           "--dry_run=true", f"--output_dir={tmp_path / 'out'}", f"--results_dir={tmp_path / 'results'}"]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert lines_naming(outs[0][0], "ddp", " 2 "), outs[0]  # the estimate per GPU, with ddp on 2 GPUs
    log = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    timeouts = [e["init_process_group_timeout_s"] for e in log if "init_process_group_timeout_s" in e]
    assert timeouts == [PROCESS_GROUP_TIMEOUT.total_seconds()] * 2, log
    calls = network_calls(tmp_path / "calls.jsonl")
    assert [c["allow_patterns"] for c in calls] == [["config.json"]], calls


def test_an_adapter_is_applied_to_the_base_revision_it_was_trained_on(tmp_path):
    import runpy

    trained_revision = runpy.run_path(str(ROOT / "inference_lora.py"))["_trained_revision"]
    adapter = tmp_path / "lora"
    adapter.mkdir()
    assert trained_revision(adapter, SPEC) == ""  # no train_config.json: the hub's current
    (adapter / "train_config.json").write_text(json.dumps({"MODEL": SPEC, "MODEL_REVISION": "v3"}))
    assert trained_revision(adapter, SPEC) == "v3"
    assert trained_revision(adapter, "Other/Base") == ""  # --base_model names another base: not its revision
    (adapter / "train_config.json").write_text("{not json")
    assert trained_revision(adapter, SPEC) == ""
