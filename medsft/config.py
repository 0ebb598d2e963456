"""Constants-block configuration: every UPPER_CASE constant of a script is overridable as ``--lower_name=value``.

A script calls ``cfg = configure(globals())`` first thing in ``main()``; the constants it finds are the script's
top-level ``NAME = value`` assignments, in order, with their trailing ``# comment`` as help text.
"""

from __future__ import annotations

import ast
import io
import json
import sys
import tokenize
from pathlib import Path
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
    """Best-effort typing for constants whose default is None."""
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
    """Apply ``--lower_name=value`` overrides from ``argv`` (default sys.argv[1:]) to the script's constants.

    Updates ``g`` (the script's globals) in place and returns the resolved ``{NAME: value}`` config.
    ``--help`` prints the constants and exits 0; an unknown or malformed option exits with an error listing the
    valid names.
    """
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
