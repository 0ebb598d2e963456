"""train.py / train_lora.py end to end on CPU with the tiny model, plus the shared pieces in medsft.training."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_script
from oracles import assert_exit, lines_naming, numbers_in, raises_naming

MAX_STEPS = 8
# small, fast runs: 10 rows of ~90 tokens, 4 examples per step, a checkpoint every 2 steps
COMMON = ["--model=tiny", "--max_length=256", "--batch_size=2", "--grad_accum=2", "--logging_steps=1",
          "--eval_steps=4", "--save_steps=2", "--save_total_limit=2", "--preview_questions=2",
          "--preview_max_new_tokens=8", f"--max_steps={MAX_STEPS}"]
FULL_LR, LORA_LR = "--learning_rate=1e-3", "--learning_rate=1e-2"  # large: a few steps must visibly lower the loss
TOPICS = ["高血压", "糖尿病", "感冒", "胃炎", "偏头痛", "哮喘", "贫血", "失眠", "湿疹", "痛风", "肺炎", "关节炎", "鼻炎"]


def _row(i: int, topic: str, think_repeat: int = 1) -> dict:
    return {"id": f"t{i}", "question": f"{topic}有哪些常见症状？应该如何处理？",
            "think": f"用户问的是{topic}的症状和处理。" * think_repeat + "先说典型表现，再给就医建议。",
            "answer": f"{topic}的常见症状因人而异。建议及时就医，遵医嘱治疗，注意休息和饮食。"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """10 short train rows + 1 row far over --max_length=256 (must be skipped), 3 val rows."""
    d = tmp_path_factory.mktemp("data")
    train = [_row(i, t) for i, t in enumerate(TOPICS[:10])] + [_row(99, "肝炎", think_repeat=200)]
    val = [_row(100 + i, t) for i, t in enumerate(TOPICS[10:])]
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        (d / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def _train(script, data_dir, out, results, *extra, check=True):
    return run_script(script, *COMMON, f"--data_dir={data_dir}", f"--output_dir={out}", f"--results_dir={results}",
                      *extra, check=check)


@pytest.fixture(scope="module")
def full_run(data_dir, work):
    out, results = work / "full", work / "results"
    proc = _train("train.py", data_dir, out, results, FULL_LR)
    return out, results, proc


@pytest.fixture(scope="module")
def lora_run(data_dir, work, full_run):  # after full_run: the charts then hold both runs
    out, results = work / "lora", work / "results"
    proc = _train("train_lora.py", data_dir, out, results, LORA_LR)
    return out, results, proc


def _losses(out: Path) -> list[tuple[int, str, float]]:
    """(step, kind, value) of every train/eval loss in a run's final trainer_state.json."""
    state = json.loads((out / "trainer_state.json").read_text())
    return [(e["step"], k, e[k]) for e in state["log_history"] for k in ("loss", "eval_loss") if k in e]


def _train_losses(out: Path) -> list[float]:
    return [v for _, k, v in _losses(out) if k == "loss"]


# --- end to end ---------------------------------------------------------------------------------------------------


