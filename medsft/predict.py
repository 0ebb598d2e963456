"""Inference shared by inference.py and inference_lora.py (and the evaluation scripts, for missing predictions).

* ``predict_file``: batch predictions over a JSONL split, resumable, the output rewritten atomically after each
  batch, with a ``<output stem>.summary.json`` beside it;
* ``chat``: the streamed terminal chat (one ``--question`` or an interactive multi-turn session);
* ``load_for_inference`` / ``merge_lora``: a full model or a base + LoRA adapter, and the adapter merged into a
  plain Hugging Face model directory.

Everything that can be checked without a model (model and adapter directories, input rows, output path, backend)
is checked first, so a mistake costs seconds, not a model load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from .chat import STATUSES, THINK_CLOSE, THINK_OPEN, split_output
from .generate import check_decoding
from .io import MedsftError, iter_jsonl, write_json, write_jsonl
from .models import TINY, base_model_of, is_hub_id

BACKENDS = ("transformers", "vllm")
LOCAL_ROOTS = ("output", "data", "results")  # the project's own folders: a missing path there is not a hub id
VLLM_MIN_CHUNK = 64  # vLLM schedules its own batches; hand it at least this many questions between saves


# --- checks that need no model ---------------------------------------------------------------------------------


def _looks_local(spec: str) -> bool:
    """True when a missing spec is meant as a local path (so it must not be looked up on ModelScope)."""
    if spec.startswith((".", "/", "~")) or "\\" in spec:
        return True
    first = spec.split("/", 1)[0]
    return first in LOCAL_ROOTS or Path(first).is_dir() or not is_hub_id(spec)


def check_model(spec, *, flag="--model_dir", producer="train.py") -> str:
    """Fail fast on a model spec that cannot work: a missing local directory or one without config.json."""
    if spec is None or not str(spec).strip():
        raise MedsftError(f"{flag} is empty: pass a model directory, a ModelScope id like Qwen/Qwen3-1.7B, or tiny")
    spec = str(spec)
    if spec == TINY:
        return spec
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            hint = " (it is a LoRA adapter: use inference_lora.py --adapter_dir)" if (path / "adapter_config.json").is_file() else ""
            raise MedsftError(f"{spec} is not a model directory (no config.json){hint}; pass {flag}=<a trained "
                              "model dir | Qwen/Qwen3-1.7B | tiny>")
        return spec
    if path.exists() or _looks_local(spec):
        run = f"run {producer} first, or " if producer else ""
        raise MedsftError(f"model directory {spec} not found: {run}pass {flag}=<a trained model dir | "
                          "Qwen/Qwen3-1.7B | tiny>")
    return spec  # a ModelScope id: resolved (downloaded or found in the cache) when loading


def check_adapter(adapter_dir, *, flag="--adapter_dir", producer="train_lora.py") -> Path:
    path = Path(str(adapter_dir)).expanduser()
    if not (path / "adapter_config.json").is_file():
        what = "not found" if not path.exists() else "has no adapter_config.json"
        raise MedsftError(f"LoRA adapter directory {adapter_dir} {what}: run {producer} first, or pass {flag}=<dir>")
    return path


def lora_base(adapter_dir, base_model=None, *, flag="--base_model") -> str:
    """The base model spec of an adapter: ``base_model`` if given, else the one recorded in the adapter."""
    base = base_model or base_model_of(adapter_dir)
    if not base:
        raise MedsftError(f"{adapter_dir}/adapter_config.json names no base model: pass {flag}=<spec>")
    return check_model(base, flag=flag, producer=None)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise MedsftError(f"--backend={backend}: expected one of {', '.join(BACKENDS)}")
    if backend == "vllm":
        from .generate import require_vllm

        require_vllm()


def check_writable(path) -> Path:
    """Fail fast when ``path`` cannot be written (a directory, under a file, or no permission)."""
    path = Path(path)
    if path.is_dir():
        raise MedsftError(f"output {path} is a directory: pass --output=<file.jsonl>")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise MedsftError(f"output {path} cannot be written: {parent} is a file, not a directory; pass another --output")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise MedsftError(f"output {path} cannot be written ({e.strerror} in {parent}); pass another --output") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise MedsftError(f"output {path} is not writable; pass another --output")
    return path


def read_questions(path) -> list[dict]:
    """The rows of a split as ``{id, question, ref_think, ref_answer}``; bad rows raise MedsftError with file:line.

    A row without ``id`` gets its 1-based line number as id, so any JSONL of questions can be predicted.
    """
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


def _spec_key(spec) -> str | None:
    if spec is None:
        return None
    path = Path(str(spec)).expanduser()
    return str(path.resolve()) if path.exists() else str(spec)


def load_done(output, rows: list[dict], model: str, adapter) -> dict:
    """Rows of an earlier run of the same split and model in ``output``, by id (for resuming).

    Unreadable lines (e.g. from a writer that was not atomic) are dropped with a warning and predicted again; rows
    of another split or another model raise MedsftError rather than end up mixed in one file.
    """
    output = Path(output)
    if not output.is_file():
        return {}
    questions = {r["id"]: r["question"] for r in rows}
    done = {}
    for lineno, obj, err in iter_jsonl(output):
        if err or "id" not in obj or "output" not in obj:
            print(f"warning: {output}:{lineno}: {err or 'not a prediction row'}; it will be predicted again")
            continue
        rid = obj["id"]
        if questions.get(rid, None) != obj.get("question"):
            raise MedsftError(f"{output}:{lineno}: id {rid!r} is not in the input split (or its question differs): "
                              "this file holds predictions for another split; delete it or pass another --output")
        if _spec_key(obj.get("model")) != _spec_key(model) or _spec_key(obj.get("adapter")) != _spec_key(adapter):
            by = obj.get("model") if obj.get("adapter") is None else f"{obj.get('model')} + {obj.get('adapter')}"
            raise MedsftError(f"{output}:{lineno}: predicted by {by}, not by this model; delete it or pass another "
                              "--output so predictions of two models are not mixed")
        done[rid] = obj
    return done


def weights_fingerprint(model: str, adapter: str | None) -> str | None:
    """A hash of the weight files behind a local model (and adapter), recorded in the summary so predictions of
    retrained weights are never resumed into, or mistaken for, an older file. None for a hub id (its files are
    fixed by the revision). Reads the weights once (a few seconds for 1.7B)."""
    from .models import TINY, ensure_tiny

    dirs = [ensure_tiny()] if model == TINY else [Path(model).expanduser()] if Path(model).expanduser().is_dir() else []
    dirs += [Path(adapter)] if adapter else []
    files = [f for d in dirs for f in sorted(d.glob("*.safetensors"))]
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def summary_path(output) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}.summary.json")


def _check_settings(output, requested: dict) -> dict | None:
    """Refuse to resume a file that was started with other decoding settings; return its summary if any.

    Sampling knobs left at None (the model's default) and the seed under greedy decoding are not compared.
    """
    path = summary_path(output)
    if not (Path(output).is_file() and path.is_file()):
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    keys = ["max_new_tokens", "do_sample", "system"]
    if requested["do_sample"]:
        keys += ["seed", "batch_size"] + [k for k in ("temperature", "top_p", "top_k") if requested.get(k) is not None]
    diff = [f"{k}={old.get(k)!r} (now {requested.get(k)!r})" for k in keys if k in old and old[k] != requested.get(k)]
    if diff:
        raise MedsftError(f"{output} was started with other decoding settings: {', '.join(diff)}; rerun with those, "
                          "or delete it (and its summary) / pass another --output")
    return old


# --- models ----------------------------------------------------------------------------------------------------


def load_for_inference(model, adapter_dir=None, dtype=None, device=None):
    """(model, tokenizer) for a model spec, with a LoRA adapter on top when ``adapter_dir`` is given."""
    from .models import load_model, load_tokenizer

    print(f"loading {model}" + (f" + LoRA adapter {adapter_dir}" if adapter_dir else ""))
    base = load_model(model, dtype=dtype, device=device)
    tokenizer = load_tokenizer(model)
    if adapter_dir is None:
        return base, tokenizer
    from peft import PeftModel

    if (Path(adapter_dir) / "tokenizer_config.json").is_file():  # the tokenizer saved with the adapter at training
        tokenizer = load_tokenizer(adapter_dir)
    return PeftModel.from_pretrained(base, str(adapter_dir)), tokenizer


def merge_lora(adapter_dir, merged_dir, base_model=None) -> Path:
    """Fold a LoRA adapter into its base and save a plain Hugging Face model directory (safetensors, tokenizer with
    its chat template, generation_config), written next to ``merged_dir`` and moved into place when complete."""
    import torch
    from transformers import AutoConfig

    from .models import resolve_model

    base = lora_base(adapter_dir, base_model)
    # merge in fp32 on the CPU (exact W + BA), then store in the base's own dtype (bf16 for Qwen3): one rounding
    model, tokenizer = load_for_inference(base, adapter_dir, dtype=torch.float32, device="cpu")
    merged = model.merge_and_unload()
    config = AutoConfig.from_pretrained(resolve_model(base))
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    merged = merged.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    merged_dir = Path(merged_dir)
    merged_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{merged_dir.name}-", dir=merged_dir.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "merge_config.json", {"MODEL": base, "ADAPTER_DIR": str(adapter_dir)})
        old = None
        if merged_dir.exists():  # replace an older merge only once the new one is complete
            old = merged_dir.with_name(f".{merged_dir.name}-old-{os.getpid()}")
            os.replace(merged_dir, old)
        os.replace(tmp, merged_dir)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return merged_dir


# --- batch predictions -----------------------------------------------------------------------------------------


def _row(src: dict, result: dict, model: str, adapter) -> dict:
    think, answer, status = split_output(result["output"])
    row = {"id": src["id"], "question": src["question"], "ref_think": src["ref_think"], "ref_answer": src["ref_answer"],
           "output": result["output"], "think": think, "answer": answer, "think_status": status,
           "new_tokens": result["new_tokens"], "finished": result["finished"], "model": model}
    if adapter is not None:
        row["adapter"] = adapter
    return row


def predict_file(model, input_path, output_path, *, adapter_dir=None, max_new_tokens=2048, do_sample=True, seed=42,
                 batch_size=8, system=None, temperature=None, top_p=None, top_k=None, backend="transformers",
                 progress=True) -> dict:
    """Predict every row of ``input_path`` into ``output_path``; return (and save) the run's summary.

    ``model`` is a model spec (None with an ``adapter_dir``: the adapter's base). Rows already in ``output_path``
    are skipped, so an interrupted run continues where it stopped; after each batch the whole file is rewritten
    atomically in input order, so a kill never leaves half a line. Under greedy decoding a resumed file is
    byte-identical to an uninterrupted one.
    """
    started = time.perf_counter()
    # 1. Everything checkable without a model
    if batch_size < 1:
        raise MedsftError(f"--batch_size={batch_size}: must be at least 1")
    check_decoding(max_new_tokens, do_sample, temperature, top_p, top_k)
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
    output_path = check_writable(output_path)
    done = load_done(output_path, rows, model, adapter)
    previous = _check_settings(output_path, {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed,
                                             "batch_size": batch_size,
                                             "system": system, "temperature": temperature, "top_p": top_p,
                                             "top_k": top_k})
    weights = weights_fingerprint(model, adapter)
    if previous is not None and previous.get("weights", weights) != weights:
        raise MedsftError(f"{output_path} holds predictions of other weights of {model}"
                          f"{' + ' + adapter if adapter else ''} (retrained since?): delete it and "
                          f"{summary_path(output_path).name}, or pass another --output")
    todo = [r for r in rows if r["id"] not in done]
    print(f"{input_path}: {len(rows)} questions; {len(done)} already in {output_path}, {len(todo)} to predict")

    if not todo and previous is not None and previous.get("n") == len(rows):
        print(f"{output_path} is already complete; its summary {summary_path(output_path)} is kept")
        return previous

    # 2. The model and the decoding settings it will actually use
    load_s = 0.0
    if todo or previous is None:
        t0 = time.perf_counter()
        _, _, settings, run = _backend(backend, model, adapter_dir, max_new_tokens=max_new_tokens,
                                       do_sample=do_sample, seed=seed, batch_size=batch_size, system=system,
                                       temperature=temperature, top_p=top_p, top_k=top_k)
        load_s = time.perf_counter() - t0
    else:  # nothing to do: the earlier summary says how the file was made
        settings = {k: previous.get(k) for k in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k")}
        run = None
    settings = {**settings, "seed": seed, "system": system, "batch_size": batch_size, "backend": backend,
                "weights": weights}

    # 3. Generate batch by batch, saving the file (and its summary) after each one
    stats = {"new_tokens": 0, "generate_s": 0.0, "n_generated": 0}
    bar = tqdm(total=len(rows), initial=len(done), desc="predict", unit="q", disable=not progress)
    clock = [time.perf_counter()]

    def save(pairs):
        now = time.perf_counter()
        stats["generate_s"] += now - clock[0]
        for i, result in pairs:
            done[todo[i]["id"]] = _row(todo[i], result, model, adapter)
            stats["new_tokens"] += result["new_tokens"]
        stats["n_generated"] += len(pairs)
        write_jsonl(output_path, [done[r["id"]] for r in rows if r["id"] in done])
        _write_summary(output_path, done, rows, model, adapter, settings, stats, load_s, started)
        bar.update(len(pairs))
        clock[0] = time.perf_counter()

    if todo:
        run([r["question"] for r in todo], save)
    bar.close()
    summary = _write_summary(output_path, done, rows, model, adapter, settings, stats, load_s, started)
    print(f"{len(done)} predictions ({summary['n_truncated']} truncated at max_new_tokens={settings['max_new_tokens']}, "
          f"think {summary['think_status']}); {stats['new_tokens']} new tokens, "
          f"{summary['tokens_per_s'] or 0:.1f} tokens/s")
    print(f"wrote {output_path}")
    print(f"wrote {summary_path(output_path)}")
    return summary


def _backend(backend, model, adapter_dir, *, max_new_tokens, do_sample, seed, batch_size, system, temperature,
             top_p, top_k):
    """Load ``model`` on ``backend``; return (engine, tokenizer, decoding settings, run(questions, on_batch))."""
    from . import generate as gen

    if backend == "vllm":
        from .models import load_tokenizer, resolve_model

        model_dir = resolve_model(model)
        tokenizer = load_tokenizer(adapter_dir if adapter_dir and (Path(adapter_dir) / "tokenizer_config.json").is_file() else model)
        settings = gen.vllm_settings(model_dir, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                     temperature=temperature, top_p=top_p, top_k=top_k)
        llm = gen.load_vllm(model_dir, seed=seed, adapter_dir=adapter_dir)
        stop = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")})

        def run(questions, on_batch):
            return gen.generate_vllm(llm, tokenizer, questions, settings=settings, stop_ids=stop, seed=seed,
                                     system=system, adapter_dir=adapter_dir, on_batch=on_batch,
                                     batch_size=max(batch_size, VLLM_MIN_CHUNK))

        return llm, tokenizer, settings, run
    net, tokenizer = load_for_inference(model, adapter_dir)
    settings = gen.used_settings(gen.generation_config(net, tokenizer, max_new_tokens=max_new_tokens,
                                                       do_sample=do_sample, temperature=temperature, top_p=top_p,
                                                       top_k=top_k))

    def run(questions, on_batch):
        return gen.generate(net, tokenizer, questions, max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed,
                            batch_size=batch_size, system=system, temperature=temperature, top_p=top_p, top_k=top_k,
                            progress=False, on_batch=on_batch)

    return net, tokenizer, settings, run


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
        **settings,
        "total_new_tokens": sum(int(p.get("new_tokens") or 0) for p in preds),
        "new_tokens": stats["new_tokens"],  # this run's
        "load_s": round(load_s, 3), "generate_s": round(gen_s, 3),
        "wall_s": round(time.perf_counter() - started, 3),
        "tokens_per_s": round(stats["new_tokens"] / gen_s, 2) if gen_s > 0 else None,
    }
    write_json(summary_path(output_path), summary)
    return summary


# --- the chat --------------------------------------------------------------------------------------------------


class SectionPrinter:
    """Print a streamed assistant text with its reasoning and its answer under separate headers.

    Chunks may split the ``<think>``/``</think>`` tags anywhere; the tags themselves are never printed. The
    reasoning is dimmed on a terminal.
    """

    THINK_HEADER = "【思考】"
    ANSWER_HEADER = "【回答】"

    def __init__(self, write, color: bool = False):
        self.write = write
        self.color = color
        self.buf = ""
        self.state = "start"  # start -> think_lead -> think -> answer_lead -> answer, or start -> answer

    def _header(self, text: str) -> None:
        if self.color:
            self.write("\033[0m")
        self.write(("\n" if self.state != "start" else "") + text + "\n")
        if self.color and text == self.THINK_HEADER:
            self.write("\033[2m")

    def feed(self, text: str) -> None:
        self.buf += text
        while True:
            if self.state == "start":
                head = self.buf.lstrip()
                if not head or (THINK_OPEN.startswith(head) and head != THINK_OPEN):
                    return  # nothing yet, or a <think> tag still arriving
                if head.startswith(THINK_OPEN):
                    self._header(self.THINK_HEADER)
                    self.state, self.buf = "think_lead", head[len(THINK_OPEN):]
                else:
                    self._header(self.ANSWER_HEADER)
                    self.state, self.buf = "answer", head
                continue
            if self.state in ("think_lead", "answer_lead"):  # whitespace right after a tag is not shown
                self.buf = self.buf.lstrip()
                if not self.buf:
                    return
                self.state = "think" if self.state == "think_lead" else "answer"
                continue
            if self.state == "think":
                end = self.buf.find(THINK_CLOSE)
                if end >= 0:
                    self.write(self.buf[:end].rstrip())
                    self._header(self.ANSWER_HEADER)
                    self.state, self.buf = "answer_lead", self.buf[end + len(THINK_CLOSE):]
                    continue
                keep = next((k for k in range(min(len(THINK_CLOSE) - 1, len(self.buf)), 0, -1)
                             if THINK_CLOSE.startswith(self.buf[-k:])), 0)
                body, tail = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
                stripped = body.rstrip()  # whitespace before </think> is not shown
                self.write(stripped)
                self.buf = body[len(stripped):] + tail
                return
            self.write(self.buf)
            self.buf = ""
            return

    def close(self) -> None:
        """End the message: flush what was held back (an unfinished tag is shown as text)."""
        if self.state == "start" and self.buf.strip():
            self._header(self.ANSWER_HEADER)
            self.state = "answer"
        if self.state in ("think", "answer"):
            self.write(self.buf.rstrip() if self.state == "think" else self.buf)
        if self.color:
            self.write("\033[0m")
        self.write("\n")
        self.buf, self.state = "", "start"


CHAT_HELP = "输入问题后回车。/reset 清空对话历史，/exit 退出（Ctrl-D 也可）；回答中按 Ctrl-C 可中止当前回答。"


def _answer(model, tokenizer, question, history, out, *, color, turn, gen_kwargs) -> dict | None:
    """Stream one answer to ``out``; return the result, or None when the user stopped it with Ctrl-C."""
    from .generate import stream

    printer = SectionPrinter(lambda s: (out.write(s), out.flush()), color=color)
    stop = threading.Event()
    try:
        result = stream(model, tokenizer, question, printer.feed, history=history, stop_event=stop,
                        **{**gen_kwargs, "seed": gen_kwargs["seed"] + turn})
    except KeyboardInterrupt:
        printer.close()
        out.write("（已中止）\n")
        return None
    printer.close()
    if not result["finished"]:
        out.write(f"（达到 max_new_tokens={gen_kwargs['max_new_tokens']}，回答被截断）\n")
    out.flush()
    return result


def chat(model, tokenizer, *, question=None, max_new_tokens=2048, do_sample=True, seed=42, system=None,
         temperature=None, top_p=None, top_k=None, stdin=None, out=None) -> int:
    """Answer ``question`` (streamed) and return, or run the interactive multi-turn chat on ``stdin``.

    History is kept as Qwen3's template expects (the assistant's answer as content, its reasoning as
    reasoning_content, which the template drops for earlier turns). Works with a pipe as stdin. Returns 0.
    """
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    color = out.isatty() if hasattr(out, "isatty") else False
    gen_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed, "system": system,
                  "temperature": temperature, "top_p": top_p, "top_k": top_k}
    if question is not None:
        _answer(model, tokenizer, question, None, out, color=color, turn=0, gen_kwargs=gen_kwargs)
        return 0
    tty = stdin is sys.stdin and stdin.isatty()
    out.write(CHAT_HELP + "\n")
    history: list[dict] = []
    turn = 0
    while True:
        try:
            if tty:
                line = input("\n用户> ")
            else:
                out.write("\n用户> ")
                line = stdin.readline()
                if not line:
                    raise EOFError
                out.write(line if line.endswith("\n") else line + "\n")  # echo, so a piped transcript reads well
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history, turn = [], 0
            out.write("（对话历史已清空）\n")
            continue
        if text.startswith("/"):
            out.write(f"未知命令 {text}。{CHAT_HELP}\n")
            continue
        result = _answer(model, tokenizer, text, history, out, color=color, turn=turn, gen_kwargs=gen_kwargs)
        if result is None:
            continue
        think, answer, _ = split_output(result["output"])
        history += [{"role": "user", "content": text},
                    {"role": "assistant", "content": answer, "reasoning_content": think}]
        turn += 1


# --- the scripts' shared front end -----------------------------------------------------------------------------


def choose_mode(question, input_path, argv=None) -> str:
    """'question', 'predict' or 'chat' from the QUESTION and INPUT constants; an empty --question is an error."""
    argv = sys.argv[1:] if argv is None else argv
    given = any(a.split("=", 1)[0] == "--question" for a in argv)
    if question is not None and not isinstance(question, str):
        question = str(question)
    if (given or question) and not (question or "").strip():
        raise MedsftError("empty question: pass --question=\"your question\", or leave it out for the interactive chat")
    if question and input_path:
        raise MedsftError("pass either --question (one answer) or --input (batch predictions), not both")
    return "question" if question else "predict" if input_path else "chat"
