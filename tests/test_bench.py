"""bench/bench.py: the CPU smoke mode end to end through its real entry point, plus its fail-fast checks and the
pure pieces the GPU mode relies on (peak lookup by device name, the FLOP count behind MFU, the output path)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import DEMO_DATA, ROOT, SAMPLE_ROWS, run_script

from medsft.config import script_defaults

BENCH = "bench/bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("medsft_bench", ROOT / BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One CPU-mode run on real rows (../shared sample when present, else the demo rows)."""
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    data = SAMPLE_ROWS if SAMPLE_ROWS.is_file() else DEMO_DATA
    proc = run_script(BENCH, "--mode=cpu", f"--data={data}", f"--output={out}", timeout=300)
    return json.loads(out.read_text(encoding="utf-8")), proc.stdout, out


def test_cpu_mode_is_labelled_cpu(cpu_run):
    result, stdout, out = cpu_run
    assert result["mode"] == "cpu"
    assert result["device"].startswith("CPU")
    assert "CPU" in result["label"] and "NOT GPU" in result["label"]
    assert result["peak_bf16_tflops"] is None
    assert "NOT GPU results" in stdout  # the printed table says so too
    assert str(out) in stdout.splitlines()[-1]  # ends by printing the JSON path


def test_three_training_configs_train_the_same_tokens(cpu_run):
    result, _, _ = cpu_run
    training = result["training"]
    assert set(training) == {"tutorial", "full", "lora"}
    tokens = {r["trained_tokens"] for r in training.values()}
    assert len(tokens) == 1, tokens
    (n,) = tokens
    assert n == result["data"]["tokens_per_epoch"] * result["method"]["measured_epochs"] > 0
    for name, r in training.items():
        # the Trainer's own non-padding count over the timed window agrees with the count from the data
        assert r["trainer_counted_tokens"] == n, name
        assert r["supervised_tokens"] == training["tutorial"]["supervised_tokens"] < n
        assert r["tokens_per_s"] > 0 and r["seconds"] > 0
        assert r["tokens_per_s"] == pytest.approx(n / r["seconds"], rel=1e-3)
        assert r["timed_steps"] * r["examples_per_step"] == result["data"]["examples"]
        assert r["mfu"] is None  # MFU means nothing on a CPU
        assert r["estimated_peak_gib"] == pytest.approx(sum(r["estimate_parts_gib"].values()), abs=0.01)
        assert r["peak_memory"]["kind"] == "cpu_peak_rss" and r["peak_memory"]["peak_rss_gib"] > 0


def test_ratios_match_tokens_per_second(cpu_run):
    result, stdout, _ = cpu_run
    training = result["training"]
    base = training["tutorial"]["tokens_per_s"]
    assert training["tutorial"]["ratio_to_tutorial"] == 1.0
    for name, r in training.items():
        assert r["ratio_to_tutorial"] == pytest.approx(r["tokens_per_s"] / base, abs=1e-3), name
        assert f"{r['ratio_to_tutorial']:.2f}x" in stdout


def test_configs_are_the_tutorial_and_the_scripts_defaults(cpu_run):
    result, _, _ = cpu_run
    training = result["training"]
    tutorial = training["tutorial"]["settings"]
    assert (tutorial["BATCH_SIZE"], tutorial["GRAD_ACCUM"]) == (1, 4)
    assert tutorial["GRADIENT_CHECKPOINTING"] is True
    assert tutorial["OPTIM"] == "adamw_torch" and tutorial["LOSS"] == "plain"
    assert tutorial["PADDING_FREE"] is False
    full_defaults = script_defaults(ROOT / "train.py")
    lora_defaults = script_defaults(ROOT / "train_lora.py")
    for name, defaults in (("full", full_defaults), ("lora", lora_defaults)):
        settings = training[name]["settings"]
        assert settings["BATCH_SIZE"] == defaults["BATCH_SIZE"]
        assert settings["GRAD_ACCUM"] == defaults["GRAD_ACCUM"]
        assert settings["GRADIENT_CHECKPOINTING"] == defaults["GRADIENT_CHECKPOINTING"]
    assert training["full"]["trainable_params"] == training["full"]["total_params"]
    lora = training["lora"]
    assert lora["lora"]["LORA_R"] == lora_defaults["LORA_R"]
    assert 0 < lora["trainable_params"] < lora["total_params"]


def test_generation_compares_loop_and_batched_on_the_same_prompts(cpu_run):
    result, _, _ = cpu_run
    g = result["generation"]
    assert g["questions"] > 1 and g["decoding"] == "greedy"
    loop, batched = g["loop"], g["batched"]
    assert loop["tokens_per_s"] > 0 and batched["tokens_per_s"] > 0
    # greedy fp32 on CPU: left-padded batches give the same answers as one at a time
    assert loop["new_tokens"] == batched["new_tokens"]
    assert 0 < loop["new_tokens"] <= g["questions"] * g["max_new_tokens"]
    assert g["identical_outputs"] == g["questions"]
    assert batched["ratio_to_loop"] == pytest.approx(batched["tokens_per_s"] / loop["tokens_per_s"], abs=1e-3)
    assert g["vllm"] is None


