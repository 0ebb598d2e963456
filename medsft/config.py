"""Constants-block configuration: every UPPER_CASE constant of a script is overridable as ``--lower_name=value``,
and training's frozen ``TrainConfig``, built once from the resolved constants."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import sys
import tokenize
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from .files import MedsftError, write_json

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}

def read_constants(source: str) -> list[tuple[str, str]]:
    """Return ``[(NAME, comment)]`` for each top-level UPPER_CASE assignment of a module's source, in order."""
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name) and t.id.isupper() and not t.id.startswith("_"):
                out.append((t.id, comments.get(node.end_lineno, "")))
    return out

def _scalar(text: str) -> Any:
    low = text.lower()
    if low in ("none", ""):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text

def parse_value(name: str, text: str, default: Any) -> Any:
    """Parse ``text`` to the type of ``default``; raise MedsftError saying what was expected."""
    if default is None:
        return _scalar(text)
    if text.lower() == "none":
        return None
    if isinstance(default, bool):  # before int: bool is an int subclass
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise MedsftError(f"--{name.lower()}={text}: expected a boolean (true/false/1/0)")
    if isinstance(default, (list, tuple)):
        if text.strip().startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise MedsftError(f"--{name.lower()}={text}: invalid JSON list ({e.msg})") from None
        else:
            items = [s.strip() for s in text.split(",") if s.strip()]
        if default:
            items = [parse_value(name, str(i), default[0]) for i in items]
        return type(default)(items)
    if isinstance(default, (int, float)):
        try:
            return type(default)(text)
        except ValueError:
            raise MedsftError(f"--{name.lower()}={text}: expected {type(default).__name__} (default {default!r})") from None
    return text

