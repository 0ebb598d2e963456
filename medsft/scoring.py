"""What the evaluation scripts score (base / full / lora prediction files, each exactly TEST_FILE's questions, in its
order) and scoring them; they never generate: a missing or incomplete file stops them with the inference command
that makes or completes it, so every model is scored on the same questions with the same settings."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from . import adherence
from .chat import FLAGS, MODES, SHORT, STATUSES
from .cot import BASELINES, cot_scores
from .files import MAX_LINE_BYTES, MedsftError, iter_jsonl, write_outputs
from .judge import Judge, JudgeConfigError, check_base_url
from .model_checks import check_model
from .models import UNPINNED, base_model_of
from .predict import mode_output, read_questions, summary_path
from .rouge import rouge_scores
from .think_steps import split_steps

DECODING_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "seed", "backend")
RESUME_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "seed", "batch_size", "backend")

@dataclass
class Target:
    """One prediction file to score, and the inference command that makes it."""
    tag: str
    path: Path
    command: str = ""
    rows: list = field(default_factory=list)  # its predictions, checked against TEST_FILE, in TEST_FILE's order
    modes: dict = field(default_factory=dict)  # mode -> the rows of its <stem>.<mode>.jsonl (None: no such file)

class Placeholder(str):
    """A value the project itself writes for the user to fill in: the only value a printed command leaves bare."""

PLACEHOLDER_BASE = Placeholder("<the base model of the run, e.g. Qwen/Qwen3-1.7B>")

def _command(script: str, flags: dict, cfg: dict, output) -> str:
    # every value quoted for a shell (a file's text can hold `;`, `$(...)`, `<`), except our own placeholders
    flags = {**flags, "input": cfg["TEST_FILE"], "output": output}
    return " ".join(["python", script] + [f"--{k}={v if isinstance(v, Placeholder) else shlex.quote(str(v))}"
                                          for k, v in flags.items() if v])

def _as_spec(spec) -> str | None:
    # a spec read from a file is used only if it is one (tiny/small, a model directory, a hub id)
    if not isinstance(spec, str) or not spec.strip():
        return None
    try:
        return check_model(spec, producer=None)
    except MedsftError:
        return None

def _base_spec(cfg: dict, run_dir, tuned: Path) -> str | None:
    # BASE_MODEL, else the one the run's directory records, else the one its predictions name
    spec = cfg.get("BASE_MODEL") or None
    if not spec and Path(str(run_dir)).is_dir():
        spec = _as_spec(base_model_of(run_dir))
    if not spec and tuned.is_file():  # the run's directory may be gone; its predictions still say
        try:
            with open(tuned, encoding="utf-8") as f:
                first = json.loads(f.readline(MAX_LINE_BYTES + 1) or "{}")  # a longer line is not a row: no JSON
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            first = None
        model, adapter = (first.get("model"), first.get("adapter")) if isinstance(first, dict) else (None, None)
        model = _as_spec(model)
        spec = model if adapter else (_as_spec(base_model_of(model)) if model and Path(model).is_dir() else None)
    return spec

def _resume_flags(path: Path) -> str:
    # the decoding flags the file was started with: inference.py resumes it rather than refusing other settings
    try:
        s = json.loads(summary_path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        s = None
    if not isinstance(s, dict):
        return ""
    flags = "".join(f" --{k}={json.dumps(s[k]) if isinstance(s[k], bool) else shlex.quote(str(s[k]))}"
                    for k in RESUME_KEYS if s.get(k) is not None)
    pinned = str(s.get("model_revision") or "")
    if pinned and not pinned.startswith(UNPINNED):  # the same weights: a pinned hub revision stays pinned
        flags += f" --model_revision={shlex.quote(pinned)}"
    return flags

def _same_rows(path: Path, rows: list[dict], test: dict, test_file, command: str) -> list[dict]:
    """``rows`` in TEST_FILE's order, or MedsftError when they are not exactly its questions and references."""
    stale = [r["id"] for r in rows if r["id"] not in test or
             (test[r["id"]]["question"], test[r["id"]]["ref_think"], test[r["id"]]["ref_answer"]) !=
             (r.get("question"), r["ref_think"], r["ref_answer"])]
    if stale:  # e.g. data.py re-run with another seed: never score models on different questions
        raise MedsftError(f"{path}: {len(stale)} predictions (e.g. id {stale[0]!r}) are not questions of {test_file} "
                          "(or their reference differs): it was predicted on another split; move it (and its "
                          ".summary.json) aside to predict again, or pass --test_file")
    by_id = {r["id"]: r for r in rows}
    missing = [rid for rid in test if rid not in by_id]
    if missing:
        raise MedsftError(f"{path}: {len(missing)} of the {len(test)} questions of {test_file} have no prediction "
                          f"(e.g. id {missing[0]!r}): every model is scored on the same questions, so complete it "
                          "first (inference.py skips the rows already written):\n  " + command + _resume_flags(path))
    return [by_id[rid] for rid in test]

