"""Shared fixtures. Tests that need the real files in ../shared skip cleanly when it is absent.

Environment switches:
  MEDSFT_NO_SHARED=1  behave as on a fresh clone without ../shared: the fixtures that need it skip, SHARED and
                      the paths under it point nowhere, and MEDSFT_TOKENIZER is neither set here nor kept when it
                      points into ../shared (so the tiny model uses the project-built tokenizer).
  MEDSFT_CACHE        where the tiny model is cached. Unset, each session uses a fresh
                      $PYTEST_TMPDIR/medsft-test-<pid> (PYTEST_TMPDIR defaults to /tmp) and removes it at the end;
                      a folder you set yourself is kept.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_REAL_SHARED = ROOT.parent / "shared"
NO_SHARED = os.environ.get("MEDSFT_NO_SHARED", "").strip().lower() in ("1", "true", "yes", "on")
# /dev/null/shared can never exist, so every "is it there?" check on these paths says no
SHARED = Path(os.devnull) / "shared" if NO_SHARED else _REAL_SHARED
REAL_TOKENIZER = SHARED / "qwen3-1.7b"
SAMPLE_ROWS = SHARED / "data" / "medical_r1_sample.jsonl"
DEMO_DATA = ROOT / "demo" / "medical_demo.jsonl"

sys.path.insert(0, str(ROOT))
# The tiny model is cached per session so tests never see a stale one from an older recipe; it uses the real
# Qwen3 tokenizer when ../shared is present (as CI does), else the project-built one.
_OWN_CACHE = None if os.environ.get("MEDSFT_CACHE") else \
    Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / f"medsft-test-{os.getpid()}"
if _OWN_CACHE:
    os.environ["MEDSFT_CACHE"] = str(_OWN_CACHE)
if NO_SHARED and os.environ.get("MEDSFT_TOKENIZER") and \
        Path(os.environ["MEDSFT_TOKENIZER"]).resolve().is_relative_to(_REAL_SHARED.resolve()):
    del os.environ["MEDSFT_TOKENIZER"]
if REAL_TOKENIZER.is_dir():
    os.environ.setdefault("MEDSFT_TOKENIZER", str(REAL_TOKENIZER))
os.environ.setdefault("SWANLAB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# one torch thread per process: two test workers each running a stage with 2 OpenMP threads on 2 cores contend
# (tests/test_train.py + test_reliability_train.py: 154 s with the default, 133 s with 1 thread)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# the hubs are unreachable from tests: every data.py or benchmark.py run that asks ModelScope waits this long for it
os.environ.setdefault("MEDSFT_HUB_TIMEOUT_S", "0.3")


def pytest_sessionfinish(session, exitstatus):
    # ~50 MB of tiny models per session would otherwise pile up in the temp folder; only a folder this
    # conftest chose is removed (pytest-xdist workers inherit the controller's, so the controller removes it)
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (real tokenizer and sample rows)" + (" (MEDSFT_NO_SHARED)" if NO_SHARED else ""))
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
    """Run a top-level stage script as a user would (forked from tests/forkserver.py where that is the same as a
    fresh interpreter); returns CompletedProcess."""
    import forkserver

    full_env = {**os.environ, **(env or {})}
    proc = forkserver.run([sys.executable, str(ROOT / script), *args], cwd=cwd or ROOT, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc
