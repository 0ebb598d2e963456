"""One model/tokenizer loader for every stage.

A model spec is one of:
  * ``tiny``: a small random-init ``Qwen3ForCausalLM`` made once, deterministically, for offline CPU runs; its
    tokenizer is the one in ``$MEDSFT_TOKENIZER`` (e.g. ../shared/qwen3-1.7b) or, if unset, a small BPE tokenizer
    trained on the project's demo data with Qwen3's special tokens and a Qwen3-style chat template;
  * ``small``: like ``tiny`` but big enough to learn on CPU (``demo/learn.sh``: the hybrid thinking format in
    minutes), always with the project-built demo tokenizer so it needs nothing outside a fresh clone;
  * a local directory in Hugging Face format (a trained model, a LoRA adapter's base, a downloaded snapshot);
  * a ModelScope id such as ``Qwen/Qwen3-1.7B``, fetched with ``modelscope.snapshot_download`` at the revision the
    script pinned (MODEL_REVISION, ``pin_revision``; ``hub_revision`` says which), once per machine, config.json
    alone where that is all a stage reads (``resolve_model(spec, config_only=True)``: the memory estimate).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .files import MedsftError

TINY = "tiny"
TINY_VERSION = 1  # bump when the tiny recipe changes, so caches are rebuilt
TINY_SEED = 1234
TINY_SIZE = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, initializer_range=0.3)
SMALL = "small"
SMALL_VERSION = 1  # bump when the small recipe changes, so caches are rebuilt
SMALL_SEED = 1234
# Size chosen by experiment for demo/learn.sh: ~0.8 CPU-s per step of 4 rows on a busy 2-core machine, so ~500 steps
# fit the demo's minutes. Untied embeddings: with tied ones a model this small, its input and output vectors one,
# kept predicting the token it had just read ("<think><think>…") for hundreds of steps.
# 8192 merges on 40 rows make many tokens whole phrases: a row is half as many tokens as with tiny's 2048, so each
# epoch costs half the CPU time and a think block is ~150 tokens to get through before it must close.
SMALL_VOCAB = 8192
SMALL_SIZE = dict(num_hidden_layers=4, hidden_size=128, intermediate_size=384, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, initializer_range=0.02)
BUILTIN_SPECS = (TINY, SMALL)  # specs made on this machine rather than found on disk or on ModelScope
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = PROJECT_ROOT / "demo" / "medical_demo.jsonl"
MODELSCOPE_HOST = "modelscope.cn"  # for older messages; modelscope_unreachable_reason() names what was tried
# modelscope_hub's DEFAULT_ENDPOINT and DEFAULT_INTL_ENDPOINT: the client tries the second when the first fails
MODELSCOPE_ENDPOINTS = ("https://modelscope.cn", "https://www.modelscope.ai")
_HUB_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # tag, branch or commit (>= 1.38: a folder name)
CONFIG_ONLY = ("config.json",)  # what the memory estimate (--dry_run) reads of a hub model
UNPINNED = "unpinned"  # hub_revision of a hub id without MODEL_REVISION
_PINNED: dict[str, str] = {}  # hub id -> the revision this process downloads it at (pin_revision)

# A Qwen3-style chat template for the project-built tiny tokenizer: same rendering of system/user/assistant turns
# and of the think block as Qwen3's own template (tools omitted).
TINY_CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{%- set ns.last_query_index = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'system' and loop.first %}{{- '<|im_start|>system\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role in ('user', 'system') %}{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = message.reasoning_content if message.reasoning_content is string else '' %}"
    "{%- if message.reasoning_content is not string and '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def cache_dir() -> Path:
    return Path(os.environ.get("MEDSFT_CACHE") or Path.home() / ".cache" / "medsft")


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not Path(spec).expanduser().exists()


# --- tiny ------------------------------------------------------------------------------------------------------


def _tiny_tokenizer_source() -> tuple[Path | None, bytes]:
    """The tokenizer directory to use for tiny (None = build one) and the bytes that identify it."""
    env = os.environ.get("MEDSFT_TOKENIZER")
    if env:
        src = Path(env).expanduser()
        if not (src / "tokenizer_config.json").is_file():
            raise MedsftError(f"MEDSFT_TOKENIZER={env}: no tokenizer_config.json there; point it at a tokenizer "
                              "directory (e.g. ../shared/qwen3-1.7b) or unset it to use the project's own")
        files = sorted(p for p in src.iterdir() if p.is_file() and p.name.startswith(("tokenizer", "vocab", "merges")))
        return src, b"".join(p.name.encode() + p.read_bytes() for p in files)
    if not DEMO_DATA.is_file():
        raise MedsftError(f"{DEMO_DATA} is missing: the tiny tokenizer is trained on it (restore it from git), "
                          "or set MEDSFT_TOKENIZER to a tokenizer directory")
    return None, DEMO_DATA.read_bytes()


def build_tiny_tokenizer(out_dir: Path, corpus: Path = DEMO_DATA, vocab_size: int = 2048):
    """Train a small byte-level BPE tokenizer on the demo data, with Qwen3's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from .files import read_jsonl

    texts = [r[k] for r in read_jsonl(corpus) for k in ("question", "think", "answer")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # <think> tags are plain added tokens in Qwen3 (not "special"), so decoding keeps them
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"], chat_template=TINY_CHAT_TEMPLATE,
                                   model_max_length=32768, clean_up_tokenization_spaces=False)
    fast.save_pretrained(out_dir)
    return fast


