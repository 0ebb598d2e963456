"""Constants-block configuration: every UPPER_CASE constant of a script is overridable as ``--lower_name=value``;
``Config`` is a run's read-only view of them."""

from __future__ import annotations

import ast
import io
import json
import sys
import tokenize
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from .files import MedsftError, visible, write_json

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
        print(f"error: {visible(str(exc))}", file=sys.stderr)  # it may name a file whose name holds escapes
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

KINDS = ("full", "lora")  # what train.py / train_lora.py train
TAGS = ("base", *KINDS)  # the models results are reported for, in report order
RESULTS_NAME = "train_{kind}.json"  # in RESULTS_DIR (kind: full, lora or grpo)
FEATURES = ("PRECISION", "ATTN_IMPLEMENTATION", "PADDING_FREE", "LOSS", "OPTIM")  # "auto" until resolve_features

class Config(Mapping):
    """A run's settings: the script's constants as ``configure`` resolved them (the only copy of their defaults), then
    what the run derives (``replace``: the engine, the examples per step, the concrete features), read-only.
    ``cfg["BATCH_SIZE"]`` or ``cfg.batch_size``; ``resolved``: the features hold concrete choices."""
    __slots__ = ("_values", "resolved")

    def __init__(self, values, resolved: bool = False):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "resolved", resolved)

    @classmethod
    def of(cls, cfg) -> Config:
        return cfg if isinstance(cfg, cls) else cls(cfg)

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __getattr__(self, name):
        try:
            return self._values[name.upper()]
        except KeyError:
            raise AttributeError(f"this run has no constant {name.upper()}") from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only: use cfg.replace(NAME=value)")

    def __repr__(self):
        return f"Config({self._values!r})"

    def replace(self, resolved: bool | None = None, **changes) -> Config:
        """A copy with ``changes`` (upper-case names; a new name goes after the constants, in train_config.json too)."""
        return Config({**self._values, **changes}, self.resolved if resolved is None else resolved)