def _help(doc: str, consts: list[tuple[str, str]], g: dict) -> str:
    lines = [doc.strip(), "", "Constants (override any with --lower_name=value):"]
    width = max((len(n) for n, _ in consts), default=0) + 2
    for name, comment in consts:
        lines.append(f"  --{name.lower():<{width}} default {g[name]!r}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)

def _excepthook(exc_type, exc, tb, _default=sys.excepthook):
    if issubclass(exc_type, MedsftError):
        print(f"error: {exc}", file=sys.stderr)
    else:
        _default(exc_type, exc, tb)

def _usage_error(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)

def configure(g: dict, argv: list[str] | None = None) -> dict:
    """Apply ``--lower_name=value`` overrides from ``argv`` (default sys.argv[1:]) to the script's globals ``g``;
    return the resolved ``{NAME: value}``. ``--help`` lists the constants; a bad option exits 2 naming valid ones."""
    sys.excepthook = _excepthook
    argv = sys.argv[1:] if argv is None else argv
    source = Path(g["__file__"]).read_text(encoding="utf-8")
    consts = read_constants(source)
    names = [n for n, _ in consts]
    if any(a in ("-h", "--help") for a in argv):
        print(_help(g.get("__doc__") or "", consts, g))
        raise SystemExit(0)
    valid = "valid options: " + " ".join(f"--{n.lower()}" for n in names)
    for arg in argv:
        if not arg.startswith("--"):
            _usage_error(f"unexpected argument {arg!r}: options look like --name=value; {valid}")
        key, eq, text = arg[2:].partition("=")
        name = key.upper().replace("-", "_")
        if name not in names:
            _usage_error(f"unknown option --{key}; {valid}")
        if not eq:
            if not isinstance(g[name], bool):
                _usage_error(f"--{key} needs a value: --{key}=VALUE")
            text = "true"
        try:
            g[name] = parse_value(name, text, g[name])
        except MedsftError as e:
            _usage_error(f"{e}")
    return {n: g[n] for n in names}

def save_config(cfg: dict, path) -> Path:
    """Save the resolved config next to a stage's outputs (JSON, atomic)."""
    return write_json(path, {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()})

def script_defaults(path) -> dict:
    """The literal default values of a script's constants block, without running it (for bench/ and tests)."""
    source = Path(path).read_text(encoding="utf-8")
    names = {n for n, _ in read_constants(source)}
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id in names:
                    try:
                        out[t.id] = ast.literal_eval(node.value)
                    except ValueError:  # computed default (e.g. from the environment): not a literal
                        pass
    return out

DERIVED = ("DEEPSPEED", "WORLD_SIZE", "EXAMPLES_PER_STEP", "ESTIMATED_PEAK_GIB")  # set by start_run; after the NAMEs

KINDS = ("full", "lora")  # what train.py / train_lora.py train
TAGS = ("base", *KINDS)  # the models results are reported for, in report order
RESULTS_NAME = "train_{kind}.json"  # in RESULTS_DIR
FEATURES = ("PRECISION", "ATTN_IMPLEMENTATION", "PADDING_FREE", "LOSS", "OPTIM")  # "auto" until resolve_features

@dataclass(frozen=True)
class TrainConfig:
    """One training run: train.py's / train_lora.py's constants as lower-case fields (defaults: train.py's), then
    what ``training.start_run`` derives. ``names`` keeps the constants given, in order, for train_config.json."""
    model: str = "Qwen/Qwen3-1.7B"
    model_revision: str = ""
    data_dir: str = "data"
    output_dir: str = "output/full"
    results_dir: str = "results"
    max_length: int = 2048
    epochs: float = 2.0
    max_steps: int = -1
    batch_size: int = 2
    grad_accum: int = 8
    global_batch: int = 0
    learning_rate: float = 1e-5
    scheduler: str = "cosine"
    warmup: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_steps: int = 50
    save_steps: int = 50
    save_total_limit: int | None = 2
    logging_steps: int = 5
    no_think_ratio: float = 0.25
    seed: int = 42
    gradient_checkpointing: bool = True
    precision: str = "auto"
    attn_implementation: str = "auto"
    padding_free: str | bool = "auto"
    loss: str = "auto"
    optim: str = "auto"
    swanlab_project: str = "qwen3-sft-medical"
    run_name: str | None = "qwen3-1.7b-full"
    resume: bool = False
    overwrite: bool = False
    allow_cpu: bool = False
    dry_run: bool = False
    engine: str = "auto"
    dry_run_gpus: int = 1
    preview_questions: int = 3
    preview_max_new_tokens: int = 256
    lora_r: int | None = None  # None: full fine-tuning (train_lora.py sets the LoRA constants)
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    quantization: str = "none"
    lora_target_modules: str | list = "all-linear"
    swanlab_log_dir: str = "swanlog"
    deepspeed: str | None = None
    world_size: int = 1
    examples_per_step: int | None = None
    estimated_peak_gib: float | None = None
    names: tuple[str, ...] = ()
    resolved: bool = False  # the efficiency constants hold concrete choices (training.resolve_features ran)

    @classmethod
    def of(cls, cfg) -> TrainConfig:
        """``cfg`` itself, or the TrainConfig of a ``{NAME: value}`` mapping (a script's constants, tests' dicts)."""
        if isinstance(cfg, cls):
            return cfg
        fields = {f.name for f in dataclasses.fields(cls)} - {"names", "resolved"}
        unknown = [k for k in cfg if k.lower() not in fields]
        if unknown:
            raise TypeError(f"TrainConfig has no field for {', '.join(unknown)}")
        return cls(**{k.lower(): v for k, v in cfg.items()}, names=tuple(k for k in cfg if k not in DERIVED))

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def lora(self) -> bool:
        return self.lora_r is not None

    def constants(self) -> dict:
        """``{NAME: value}``: the constants given, in order, then the derived ones once set (train_config.json)."""
        out = {n: getattr(self, n.lower()) for n in self.names}
        if self.examples_per_step is not None:
            out.update({k: getattr(self, k.lower()) for k in DERIVED})
        return out
