"""Several processes on CPU (gloo), launched as a user would (torchrun): DDP and DeepSpeed ZeRO-3 train exactly what one
process trains with the same examples per step, rank 0 alone writes, kill -9 of the launcher then --resume continues;
QLoRA (bitsandbytes NF4) where bitsandbytes runs; the per-GPU estimates of the bigger Qwen3 models.

Each run is shared by the assertions that need it (module-scoped fixtures): tiny model, 8 rows, 4 steps of 4 examples.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import shutil
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, run_script
from oracles import assert_exit, lines_naming, numbers_in, raises_naming

TOL = 1e-4  # the bar for "equal" loss histories (measured: ~2e-6)
MAX_STEPS = 4
# 8 rows, 4 examples per optimizer step: one process x batch 2 x accumulation 2, or two processes x batch 1 with
# --global_batch=4 (accumulation 2 derived)
COMMON = ["--model=tiny", "--max_length=256", "--logging_steps=1", "--eval_steps=2", "--save_steps=2",
          "--save_total_limit=2", "--preview_questions=1", "--preview_max_new_tokens=4", f"--max_steps={MAX_STEPS}"]
ONE = ["--batch_size=2", "--grad_accum=2"]
TWO = ["--batch_size=1", "--global_batch=4"]
# dropout masks are drawn per process: with the adapter's dropout no two layouts could match
LR = {"train.py": ["--learning_rate=1e-3"], "train_lora.py": ["--learning_rate=1e-2", "--lora_dropout=0"]}
TOPICS = ["高血压", "糖尿病", "感冒", "胃炎", "偏头痛", "哮喘", "贫血", "失眠", "湿疹", "痛风", "肺炎"]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed (optional: pip install -r "
                                                              "requirements-scale.txt, see docs/scale.md)")


def _row(i: int, topic: str, repeat: int) -> dict:
    return {"id": f"d{i}", "question": f"{topic}有哪些常见症状？应该如何处理？",
            "think": f"用户问的是{topic}的症状和处理。" * repeat + "先说典型表现，再给就医建议。",
            "answer": f"{topic}的常见症状因人而异。建议及时就医，遵医嘱治疗。"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    train = [_row(i, t, 1 + i % 3) for i, t in enumerate(TOPICS[:8])]  # unequal lengths: padding is exercised
    val = [_row(100 + i, t, 1) for i, t in enumerate(TOPICS[8:])]
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        (d / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return d


def _args(script, data_dir, work: Path, name: str, layout, *extra) -> list[str]:
    return [*COMMON, *LR[script], *layout, f"--data_dir={data_dir}", f"--output_dir={work / name}",
            f"--results_dir={work / (name + '-results')}", *extra]


def _launch(script: str, args: list[str], cwd: Path, env=None) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / script),
            *args]


EXIT_CHECK = ROOT / "tests" / "exit_check"  # its sitecustomize.py reports a process group ended badly


def _torchrun(script, args, cwd: Path, env=None, check=True):
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
        p for p in (str(EXIT_CHECK), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(_launch(script, args, cwd), cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=600)
    if check and (proc.returncode or "EXIT-CHECK" in proc.stderr):
        raise AssertionError(f"torchrun {script} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


def _losses(out: Path) -> list[tuple[int, str, float]]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [(e["step"], k, e[k]) for e in state["log_history"] for k in ("loss", "eval_loss") if k in e]


def _assert_same_losses(run: Path, ref: Path) -> None:
    got, want = _losses(run), _losses(ref)
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in want]
    assert len(want) == MAX_STEPS + 2  # every step's train loss and two evals
    worst = max(abs(a - b) for (_, _, a), (_, _, b) in zip(got, want))
    assert worst <= TOL, (worst, got, want)


def _generates(model_dir: Path, adapter=False) -> None:
    """The saved model loads with transformers (and peft) as later stages load it, and generates."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medsft.models import load_model

    tok = AutoTokenizer.from_pretrained(model_dir)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model("tiny", device="cpu"), str(model_dir))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok("高血压", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 4


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def one_full(data_dir, work):
    run_script("train.py", *_args("train.py", data_dir, work, "one-full", ONE), cwd=work)
    return work / "one-full"


@pytest.fixture(scope="module")
def one_lora(data_dir, work):
    run_script("train_lora.py", *_args("train_lora.py", data_dir, work, "one-lora", ONE), cwd=work)
    return work / "one-lora"


@pytest.fixture(scope="module")
def ddp_lora(data_dir, work, one_lora):
    """Two processes, SwanLab in local mode (a real experiment database), run where swanlog/ is written, with
    --overwrite=true over a copy of the one-process run (both processes used to delete its checkpoints, and one
    crashed on the folders the other had just removed)."""
    cwd, out = work / "ddp-lora-cwd", work / "ddp-lora"
    cwd.mkdir()
    shutil.copytree(one_lora, out)
    proc = _torchrun("train_lora.py", _args("train_lora.py", data_dir, work, "ddp-lora", TWO, "--overwrite=true"), cwd,
                     env={"SWANLAB_MODE": "local"})
    return out, cwd, proc


# --- DDP ------------------------------------------------------------------------------------------------------------


def test_ddp_lora_equals_one_process_and_rank0_alone_writes(ddp_lora, one_lora, work):
    out, cwd, proc = ddp_lora
    _assert_same_losses(out, one_lora)
    results = work / "ddp-lora-results"
    assert sorted(p.name for p in results.iterdir()) == ["evalloss.png", "train_lora.json", "trainloss.png"]
    res = json.loads((results / "train_lora.json").read_text())
    assert (res["world_size"], res["engine"], res["grad_accum"], res["examples_per_step"]) == (2, "ddp", 2, 4)
    assert res["features"]["LOSS"] == "chunked"  # the CPU default goes through the DDP wrapper's forward
    with sqlite3.connect(cwd / "swanlog" / "runs.swanlab") as db:  # one experiment, not one per process
        assert [r[0] for r in db.execute("select status from experiment")] == [1]
    assert json.loads((out / "swanlab_run.json").read_text())["id"]
    # rank 0 speaks for the run: one estimate, one deletion, one preview, one list of written files
    assert proc.stdout.count("overwrite: deleted the previous run") == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in (MAX_STEPS - 2, MAX_STEPS)]
    for line in ("estimated peak", "--- preview 1/1", "wrote:", "examples per optimizer step: 4 (BATCH_SIZE 1 x "
                                                              "GRAD_ACCUM 2 x 2 process(es), engine ddp)"):
        assert proc.stdout.count(line) == 1, (line, proc.stdout[-3000:])
    _generates(out, adapter=True)


