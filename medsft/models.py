"""Model specs to local folders, and tokenizer/model loading. A spec is ``tiny`` or ``small`` (random Qwen3s that
demo/builtin.py builds for CPU runs), a local Hugging Face folder, or a ModelScope id fetched at the pinned revision
(``pin_revision``)."""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from .files import MedsftError

TINY = "tiny"
SMALL = "small"
BUILTIN_SPECS = (TINY, SMALL)  # specs made on this machine rather than found on disk or on ModelScope
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = PROJECT_ROOT / "demo" / "medical_demo.jsonl"
HUB_TIMEOUT_S = 3.0  # s, for the hub's first answer (before a download that may take minutes); $MEDSFT_HUB_TIMEOUT_S
_HUB_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # tag, branch or commit (>= 1.38: a folder name)
CONFIG_ONLY = ("config.json",)  # what the memory estimate (--dry_run) reads of a hub model
UNPINNED = "unpinned"  # hub_revision of a hub id without MODEL_REVISION
_PINNED: dict[str, str] = {}  # hub id -> the revision this process downloads it at (pin_revision)

def cache_dir() -> Path:
    return Path(os.environ.get("MEDSFT_CACHE") or Path.home() / ".cache" / "medsft")

def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

def is_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not Path(spec).expanduser().exists()

def ensure_builtin(spec: str) -> Path | None:
    """The folder of a built-in demo model (tiny, small), built on first use by demo/builtin.py; None for others."""
    return getattr(demo_builders(), f"ensure_{spec}")() if spec in BUILTIN_SPECS else None

def demo_builders():
    """demo/builtin.py, the recipes of the built-in demo models: demo code, kept out of the package."""
    import importlib.util
    import sys

    name = "medsft_demo_builtin"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "demo" / "builtin.py")
        if spec is None or not Path(spec.origin).is_file():
            raise MedsftError(f"{PROJECT_ROOT / 'demo' / 'builtin.py'} is missing: the tiny and small demo models "
                              "are built by it; restore it with `git checkout -- demo/builtin.py`")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]

def hub_timeout_s() -> float:
    """Seconds the hub gets for its first answer: $MEDSFT_HUB_TIMEOUT_S (a slow link or proxy), else HUB_TIMEOUT_S."""
    raw = os.environ.get("MEDSFT_HUB_TIMEOUT_S", "").strip()
    if not raw:
        return HUB_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise MedsftError(f"MEDSFT_HUB_TIMEOUT_S={raw!r}: expected seconds > 0, e.g. 10 (unset: {HUB_TIMEOUT_S:g})")
    return seconds

def hub_problem(spec: str, repo_type: str = "model") -> str | None:
    """Why the ModelScope client cannot reach ``spec`` within ``hub_timeout_s()`` (None: it can)."""
    from modelscope.hub.api import HubApi

    api, answer = HubApi(), queue.Queue()

    def ask():
        try:
            found = api.repo_exists(spec, repo_type=repo_type, re_raise=True)
            answer.put(None if found else f"{api.endpoint} has no {repo_type} '{spec}'")
        except Exception as e:  # noqa: BLE001 - the client raises many types; the user needs its text
            answer.put(f"{api.endpoint}: {type(e).__name__}: {e}")

    # the client's own timeouts do not bound DNS, and it retries an unreachable host for ~20 s
    timeout = hub_timeout_s()
    threading.Thread(target=ask, daemon=True).start()
    try:
        return answer.get(timeout=timeout)
    except queue.Empty:
        return (f"{api.endpoint} did not answer within {timeout:g} s; a mirror is set with MODELSCOPE_ENDPOINT, a "
                "proxy with HTTPS_PROXY, a longer wait with MEDSFT_HUB_TIMEOUT_S")

def hub_probe(spec: str, repo_type: str = "model") -> Future:
    """``hub_problem(spec)`` asked now in the background (``hub_timeout_s()`` when the hub is silent): ``.result()``
    where the answer is used. A daemon thread, so a process that ends before then does not wait for the hub."""
    hub_timeout_s()  # a bad MEDSFT_HUB_TIMEOUT_S stops the caller now, not as the hub's answer
    answer = Future()

    def ask():
        if answer.set_running_or_notify_cancel():
            try:
                answer.set_result(hub_problem(spec, repo_type))
            except BaseException as e:  # noqa: BLE001 - raised again by .result(), where the answer is used
                answer.set_exception(e)

    threading.Thread(target=ask, name=f"hub probe {spec}", daemon=True).start()
    return answer

def pin_revision(spec, revision) -> None:
    """Every later download of hub id ``spec`` in this process asks for ``revision`` ("": the hub's current)."""
    spec, revision = str(spec), str(revision or "").strip()
    if revision and not _REVISION.match(revision):
        raise MedsftError(f"--model_revision={revision!r}: expected a tag, branch or commit id (letters, digits, "
                          "'.', '_', '-'), or \"\" for the hub's current")
    if not is_hub_id(spec) or spec in BUILTIN_SPECS:
        return
    if revision:
        _PINNED[spec] = revision
    else:
        _PINNED.pop(spec, None)

def _complete_snapshot(d: Path) -> bool:
    # a whole model, not a dry run's config.json alone nor what a cut-off download got to
    if not ((d / "config.json").is_file() and (d / "tokenizer_config.json").is_file()):
        return False
    index = d / "model.safetensors.index.json"
    if not index.is_file():
        return (d / "model.safetensors").is_file()
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return bool(shards) and all(isinstance(s, str) and (d / s).is_file() for s in shards)