def test_gpu_mode_without_gpu_fails_fast():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run_script(BENCH, "--mode=gpu", check=False, timeout=120)
    assert proc.returncode == 1
    assert "error: --mode=gpu needs a CUDA GPU" in proc.stderr and "--mode=cpu" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_examples_must_fill_whole_optimizer_steps():
    proc = run_script(BENCH, "--mode=cpu", "--examples=10", check=False, timeout=120)
    assert proc.returncode == 1
    assert "--examples=10 must be a multiple of 16" in proc.stderr


def test_peak_lookup_prefers_the_specific_device_name(bench):
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4  # SXM
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA H100 NVL") == 835.0
    assert bench.peak_tflops("NVIDIA H200") == 989.4
    assert bench.peak_tflops("NVIDIA H20") == 148.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops("NVIDIA L40S") == 362.1
    assert bench.peak_tflops("NVIDIA GeForce RTX 4090") == 165.2
    assert bench.peak_tflops("Tesla T4") is None  # no bf16: MFU stays null unless --peak_tflops is given


def test_train_flops_counts_dense_and_attention_terms(bench):
    # lengths 10 and 20, N = 100 weights, 2 layers, attention width 8:
    # 10 * (600 + 12*2*8*10) + 20 * (600 + 12*2*8*20) = 25,200 + 88,800
    assert bench.train_flops([10, 20], 100, 2, 8) == 114_000
    # frozen weights (LoRA's 4·N): 10 * (400 + 1,920) + 20 * (400 + 3,840)
    assert bench.train_flops([10, 20], 100, 2, 8, weight_grads=False) == 108_000


def test_cpu_results_stay_out_of_the_repo_unless_asked(bench):
    assert ROOT not in bench.output_path("auto", "cpu", "CPU", keep_cpu=False).parents
    assert bench.output_path("auto", "cpu", "CPU", keep_cpu=True) == ROOT / "bench" / "results" / "cpu-smoke.json"
    gpu = bench.output_path("auto", "gpu", "NVIDIA H100 80GB HBM3", keep_cpu=False)
    assert gpu == ROOT / "bench" / "results" / "nvidia-h100-80gb-hbm3.json"


# --- bench/gpu_smoke.sh: the lean default through train.py, kill -9 and resume ------------------------------------


def test_gpu_smoke_runs_end_to_end_on_cpu_in_tiny_mode(tmp_path):
    """The GPU smoke script's whole path without a GPU (SMOKE_MODEL=tiny): dry run, reference run, a run killed -9
    after its first checkpoint and resumed; every check passes, the two loss histories are bit-identical, the
    optimizer inside train.py was torchao's AdamW8bit with stochastic rounding, and the scratch folder is gone."""
    import os
    import subprocess

    out, work = tmp_path / "smoke.json", tmp_path / "work"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_smoke.sh"), f"--output={out}", f"--work={work}"],
                          env={**os.environ, "SMOKE_MODEL": "tiny"}, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["passed"] and r["mode"] == "tiny"
    assert r["checks"].pop("estimate_covers_peak") is None  # CPU RSS is no GPU allocation: not compared
    assert all(v is True for v in r["checks"].values()), r["checks"]
    assert r["losses"]["identical"] and r["losses"]["max_relative_difference"] == 0.0
    assert [s for s, k, _ in r["losses"]["resumed"] if k == "loss"] == [1, 2, 3, 4]
    assert r["kill"] == {"killed_after_checkpoint": 2, "exit": -9, "finished": False}
    assert r["optimizer"]["optimizer"] == "torchao.optim.adam.AdamW8bit"
    assert r["optimizer"]["bf16_stochastic_round"] is True
    assert r["resumed_optimizer"]["resumed_state"]["8bit"] == r["saved_optimizer_state"]["8bit"] > 0
    assert r["features"]["PRECISION"] == "bf16" and r["features"]["LOSS"] == "chunked"
    assert r["memory"]["estimated_peak_gib"] == pytest.approx(r["memory"]["dry_run_estimate_gib"], abs=0.006)
    assert "PASSED" in proc.stdout and str(out) in proc.stdout.splitlines()[-1]
    assert not work.exists()


def test_gpu_smoke_real_mode_without_a_gpu_fails_fast():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run_script("bench/gpu_smoke.py", check=False, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--model=real needs a CUDA GPU" in proc.stderr and "SMOKE_MODEL=tiny" in proc.stderr