def test_kill9_of_the_launcher_then_resume_continues_exactly(data_dir, work, one_full):
    """Full fine-tuning on 2 processes: kill -9 of torchrun takes its workers with it (none trains on as an orphan
    holding OUTPUT_DIR); --resume=true on 2 processes continues, and the whole history equals one process's."""
    from medsft.training.checkpoints import checkpoints

    out = work / "ddp-full"
    args = _args("train.py", data_dir, work, "ddp-full", TWO)
    launcher = subprocess.Popen(_launch("train.py", args, work), cwd=work, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not any(ok and step < MAX_STEPS for step, _, ok in checkpoints(out)):
        assert launcher.poll() is None and time.time() < deadline, "run ended before a checkpoint could be caught"
        time.sleep(0.02)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    with open(out / ".lock", "rb") as lock:  # the workers held it: free once they are gone
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.time() < deadline, "the workers outlived their launcher"
                time.sleep(0.1)
    assert not (out / "trainer_state.json").exists()

    resumed = _torchrun("train.py", [*args, "--resume=true"], work)
    assert resumed.stdout.count("resume: continuing from") == 1
    _assert_same_losses(out, one_full)
    res = json.loads((work / "ddp-full-results" / "train_full.json").read_text())
    assert (res["world_size"], res["examples_per_step"], res["features"]["LOSS"]) == (2, 4, "chunked")
    _generates(out)
    # the same command once more: every process learns the run is finished, says so once, ends its group, exits 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _torchrun("train.py", args, work)
    assert again.stdout.count("already holds this finished run") == 1, again.stdout[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_launch_that_is_not_one_run_is_refused(data_dir, work):
    """WORLD_SIZE without a launcher's rendezvous would be N independent trainings: refused, with the fix."""
    proc_env = {k: v for k, v in os.environ.items() if k != "MASTER_ADDR"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *_args("train.py", data_dir, work, "fake", ONE)],
                          cwd=work, env={**proc_env, "WORLD_SIZE": "2", "RANK": "0"}, capture_output=True, text=True,
                          timeout=300)
    assert_exit(proc, 1, "WORLD_SIZE=2", "MASTER_ADDR", "torchrun")  # what is set, what is missing, the launcher
    assert not (work / "fake").exists()


# --- DeepSpeed ZeRO-3 -----------------------------------------------------------------------------------------------


@needs_deepspeed
@pytest.mark.parametrize("script", ["train.py", "train_lora.py"])
def test_zero3_equals_one_process_and_saves_a_loadable_model(script, data_dir, work, one_full, one_lora):
    name = f"zero3-{script[:-3]}"
    _torchrun(script, _args(script, data_dir, work, name, TWO, "--engine=zero3", "--save_steps=100"), work)
    out = work / name
    _assert_same_losses(out, one_full if script == "train.py" else one_lora)
    kind = "full" if script == "train.py" else "lora"
    res = json.loads((work / f"{name}-results" / f"train_{kind}.json").read_text())
    assert (res["engine"], res["world_size"], res["examples_per_step"]) == ("zero3", 2, 4)
    assert res["features"]["LOSS"] == "plain"  # the chunked loss needs the whole head; ZeRO-3 holds a shard
    assert res["trainable_params"] == json.loads((work / f"one-{kind}-results" / f"train_{kind}.json").read_text())[
        "trainable_params"]
    weights = out / ("adapter_model.safetensors" if kind == "lora" else "model.safetensors")
    assert weights.is_file()  # gathered into one file (stage3_gather_16bit_weights_on_model_save)
    _generates(out, adapter=kind == "lora")


# --- QLoRA ----------------------------------------------------------------------------------------------------------


def _bitsandbytes_4bit_problem() -> str | None:
    """Why bitsandbytes' NF4 cannot run here (None when it can), checked on one small tensor."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (optional: pip install -r requirements-scale.txt)"
    import torch

    try:
        import bitsandbytes.functional as bnbf

        device = "cuda" if torch.cuda.is_available() else "cpu"
        w = torch.randn(64, 64, dtype=torch.bfloat16, device=device)
        q, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        back = bnbf.dequantize_4bit(q, state, quant_type="nf4")
    except (RuntimeError, NotImplementedError, ImportError, AttributeError, ValueError) as e:
        return f"bitsandbytes NF4 does not run on this machine: {type(e).__name__}: {str(e)[:200]}"
    if (back.float() - w.float()).abs().mean() > 0.2:
        return "bitsandbytes NF4 round trip is wrong on this machine"
    return None


def test_qlora_trains_an_adapter_that_merges_into_the_base(data_dir, work, tmp_path):
    why = _bitsandbytes_4bit_problem()
    if why:
        pytest.skip(why)
    proc = run_script("train_lora.py", *_args("train_lora.py", data_dir, work, "qlora", ONE, "--quantization=4bit",
                                              "--precision=bf16", "--max_steps=2", "--eval_steps=2",
                                              "--save_steps=100", "--warmup=0"), cwd=work)
    res = json.loads((work / "qlora-results" / "train_lora.json").read_text())
    assert res["quantization"] == "4bit" and res["features"]["PRECISION"] == "bf16"
    one = json.loads((work / "one-lora-results" / "train_lora.json").read_text()) if (
        work / "one-lora-results").is_dir() else None
    if one:
        assert res["trainable_params"] == one["trainable_params"]  # the same adapter, on a 4-bit base
    losses = [e["loss"] for e in res["log_history"] if "loss" in e]
    assert losses[-1] < losses[0], losses
    assert lines_naming(proc.stdout, "QLoRA", "NF4"), proc.stdout  # the base really was quantized (said by the loader)
    from medsft.adapters import merge_lora

    merged = merge_lora(work / "qlora", tmp_path / "merged")
    _generates(merged)


# --- bigger models: estimates -----------------------------------------------------------------------------------------


def test_dry_run_estimates_per_gpu_for_qwen3_8b(shared_dir, capsys):
    from medsft.config import script_defaults
    from medsft.memory import GIB, estimate
    from medsft.training import sft
    from medsft.training.features import resolve_features

    if not (SHARED / "qwen3-8b" / "config.json").is_file():
        pytest.skip("../shared/qwen3-8b is absent")
    cfg = {**script_defaults(ROOT / "train_lora.py"), "QUANTIZATION": "4bit"}
    est = estimate({**cfg, **resolve_features(cfg, lora=True, log=False, assume_gpu=True)}, SHARED / "qwen3-8b", True)
    assert est["total"] < 14.9 * GIB, est  # QLoRA of Qwen3-8B fits a 16 GB card (14.9 GiB)
    # what train.py --model=../shared/qwen3-8b --dry_run=true --engine=zero3 --dry_run_gpus=8 runs after parsing
    cfg = {**script_defaults(ROOT / "train.py"), "MODEL": str(SHARED / "qwen3-8b"), "DRY_RUN": True,
           "ENGINE": "zero3", "DRY_RUN_GPUS": 8}
    with pytest.raises(SystemExit) as done:
        sft.start_run(cfg, "full")
    out = capsys.readouterr().out
    assert done.value.code == 0 and lines_naming(out, " 128 ", "zero3", " 8 "), out  # examples per step; per GPU
    per_gpu = float(out.split("estimated peak: ")[1].split(" GiB")[0])
    assert per_gpu < 40, out  # an 8B full fine-tune fits 40 GB cards under ZeRO-3 x 8


# --- the settings, without launching anything -------------------------------------------------------------------------


def test_global_batch_derives_the_accumulation_and_refuses_what_does_not_divide():
    from medsft.files import MedsftError
    from medsft.training.distributed import resolve_batch

    cfg = {"BATCH_SIZE": 2, "GRAD_ACCUM": 8, "GLOBAL_BATCH": 16}
    assert resolve_batch(cfg, 1) == {"GRAD_ACCUM": 8, "EXAMPLES_PER_STEP": 16}
    assert resolve_batch(cfg, 4) == {"GRAD_ACCUM": 2, "EXAMPLES_PER_STEP": 16}  # same schedule on 4 GPUs
    assert resolve_batch({**cfg, "GLOBAL_BATCH": 0}, 4) == {"GRAD_ACCUM": 8, "EXAMPLES_PER_STEP": 64}
    with raises_naming(MedsftError, "--global_batch=16", "--batch_size=2") as e:
        resolve_batch(cfg, 3)
    assert {3, 6} <= set(numbers_in(e.value)), e.value  # 3 processes; 2 x 3 = 6, what it must divide by


def test_chunked_loss_under_a_sharding_engine_is_refused_with_the_reason():
    from medsft.files import MedsftError
    from medsft.training.features import resolve_features

    base = {"PRECISION": "auto", "ATTN_IMPLEMENTATION": "auto", "PADDING_FREE": "auto", "OPTIM": "auto",
            "GRADIENT_CHECKPOINTING": True}
    assert resolve_features({**base, "LOSS": "auto", "ENGINE": "zero3"}, log=False)["LOSS"] == "plain"
    assert resolve_features({**base, "LOSS": "auto", "ENGINE": "ddp"}, log=False)["LOSS"] == "chunked"
    with raises_naming(MedsftError, "--loss=chunked", "--engine=zero3", "--loss=auto", "--engine=ddp"):
        resolve_features({**base, "LOSS": "chunked", "ENGINE": "zero3"}, log=False)


def test_engines_follow_the_launcher_and_the_shipped_configs(monkeypatch):
    import yaml

    from medsft.files import MedsftError
    from medsft.training.distributed import resolve_engine

    for var in ("WORLD_SIZE", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_engine({"ENGINE": "auto"})["ENGINE"] == "single"
    assert resolve_engine({"ENGINE": "auto", "DRY_RUN": True, "DRY_RUN_GPUS": 4}) == {
        "ENGINE": "ddp", "DEEPSPEED": None, "WORLD_SIZE": 4}
    # accelerate launch --config_file configs/accelerate/zero3.yaml sets these from the YAML
    for name in ("zero2", "zero3"):
        conf = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())
        monkeypatch.setenv("WORLD_SIZE", str(conf["num_processes"]))
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", conf["deepspeed_config"]["deepspeed_config_file"])
        got = resolve_engine({"ENGINE": "auto", "DRY_RUN": True})
        assert (got["ENGINE"], got["WORLD_SIZE"]) == (name, 4)
        ds = json.loads(Path(got["DEEPSPEED"]).read_text())
        assert ds["zero_optimization"]["stage"] == int(name[-1])
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # a loadable final model
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert resolve_engine({"ENGINE": "auto", "DRY_RUN": True})["ENGINE"] == "fsdp2"
    assert json.loads((ROOT / "configs" / "fsdp2.json").read_text())["version"] == 2
    with raises_naming(MedsftError, "--engine=zero5", "auto", "ddp", "zero2", "zero3", "fsdp2"):  # the choices
        resolve_engine({"ENGINE": "zero5"})