def _recorded_revision(d: Path) -> str | None:
    # a branch or tag name, never a commit id: <= 1.37 writes .mv "Revision:<name>,...", >= 1.38 snapshots/<name>
    mv = d / ".mv"
    if mv.is_file():
        try:
            text = mv.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None
        name = text.split(",", 1)[0].removeprefix("Revision:")
    else:
        name = d.name if d.parent.name == "snapshots" else ""
    return name if _REVISION.match(name) else None

def _cached_snapshot(spec: str, revision: str | None) -> Path | None:
    from modelscope import snapshot_download

    try:
        d = Path(snapshot_download(spec, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - any cache miss means: not cached
        return None
    # modelscope <= 1.37 returns its one cache folder whatever revision was asked for
    if revision and _recorded_revision(d) != revision:
        return None
    return d

@contextmanager
def _download_turn(spec: str):
    # the processes of one torchrun launch wait here (not in a collective that times out) and find it cached
    from filelock import FileLock, Timeout

    path = cache_dir() / "locks" / (spec.replace("/", "--") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"{spec}: another process is fetching it (it holds {path}); waiting for it to finish")
            lock.acquire()
    except OSError as e:  # e.g. ENOLCK on some network file systems: fetch unguarded rather than not at all
        print(f"warning: cannot lock {path} ({e.strerror or e}); fetching {spec} without it")
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()

def download(spec: str, config_only: bool = False, option: str = "model") -> Path:
    """A ModelScope snapshot at the pinned revision, from the cache if it holds a whole model (``config_only``:
    config.json, all the memory estimate reads); any failure is one MedsftError naming a local alternative for
    ``--option``."""
    from modelscope import snapshot_download

    revision = _PINNED.get(spec)
    usable = (lambda d: (d / "config.json").is_file()) if config_only else _complete_snapshot
    what = "config.json" if config_only else "config.json, tokenizer and *.safetensors"
    patterns = {"allow_patterns": list(CONFIG_ONLY)} if config_only else {}
    with _download_turn(spec):
        cached = _cached_snapshot(spec, revision)
        if cached is not None and usable(cached):
            return cached
        problem = hub_problem(spec)
        if problem is None:
            try:
                got = Path(snapshot_download(spec, revision=revision, **patterns))
            except Exception as e:  # noqa: BLE001 - modelscope raises many types; the user needs one clear message
                problem = f"{type(e).__name__}: {e}"
        if problem is not None:
            raise MedsftError(f"cannot download '{spec}'{' at ' + revision if revision else ''} from ModelScope "
                              f"({problem}). Point at a local copy instead: --{option}=/path/to/Qwen3-1.7B (a "
                              f"directory with config.json and *.safetensors), or use --{option}=tiny (or small) for "
                              "an offline CPU demo")
    if not usable(got):
        raise MedsftError(f"the snapshot of '{spec}' in {got} lacks some of {what} after its download: run again "
                          "to fetch the missing files (this loader reads safetensors weights only)")
    return got

def hub_revision(spec) -> str | None:
    """The revision of hub id ``spec`` to record beside results: the pinned one, else ``unpinned:<branch or tag>``
    of the cached snapshot (``unpinned``: none recorded); None for other specs."""
    spec = str(spec)
    if spec in BUILTIN_SPECS or not is_hub_id(spec):
        return None
    if spec in _PINNED:
        return _PINNED[spec]
    cached = _cached_snapshot(spec, None)
    name = _recorded_revision(cached) if cached is not None else None
    return f"{UNPINNED}:{name}" if name else UNPINNED

def resolve_model(spec: str, config_only: bool = False, option: str = "model") -> Path:
    """A spec's local folder (built or downloaded as needed); ``config_only``: a hub id's config.json is enough.
    ``option``: the command-line option that gave ``spec``, for messages."""
    spec = str(spec)
    if spec in BUILTIN_SPECS:
        return ensure_builtin(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise MedsftError(f"--{option}={spec}: {path} is not a model directory (no config.json); pass a Hugging "
                              "Face format model directory, a ModelScope id like Qwen/Qwen3-1.7B, 'tiny' or 'small'")
        return path
    if spec.startswith((".", "/", "~")) or spec.endswith(("/", os.sep)):  # a path (./org/name too), no hub id
        raise MedsftError(f"--{option}='{spec}': no such directory ({path.absolute()}); pass an existing model or "
                          "tokenizer directory, a ModelScope id like Qwen/Qwen3-1.7B, 'tiny' or 'small'")
    if is_hub_id(spec):
        return download(spec, config_only=config_only, option=option)
    raise MedsftError(f"--{option}='{spec}': not found: no such directory, and it is not a ModelScope id (org/name)")

def load_tokenizer(spec, option: str = "model"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(spec, option=option))
    tok.padding_side = "left"  # generation pads on the left; training collators set their own
    return tok

def default_dtype(device: str):
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float32

def load_model(spec, dtype=None, device=None, **kwargs):
    """A causal LM from safetensors: bf16 on a bf16-capable GPU, fp32 on CPU, no remote code."""
    from transformers import AutoModelForCausalLM

    device = device or pick_device()
    model = AutoModelForCausalLM.from_pretrained(resolve_model(spec), dtype=dtype or default_dtype(device),
                                                 use_safetensors=True, **kwargs)
    return model.to(device)

def base_model_of(model_dir) -> str | None:
    """The base model spec a trained directory came from: a LoRA adapter's base, or a full run's MODEL."""
    d = Path(model_dir)
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("train_config.json", "MODEL")):
        if (d / name).is_file():
            return json.loads((d / name).read_text(encoding="utf-8")).get(key)
    return None