def _save_random_qwen3(out_dir: Path, tok, seed: int, size: dict) -> None:
    """A random-init fp32 Qwen3 of ``size`` for tokenizer ``tok``, saved in ``out_dir`` (seeded: same inputs, same
    weights)."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen3Config(vocab_size=(len(tok) + 63) // 64 * 64, max_position_embeddings=8192, rope_theta=1_000_000.0,
                         bos_token_id=pad, eos_token_id=eos, pad_token_id=pad, **size)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    # Qwen3's own recommended thinking-mode sampling, as in the real model's generation_config.json
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad,
                                               do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
    model.save_pretrained(out_dir)


def _create_tiny(out_dir: Path, tokenizer_src: Path | None) -> None:
    from transformers import AutoTokenizer

    if tokenizer_src is None:
        tok = build_tiny_tokenizer(out_dir)
    else:
        tok = AutoTokenizer.from_pretrained(tokenizer_src)
        tok.save_pretrained(out_dir)
    _save_random_qwen3(out_dir, tok, TINY_SEED, TINY_SIZE)


def _build_once(out: Path, create, meta_name: str, meta: dict) -> Path:
    """Create a model folder in a temporary sibling and rename it into place, so a reader never sees half of one."""
    if (out / "model.safetensors").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name.split('-')[0]}-", dir=out.parent))
    try:
        create(tmp)
        (tmp / meta_name).write_text(json.dumps(meta) + "\n")
        try:
            os.rename(tmp, out)
        except OSError:  # another process created it first: theirs is identical
            if not (out / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_tiny() -> Path:
    """Return the tiny model's directory, creating it on first use (same tokenizer ⇒ same weights)."""
    src, ident = _tiny_tokenizer_source()
    key = hashlib.sha256(f"v{TINY_VERSION}-seed{TINY_SEED}".encode() + ident).hexdigest()[:12]
    return _build_once(cache_dir() / f"tiny-qwen3-{key}", lambda tmp: _create_tiny(tmp, src), "medsft_tiny.json",
                       {"tokenizer": str(src or "built from demo data"), "seed": TINY_SEED, "version": TINY_VERSION})


# --- small -----------------------------------------------------------------------------------------------------


def _create_small(out_dir: Path) -> None:
    _save_random_qwen3(out_dir, build_tiny_tokenizer(out_dir, vocab_size=SMALL_VOCAB), SMALL_SEED, SMALL_SIZE)