def test_full_end_to_end(full_run):
    from medsft.models import base_model_of

    out, results, proc = full_run
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json",
                 "trainer_state.json", "train_config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "train_config.json").read_text())["MODEL"] == "tiny"
    assert base_model_of(out) == "tiny"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template  # the chat template travels with the model
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == MAX_STEPS
    ckpts = sorted(p.name for p in out.glob("checkpoint-*"))
    assert ckpts == [f"checkpoint-{MAX_STEPS - 2}", f"checkpoint-{MAX_STEPS}"]  # SAVE_TOTAL_LIMIT=2 kept

    res = json.loads((results / "train_full.json").read_text())
    assert res["steps"] == MAX_STEPS and res["model"] == "tiny"
    assert res["data"]["train"] == {**res["data"]["train"], "rows": 11, "kept": 10, "skipped_too_long": 1}
    assert res["trained_tokens"] > 0 and res["tokens_per_s"] > 0 and res["wall_time_s"] > 0
    assert res["peak_memory_gib"] > 0
    assert res["features"] == {"PRECISION": "fp32", "ATTN_IMPLEMENTATION": "sdpa", "PADDING_FREE": False,
                               "LOSS": "chunked", "OPTIM": "adamw_torch_fused", "GRADIENT_CHECKPOINTING": True}
    assert res["estimated_peak_gib"] > 0
    losses = [e["loss"] for e in res["log_history"] if "loss" in e]
    assert len(losses) == MAX_STEPS
    assert res["final_train_loss"] == losses[-1]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.5, losses  # overfitting 10 rows: the loss falls
    evals = [e["eval_loss"] for e in res["log_history"] if "eval_loss" in e]
    assert len(evals) == 2 and res["final_eval_loss"] == evals[-1] and evals[-1] < evals[0]
    assert lines_naming(proc.stdout, "CPU", "precision=fp32", "attention=sdpa", "batches=length-grouped padded")
    assert proc.stdout.count("--- preview") == 2
    for chart in ("trainloss.png", "evalloss.png"):
        assert (results / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lora_end_to_end(lora_run):
    from safetensors import safe_open

    from medsft.models import base_model_of

    out, results, proc = lora_run
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()  # only the adapter is saved
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    assert base_model_of(out) == "tiny"
    for name in ("generation_config.json", "tokenizer_config.json", "trainer_state.json", "train_config.json"):
        assert (out / name).is_file(), name
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    res = json.loads((results / "train_lora.json").read_text())
    # exactly the adapter: r * (in + out) per targeted linear layer of the base model, whatever its tokenizer
    # (a share like "< 10%" depends on the vocabulary: the project-built tokenizer's small embedding gives 14%)
    import torch

    from medsft.models import load_model

    adapter = json.loads((out / "adapter_config.json").read_text())
    base = load_model("tiny", device="cpu")
    targets = set(adapter["target_modules"])  # full module paths or bare names, depending on how it was set
    expected = sum(adapter["r"] * (m.in_features + m.out_features) for name, m in base.named_modules()
                   if isinstance(m, torch.nn.Linear) and (name in targets or name.rsplit(".", 1)[-1] in targets))
    assert res["steps"] == MAX_STEPS and res["trainable_params"] == expected > 0
    assert res["total_params"] == sum(p.numel() for p in base.parameters()) + expected
    losses = [e["loss"] for e in res["log_history"] if "loss" in e]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.5, losses
    assert "LoRA r=16" in proc.stdout


def test_charts_hold_every_run_and_are_deterministic(full_run, lora_run, tmp_path):
    from medsft.charts import write_charts

    _, results, _ = lora_run
    both = tmp_path / "both"
    shutil.copytree(results, both)
    write_charts(both)
    first = {p.name: p.read_bytes() for p in both.glob("*.png")}
    assert first == {p.name: p.read_bytes() for p in results.glob("*.png")}  # same results, same PNG bytes
    write_charts(both)
    assert first == {p.name: p.read_bytes() for p in both.glob("*.png")}
    (both / "train_lora.json").unlink()
    write_charts(both)
    for name in ("trainloss.png", "evalloss.png"):  # dropping the LoRA run changes both charts
        assert (both / name).read_bytes() != first[name]


def test_same_seed_same_loss_curve(data_dir, work, lora_run):
    out, results, _ = lora_run
    again = work / "lora-again"
    _train("train_lora.py", data_dir, again, work / "results-again", LORA_LR)
    assert _losses(again) == _losses(out)
    assert len(_losses(out)) == MAX_STEPS + 2


# --- interruption ------------------------------------------------------------------------------------------------


def test_kill9_then_resume_continues_exactly(data_dir, work, full_run):
    from medsft.training.checkpoints import checkpoints

    ref, _, _ = full_run
    out, results = work / "killed", work / "results-killed"
    args = [sys.executable, str(ROOT / "train.py"), *COMMON, f"--data_dir={data_dir}", f"--output_dir={out}",
            f"--results_dir={results}", FULL_LR]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not any(ok and step < MAX_STEPS for step, _, ok in checkpoints(out)):
        assert proc.poll() is None and time.time() < deadline, "run ended before a checkpoint could be caught"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "trainer_state.json").exists()  # it did not finish

    again = _train("train.py", data_dir, out, results, FULL_LR, check=False)
    assert_exit(again, 1, out, "checkpoint-", "--resume=true", "--overwrite=true")  # not "finished": no trainer_state
    assert "trainer_state.json" not in again.stderr

    # resuming with other data (e.g. data.py re-run) or another schedule would mix two runs: refused
    other_data = work / "other-data"
    shutil.copytree(data_dir, other_data)
    with open(other_data / "train.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(_row(50, "新话题"), ensure_ascii=False) + "\n")
    for bad, changed in (([f"--data_dir={other_data}"], "data_sha256"), (["--learning_rate=5e-3"], "LEARNING_RATE")):
        refused = run_script("train.py", *COMMON, f"--data_dir={data_dir}", f"--output_dir={out}",
                             f"--results_dir={results}", FULL_LR, "--resume=true", *bad, check=False)
        assert_exit(refused, 1, out, changed, "--overwrite=true", "--output_dir")  # what changed, and the ways out

    resumed = _train("train.py", data_dir, out, results, FULL_LR, "--resume=true")
    assert lines_naming(resumed.stdout, "resume", out / "checkpoint-"), resumed.stdout
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == list(range(1, MAX_STEPS + 1))  # the history continues: each step logged once
    assert _losses(out) == _losses(ref)  # same data order and schedule as the uninterrupted run


def test_ctrl_c_saves_a_checkpoint(data_dir, work):
    out = work / "ctrl-c"
    args = [sys.executable, str(ROOT / "train_lora.py"), *COMMON, f"--data_dir={data_dir}", f"--output_dir={out}",
            f"--results_dir={work / 'results-ctrl-c'}", "--max_steps=200", "--save_steps=1000"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "'loss'" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(300), "".join(lines)[-3000:]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130, "".join(lines)[-3000:]
    reader.join(10)
    text = "".join(lines)
    ckpts = list(out.glob("checkpoint-*"))
    assert len(ckpts) == 1  # saved on Ctrl-C, long before SAVE_STEPS
    step = json.loads((ckpts[0] / "trainer_state.json").read_text())["global_step"]
    said = lines_naming(text, out, "--resume=true")  # the step, where its checkpoint is, how to continue
    assert len(said) == 1 and step in numbers_in(said[0], out), text[-3000:]
    assert ckpts[0].name == f"checkpoint-{step}" and 0 < step < 200
    assert (ckpts[0] / "adapter_model.safetensors").is_file() and (ckpts[0] / "optimizer.pt").is_file()
    assert not (out / "trainer_state.json").exists()


# --- fail fast ----------------------------------------------------------------------------------------------------


def test_fail_fast_missing_data(work):
    proc = run_script("train.py", f"--data_dir={work / 'nowhere'}", f"--output_dir={work / 'x'}", check=False)
    assert_exit(proc, 1, work / "nowhere" / "train.jsonl", "data.py", "--data_dir")  # the file, what makes it


def test_fail_fast_finished_output_dir(data_dir, full_run, work):
    out, _, _ = full_run
    proc = run_script("train.py", "--model=tiny", f"--data_dir={data_dir}", f"--output_dir={out}",
                      f"--results_dir={work / 'r'}", check=False)
    assert_exit(proc, 1, out, "trainer_state.json", "--resume=true", "--output_dir=", "--overwrite=true")


def test_fail_fast_real_size_model_without_gpu(data_dir, tmp_path):
    import torch
    from transformers import Qwen3Config

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real-size model would be allowed")
    big = tmp_path / "qwen3-1.7b-config-only"  # the real architecture's config, no weights (loading would fail)
    Qwen3Config(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                tie_word_embeddings=True).save_pretrained(big)
    for script in ("train.py", "train_lora.py"):
        t = time.time()
        proc = run_script(script, f"--model={big}", f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'o'}",
                          "--epochs=50", check=False)
        # the model and its size, and the ways out: a tiny model on CPU, or --allow_cpu=true
        msg = assert_exit(proc, 1, big, "CUDA", "--model=tiny", "--allow_cpu=true")
        assert re.search(r"\b1\.\d\dB\b", msg), msg  # about 1.7B parameters
        assert time.time() - t < 60


# --- shared pieces, in process ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from medsft.models import load_tokenizer

    return load_tokenizer("tiny")


def _cfg(tmp_path, **over):
    from medsft.config import script_defaults

    cfg = script_defaults(ROOT / "train_lora.py")
    cfg.update(MODEL="tiny", OUTPUT_DIR=str(tmp_path / "out"), MAX_LENGTH=256, BATCH_SIZE=2, GRAD_ACCUM=1,
               MAX_STEPS=3, LOGGING_STEPS=1, EVAL_STEPS=100, SAVE_STEPS=100, LEARNING_RATE=1e-2, WARMUP=0)
    cfg.update(over)
    return cfg


def test_prepare_examples_masks_prompt_and_skips_long_rows(data_dir, tiny_tokenizer):
    from medsft.training.sft import prepare_examples

    examples, stats = prepare_examples(data_dir / "train.jsonl", tiny_tokenizer, 256)
    assert (stats["rows"], stats["kept"], stats["skipped_too_long"]) == (11, 10, 1)
    for ex in examples:
        assert len(ex["input_ids"]) == len(ex["labels"]) <= 256
        assert ex["labels"][0] == -100 and ex["labels"][-2] == ex["input_ids"][-2]  # prompt masked, answer trained
    assert stats["supervised_tokens"] == sum(sum(t != -100 for t in e["labels"]) for e in examples)


def test_prepare_examples_names_bad_line(tmp_path, tiny_tokenizer):
    from medsft.files import MedsftError
    from medsft.training.sft import prepare_examples

    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps(_row(0, "感冒"), ensure_ascii=False) + "\n" + json.dumps({"question": "q"}) + "\n")
    with raises_naming(MedsftError, f"{p}:2:", "'think'"):
        prepare_examples(p, tiny_tokenizer, 256)


