"""Model specs to local folders, and tokenizer/model loading. A spec is ``tiny`` or ``small`` (random Qwen3s built
here for CPU runs), a local Hugging Face folder, or a ModelScope id fetched at the pinned revision (``pin_revision``).
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
# sized for demo/learn.sh on 2 cores, embeddings untied: why in docs/reliability.md
SMALL_VOCAB = 8192
SMALL_SIZE = dict(num_hidden_layers=4, hidden_size=128, intermediate_size=384, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, initializer_range=0.02)
BUILTIN_SPECS = (TINY, SMALL)  # specs made on this machine rather than found on disk or on ModelScope
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = PROJECT_ROOT / "demo" / "medical_demo.jsonl"
HUB_TIMEOUT_S = 3.0  # for the hub's first answer, before a download that may take minutes
_HUB_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # tag, branch or commit (>= 1.38: a folder name)
CONFIG_ONLY = ("config.json",)  # what the memory estimate (--dry_run) reads of a hub model
UNPINNED = "unpinned"  # hub_revision of a hub id without MODEL_REVISION
_PINNED: dict[str, str] = {}  # hub id -> the revision this process downloads it at (pin_revision)

# Qwen3's own chat template (tools omitted) for the project-built tokenizer
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

def _tiny_tokenizer_source() -> tuple[Path | None, bytes]:
    """The tokenizer folder tiny uses (None: build one) and the bytes that identify it."""
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

def save_random_qwen3(out_dir: Path, tok, seed: int, size: dict) -> None:
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
    save_random_qwen3(out_dir, tok, TINY_SEED, TINY_SIZE)

BUILD_WAIT_S = 600  # longest wait of a launch's other processes for rank 0 to build a builtin model

def _build_once(out: Path, create, meta_name: str, meta: dict) -> Path:
    # built in a temporary sibling and renamed into place: a reader never sees half a model
    weights, kind = out / "model.safetensors", out.name.split("-")[0]
    if weights.is_file():
        return out
    if _launched_rank() > 0:  # under a launch transformers writes weights on rank 0 only: rank 0 builds
        deadline = time.monotonic() + BUILD_WAIT_S
        while not weights.is_file():
            if time.monotonic() > deadline:
                raise MedsftError(f"{out}: rank 0 did not build it within {BUILD_WAIT_S} s (a launch over several "
                                  "machines? build it once on each with one process: python inference.py "
                                  f"--model={kind} --question=hi)")
            time.sleep(0.2)
        return out
    if out.exists() and not weights.is_file():
        raise MedsftError(f"{out} holds no model.safetensors (an older medsft could leave one under torchrun): "
                          f"remove it (rm -r {out}) and run again; it is rebuilt the same from its seed")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=out.parent))
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

def _launched_rank() -> int:
    """This process's rank in an initialized process group, or 0 when there is none."""
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

def ensure_tiny() -> Path:
    src, ident = _tiny_tokenizer_source()
    key = hashlib.sha256(f"v{TINY_VERSION}-seed{TINY_SEED}".encode() + ident).hexdigest()[:12]
    return _build_once(cache_dir() / f"tiny-qwen3-{key}", lambda tmp: _create_tiny(tmp, src), "medsft_tiny.json",
                       {"tokenizer": str(src or "built from demo data"), "seed": TINY_SEED, "version": TINY_VERSION})

def _create_small(out_dir: Path) -> None:
    save_random_qwen3(out_dir, build_tiny_tokenizer(out_dir, vocab_size=SMALL_VOCAB), SMALL_SEED, SMALL_SIZE)

def ensure_small() -> Path:
    """Always with the tokenizer built from the demo data ($MEDSFT_TOKENIZER is for tiny): a fresh clone runs it."""
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
    return {TINY: ensure_tiny, SMALL: ensure_small}[spec]() if spec in BUILTIN_SPECS else None

def hub_problem(spec: str, repo_type: str = "model") -> str | None:
    """Why the ModelScope client cannot reach ``spec`` within HUB_TIMEOUT_S (None: it can)."""
    from modelscope.hub.api import HubApi

    api, answer = HubApi(), queue.Queue()

    def ask():
        try:
            found = api.repo_exists(spec, repo_type=repo_type, re_raise=True)
            answer.put(None if found else f"{api.endpoint} has no {repo_type} '{spec}'")
        except Exception as e:  # noqa: BLE001 - the client raises many types; the user needs its text
            answer.put(f"{api.endpoint}: {type(e).__name__}: {e}")

    # the client's own timeouts do not bound DNS, and it retries an unreachable host for ~20 s
    threading.Thread(target=ask, daemon=True).start()
    try:
        return answer.get(timeout=HUB_TIMEOUT_S)
    except queue.Empty:
        return (f"{api.endpoint} did not answer within {HUB_TIMEOUT_S:g} s; a mirror is set with MODELSCOPE_ENDPOINT, "
                "a proxy with HTTPS_PROXY")

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

def download(spec: str, config_only: bool = False) -> Path:
    """A ModelScope snapshot at the pinned revision, from the cache if it holds a whole model (``config_only``:
    config.json, all the memory estimate reads); any failure is one MedsftError naming a local alternative."""
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
                              f"({problem}). Point at a local copy instead: --model=/path/to/Qwen3-1.7B (a directory "
                              "with config.json and *.safetensors), or use --model=tiny (or small) for an offline "
                              "CPU demo")
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

def resolve_model(spec: str, config_only: bool = False) -> Path:
    """A spec's local folder (built or downloaded as needed); ``config_only``: a hub id's config.json is enough."""
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
