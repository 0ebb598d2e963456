"""The one-command pipeline, MODEL=tiny, end to end on a fresh run directory: every stage's outputs appear."""

import json
import os
import shlex
import subprocess
import sys

from conftest import ROOT, SHARED

RESULTS = ["train_full.json", "train_lora.json", "trainloss.png", "evalloss.png",
           "predictions_base.jsonl", "predictions_full.jsonl", "predictions_lora.jsonl",
           "rouge_base.json", "rouge_full.json", "rouge_lora.json", "cot_base.json", "cot_full.json", "cot_lora.json",
           "rouge.png", "cot.png", "README.md"]


def _env(run_dir, cache) -> dict:
    env = {**os.environ, "MODEL": "tiny", "RUN_DIR": str(run_dir), "PYTHON": sys.executable,
           "MEDSFT_CACHE": str(cache), "SWANLAB_MODE": "disabled"}
    env.pop("MEDSFT_TOKENIZER", None)  # the project-built tokenizer, as on a fresh clone without ../shared
    return env


def run_pipeline(run_dir, cache):
    proc = subprocess.run(["bash", str(ROOT / "pipeline.sh")], env=_env(run_dir, cache), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _step(run_dir, cache, argv: list[str]):
    """One stage as pipeline.sh ran it (``=== script args`` in its output), in the run folder."""
    proc = subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:]], env=_env(run_dir, cache), cwd=run_dir,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_tiny_pipeline_writes_every_result_and_reruns(tmp_path):
    run_dir = tmp_path / "run"
    first = run_pipeline(run_dir, tmp_path / "cache")
    results = run_dir / "results"
    for name in RESULTS:
        assert (results / name).is_file() and (results / name).stat().st_size > 0, name
    for png in ("rouge.png", "cot.png", "trainloss.png", "evalloss.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    test_ids = [json.loads(line)["id"] for line in (run_dir / "data" / "test.jsonl").read_text().splitlines()]
    for tag in ("base", "full", "lora"):
        preds = [json.loads(line) for line in (results / f"predictions_{tag}.jsonl").read_text().splitlines()]
        assert [p["id"] for p in preds] == test_ids
        assert json.loads((results / f"rouge_{tag}.json").read_text())["n"] == len(test_ids)
    # the benchmark suite on local files: the stand-ins always, CMMLU and MedQA's dev split when ../shared is there
    suite = ["cmmlu"] * (SHARED / "cmmlu-medical").is_dir() + ["medqa_mcmle"] * (SHARED / "medmcq").is_dir()
    for tag in ("base", "full", "lora"):
        summary = json.loads((results / f"benchmark_{tag}.json").read_text())
        assert list(summary["benchmarks"]) == suite + ["cmb", "cmexam"] and summary["complete"]
    assert set(json.loads((results / "benchmark.pairs.json").read_text())) == set(suite + ["cmb", "cmexam"])
    assert (results / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (results / "README.md").read_text()
    assert "### CMB-Exam" in report and "### CMExam" in report
    assert "base (untuned)" in report and "full fine-tune" in report and "LoRA" in report
    losses = json.loads((results / "train_full.json").read_text())
    first_loss = next(h["loss"] for h in losses["log_history"] if "loss" in h)
    assert losses["final_train_loss"] < first_loss
    # the real stage outputs a user keeps: model, adapter with its base recorded, split files
    assert (run_dir / "output" / "full" / "model.safetensors").is_file()
    assert json.loads((run_dir / "output" / "lora" / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    # the last stage: the full fine-tune as a q8_0 GGUF with its Modelfile naming it
    gguf = run_dir / "export" / "full" / "medsft-full-q8_0.gguf"
    assert gguf.read_bytes()[:4] == b"GGUF"
    assert "FROM ./medsft-full-q8_0.gguf" in (run_dir / "export" / "full" / "Modelfile").read_text()
    # the chain run again with pipeline.sh's own commands: train.py retrains (--overwrite) to the same weights (same
    # seed), so the full model's predictions are reused, not redone, and its export comes out the same bytes (each
    # other stage's re-run is tested where the stage is)
    before = (results / "predictions_full.jsonl").read_bytes()
    exported = gguf.read_bytes()
    steps = [line[4:] for line in first.stdout.splitlines() if line.startswith("=== ")]
    again = [next(s for s in steps if s.startswith(p)) for p in ("train.py ", "inference.py --input=", "export.py ")]
    outputs = [_step(run_dir, tmp_path / "cache", shlex.split(s)).stdout for s in again]
    assert "already complete" in outputs[1]
    assert (results / "predictions_full.jsonl").read_bytes() == before
    assert gguf.read_bytes() == exported