def test_auto_features_on_cpu(tmp_path):
    import torch

    from medsft.files import MedsftError
    from medsft.training.features import resolve_features

    if torch.cuda.is_available():
        pytest.skip("CPU resolution")
    assert resolve_features(_cfg(tmp_path), log=False) == {
        "PRECISION": "fp32", "ATTN_IMPLEMENTATION": "sdpa", "PADDING_FREE": False, "LOSS": "chunked",
        "OPTIM": "adamw_torch_fused"}
    assert resolve_features(_cfg(tmp_path, PADDING_FREE="true"), log=False)["PADDING_FREE"] is True
    with raises_naming(MedsftError, "--precision=fp16", "CUDA", "--precision=fp32"):
        resolve_features(_cfg(tmp_path, PRECISION="fp16"), log=False)
    with raises_naming(MedsftError, "--loss=fused", "auto", "liger", "chunked", "plain"):  # the value, the choices
        resolve_features(_cfg(tmp_path, LOSS="fused"), log=False)
    # full FT with bf16 weights gets stochastic rounding (torchao 8-bit AdamW); LoRA's fp32 adapter does not need it
    assert resolve_features(_cfg(tmp_path, PRECISION="bf16"), lora=True, log=False)["OPTIM"] == "adamw_torch_fused"
    assert resolve_features(_cfg(tmp_path, PRECISION="bf16"), log=False)["OPTIM"] == "adamw_torch_8bit"
    with raises_naming(MedsftError, "--padding_free=maybe", "auto", "true", "false"):
        resolve_features(_cfg(tmp_path, PADDING_FREE="maybe"), log=False)