def ensure_small() -> Path:
    """Return the small model's directory, creating it on first use. It always uses the tokenizer built from the
    demo data ($MEDSFT_TOKENIZER is for tiny): the demo it serves must run from a fresh clone, and a 151k-token
    vocabulary would make its embeddings most of the model and most of the CPU time."""
    if not DEMO_DATA.is_file():
        raise MedsftError(f"{DEMO_DATA} is missing: the small model's tokenizer is trained on it; restore it with "
                          "`git checkout -- demo/medical_demo.jsonl`")
    recipe = json.dumps({"version": SMALL_VERSION, "seed": SMALL_SEED, "vocab": SMALL_VOCAB, **SMALL_SIZE},
                        sort_keys=True)
    key = hashlib.sha256(recipe.encode() + DEMO_DATA.read_bytes()).hexdigest()[:12]
    return _build_once(cache_dir() / f"small-qwen3-{key}", _create_small, "medsft_small.json",
                       {"tokenizer": f"built from demo data, {SMALL_VOCAB} tokens", "seed": SMALL_SEED,
                        "version": SMALL_VERSION, **SMALL_SIZE})


def ensure_builtin(spec: str) -> Path | None:
    """The directory of a built-in spec (tiny, small), created on first use; None for any other spec."""
    return {TINY: ensure_tiny, SMALL: ensure_small}[spec]() if spec in BUILTIN_SPECS else None


# --- resolution and loading ------------------------------------------------------------------------------------


def modelscope_endpoints() -> list[str]:
    """The hub URLs the modelscope client would use, read from the same settings (modelscope_hub's HubConfig and
    HubApi.resolve_endpoint_for_read): MODELSCOPE_ENDPOINT, else the deprecated MODELSCOPE_DOMAIN (https:// added
    to a bare host), else modelscope.cn then www.modelscope.ai (the other way round with MODELSCOPE_PREFER_AI_SITE)."""
    configured = os.environ.get("MODELSCOPE_ENDPOINT", "").strip() or os.environ.get("MODELSCOPE_DOMAIN", "").strip()
    if configured:
        has_scheme = configured.lower().startswith(("http://", "https://"))
        return [(configured if has_scheme else "https://" + configured).rstrip("/")]
    prefer_ai = os.environ.get("MODELSCOPE_PREFER_AI_SITE", "").strip().lower() in ("1", "true", "yes", "on")
    return list(MODELSCOPE_ENDPOINTS[::-1] if prefer_ai else MODELSCOPE_ENDPOINTS)