def _test_split(test_file) -> dict:
    # TEST_FILE's rows by id, read as inference.py reads them
    if not Path(test_file).is_file():
        raise MedsftError(f"{test_file} not found: predictions are checked against the split they were made of; "
                          "pass --test_file=<that split>")
    return {r["id"]: r for r in read_questions(test_file)}

def targets(cfg: dict, tag: str, modes: bool = False) -> list[Target]:
    """The prediction files to score, base first, loaded and checked against TEST_FILE (``modes``: also the
    ``<stem>.<mode>.jsonl`` files beside them that exist); ``cfg`` is a script's resolved constants."""
    if tag not in ("full", "lora"):
        raise ValueError(f"tag must be full or lora, not {tag!r}")
    run_dir = cfg["MODEL_DIR"] if tag == "full" else cfg["ADAPTER_DIR"]
    script, flags = (("inference.py", {"model_dir": run_dir}) if tag == "full" else
                     ("inference_lora.py", {"adapter_dir": run_dir, "base_model": cfg.get("BASE_MODEL")}))
    tuned = Target(tag, Path(cfg["PREDICTIONS"]), _command(script, flags, cfg, cfg["PREDICTIONS"]))
    out = [tuned]
    if cfg["EVAL_BASE"]:
        spec = _base_spec(cfg, run_dir, tuned.path) or PLACEHOLDER_BASE
        out.insert(0, Target("base", Path(cfg["BASE_PREDICTIONS"]),
                             _command("inference.py", {"model_dir": spec}, cfg, cfg["BASE_PREDICTIONS"])))
    missing = [t for t in out if not t.path.is_file()]
    if missing:
        also = " (or pass --eval_base=false)" if any(t.tag == "base" for t in missing) else ""
        raise MedsftError(f"{' and '.join(str(t.path) for t in missing)} not found: the evaluation scripts only score "
                          "predictions and never make them, so every model is scored on predictions made with the "
                          f"same settings; make {'them' if len(missing) > 1 else 'it'} first{also}:\n"
                          + "\n".join(f"  {t.command}" for t in missing))
    files = [(t, None, t.path, t.command) for t in out]  # (target, mode, file, the command that makes it)
    for t in out if modes else ():
        files += [(t, mode, mode_output(t.path, mode), f"{t.command} {FLAGS[mode]}") for mode in MODES[1:]]
    loaded = [load_predictions(path) if path.is_file() else None for _, _, path, _ in files]  # bad rows first
    test = _test_split(cfg["TEST_FILE"])
    for (t, mode, path, command), rows in zip(files, loaded):
        rows = None if rows is None else _same_rows(path, rows, test, cfg["TEST_FILE"], command)
        if mode is None:
            t.rows = rows
        elif rows is not None and (made := made_by(rows[0])) != (main := made_by(t.rows[0])):
            raise MedsftError(f"{path}: made by {_maker(made)}, but {t.path} by {_maker(main)}: "
                              f"adherence compares one model's modes; move it aside and predict that mode again:\n"
                              f"  {command}")
        else:
            t.modes[mode] = rows
    return out