@pytest.mark.parametrize("precision,lora,expected", [
    ("bf16", False, "bfloat16"),        # the lean default: bf16 weights (updates by stochastic rounding)
    ("bf16", True, "bfloat16"),
    ("bf16-mixed", False, "float32"),   # fp32 master weights under bf16 autocast
    ("bf16-mixed", True, "bfloat16"),   # LoRA: the frozen base can be bf16 anyway
    ("fp32", False, "float32"),
])
def test_weight_dtype_per_precision(tmp_path, monkeypatch, precision, lora, expected):
    from medsft import models
    from medsft.training import features, sft

    seen = {}
    monkeypatch.setattr(features, "resolve_features", lambda cfg, **kw: {
        "PRECISION": precision, "ATTN_IMPLEMENTATION": "sdpa", "PADDING_FREE": False, "LOSS": "chunked",
        "OPTIM": "adamw_torch"})
    monkeypatch.setattr(models, "load_model", lambda spec, dtype=None, **kw: seen.setdefault("dtype", dtype) and
                        type("M", (), {"config": type("C", (), {})()})())
    cfg = _cfg(tmp_path)
    if not lora:
        cfg = {k: v for k, v in cfg.items() if not k.startswith("LORA_")}
    sft.load_training_model(cfg)
    assert str(seen["dtype"]).removeprefix("torch.") == expected


@pytest.mark.parametrize("over,facts", [
    ({"SEED": -1}, ("--seed=-1",)),
    ({"LORA_R": 0}, ("--lora_r=0",)),
    ({"LORA_DROPOUT": 1.5}, ("--lora_dropout=1.5",)),
    ({"ATTN_IMPLEMENTATION": "bogus"}, ("--attn_implementation=bogus", "auto", "sdpa", "eager")),
    ({"ATTN_IMPLEMENTATION": "flash_attention_2"}, ("--attn_implementation=flash_attention_2", "CUDA",
                                                    "--attn_implementation=auto")),
])
def test_bad_settings_fail_in_preflight(data_dir, tmp_path, over, facts):
    from medsft.files import MedsftError
    from medsft.training import sft

    cfg = _cfg(tmp_path, DATA_DIR=str(data_dir), **over)
    with raises_naming(MedsftError, *facts):
        sft.start_run(cfg, kind="lora")