def _answers(url: str, timeout: float) -> bool:
    import requests

    try:
        requests.head(url, timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return False
    return True  # any HTTP answer, even an error status, means the hub can be reached


def _modelscope_reachable(timeout: float = 3.0) -> bool:
    """Whether a hub endpoint answers within ``timeout`` seconds in all.

    It asks over HTTP(S) through ``requests``, as the modelscope client does, so HTTPS_PROXY/NO_PROXY and the
    endpoint settings apply (a raw socket to modelscope.cn told users behind a proxy the hub was down). The probes
    run in daemon threads because requests' timeout does not cover DNS, which can hang for long when offline.
    """
    urls = modelscope_endpoints()
    answers: queue.Queue[bool] = queue.Queue()
    for url in urls:
        threading.Thread(target=lambda u=url: answers.put(_answers(u, timeout)), daemon=True).start()
    deadline = time.monotonic() + timeout
    for _ in urls:
        try:
            if answers.get(timeout=max(0.0, deadline - time.monotonic())):
                return True
        except queue.Empty:
            return False
    return False


def modelscope_unreachable_reason() -> str:
    """For error messages: which URLs were tried and through which proxy (without its credentials)."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies

    proxy, via = getproxies().get("https"), ""
    if proxy:
        parts = urlsplit(proxy if "://" in proxy else "//" + proxy)
        via = f" through the proxy {parts.hostname}:{parts.port}"
    return (f"{' and '.join(modelscope_endpoints())} did not answer{via}; a mirror is set with MODELSCOPE_ENDPOINT, "
            "a proxy with HTTPS_PROXY")


def pin_revision(spec, revision) -> None:
    """Make every later download of hub id ``spec`` in this process ask for ``revision`` (a tag, branch or commit;
    "" = the hub's current). The scripts call it with their MODEL_REVISION; it does nothing for other specs."""
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
    """Whether a cached snapshot is a whole model (config.json, tokenizer, every safetensors shard its index names),
    not the config.json alone that a dry run fetched, nor the files a cut-off download got to."""
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
    """The revision modelscope recorded for a cached snapshot: a branch or tag name, never a commit id (modelscope
    <= 1.37 writes ``.mv`` = "Revision:<name>,CreatedAt:<time>"; >= 1.38 names the folder snapshots/<asked for>)."""
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
    """The local snapshot modelscope holds for ``spec`` at ``revision`` (no network), or None."""
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
    """Hold a file lock per hub id in the medsft cache while fetching it: the processes of a torchrun launch on one
    machine take turns, so one downloads and the others, waiting here (not in a collective that times out), find
    it cached. The kernel drops the lock of a killed process."""
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


def download(spec: str, config_only: bool = False) -> Path:
    """Fetch a ModelScope snapshot at this process's pinned revision (``pin_revision``), reusing the local cache
    only when it holds a whole model (``config_only``: config.json alone, all the memory estimate reads); fail fast
    when offline. Concurrent callers on one machine download it once (``_download_turn``)."""
    from modelscope import snapshot_download

    revision = _PINNED.get(spec)
    usable = (lambda d: (d / "config.json").is_file()) if config_only else _complete_snapshot
    what = "config.json" if config_only else "config.json, tokenizer and *.safetensors"
    with _download_turn(spec):
        cached = _cached_snapshot(spec, revision)
        if cached is not None and usable(cached):
            return cached
        if not _modelscope_reachable():
            raise MedsftError(
                f"cannot download '{spec}' from ModelScope ({modelscope_unreachable_reason()}). Point at a local "
                f"copy instead: --model=/path/to/Qwen3-1.7B (a directory with config.json and *.safetensors), or "
                f"use --model=tiny (or small) for an offline CPU demo")
        patterns = {"allow_patterns": list(CONFIG_ONLY)} if config_only else {}
        try:
            got = Path(snapshot_download(spec, revision=revision, **patterns))
        except Exception as e:  # noqa: BLE001 - modelscope raises many types; the user needs one clear message
            raise MedsftError(f"downloading '{spec}'{' at ' + revision if revision else ''} from ModelScope "
                              f"failed: {type(e).__name__}: {e}") from e
    if not usable(got):
        raise MedsftError(f"the snapshot of '{spec}' in {got} lacks some of {what} after its download: run again "
                          "to fetch the missing files (this loader reads safetensors weights only)")
    return got


def hub_revision(spec) -> str | None:
    """The revision of hub id ``spec`` this process uses, to record beside results: the MODEL_REVISION it pinned
    (``pin_revision``), else ``"unpinned:<name>"`` with the branch or tag name modelscope recorded for the local
    snapshot (``"unpinned"`` when it recorded none or nothing is cached). modelscope records no commit id, so an
    unpinned revision names no fixed files. None for anything but a hub id (a local folder, tiny, small)."""
    spec = str(spec)
    if spec in BUILTIN_SPECS or not is_hub_id(spec):
        return None
    if spec in _PINNED:
        return _PINNED[spec]
    cached = _cached_snapshot(spec, None)
    name = _recorded_revision(cached) if cached is not None else None
    return f"{UNPINNED}:{name}" if name else UNPINNED


def resolve_model(spec: str, config_only: bool = False) -> Path:
    """Turn a model spec into a local directory (creating tiny or downloading as needed). ``config_only``: a hub
    id's config.json is enough (the memory estimate); other specs are resolved as usual."""
    spec = str(spec)
    if spec in BUILTIN_SPECS:
        return ensure_builtin(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise MedsftError(f"{path} is not a model directory (no config.json); pass a Hugging Face format "
                              "model directory, a ModelScope id like Qwen/Qwen3-1.7B, 'tiny' or 'small'")
        return path
    if is_hub_id(spec):
        return download(spec, config_only=config_only)
    raise MedsftError(f"model '{spec}' not found: no such directory, and it is not a ModelScope id (org/name)")


def load_tokenizer(spec):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(spec))
    tok.padding_side = "left"  # generation pads on the left; training collators set their own
    return tok


def default_dtype(device: str):
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float32


def load_model(spec, dtype=None, device=None, **kwargs):
    """Load a causal LM from safetensors: bf16 on a bf16-capable GPU, fp32 on CPU, no remote code."""
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
