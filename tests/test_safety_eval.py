"""Issue 34, predictions and evaluation side: predictions never mix (5), the judge degrades per sample (7), printed
commands are safe to paste (8), files any JSON reader accepts (9), control characters shown, not obeyed (12).
No model is loaded: the backend is a stand-in."""
from __future__ import annotations

import http.client
import json
import os
import shlex
import socket
import ssl
import subprocess
import threading
import urllib.error
from pathlib import Path

import pytest
from oracles import CountingFile, raises_naming

from medsft.files import MedsftError

QUESTIONS = ["头痛三天怎么办？", "高血压饮食注意什么？", "失眠怎么办？"]


def _split(d: Path) -> Path:
    path = d / "test.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "think": "参考思考", "answer": "参考回答"},
                                       ensure_ascii=False) + "\n" for i, q in enumerate(QUESTIONS)), encoding="utf-8")
    return path


def _model(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text('{"model_type": "qwen3"}', encoding="utf-8")
    (d / "model.safetensors").write_bytes(b"v1 weights")
    return d


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs."""


def _backend(monkeypatch, loads: list, kill_after_rows: bool = False):
    import medsft.predict as P

    def load_backend(backend, model, adapter_dir, *, max_new_tokens, do_sample, **kw):
        loads.append(max_new_tokens)

        def run(questions, on_batch, modes=None):
            for i, q in enumerate(questions):
                on_batch([(i, {"output": f"<think>\n想{i}\n</think>\n\n答{i}", "new_tokens": 5, "finished": True})])

        return {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": None, "top_p": None,
                "top_k": None}, run

    monkeypatch.setattr(P, "load_backend", load_backend)
    if kill_after_rows:
        real = P.write_jsonl

        def write_then_die(path, rows):
            real(path, rows)
            raise Killed  # killed after the rows reached the disk, before anything else was written

        monkeypatch.setattr(P, "write_jsonl", write_then_die)


# --- 5. predictions never mix ---------------------------------------------------------------------------------------


def test_predictions_record_settings_and_weights_before_the_first_row(tmp_path, monkeypatch):
    from medsft.predict import predict_file, summary_path

    split, model, out = _split(tmp_path), _model(tmp_path / "m"), tmp_path / "preds.jsonl"
    loads = []
    with monkeypatch.context() as m:
        _backend(m, loads, kill_after_rows=True)
        with pytest.raises(Killed):
            predict_file(str(model), split, out, max_new_tokens=64, do_sample=False, progress=False)
    assert out.is_file() and len(out.read_text(encoding="utf-8").splitlines()) == 1
    recorded = json.loads(summary_path(out).read_text(encoding="utf-8"))
    assert recorded["max_new_tokens"] == 64 and recorded["weights"]
    _backend(monkeypatch, loads)
    with raises_naming(MedsftError, out, "max_new_tokens=64", "--output"):  # other settings over those rows: refused
        predict_file(str(model), split, out, max_new_tokens=2048, do_sample=False, progress=False)
    (model / "model.safetensors").write_bytes(b"v2 weights")  # retrained: refused too
    with raises_naming(MedsftError, out, model, summary_path(out).name, "--output"):  # the file, whose, the ways out
        predict_file(str(model), split, out, max_new_tokens=64, do_sample=False, progress=False)
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1 and loads == [64]


def test_rows_without_a_summary_are_never_resumed_into(tmp_path, monkeypatch):
    from medsft.predict import predict_file, summary_path

    split, model, out = _split(tmp_path), _model(tmp_path / "m"), tmp_path / "preds.jsonl"
    loads = []
    _backend(monkeypatch, loads)
    predict_file(str(model), split, out, max_new_tokens=64, do_sample=False, progress=False)
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text(lines[0] + "\n", encoding="utf-8")
    summary_path(out).unlink()  # rows of unknown settings and weights (an older version's kill, a lost file)
    before = out.read_bytes()
    with pytest.raises(MedsftError) as e:
        predict_file(str(model), split, out, max_new_tokens=2048, do_sample=False, progress=False)
    assert str(out) in str(e.value) and summary_path(out).name in str(e.value)
    assert out.read_bytes() == before and loads == [64]


@pytest.mark.parametrize("how", ["same", "symlink", "relative"])
def test_output_equal_to_input_is_refused(tmp_path, monkeypatch, how):
    from medsft.predict import predict_file

    split, model = _split(tmp_path), _model(tmp_path / "m")
    before = split.read_bytes()
    out = {"same": split, "symlink": tmp_path / "link.jsonl", "relative": None}[how]
    if how == "symlink":
        out.symlink_to(split)
    if how == "relative":
        monkeypatch.chdir(tmp_path / "m")
        out = Path("..") / "m" / ".." / "test.jsonl"
    loads = []
    _backend(monkeypatch, loads)
    with pytest.raises(MedsftError) as e:
        predict_file(str(model), split, out, max_new_tokens=8, do_sample=False, progress=False)
    assert "--output" in str(e.value) and "--input" in str(e.value)
    assert split.read_bytes() == before and loads == []


# --- 7. the judge degrades per sample -------------------------------------------------------------------------------


class RawServer:
    """A TCP server on 127.0.0.1 that answers every request with ``raw`` bytes, then closes (b"": no answer)."""

    def __init__(self, raw: bytes):
        self.raw, self.hits = raw, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.hits += 1
                if self.raw:
                    conn.sendall(self.raw)

    def close(self):
        self.sock.close()


ROWS = [{"think": "第一步，问诊。第二步，检查。", "ref_think": "第一步，问诊。第二步，检查。", "ref_answer": "就医",
         "mode": "think"} for _ in range(2)]


def _score_rows(judge):
    from medsft.think_steps import split_steps

    per_sample = [{"recall": 0.5, "precision": 0.5, "f1": 0.5} for _ in ROWS]
    return judge.score_rows(ROWS, per_sample, split_steps, progress=False), per_sample


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"choices\": [",  # IncompleteRead
    b"HELLO THERE\r\n\r\n",  # BadStatusLine
    b"",  # RemoteDisconnected
], ids=["IncompleteRead", "BadStatusLine", "RemoteDisconnected"])
def test_transport_errors_are_retried_then_a_per_sample_fallback(tmp_path, raw):
    from medsft.judge import Judge

    server = RawServer(raw)
    try:
        judge = Judge(server.url, "m", "sk-secret", tmp_path / "cache.jsonl", retries=1, backoff=0, workers=1,
                      timeout=10)
        summary, per_sample = _score_rows(judge)
    finally:
        server.close()
    assert summary["n_fallback"] == len(ROWS) and summary["n_judged"] == 0
    assert server.hits == 2 * len(ROWS)  # 1 + retries tries for the first call of every sample
    assert all(item["judge_fallback"] and item["judge_f1"] == 0.5 for item in per_sample)


@pytest.mark.parametrize("error", [ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
                                   http.client.IncompleteRead(b"{", 10), ConnectionResetError(104, "reset"),
                                   TimeoutError("timed out"), urllib.error.URLError(ssl.SSLEOFError(8, "EOF")),
                                   http.client.RemoteDisconnected("closed")],
                         ids=["SSLEOFError", "IncompleteRead", "ConnectionReset", "Timeout", "URLError-SSL",
                              "RemoteDisconnected"])
def test_every_transport_error_is_a_judge_error(tmp_path, error):
    from medsft.judge import Judge

    judge = Judge("https://judge.example/v1?api-key=sk-in-query", "m", "sk", tmp_path / "c.jsonl", retries=2,
                  backoff=0, workers=1)
    tries = []

    def opener(req, timeout):
        tries.append(req.full_url)
        raise error

    judge._opener.open = opener
    summary, per_sample = _score_rows(judge)
    assert summary["n_fallback"] == len(ROWS) and len(tries) == 3 * len(ROWS)
    assert not any("sk-in-query" in item["judge_error"] for item in per_sample)


@pytest.mark.parametrize("url", ["https://judge.example/v1?api-key=sk se cret", "https://judge.example/v 1?api-key=sk",
                                 "https://judge.example/v1?api-key=s\nk", "https://judge.example/v1?key=s\x7fk",
                                 "https://judge.ex ample/v1?api-key=sk", "https://judge.example/v1?api-key=sk秘"])
def test_a_malformed_url_is_refused_at_the_check_naming_no_query(url):
    from medsft.judge import JudgeConfigError, check_base_url

    with pytest.raises(JudgeConfigError) as e:
        check_base_url(url)
    assert "api-key" not in str(e.value) and "sk" not in str(e.value).replace("https", ""), str(e.value)


def test_the_cache_key_includes_the_endpoint(tmp_path):
    from test_judge import FakeServer

    answer = lambda body, n, kind: json.dumps([{"step": k, "label": "Matched" if kind == "recall" else "Match"}  # noqa: E731
                                               for k in range(1, n + 1)])
    from medsft.judge import Judge

    with FakeServer(answer) as a, FakeServer(answer) as b:
        first = Judge(a.url, "m", "sk", tmp_path / "cache.jsonl", backoff=0, workers=1, timeout=10)
        _score_rows(first)
        assert a.requests
        second = Judge(b.url, "m", "sk", tmp_path / "cache.jsonl", backoff=0, workers=1, timeout=10)
        summary, _ = _score_rows(second)
    assert len(b.requests) == len(a.requests) and summary["n_judged"] == len(ROWS)  # another endpoint: asked again


# --- 8. printed commands are safe to paste --------------------------------------------------------------------------


def _eval_cfg(tmp_path, preds: Path) -> dict:
    return {"MODEL_DIR": str(tmp_path / "gone"), "ADAPTER_DIR": str(tmp_path / "gone-adapter"), "BASE_MODEL": "",
            "TEST_FILE": str(tmp_path / "test.jsonl"), "PREDICTIONS": str(preds),
            "BASE_PREDICTIONS": str(tmp_path / "base preds.jsonl"), "EVAL_BASE": True}


@pytest.mark.parametrize("tag", ["full", "lora"])
@pytest.mark.parametrize("hostile", ["<x; touch pwned.txt #", "<x>; touch pwned.txt #", "$(touch pwned.txt)"])
def test_a_hostile_model_name_in_predictions_prints_no_runnable_command(tmp_path, tag, hostile):
    from medsft.scoring import targets

    _split(tmp_path)
    preds = tmp_path / "preds.jsonl"
    row = {"id": "q0", "question": QUESTIONS[0], "model": hostile, "adapter": "a"}
    preds.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(MedsftError) as e:
        targets(_eval_cfg(tmp_path, preds), tag)
    commands = [line.strip() for line in str(e.value).splitlines() if line.strip().startswith("python ")]
    assert commands, str(e.value)
    for command in commands:
        subprocess.run(["bash", "-c", "true" + command[len("python"):]], cwd=tmp_path, capture_output=True)
    assert not (tmp_path / "pwned.txt").exists(), commands


def test_every_value_of_a_printed_command_is_quoted_but_our_placeholders(tmp_path):
    from medsft.scoring import PLACEHOLDER_BASE, _command

    cfg = {"TEST_FILE": "<data>/test.jsonl"}
    line = _command("inference.py", {"model_dir": "<x>; touch p #", "base": PLACEHOLDER_BASE}, cfg, "out put.jsonl")
    words = shlex.split(line.replace(PLACEHOLDER_BASE, "PLACEHOLDER"))
    assert "--model_dir=<x>; touch p #" in words and "--input=<data>/test.jsonl" in words
    assert "--output=out put.jsonl" in words and f"--base={PLACEHOLDER_BASE}" in line


# --- 9. files any JSON reader accepts -------------------------------------------------------------------------------


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_results_json_never_holds_nan_or_infinity(tmp_path):
    from medsft.files import write_json, write_outputs

    path = write_json(tmp_path / "r.json", {"final_eval_loss": float("nan"), "n": 3,
                                            "history": [{"loss": float("inf")}, {"loss": 1.5}],
                                            "curve": [1.0, float("-inf")]})
    data = _strict(path.read_text(encoding="utf-8"))
    assert data["final_eval_loss"] is None and "NaN" in data["final_eval_loss_null"]
    assert data["history"][0]["loss"] is None and "Infinity" in data["history"][0]["loss_null"]
    assert data["curve"] == [1.0, None] and "-Infinity" in data["curve_null"] and data["n"] == 3
    paths = write_outputs(tmp_path, "cot_x", {"f1": float("nan")}, [{"f1": float("nan")}])
    for p in paths:
        for line in p.read_text(encoding="utf-8").splitlines() if p.suffix == ".jsonl" else [p.read_text()]:
            _strict(line)
    assert write_json(tmp_path / "ok.json", {"a": 1.5}).read_text() == '{\n  "a": 1.5\n}\n'  # unchanged otherwise


def test_a_jsonl_line_over_the_limit_is_refused_with_file_and_line(tmp_path, monkeypatch):
    import medsft.files as F

    monkeypatch.setattr(F, "MAX_LINE_BYTES", 4096)
    path = tmp_path / "big.jsonl"
    path.write_text('{"question": "a"}\n' + json.dumps({"question": "x" * 100_000}) + "\n", encoding="utf-8")
    read, real_open = [], open
    monkeypatch.setattr("builtins.open", lambda *a, **k: CountingFile(real_open(*a, **k), read))
    with pytest.raises(MedsftError) as e:
        F.read_jsonl(path)
    monkeypatch.undo()
    assert f"{path}:2" in str(e.value) and "4,096" in str(e.value), str(e.value)
    assert sum(read) < 3 * 4096, sum(read)  # stopped at the limit: never read whole


# --- 12. control characters are shown, not obeyed -------------------------------------------------------------------

HOSTILE = "答案\x1b[2J\x1b]0;pwned\x07\r覆盖\u202e甲乙\x9b31m"


def test_the_chat_shows_control_characters_of_model_text(tmp_path):
    from medsft.chat_repl import SectionPrinter

    shown = []
    printer = SectionPrinter(shown.append, color=True)
    for chunk in ("<think>\n想\x1b[31m", "红</think>\n\n", HOSTILE, "\n第二行\t缩进"):
        printer.feed(chunk)
    printer.close()
    text = "".join(shown)
    body = text.replace("\033[0m", "").replace("\033[2m", "")  # the printer's own styling stays
    assert not any(c in body for c in "\x1b\x07\r\u202e\x9b"), repr(body)
    assert "\\x1b[2J" in body and "\\r" in body and "\\u202e" in body and "\n第二行\t缩进" in body


def test_the_training_preview_shows_control_characters(tmp_path, monkeypatch, capsys):
    from medsft.training import results

    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"question": "问\x1b[2J题", "answer": "a"}, ensure_ascii=False) + "\n", encoding="utf-8")
    monkeypatch.setattr(results.gen, "generate", lambda *a, **k: [{"output": HOSTILE, "finished": True}])
    cfg = {"PREVIEW_QUESTIONS": 1, "PREVIEW_MAX_NEW_TOKENS": 8, "ENGINE": "single", "SEED": 0, "OUTPUT_DIR": "out"}
    items = results.preview(None, None, val, cfg)
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r\u202e\x9b"), repr(out)
    assert "\\x1b[2J" in out and items[0]["output"] == HOSTILE  # what is kept stays the model's own text


def test_the_base_spec_read_from_predictions_stops_at_the_line_limit(tmp_path, monkeypatch):
    import medsft.scoring as S

    monkeypatch.setattr(S, "MAX_LINE_BYTES", 64)
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"model": "tiny", "adapter": "a", "pad": "x" * 1000}) + "\n", encoding="utf-8")
    assert S._base_spec({"BASE_MODEL": ""}, tmp_path / "gone", preds) is None  # not read whole: not a row
    monkeypatch.setattr(S, "MAX_LINE_BYTES", 1 << 20)
    assert S._base_spec({"BASE_MODEL": ""}, tmp_path / "gone", preds) == "tiny"