def load_predictions(path) -> list[dict]:
    """Prediction rows, each field evaluation reads checked for its type; errors name file:line."""
    path = Path(path)
    rows, seen = [], {}
    for lineno, row, err in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if err:
            raise MedsftError(f"{where}: {err}; fix or remove that line, or predict again with inference.py")
        for key in ("output", "think", "answer"):
            if not isinstance(row.get(key), str):
                raise MedsftError(f"{where}: field '{key}' missing or not a string; prediction rows come from "
                                  "inference.py --input=... (fields id, output, think, answer, think_status, ...)")
        for key in ("ref_think", "ref_answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise MedsftError(f"{where}: no reference '{key}': evaluation compares with the split's think and "
                                  "answer, so predict a split that has them (data/test.jsonl)")
        if row.get("think_status") not in STATUSES:
            raise MedsftError(f"{where}: think_status {row.get('think_status')!r} is not one of {', '.join(STATUSES)}")
        if not isinstance(row.get("finished"), bool):
            raise MedsftError(f"{where}: field 'finished' missing or not true/false")
        rid = row.get("id")
        if rid is None or isinstance(rid, (dict, list)):
            raise MedsftError(f"{where}: field 'id' missing or not a string/number")
        if rid in seen:
            raise MedsftError(f"{where}: id {rid!r} already on line {seen[rid]}; one row per question")
        seen[rid] = lineno
        rows.append(row)
    if not rows:
        raise MedsftError(f"{path} has no rows: predict a split first (inference.py --input=data/test.jsonl)")
    makers = {}  # (model, adapter) -> its first line: one file is one model's predictions
    for r in rows:
        makers.setdefault(made_by(r), seen[r["id"]])
    if len(makers) > 1:
        (a, la), (b, lb) = list(makers.items())[:2]
        raise MedsftError(f"{path}: rows of different models ({_maker(a)} on line {la}, {_maker(b)} on line {lb}): "
                          "a predictions file holds one model's; predict each model into its own --output")
    return rows

def made_by(row: dict) -> tuple:
    """(model, adapter) a prediction row names."""
    return row.get("model"), row.get("adapter")

def _maker(m: tuple) -> str:
    return f"{m[0]}" + (f" + adapter {m[1]}" if m[1] else "")

def scored_file(path, rows: list[dict]) -> dict:
    """What was scored: the file, its model, n, and the decoding settings from the inference summary beside it."""
    path = Path(path)
    named = {k: ", ".join(sorted({str(r[k]) for r in rows if r.get(k) is not None})) or None
             for k in ("model", "adapter")}
    info = {"path": str(path), "n": len(rows), **named, "decoding": None,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}  # which file exactly: the report compares
    spath = summary_path(path)
    if spath.is_file():
        try:
            s = json.loads(spath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MedsftError(f"{spath}: not valid JSON ({e}); delete it or rerun inference.py") from None
        info["decoding"] = {k: s.get(k) for k in DECODING_KEYS if k in s}
    return info

def judge_key(cfg: dict) -> str | None:
    """The judge's API key from the environment variable JUDGE_API_KEY_ENV, checked with the URL (None: no judge)."""
    if cfg["JUDGE"] == "none":
        return None
    if cfg["JUDGE"] != "openai":
        raise MedsftError(f"--judge={cfg['JUDGE']}: expected none (offline scores only) or openai")
    key = os.environ.get(cfg["JUDGE_API_KEY_ENV"], "")
    if not key.strip():
        raise MedsftError(f"--judge=openai needs an API key in the environment variable {cfg['JUDGE_API_KEY_ENV']} "
                          "(export it, or name another with --judge_api_key_env=NAME)")
    try:
        check_base_url(cfg["JUDGE_BASE_URL"])
    except JudgeConfigError as e:
        raise MedsftError(f"--judge_base_url: {e}") from None
    return key.strip()

def run_judge(cfg: dict, api_key: str, rows: list[dict], per_sample: list[dict]) -> dict:
    try:
        judge = Judge(cfg["JUDGE_BASE_URL"], cfg["JUDGE_MODEL"], api_key,
                      Path(cfg["RESULTS_DIR"]) / "judge_cache.jsonl", retries=cfg["JUDGE_RETRIES"],
                      workers=cfg["JUDGE_WORKERS"])
        return judge.score_rows(rows, per_sample, split_steps)
    except JudgeConfigError as e:
        raise MedsftError(f"judge: {e}; check --judge_base_url, --judge_model and the key in "
                          f"${cfg['JUDGE_API_KEY_ENV']}") from None

def mode_adherence(t: Target) -> dict:
    """Adherence of one model in every mode (a mode without its ``<stem>.<mode>.jsonl`` is None, and the command
    that makes the file is printed)."""
    by_mode = {"think": t.rows, **{mode: t.modes.get(mode) for mode in MODES[1:]}}
    for mode in MODES[1:]:
        if by_mode[mode] is None:
            print(f"{t.tag}: {SHORT[mode]} adherence not measured: no {mode_output(t.path, mode)}; make it with\n  "
                  f"{t.command} {FLAGS[mode]}")
    out = adherence.measure(by_mode)
    for mode, entry in out.items():
        if entry is not None:
            entry["file"] = str(t.path if mode == "think" else mode_output(t.path, mode))
    return out

def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"

def score_cot(cfg: dict, t: Target, api_key: str | None = None) -> list[Path]:
    """Chain-of-thought scores and mode adherence of one model -> RESULTS_DIR/cot_<tag>.jsonl + .json."""
    rows = t.rows
    info = scored_file(t.path, rows)
    # IDF from the split's references, not from the rows scored: every model on one scale
    references = [r["ref_think"] + "\n" + r["ref_answer"] for r in _test_split(cfg["TEST_FILE"]).values()]
    summary, per_sample = cot_scores(rows, references=references, tau=cfg["TAU"],
                                     repeat_threshold=cfg["REPEAT_THRESHOLD"], floor_seed=cfg["FLOOR_SEED"],
                                     workers=cfg.get("WORKERS", 2))
    summary = {"tag": t.tag, "predictions": info, **summary, "adherence": mode_adherence(t),
               "judge": run_judge(cfg, api_key, rows, per_sample) if api_key else None}
    s, base = summary["scores"], summary["baselines"]
    lines = ", ".join(f"{name.replace('_', '-')} {_f(base[name]['f1'])}" for name in BASELINES if base[name])
    print(f"{t.tag}: chain of thought recall {_f(s['recall'])}, precision {_f(s['precision'])}, F1 {_f(s['f1'])} "
          f"(baseline F1: {lines}); n={summary['n']}, no think {summary['n_no_think']}, "
          f"not asked to think {summary['n_think_na']}")
    print(f"{t.tag}: adherence {adherence.line(summary['adherence'])}")
    if summary["judge"]:
        j = summary["judge"]
        print(f"{t.tag}: LLM judge F1 {_f(j['f1'])} over {j['n_scored']} samples ({j['n_judged']} judged, "
              f"{j['n_no_steps']} without steps scored 0); {j['n_fallback']} failed calls left out, "
              f"{j['n_think_na']} not asked to think")
    return write_outputs(cfg["RESULTS_DIR"], f"cot_{t.tag}", summary, per_sample)

def score_rouge(cfg: dict, t: Target) -> list[Path]:
    """ROUGE of one prediction file in the three views -> RESULTS_DIR/rouge_<tag>.jsonl + .json."""
    rows = t.rows
    info = scored_file(t.path, rows)
    summary, per_sample = rouge_scores(rows, workers=cfg["WORKERS"])
    summary = {"tag": t.tag, "predictions": info, **summary}
    a = summary["views"]["answer"]
    print(f"{t.tag}: answer ROUGE-1/2/L F {a['rouge-1']['f']:.2f} / {a['rouge-2']['f']:.2f} / {a['rouge-l']['f']:.2f};"
          f" n={summary['n']}, empty answers {a['n_empty']}")
    return write_outputs(cfg["RESULTS_DIR"], f"rouge_{t.tag}", summary, per_sample)