def test_padding_free_batches_give_the_padded_loss(data_dir, tmp_path, tiny_tokenizer):
    import torch

    from medsft.training.sft import build_trainer, load_training_model, prepare_examples

    examples, _ = prepare_examples(data_dir / "train.jsonl", tiny_tokenizer, 256)
    model = load_training_model(_cfg(tmp_path))
    losses, shapes = {}, {}
    for padding_free in (False, True):
        trainer = build_trainer(model, tiny_tokenizer, examples, None, _cfg(tmp_path, PADDING_FREE=padding_free))
        batch = trainer.data_collator(examples[:4])
        shapes[padding_free] = tuple(batch["input_ids"].shape)
        with torch.no_grad():
            losses[padding_free] = model(**batch).loss.item()
    assert shapes[True][0] == 1 and shapes[False][0] == 4  # one flattened row vs four padded rows
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)  # attention stays inside each sample


def test_lora_trains_only_the_adapter(data_dir, tmp_path, tiny_tokenizer):
    import torch

    from medsft.training.sft import add_lora, build_trainer, load_training_model, prepare_examples

    examples, _ = prepare_examples(data_dir / "train.jsonl", tiny_tokenizer, 256)
    cfg = _cfg(tmp_path)
    model = add_lora(load_training_model(cfg), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n in before if "lora_" in n}
    trainer = build_trainer(model, tiny_tokenizer, examples, None, cfg)
    trainer.train()
    after = dict(model.named_parameters())
    base = [n for n in before if "lora_" not in n]
    assert base and all(torch.equal(before[n], after[n]) for n in base)  # base weights bit-identical
    assert all(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)  # the adapter moved


def test_swanlab_mode_resolution(monkeypatch, tmp_path):
    from medsft.training.tracking import swanlab_mode

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.swanlab/.netrc
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    monkeypatch.setenv("SWANLAB_MODE", "disabled")
    assert swanlab_mode()[0] == "disabled"
    monkeypatch.delenv("SWANLAB_MODE")
    assert swanlab_mode()[0] == "local"
    monkeypatch.setenv("SWANLAB_API_KEY", "a-key")
    assert swanlab_mode()[0] == "cloud"


def test_resumed_run_continues_its_swanlab_experiment(tmp_path, monkeypatch):
    from medsft.training.tracking import finish_swanlab, start_swanlab

    monkeypatch.setenv("SWANLAB_MODE", "local")
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tmp_path, SWANLAB_LOG_DIR=str(tmp_path / "swanlog"))
    ids = []
    for resume in (False, True):
        start_swanlab({**cfg, "RESUME": resume}, kind="lora")
        ids.append(json.loads((tmp_path / "out" / "swanlab_run.json").read_text())["id"])
        finish_swanlab()
    assert ids[0] == ids[1]
    start_swanlab({**cfg, "RESUME": False}, kind="lora")  # a fresh run is a new experiment
    finish_swanlab()
    assert json.loads((tmp_path / "out" / "swanlab_run.json").read_text())["id"] != ids[0]


@pytest.mark.parametrize("padding_free", [False, True])
def test_eval_loss_is_the_token_mean_over_the_eval_set_whatever_the_batch(data_dir, tmp_path, tiny_tokenizer,
                                                                           padding_free):
    """The Trainer's own eval loss is a mean of per-batch means, so it moved with the eval batch size and, under
    several processes, with the duplicates that pad the last batch (issue 12: 2 processes != 1 process). It must be
    the mean over every target token of the eval set, as the train loss is over an optimizer step."""
    import torch

    from medsft.training.sft import build_trainer, load_training_model, prepare_examples

    examples, _ = prepare_examples(data_dir / "train.jsonl", tiny_tokenizer, 256)
    examples = examples[:5]  # unequal lengths; 5 leaves a part batch for sizes 2 and 3
    assert len({sum(t != -100 for t in e["labels"]) for e in examples}) > 1
    model = load_training_model(_cfg(tmp_path))
    total = count = 0.0
    with torch.no_grad():  # the definition, one example at a time
        for e in examples:
            n = sum(t != -100 for t in e["labels"][1:])
            total += model(**{k: torch.tensor([v]) for k, v in e.items()}).loss.item() * n
            count += n
    for batch in (1, 2, 3):
        trainer = build_trainer(model, tiny_tokenizer, examples, examples,
                                _cfg(tmp_path, BATCH_SIZE=batch, PADDING_FREE=padding_free))
        assert trainer.evaluate()["eval_loss"] == pytest.approx(total / count, rel=1e-5), batch
