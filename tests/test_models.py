"""Model specs: tiny is deterministic and reloads identically; hub ids and bad dirs fail fast and clearly."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from oracles import raises_naming
from medsft import models
from medsft.files import MedsftError


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_is_created_once_and_reloads_identically(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "a"))
    d1 = models.resolve_model("tiny")
    assert models.resolve_model("tiny") == d1  # second call reuses it
    m1 = models.load_model("tiny", device="cpu")
    assert type(m1).__name__ == "Qwen3ForCausalLM"
    # an independent cache gets byte-identical weights: every stage sees the same tiny model
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "b"))
    d2 = models.resolve_model("tiny")
    assert d2 != d1 and sha(d1 / "model.safetensors") == sha(d2 / "model.safetensors")
    m2 = models.load_model(d2, device="cpu")
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


_LAUNCHED_BUILD = """import sys, time
import torch.distributed as dist
dist.init_process_group("gloo")
from medsft import models
if dist.get_rank() == 0:
    time.sleep(3)  # the other process reaches the empty cache first
out = models.resolve_model(sys.argv[1])
print(f"rank {dist.get_rank()}: {sorted(p.name for p in out.iterdir())}", flush=True)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.parametrize("spec", ["tiny", "small"])
def test_a_launch_on_an_empty_cache_builds_the_whole_model(root, tmp_path, spec):
    """Under torchrun transformers writes weights on rank 0 only: the cached model is whole whichever process
    reaches the empty cache first."""
    import os
    import subprocess
    import sys

    script = tmp_path / "build.py"
    script.write_text(_LAUNCHED_BUILD)
    env = {**os.environ, "MEDSFT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), spec], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for r in (0, 1):
        assert proc.stdout.count(f"rank {r}: ") == 1 and "model.safetensors" in proc.stdout.split(f"rank {r}: ")[1]
    (built,) = (tmp_path / "cache").glob(f"{spec}-qwen3-*")
    assert (built / "model.safetensors").is_file() and (built / "config.json").is_file()
    assert not list((tmp_path / "cache").glob(".*"))  # no half-built folder left behind


def test_a_cached_model_folder_without_weights_is_one_clear_error(monkeypatch, tmp_path):
    import shutil

    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "a"))
    whole = models.resolve_model("tiny")
    broken = tmp_path / "b" / whole.name  # what an older medsft could leave under torchrun
    shutil.copytree(whole, broken, ignore=shutil.ignore_patterns("model.safetensors"))
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "b"))
    with raises_naming(MedsftError, broken, "model.safetensors", f"rm -r {broken}"):  # folder, file missing, fix
        models.resolve_model("tiny")
    kept = sorted(p.name for p in whole.iterdir() if p.suffix != ".safetensors")
    assert sorted(p.name for p in broken.iterdir()) == kept  # nothing removed on a guess


def test_tiny_forward_pass_and_tokenizer():
    tok = models.load_tokenizer("tiny")
    model = models.load_model("tiny", device="cpu")
    ids = tok("头痛怎么办？", return_tensors="pt")["input_ids"]
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert len(tok) <= model.config.vocab_size and torch.isfinite(out.loss)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    gc = model.generation_config
    assert tok.convert_tokens_to_ids("<|im_end|>") in gc.eos_token_id


def test_tiny_uses_medsft_tokenizer(monkeypatch, tmp_path, real_tokenizer_dir):
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path))
    monkeypatch.setenv("MEDSFT_TOKENIZER", str(real_tokenizer_dir))
    assert len(models.load_tokenizer("tiny")) == 151669


def test_tiny_without_env_builds_project_tokenizer(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path))
    monkeypatch.delenv("MEDSFT_TOKENIZER", raising=False)
    tok = models.load_tokenizer("tiny")
    assert len(tok) < 5000 and tok.chat_template and tok.convert_tokens_to_ids("<think>") != tok.unk_token_id


def test_bad_medsft_tokenizer_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSFT_TOKENIZER", str(tmp_path))
    with raises_naming(MedsftError, f"MEDSFT_TOKENIZER={tmp_path}", "tokenizer_config.json"):
        models.resolve_model("tiny")


def test_hub_id_offline_fails_fast_with_local_hint(monkeypatch):
    monkeypatch.setattr(models, "hub_problem", lambda *a, **k: "offline")
    with raises_naming(MedsftError, "'Qwen/Qwen3-1.7B'", "offline", "--model=/path/to"):  # the id, why, the fix
        models.resolve_model("Qwen/Qwen3-1.7B")


def test_dir_without_config_and_missing_path(tmp_path):
    with raises_naming(MedsftError, tmp_path, "config.json"):  # the folder, and the file a model folder has
        models.resolve_model(str(tmp_path))
    with raises_naming(MedsftError, f"'{tmp_path / 'nope' / 'deeper'}'"):
        models.resolve_model(str(tmp_path / "nope" / "deeper"))


def test_base_model_of(tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny"}')
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "train_config.json").write_text('{"MODEL": "Qwen/Qwen3-1.7B"}')
    assert models.base_model_of(tmp_path / "lora") == "tiny"
    assert models.base_model_of(tmp_path / "full") == "Qwen/Qwen3-1.7B"
    assert models.base_model_of(tmp_path) is None


