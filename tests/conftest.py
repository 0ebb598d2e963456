"""Shared fixtures. Tests that need the real files in ../shared skip cleanly when it is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
REAL_TOKENIZER = SHARED / "qwen3-1.7b"
SAMPLE_ROWS = SHARED / "data" / "medical_r1_sample.jsonl"
DEMO_DATA = ROOT / "demo" / "medical_demo.jsonl"

sys.path.insert(0, str(ROOT))
# The tiny model is cached per session so tests never see a stale one from an older recipe; it uses the real
# Qwen3 tokenizer when ../shared is present (as CI does), else the project-built one.
os.environ.setdefault("MEDSFT_CACHE", str(Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / f"medsft-test-{os.getpid()}"))
if REAL_TOKENIZER.is_dir():
    os.environ.setdefault("MEDSFT_TOKENIZER", str(REAL_TOKENIZER))
os.environ.setdefault("SWANLAB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (real tokenizer and sample rows)")
    return SHARED


@pytest.fixture(scope="session")
def real_tokenizer_dir(shared_dir) -> Path:
    if not REAL_TOKENIZER.is_dir():
        pytest.skip("../shared/qwen3-1.7b is absent")
    return REAL_TOKENIZER


@pytest.fixture(scope="session")
def real_tokenizer(real_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_tokenizer_dir)


@pytest.fixture(scope="session")
def sample_rows_path(shared_dir) -> Path:
    if not SAMPLE_ROWS.is_file():
        pytest.skip("../shared/data/medical_r1_sample.jsonl is absent")
    return SAMPLE_ROWS


@pytest.fixture(scope="session")
def demo_data_path() -> Path:
    return DEMO_DATA


def run_script(script: str, *args: str, cwd=None, env=None, timeout=600, check=True):
    """Run a top-level stage script in a subprocess, as a user would; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc
