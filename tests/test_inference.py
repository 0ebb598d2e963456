"""inference.py / inference_lora.py / medsft.predict / medsft.chat_repl on the tiny model: batch = one-at-a-time
under greedy decoding, resume after an interruption, the streamed chat through stdin, LoRA merge, and the fail-fast
error messages."""

from __future__ import annotations

import json
import runpy
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest

from conftest import ROOT, run_script
from oracles import assert_exit, lines_naming, numbers_in, raises_naming

QUESTIONS = [
    "头痛三天，伴有低烧，应该怎么办？",
    "高血压患者日常饮食需要注意哪些方面？请从盐分摄入、脂肪和饮酒三个角度详细说明。",
    "糖尿病的早期症状有哪些？",
    "孩子咳嗽一周不见好转，夜间加重，需要做哪些检查？",
    "失眠",
    "长期服用阿司匹林有什么副作用？",
    "胃痛时能不能喝牛奶？",
]
GREEDY = ["--do_sample=false"]


def write_split(path: Path, questions=QUESTIONS) -> Path:
    rows = [{"id": f"q{i}", "question": q, "think": f"参考思考{i}", "answer": f"参考回答{i}", "split": "test"}
            for i, q in enumerate(questions)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_main(monkeypatch, script: str, *args: str):
    """Run a stage script's main() in this process (no second torch import), as `python script args` would."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # configure() installs its own; restore it afterwards
    runpy.run_path(str(ROOT / script), run_name="__main__")


@pytest.fixture(scope="module")
def tiny():
    from medsft.models import load_model, load_tokenizer

    return load_model("tiny"), load_tokenizer("tiny")


def greedy(model, tokenizer, questions, max_new_tokens, batch_size=1, **kw):
    from medsft.generate import generate

    return generate(model, tokenizer, questions, max_new_tokens=max_new_tokens, do_sample=False, batch_size=batch_size,
                    progress=False, **kw)


# --- fail fast -------------------------------------------------------------------------------------------------


def test_bad_inputs_fail_before_loading_with_the_fix(tmp_path):
    split = write_split(tmp_path / "test.jsonl")
    (tmp_path / "malformed.jsonl").write_text('{"question": "a"}\n{"question": "b",\n', encoding="utf-8")
    (tmp_path / "empty_q.jsonl").write_text('{"question": "a"}\n{"question": "b"}\n{"question": "  "}\n', encoding="utf-8")
    (tmp_path / "dup.jsonl").write_text('{"id": 7, "question": "a"}\n{"id": 7, "question": "b"}\n', encoding="utf-8")
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "a_file").write_text("x")
    d = tmp_path
    cases = [  # what each message must name: the file (and line) or the option, the bad value, and the fix
        ("inference.py", [], ["output/full", "train.py", "--model_dir"]),
        ("inference_lora.py", [], ["output/lora", "train_lora.py", "--adapter_dir"]),
        ("inference.py", [f"--model_dir={d / 'not_a_model'}"], [d / "not_a_model", "config.json", "--model_dir="]),
        ("inference.py", ["--model_dir=tiny", "--question=   "], ["--question="]),
        ("inference.py", ["--model_dir=tiny", "--question="], ["--question="]),
        ("inference.py", ["--model_dir=tiny", "--question=hi", f"--input={split}"], ["--question", "--input"]),
        ("inference.py", ["--model_dir=tiny", f"--input={d / 'missing.jsonl'}"], [d / "missing.jsonl", "data.py"]),
        ("inference.py", ["--model_dir=tiny", f"--input={d / 'malformed.jsonl'}"], [f"{d / 'malformed.jsonl'}:2:", "JSON"]),
        ("inference.py", ["--model_dir=tiny", f"--input={d / 'empty_q.jsonl'}"], [f"{d / 'empty_q.jsonl'}:3:", "'question'"]),
        ("inference.py", ["--model_dir=tiny", f"--input={d / 'dup.jsonl'}"], [f"{d / 'dup.jsonl'}:2:", "id 7", "line 1"]),
        ("inference.py", ["--model_dir=tiny", f"--input={split}", f"--output={d / 'a_file' / 'p.jsonl'}"],
         [f"{d / 'a_file'} ", "--output"]),  # the path that blocks it
        ("inference.py", ["--model_dir=tiny", f"--input={split}", f"--output={d}"], [f" {d} ", "--output="]),
        ("inference.py", ["--model_dir=tiny", "--question=hi", "--temperature=0"], ["--temperature=0", "--do_sample=false"]),
        ("inference.py", ["--model_dir=tiny", f"--input={split}", "--max_new_tokens=0"], ["--max_new_tokens=0"]),
        ("inference.py", ["--model_dir=tiny", "--question=hi", "--top_p=2"], ["--top_p=2", "(0, 1]"]),
    ]
    from medsft.generate import vllm_available

    if not vllm_available():
        cases.append(("inference.py", ["--model_dir=tiny", f"--input={split}", "--backend=vllm"],
                      ["--backend=vllm", "pip install vllm"]))
    for script, args, facts in cases:
        started = time.perf_counter()
        proc = run_script(script, *args, cwd=tmp_path, check=False, timeout=60)
        assert_exit(proc, 1, *facts)
        assert proc.stderr.startswith("error: ") and "loading" not in proc.stdout  # failed before any model load
        assert time.perf_counter() - started < 20
    assert not (tmp_path / "output").exists() and not (tmp_path / "results").exists()


# --- batch predictions -----------------------------------------------------------------------------------------


def test_batched_generation_equals_one_at_a_time_under_greedy(tiny):
    from medsft.chat import prompt_text

    model, tokenizer = tiny
    lengths = {len(tokenizer(prompt_text(tokenizer, q))["input_ids"]) for q in QUESTIONS}
    assert len(lengths) > 3  # prompts of different lengths: batches really are left-padded
    one = greedy(model, tokenizer, QUESTIONS, 10, batch_size=1)
    batched = greedy(model, tokenizer, QUESTIONS, 10, batch_size=4)
    assert batched == one
    assert len({r["output"] for r in one}) == len(QUESTIONS)  # a degenerate model would make this test meaningless
    assert all(r["new_tokens"] == 10 if not r["finished"] else r["new_tokens"] <= 10 for r in one)


def test_predict_file_rows_summary_and_rerun(tiny, tmp_path, capsys):
    from medsft.files import MedsftError
    from medsft.predict import predict_file

    model, tokenizer = tiny
    split = write_split(tmp_path / "test.jsonl")
    out = tmp_path / "results" / "predictions_full.jsonl"
    summary = predict_file("tiny", split, out, max_new_tokens=8, do_sample=False, batch_size=3, progress=False)
    rows = read_rows(out)
    expected = greedy(model, tokenizer, QUESTIONS, 8, batch_size=len(QUESTIONS))
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(len(QUESTIONS))]
    for i, (row, exp) in enumerate(zip(rows, expected)):
        assert list(row) == ["id", "question", "ref_think", "ref_answer", "mode", "output", "think", "answer", "think_status",
                             "new_tokens", "finished", "model"]
        assert (row["question"], row["ref_think"], row["ref_answer"]) == (QUESTIONS[i], f"参考思考{i}", f"参考回答{i}")
        assert (row["output"], row["new_tokens"], row["finished"]) == (exp["output"], exp["new_tokens"], exp["finished"])
        assert row["model"] == "tiny" and row["think_status"] in ("closed", "unclosed", "absent")
    on_disk = json.loads((tmp_path / "results" / "predictions_full.summary.json").read_text(encoding="utf-8"))
    assert on_disk == summary
    assert summary["n"] == len(QUESTIONS) and summary["n_generated"] == len(QUESTIONS)
    assert summary["n_truncated"] == sum(not r["finished"] for r in expected) > 0
    assert sum(summary["think_status"].values()) == len(QUESTIONS)
    assert (summary["max_new_tokens"], summary["do_sample"], summary["temperature"], summary["batch_size"]) == (8, False, None, 3)
    assert summary["new_tokens"] == sum(r["new_tokens"] for r in expected) and summary["tokens_per_s"] > 0

    before = out.read_bytes(), out.with_name("predictions_full.summary.json").read_bytes()
    capsys.readouterr()
    again = predict_file("tiny", split, out, max_new_tokens=8, do_sample=False, batch_size=3, progress=False)
    assert (out.read_bytes(), out.with_name("predictions_full.summary.json").read_bytes()) == before
    assert again == summary  # the summary of the run that made the file is kept
    assert "loading" not in capsys.readouterr().out  # nothing to do: the model is not even loaded

    # sampling defaults come from the model's generation_config (Qwen3's thinking-mode settings)
    small = write_split(tmp_path / "small.jsonl", QUESTIONS[:2])
    sampled = predict_file("tiny", small, tmp_path / "sampled.jsonl", max_new_tokens=4, seed=3, progress=False)
    assert (sampled["do_sample"], sampled["temperature"], sampled["top_p"], sampled["top_k"]) == \
        (True, model.generation_config.temperature, model.generation_config.top_p, model.generation_config.top_k)
    with raises_naming(MedsftError, out, "max_new_tokens=8", "--output") as e:  # the file, its setting, the way out
        predict_file("tiny", split, out, max_new_tokens=16, do_sample=False, progress=False)
    assert 16 in numbers_in(e.value, out), e.value  # and the setting asked for now


def test_resume_after_truncated_file_loses_and_duplicates_nothing(tiny, tmp_path):
    from medsft.predict import predict_file

    split = write_split(tmp_path / "test.jsonl")
    full = tmp_path / "full.jsonl"
    predict_file("tiny", split, full, max_new_tokens=8, do_sample=False, batch_size=4, progress=False)
    lines = full.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(lines[0] + lines[3] + lines[5][: len(lines[5]) // 2])  # a half line, as a non-atomic writer leaves
    # its summary, which predict_file writes before the first row (rows without one are refused)
    (tmp_path / "cut.summary.json").write_bytes((tmp_path / "full.summary.json").read_bytes())
    summary = predict_file("tiny", split, cut, max_new_tokens=8, do_sample=False, batch_size=2, progress=False)
    assert summary["n_resumed"] == 2 and summary["n_generated"] == len(QUESTIONS) - 2
    assert cut.read_bytes() == full.read_bytes()  # every row once, in input order, identical to an uninterrupted run


def test_resume_refuses_another_model_or_split(tiny, tmp_path):
    from medsft.files import MedsftError
    from medsft.predict import predict_file

    split = write_split(tmp_path / "test.jsonl")
    out = tmp_path / "p.jsonl"
    predict_file("tiny", split, out, max_new_tokens=2, do_sample=False, progress=False)
    other = write_split(tmp_path / "other.jsonl", ["完全不同的问题"] + QUESTIONS[1:])
    with raises_naming(MedsftError, f"{out}:1:", "'q0'", "--output"):  # the row of another split, the way out
        predict_file("tiny", other, out, max_new_tokens=2, do_sample=False, progress=False)
    rows = read_rows(out)
    rows[0]["model"] = "Qwen/Qwen3-1.7B"
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with raises_naming(MedsftError, f"{out}:1:", "Qwen/Qwen3-1.7B", "--output"):  # the row, the model that made it
        predict_file("tiny", split, out, max_new_tokens=2, do_sample=False, progress=False)


def test_think_status_counted_per_row(tiny, tmp_path, monkeypatch):
    import medsft.generate
    from medsft.predict import predict_file

    canned = {
        QUESTIONS[0]: {"output": "<think>\n先看发热\n</think>\n\n多休息，多喝水。", "new_tokens": 12, "finished": True},
        QUESTIONS[1]: {"output": "<think>\n盐分摄入要少，然后", "new_tokens": 8, "finished": False},
        QUESTIONS[2]: {"output": "多饮多尿。", "new_tokens": 5, "finished": True},
    }

    def fake_generate(model, tokenizer, questions, *, on_batch=None, **kw):
        results = [canned[q] for q in questions]
        on_batch(list(enumerate(results)))
        return results

    monkeypatch.setattr(medsft.generate, "generate", fake_generate)
    split = write_split(tmp_path / "test.jsonl", QUESTIONS[:3])
    summary = predict_file("tiny", split, tmp_path / "p.jsonl", max_new_tokens=12, do_sample=False, progress=False)
    rows = read_rows(tmp_path / "p.jsonl")
    assert [(r["think"], r["answer"], r["think_status"]) for r in rows] == [
        ("先看发热", "多休息，多喝水。", "closed"), ("盐分摄入要少，然后", "", "unclosed"), ("", "多饮多尿。", "absent")]
    assert summary["think_status"] == {"closed": 1, "unclosed": 1, "absent": 1}
    assert summary["n_truncated"] == 1 and summary["new_tokens"] == 25


def test_script_killed_mid_run_leaves_whole_rows_then_resumes(tiny, tmp_path, monkeypatch, capsys):
    from medsft.predict import predict_file

    split = write_split(tmp_path / "test.jsonl")
    reference = tmp_path / "reference.jsonl"
    predict_file("tiny", split, reference, max_new_tokens=16, do_sample=False, batch_size=8, progress=False)
    out = tmp_path / "results" / "predictions.jsonl"
    args = ["--model_dir=tiny", f"--input={split}", f"--output={out}", "--max_new_tokens=16", *GREEDY, "--batch_size=1"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "inference.py"), *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None and not (out.is_file() and out.read_bytes().count(b"\n") >= 2):
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    partial = out.read_text(encoding="utf-8")
    assert partial.endswith("\n") and 2 <= len(partial.splitlines()) < len(QUESTIONS)
    assert all(json.loads(line)["id"] for line in partial.splitlines())  # whole rows only
    capsys.readouterr()
    run_main(monkeypatch, "inference.py", *args)  # the same command again (in this process, to save a torch import)
    shown = capsys.readouterr().out
    said = lines_naming(shown, split, out)  # the counts it names: all questions, those kept, those to predict
    kept = len(partial.splitlines())
    assert len(said) == 1 and numbers_in(said[0], split, out) == [len(QUESTIONS), kept, len(QUESTIONS) - kept], shown
    assert out.read_bytes() == reference.read_bytes()
    assert lines_naming(shown, out.with_name("predictions.summary.json")), shown


# --- the chat --------------------------------------------------------------------------------------------------


def test_section_printer_separates_think_and_answer_however_chunked():
    from medsft.chat_repl import SectionPrinter

    text = "<think>\n先考虑感染。\n再排除其他原因。\n</think>\n\n建议就医，多喝水。"
    outputs = set()
    for size in (1, 2, 3, 5, 7, len(text)):
        parts = []
        printer = SectionPrinter(parts.append)
        for i in range(0, len(text), size):
            printer.feed(text[i:i + size])
        printer.close()
        outputs.add("".join(parts))
    assert len(outputs) == 1  # chunking (tags split anywhere) does not change what is shown
    shown = outputs.pop()
    assert "<think>" not in shown and "</think>" not in shown
    think_at, answer_at = shown.index("思考"), shown.index("回答")
    assert think_at < shown.index("先考虑感染。\n再排除其他原因。") < answer_at < shown.index("建议就医，多喝水。")

    for raw, present, absent in (("直接给出答案。", "回答", "思考"), ("<think>\n想到一半", "思考", "回答")):
        parts = []
        printer = SectionPrinter(parts.append)
        printer.feed(raw)
        printer.close()
        shown = "".join(parts)
        assert present in shown and absent not in shown and raw.replace("<think>\n", "") in shown


def test_stream_gives_the_greedy_answer_with_history(tiny):
    from medsft.generate import stream

    model, tokenizer = tiny
    history = [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": "多喝水", "reasoning_content": "想"}]
    chunks = []
    result = stream(model, tokenizer, QUESTIONS[2], chunks.append, history=history, max_new_tokens=10, do_sample=False)
    assert result == greedy(model, tokenizer, [QUESTIONS[2]], 10, histories=[history])[0]
    assert "".join(chunks).strip() == result["output"].strip() and len(chunks) > 1


def test_interactive_chat_through_stdin_keeps_history_resets_and_exits_on_eof(tiny, tmp_path):
    model, tokenizer = tiny
    q1, q2 = QUESTIONS[2], QUESTIONS[4]
    a1 = greedy(model, tokenizer, [q1], 8)[0]["output"]
    history = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1.strip(), "reasoning_content": ""}]
    a2_follow_up = greedy(model, tokenizer, [q2], 8, histories=[history])[0]["output"]
    a2_fresh = greedy(model, tokenizer, [q2], 8)[0]["output"]
    assert a2_follow_up != a2_fresh  # otherwise this test could not tell history from no history
    proc = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--model_dir=tiny", "--max_new_tokens=8", *GREEDY],
                          input=f"{q1}\n{q2}\n\n/reset\n{q2}\n", capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr  # stdin ended (Ctrl-D) without /exit: a clean exit
    shown = proc.stdout
    at = 0
    for expected in (a1, a2_follow_up, "已清空", a2_fresh):  # in this order
        at = shown.index(expected.strip(), at) + 1
    assert shown.count("回答") >= 3


def test_chat_exit_command_and_single_question(tiny):
    from medsft.chat_repl import chat

    model, tokenizer = tiny
    out = StringIO()
    assert chat(model, tokenizer, stdin=StringIO(f"{QUESTIONS[0]}\n/exit\n{QUESTIONS[1]}\n"), out=out,
                max_new_tokens=4, do_sample=False) == 0
    shown = out.getvalue()
    assert shown.count("【回答】") == 1 and QUESTIONS[1] not in shown  # nothing read after /exit

    out = StringIO()
    chat(model, tokenizer, question=QUESTIONS[3], out=out, max_new_tokens=6, do_sample=False)
    expected = greedy(model, tokenizer, [QUESTIONS[3]], 6)[0]
    assert expected["output"].strip() in out.getvalue() and "用户>" not in out.getvalue()
    assert ("截断" in out.getvalue()) == (not expected["finished"])


def test_question_mode_script(tiny, monkeypatch, capsys):
    model, tokenizer = tiny
    run_main(monkeypatch, "inference.py", "--model_dir=tiny", f"--question={QUESTIONS[5]}", "--max_new_tokens=6", *GREEDY)
    expected = greedy(model, tokenizer, [QUESTIONS[5]], 6)[0]["output"]
    assert expected.strip() in capsys.readouterr().out


# --- LoRA ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_dir(tiny, tmp_path_factory):
    """A LoRA adapter on tiny with random (non-zero) lora_B, so the adapter really changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    from medsft.models import load_model

    out = tmp_path_factory.mktemp("lora") / "adapter"
    config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(load_model("tiny"), config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    peft_model.save_pretrained(out)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "tiny"
    cfg_path.write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def lora_expected(tiny, adapter_dir):
    from peft import PeftModel

    from medsft.models import load_model

    _, tokenizer = tiny
    peft_model = PeftModel.from_pretrained(load_model("tiny"), str(adapter_dir))
    return greedy(peft_model, tokenizer, QUESTIONS[:3], 10, batch_size=3)


def test_lora_merge_equals_base_plus_adapter(tiny, adapter_dir, lora_expected, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = tiny
    merged_dir = tmp_path / "lora-merged"
    run_main(monkeypatch, "inference_lora.py", f"--adapter_dir={adapter_dir}", "--merge=true", f"--merged_dir={merged_dir}")
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "generation_config.json").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    merged_tok = AutoTokenizer.from_pretrained(merged_dir)
    assert merged_tok.chat_template and merged_tok.chat_template == tokenizer.chat_template
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.generation_config.do_sample and merged.generation_config.top_k == model.generation_config.top_k
    assert greedy(merged, merged_tok, QUESTIONS[:3], 10, batch_size=3) == lora_expected
    assert greedy(model, tokenizer, QUESTIONS[:3], 10, batch_size=3) != lora_expected  # the adapter matters


def test_lora_predictions_script(adapter_dir, lora_expected, tmp_path, monkeypatch):
    split = write_split(tmp_path / "test.jsonl", QUESTIONS[:3])
    out = tmp_path / "predictions_lora.jsonl"
    run_main(monkeypatch, "inference_lora.py", f"--adapter_dir={adapter_dir}", f"--input={split}", f"--output={out}",
             "--max_new_tokens=10", *GREEDY)
    rows = read_rows(out)
    assert [r["output"] for r in rows] == [r["output"] for r in lora_expected]
    assert all(r["model"] == "tiny" and r["adapter"] == str(adapter_dir) for r in rows)
    summary = json.loads((tmp_path / "predictions_lora.summary.json").read_text(encoding="utf-8"))
    assert summary["adapter"] == str(adapter_dir) and summary["n"] == 3
    config = json.loads((tmp_path / "predictions_lora.config.json").read_text(encoding="utf-8"))
    assert config["ADAPTER_DIR"] == str(adapter_dir) and config["MAX_NEW_TOKENS"] == 10


def test_lora_modes_load_the_model_once(adapter_dir, lora_expected, tmp_path, monkeypatch):
    """--modes: every mode's file from one load of base + adapter; the think file is the one a plain run writes."""
    import medsft.backends
    from medsft.files import MedsftError

    loads, real = [], medsft.backends.load_for_inference
    monkeypatch.setattr(medsft.backends, "load_for_inference", lambda *a, **k: loads.append(a) or real(*a, **k))
    split = write_split(tmp_path / "test.jsonl", QUESTIONS[:3])
    out = tmp_path / "p.jsonl"
    run_main(monkeypatch, "inference_lora.py", f"--adapter_dir={adapter_dir}", f"--input={split}", f"--output={out}",
             "--max_new_tokens=10", *GREEDY, "--modes=no_think_hard,think")
    assert len(loads) == 1
    assert [r["output"] for r in read_rows(out)] == [r["output"] for r in lora_expected]
    assert [r["mode"] for r in read_rows(tmp_path / "p.no_think_hard.jsonl")] == ["no_think_hard"] * 3
    with raises_naming(MedsftError, "--modes=think", "--input"):  # a file's modes; the chat switches per message
        run_main(monkeypatch, "inference_lora.py", f"--adapter_dir={adapter_dir}", "--question=头痛", "--modes=think")


# --- vLLM backend wiring (a stand-in vllm module: the real one needs a CUDA GPU) -----------------------------------


def test_vllm_backend_wiring_with_a_stand_in_engine(tiny, adapter_dir, tmp_path, monkeypatch):
    import importlib.machinery
    import types
    from types import SimpleNamespace

    from medsft.predict import predict_file

    model, _ = tiny
    calls = {}

    class LLM:
        def __init__(self, **kwargs):
            calls["engine"] = kwargs

        def generate(self, prompts, params, lora_request=None, use_tqdm=True):
            calls.setdefault("params", []).extend(params)
            calls["lora"] = lora_request
            return [SimpleNamespace(outputs=[SimpleNamespace(text=f"<think>\n想{len(p)}\n</think>\n\n答", token_ids=[1] * 5,
                                                             finish_reason="stop" if i % 2 else "length")])
                    for i, p in enumerate(prompts)]

    fake = {"vllm": types.ModuleType("vllm"), "vllm.lora": types.ModuleType("vllm.lora"),
            "vllm.lora.request": types.ModuleType("vllm.lora.request")}
    for name, module in fake.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, module)
    fake["vllm"].LLM = LLM
    fake["vllm"].SamplingParams = lambda **kw: kw
    fake["vllm.lora.request"].LoRARequest = lambda name, int_id, path: (name, int_id, path)

    split = write_split(tmp_path / "test.jsonl", QUESTIONS[:4])
    summary = predict_file(None, split, tmp_path / "p.jsonl", adapter_dir=adapter_dir, backend="vllm", seed=7,
                           max_new_tokens=32, progress=False)
    gc = model.generation_config
    assert (summary["backend"], summary["temperature"], summary["top_p"], summary["top_k"]) == ("vllm", gc.temperature, gc.top_p, gc.top_k)
    assert calls["engine"]["enable_lora"] and calls["lora"][2] == str(adapter_dir)
    params = calls["params"]
    assert [p["seed"] for p in params] == [7, 8, 9, 10] and {p["max_tokens"] for p in params} == {32}
    assert all(p["temperature"] == gc.temperature and p["top_k"] == gc.top_k for p in params)
    rows = read_rows(tmp_path / "p.jsonl")
    assert [r["think_status"] for r in rows] == ["closed"] * 4 and [r["finished"] for r in rows] == [False, True, False, True]
    assert summary["n_truncated"] == 2 and all(r["adapter"] == str(adapter_dir) for r in rows)


def test_retrained_weights_are_not_resumed_into_old_predictions(adapter_dir, tmp_path):
    import shutil

    from medsft.files import MedsftError
    from medsft.predict import predict_file

    adapter = tmp_path / "adapter"
    shutil.copytree(adapter_dir, adapter)
    split = write_split(tmp_path / "test.jsonl", QUESTIONS[:2])
    out = tmp_path / "predictions_lora.jsonl"
    first = predict_file(None, split, out, adapter_dir=adapter, max_new_tokens=4, do_sample=False, progress=False)
    assert first["weights"]
    # the same weights rewritten byte for byte (e.g. a re-save): the finished file is reused
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes())
    assert predict_file(None, split, out, adapter_dir=adapter, max_new_tokens=4, do_sample=False,
                        progress=False)["weights"] == first["weights"]
    # other weights under the same path (retrained): refused, never silently reused or mixed
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with raises_naming(MedsftError, out, adapter, out.with_name("predictions_lora.summary.json").name, "--output"):
        predict_file(None, split, out, adapter_dir=adapter, max_new_tokens=4, do_sample=False, progress=False)