def test_a_cache_folder_without_the_whole_model_is_not_a_model(tmp_path, monkeypatch):
    """modelscope returns the cache folder of a download that failed (only its .mdl marker), or of a dry run
    (config.json alone): neither is a model to train or load."""
    import modelscope

    from medsft import models
    from medsft.files import MedsftError

    (tmp_path / ".mdl").write_text("x")
    monkeypatch.setattr(modelscope, "snapshot_download", lambda spec, **kw: str(tmp_path))
    monkeypatch.setattr(models, "hub_problem", lambda *a, **k: "offline")
    with raises_naming(MedsftError, "'Qwen/Qwen3-1.7B'", "--model=/path/to"):
        models.download("Qwen/Qwen3-1.7B")
    (tmp_path / "config.json").write_text("{}")
    with raises_naming(MedsftError, "'Qwen/Qwen3-1.7B'", "--model=/path/to"):
        models.download("Qwen/Qwen3-1.7B")
    assert models.download("Qwen/Qwen3-1.7B", config_only=True) == tmp_path  # enough for the memory estimate
    (tmp_path / "tokenizer_config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x")
    with raises_naming(MedsftError, "'Qwen/Qwen3-1.7B'"):  # a download cut off between its shards
        models.download("Qwen/Qwen3-1.7B")
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert models.download("Qwen/Qwen3-1.7B") == tmp_path


def test_the_installed_modelscope_takes_the_arguments_medsft_passes():
    """What download() asks snapshot_download for, bound to the real signature (CI runs this on the floor 1.35 too):
    an unknown keyword would be a TypeError there, after the user waited for the checks."""
    import inspect

    import modelscope

    sig = inspect.signature(modelscope.snapshot_download)
    sig.bind("Qwen/Qwen3-1.7B", revision=None, local_files_only=True)
    sig.bind("Qwen/Qwen3-1.7B", revision="v1.0", allow_patterns=list(models.CONFIG_ONLY))
    sig.bind("Qwen/Qwen3-1.7B", revision="v1.0")


def test_a_snapshot_the_real_modelscope_cached_is_found_offline_at_its_revision(tmp_path, monkeypatch):
    """The cache as the installed modelscope lays it out (>= 1.38: snapshots/<revision>/; the floor 1.35: one folder
    per model, its revision in .mv): a pinned revision is served offline, another one is not taken for it."""
    from packaging.version import Version

    from modelscope.version import __version__

    from medsft.files import MedsftError

    spec = "FakeOrg/Fake-Model"
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "medsft"))
    monkeypatch.setattr(models, "hub_problem", lambda *a, **k: "offline")
    monkeypatch.setattr(models, "_PINNED", {})
    files = {"config.json": b"{}", "tokenizer_config.json": b"{}", "model.safetensors": b"x"}
    if Version(__version__) >= Version("1.38"):
        from modelscope_hub.config import get_default_config

        monkeypatch.setattr("modelscope_hub.config._default_config", None)  # built once per process: read the env anew
        assert get_default_config().cache_dir == tmp_path / "ms"
        snap = tmp_path / "ms" / "models" / "FakeOrg--Fake-Model" / "snapshots" / "v2"
        snap.mkdir(parents=True)
        for name, data in files.items():
            (snap / name).write_bytes(data)
    else:  # written by modelscope's own cache class, as its snapshot_download does
        from modelscope.hub.utils.caching import ModelFileSystemCache
        from modelscope.utils.file_utils import get_model_cache_root

        cache = ModelFileSystemCache(get_model_cache_root(), "FakeOrg", "Fake-Model")
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
            cache.put_file({"Path": name, "Revision": "0123abc"}, str(tmp_path / name))
        cache.save_model_version({"Revision": "v2", "CreatedAt": 1745000000})
        snap = Path(cache.get_root_location())
    models.pin_revision(spec, "v2")
    assert models.download(spec) == snap and models.hub_revision(spec) == "v2"
    models.pin_revision(spec, "")
    assert models.hub_revision(spec) == "unpinned:v2"
    models.pin_revision(spec, "v3")
    with raises_naming(MedsftError, "'FakeOrg/Fake-Model'", "v3"):  # the id and the revision pinned
        models.download(spec)


def test_a_lora_adapter_config_is_the_same_bytes_in_every_process(tmp_path):
    """peft writes the resolved all-linear targets with list(set): their order followed PYTHONHASHSEED, so the
    same seed gave a different adapter_config.json in each run (bench/compare_runs.py found it). Sorted, it cannot."""
    from medsft.training.sft import add_lora

    model = add_lora(models.load_model("tiny"), {"LORA_R": 4, "LORA_ALPHA": 8, "LORA_DROPOUT": 0.0,
                                                 "LORA_TARGET_MODULES": "all-linear", "SEED": 0})
    model.save_pretrained(tmp_path)
    targets = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert len(targets) > 2 and targets == sorted(targets)
