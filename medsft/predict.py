"""Batch predictions of a JSONL split into OUTPUT and ``<stem>.summary.json``, resumable (same split, model, weights
and settings), rewritten atomically after every batch; everything checkable without a model is checked first."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from .adapters import check_adapter, lora_base
from .backends import check_backend, load_backend
from .chat import STATUSES, SWITCHES, question_mode, split_output
from .files import MedsftError, check_writable, disk_errors, iter_jsonl, write_json, write_jsonl
from .generate import vllm_settings
from .model_checks import check_model, spec_key, weights_fingerprint
from .models import hub_revision, resolve_model

def read_questions(path) -> list[dict]:
    """The rows of a split as ``{id, question, ref_think, ref_answer}`` (no ``id``: the line number); bad rows raise
    MedsftError with file:line."""
    path = Path(path)
    if not path.is_file():
        raise MedsftError(f"input {path} not found: run data.py first (it writes data/test.jsonl), or pass "
                          "--input=<file.jsonl>")
    rows, seen = [], {}
    for lineno, obj, err in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if err:
            raise MedsftError(f"{where}: {err}; fix or remove that line")
        question = obj.get("question")
        if not isinstance(question, str) or not question.strip():
            raise MedsftError(f"{where}: empty or missing 'question'; every row needs a non-empty question string")
        rid = obj.get("id", lineno)
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise MedsftError(f"{where}: 'id' must be a string or an integer, got {json.dumps(rid, ensure_ascii=False)}")
        if rid in seen:
            raise MedsftError(f"{where}: id {rid!r} already used on line {seen[rid]}; ids must be unique")
        seen[rid] = lineno
        rows.append({"id": rid, "question": question, "ref_think": obj.get("think"), "ref_answer": obj.get("answer")})
    if not rows:
        raise MedsftError(f"input {path} has no rows")
    return rows

def mode_output(path, mode: str) -> Path:
    """OUTPUT itself for thinking, else ``<stem>.<mode>.jsonl`` beside it: never mixed into the scored file."""
    path = Path(path)
    if mode == "think" or path.name.endswith(f".{mode}{path.suffix}"):
        return path
    return path.with_name(f"{path.stem}.{mode}{path.suffix}")

def check_switches(enable_thinking, soft_switch) -> str:
    """The mode the ENABLE_THINKING and SOFT_SWITCH constants ask for; bad values stop the script."""
    if not isinstance(enable_thinking, bool):
        raise MedsftError(f"--enable_thinking={enable_thinking!r}: expected true or false")
    if soft_switch not in ("",) + SWITCHES:
        raise MedsftError(f"--soft_switch={soft_switch!r}: expected one of {', '.join(SWITCHES)} or empty")
    return question_mode(soft_switch, enable_thinking)

# each thinking mode's (ENABLE_THINKING, SOFT_SWITCH), for a script's MODES list
MODE_SWITCHES = {"think": (True, ""), "no_think_soft": (True, "/no_think"), "no_think_hard": (False, "")}

def mode_runs(modes: str, enable_thinking, soft_switch, output=None) -> list[tuple[bool, str]]:
    """(enable_thinking, soft_switch) per file to predict: one per mode MODES lists, or the one pair the two switch
    constants give when MODES is ""; bad values, and an OUTPUT whose file of one mode would be named for another,
    stop the script."""
    check_switches(enable_thinking, soft_switch)
    if not modes:
        runs = [(enable_thinking, soft_switch)]
    else:
        names = [m.strip() for m in str(modes).split(",")]
        if not all(m in MODE_SWITCHES for m in names) or len(set(names)) < len(names):
            raise MedsftError(f"--modes={modes}: expected distinct modes among {','.join(MODE_SWITCHES)}, "
                              "comma-separated")
        if (enable_thinking, soft_switch) != (True, ""):
            raise MedsftError(f"--modes={modes} sets each mode's switches itself: drop --enable_thinking and "
                              "--soft_switch")
        runs = [MODE_SWITCHES[m] for m in names]
    for mode in (question_mode(soft, enable) for enable, soft in runs) if output is not None else ():
        path = mode_output(output, mode)
        named = next((m for m in MODE_SWITCHES if m != mode and path.name.endswith(f".{m}{path.suffix}")), None)
        if named:  # e.g. the think predictions in p.no_think_soft.jsonl, where the no_think_soft ones go too
            real = path.with_name(path.name[: -len(f".{named}{path.suffix}")] + path.suffix)
            raise MedsftError(f"--output={output} is named for mode {named}, but the {mode} predictions"
                              f"{' of --modes=' + str(modes) if modes else ''} would go there: --output names the "
                              f"think file and the other modes go beside it; pass --output={real}")
    return runs

def asked(question: str, soft_switch: str) -> str:
    """The question with SOFT_SWITCH appended, unless its own last switch is already that one."""
    last = max(SWITCHES, key=question.rfind)
    if not soft_switch or (last == soft_switch and question.rfind(last) >= 0):
        return question
    return f"{question} {soft_switch}"

def _malformed(obj: dict) -> str | None:
    """Why a JSON object of a predictions file is not a prediction row this module wrote (None: it is one)."""
    missing = [k for k in ("id", "output") if k not in obj]
    if missing:
        return f"not a prediction row (no {', '.join(map(repr, missing))})"
    if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
        return "'id' is not a string or an integer"
    if not isinstance(obj.get("new_tokens"), int) or isinstance(obj.get("new_tokens"), bool):
        return "'new_tokens' is not a whole number"
    if not isinstance(obj.get("think_status", ""), str):
        return "'think_status' is not a string"
    return None

def predicted_rows(output, rows: list[dict], model: str, adapter, modes: dict | None = None) -> dict:
    """The rows an earlier run of this split and model left in ``output``, by id; rows of another split (or of
    other references), model or thinking mode (``modes``: id -> mode) raise MedsftError rather than end up mixed in
    one file, and so does a file with no prediction row at all; a malformed row is predicted again."""
    by_id, done, bad = {r["id"]: r for r in rows}, {}, []
    for lineno, obj, err in iter_jsonl(output) if Path(output).is_file() else ():
        err = err or _malformed(obj)
        if err:
            bad.append(f"{output}:{lineno}: {err}")
            continue
        rid = obj["id"]
        if rid not in by_id or by_id[rid]["question"] != obj.get("question"):
            raise MedsftError(f"{output}:{lineno}: id {rid!r} is not in the input split (or its question differs): "
                              "this file holds predictions for another split; delete it or pass another --output")
        changed = [k for k in ("ref_think", "ref_answer") if obj.get(k) != by_id[rid][k]]
        if changed:
            raise MedsftError(f"{output}:{lineno}: id {rid!r} has another {' and '.join(changed)} than the --input "
                              "row (the input's rows changed since these predictions were made); pass another "
                              f"--output, or move {output} away to predict again")
        if spec_key(obj.get("model")) != spec_key(model) or spec_key(obj.get("adapter")) != spec_key(adapter):
            by = obj.get("model") if obj.get("adapter") is None else f"{obj.get('model')} + {obj.get('adapter')}"
            raise MedsftError(f"{output}:{lineno}: predicted by {by}, not by this model; delete it or pass another "
                              "--output so predictions of two models are not mixed")
        if modes is not None and obj.get("mode", "think") != modes[rid]:
            raise MedsftError(f"{output}:{lineno}: predicted in mode {obj.get('mode', 'think')}, now {modes[rid]} "
                              "(--enable_thinking / --soft_switch changed); delete it or pass another --output")
        done[rid] = obj
    if bad and not done:  # never overwritten on a guess: a split, a readme, another stage's file
        raise MedsftError(f"{bad[0]}; no line of it is a prediction row, so it is not a predictions file of this "
                          "stage: pass another --output, or move it away to predict into this name")
    for line in bad:
        print(f"warning: {line}; it will be predicted again")
    return done

def _same_file(a, b) -> bool:
    """``a`` and ``b`` name one file (a symlink, a relative path or a hard link to it included)."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False

def summary_path(output) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}.summary.json")

def _check_settings(output, requested: dict, model: str) -> dict | None:
    """Refuse to resume a file started with other decoding settings (sampling knobs as the model's
    generation_config resolves those left at None; the seed under greedy decoding not compared); its summary if
    any (None: missing or unreadable)."""
    path = summary_path(output)
    if not (Path(output).is_file() and path.is_file()):
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(old, dict):
        return None
    keys = ["max_new_tokens", "do_sample", "system", "enable_thinking", "soft_switch"]
    if requested["do_sample"] and old.get("do_sample"):
        knobs = {k: requested[k] for k in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k")}
        requested = {**requested, **vllm_settings(resolve_model(model), **knobs)}  # what generation will use
        keys += ["seed", "batch_size", "temperature", "top_p", "top_k"]
    diff = [f"{k}={old.get(k)!r} (now {requested.get(k)!r})" for k in keys if k in old and old[k] != requested.get(k)]
    if diff:
        raise MedsftError(f"{output} was started with other decoding settings: {', '.join(diff)}; rerun with those, "
                          "or delete it (and its summary) / pass another --output")
    return old

# every rewrite of OUTPUT is atomic, so the rows saved before the failure are whole and a re-run skips them
CONTINUE = "then re-run the same command: it continues where it stopped"

def _row(src: dict, result: dict, model: str, adapter, mode: str) -> dict:
    think, answer, status = split_output(result["output"])
    row = {"id": src["id"], "question": src["question"], "ref_think": src["ref_think"], "ref_answer": src["ref_answer"],
           "mode": mode, "output": result["output"], "think": think, "answer": answer, "think_status": status,
           "new_tokens": result["new_tokens"], "finished": result["finished"], "model": model}
    if adapter is not None:
        row["adapter"] = adapter
    return row

def predict_file(model, input_path, output_path, *, adapter_dir=None, max_new_tokens=2048, do_sample=True, seed=42,
                 batch_size=8, system=None, temperature=None, top_p=None, top_k=None, backend="transformers",
                 enable_thinking=True, soft_switch="", progress=True, loaded: dict | None = None) -> dict:
    """Predict every row of ``input_path`` not yet in ``output_path`` (``model`` None: the adapter's base), in
    the mode ``chat.question_mode`` gives it; returns the summary. Greedy: a resumed file equals an uninterrupted one.
    The decoding settings are the caller's, checked with ``generate.check_decoding`` before it loads anything.
    ``loaded``: a dict the calls of one script with the same model and decoding settings share, so the model loads
    once for all of them."""
    started = time.perf_counter()
    # 1. Everything checkable without a model
    if batch_size < 1:
        raise MedsftError(f"--batch_size={batch_size}: must be at least 1")
    check_switches(enable_thinking, soft_switch)
    adapter = None
    if adapter_dir is not None:
        check_adapter(adapter_dir)
        adapter = str(adapter_dir)
        model = lora_base(adapter_dir, model)
    else:
        model = check_model(model, producer="train.py")
    model = str(model)
    check_backend(backend)
    rows = read_questions(input_path)
    output_path = check_writable(output_path, "output", file=True)
    if _same_file(input_path, output_path):  # the split's references would be overwritten by model answers
        raise MedsftError(f"--output={output_path} is the --input file {input_path} itself: predictions would "
                          "replace the split's questions and references; pass another --output (e.g. "
                          "results/predictions_full.jsonl)")
    if output_path.is_symlink():  # the atomic rewrite would replace the link itself, never write its target
        raise MedsftError(f"--output={output_path} is a symbolic link: predictions would replace the link, not "
                          f"write to {output_path.resolve()}; pass --output={output_path.resolve()}")
    modes = {r["id"]: question_mode(asked(r["question"], soft_switch), enable_thinking) for r in rows}
    done = predicted_rows(output_path, rows, model, adapter, modes)
    switches = {"enable_thinking": enable_thinking, "soft_switch": soft_switch}
    previous = _check_settings(output_path, {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed,
                                             "batch_size": batch_size,
                                             "system": system, "temperature": temperature, "top_p": top_p,
                                             "top_k": top_k, **switches}, model)
    if done and previous is None:  # rows of unknown settings and weights: resuming could mix two runs
        raise MedsftError(f"{output_path} holds {len(done)} predictions but no readable "
                          f"{summary_path(output_path).name}, which records the settings and weights they were made "
                          f"with, so they cannot be checked against this run: delete {output_path} (or move it "
                          "aside) to predict again, or pass another --output")
    weights = weights_fingerprint(model, adapter)  # a hub id's includes its revision (fetched here if unpinned)
    if previous is not None and previous.get("weights", weights) != weights:
        raise MedsftError(f"{output_path} holds predictions of other weights of {model}"
                          f"{' + ' + adapter if adapter else ''} (retrained since, or another revision?): delete it "
                          f"and {summary_path(output_path).name}, or pass another --output")
    todo = [r for r in rows if r["id"] not in done]
    print(f"{input_path}: {len(rows)} questions; {len(done)} already in {output_path}, {len(todo)} to predict")

    if not todo and previous is not None and previous.get("n") == len(rows):
        print(f"{output_path} is already complete; its summary {summary_path(output_path)} is kept")
        return previous

    # 2. The model and the decoding settings it will actually use
    load_s = 0.0
    if todo or previous is None:
        t0 = time.perf_counter()
        settings, run = (loaded or {}).get("backend") or load_backend(
            backend, model, adapter_dir, max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed,
            batch_size=batch_size, system=system, temperature=temperature, top_p=top_p, top_k=top_k)
        if loaded is not None:
            loaded["backend"] = settings, run
        load_s = time.perf_counter() - t0
    else:  # nothing to do: the earlier summary says how the file was made
        settings = {k: previous.get(k) for k in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k")}
        run = None
    settings = {**settings, "seed": seed, "system": system, "batch_size": batch_size, "backend": backend,
                **switches, "weights": weights, "model_revision": hub_revision(model)}

    # 3. Generate batch by batch, saving the file (and its summary) after each one
    stats = {"new_tokens": 0, "generate_s": 0.0, "n_generated": 0}
    bar = tqdm(total=len(rows), initial=len(done), desc="predict", unit="q", disable=not progress)
    clock = [time.perf_counter()]

    def save(pairs):
        now = time.perf_counter()
        stats["generate_s"] += now - clock[0]
        for i, result in pairs:
            done[todo[i]["id"]] = _row(todo[i], result, model, adapter, modes[todo[i]["id"]])
            stats["new_tokens"] += result["new_tokens"]
        stats["n_generated"] += len(pairs)
        with disk_errors(output_path.parent, None, None, then=CONTINUE):
            write_jsonl(output_path, [done[r["id"]] for r in rows if r["id"] in done])
            _write_summary(output_path, done, rows, model, adapter, settings, stats, load_s, started)
        bar.update(len(pairs))
        clock[0] = time.perf_counter()

    if todo:  # settings and weights on disk before the first row: a kill between rows and summary mixes nothing
        with disk_errors(output_path.parent, None, None, then=CONTINUE):
            _write_summary(output_path, done, rows, model, adapter, settings, stats, load_s, started)
    try:
        if todo:
            run([asked(r["question"], soft_switch) for r in todo], save, [modes[r["id"]] for r in todo])
    finally:  # ends the bar's line, so an error message starts a line of its own
        bar.close()
    with disk_errors(output_path.parent, None, None, then=CONTINUE):
        summary = _write_summary(output_path, done, rows, model, adapter, settings, stats, load_s, started)
    print(f"{len(done)} predictions in mode {', '.join(summary['modes'])} ({summary['n_truncated']} truncated at max_new_tokens={settings['max_new_tokens']}, "
          f"think {summary['think_status']}); {stats['new_tokens']} new tokens, "
          f"{summary['tokens_per_s'] or 0:.1f} tokens/s")
    print(f"wrote {output_path}")
    print(f"wrote {summary_path(output_path)}")
    return summary

def _write_summary(output_path, done, rows, model, adapter, settings, stats, load_s, started) -> dict:
    preds = [done[r["id"]] for r in rows if r["id"] in done]
    status = Counter(p.get("think_status") for p in preds)
    gen_s = stats["generate_s"]
    summary = {
        "model": model, "adapter": adapter, "output": str(output_path),
        "n": len(preds), "n_input": len(rows), "n_generated": stats["n_generated"],
        "n_resumed": len(preds) - stats["n_generated"],
        "n_truncated": sum(1 for p in preds if p.get("finished") is False),
        "think_status": {s: status.get(s, 0) for s in STATUSES},
        "modes": dict(sorted(Counter(p.get("mode", "think") for p in preds).items())),
        **settings,
        "total_new_tokens": sum(int(p.get("new_tokens") or 0) for p in preds),
        "new_tokens": stats["new_tokens"],  # this run's
        "load_s": round(load_s, 3), "generate_s": round(gen_s, 3),
        "wall_s": round(time.perf_counter() - started, 3),
        "tokens_per_s": round(stats["new_tokens"] / gen_s, 2) if gen_s > 0 else None,
    }
    write_json(summary_path(output_path), summary)
    return summary
