"""Qwen3's thinking switches at every stage: batch predictions and the chat answer in the mode they are asked for
(the hard switch enable_thinking=False, the soft switch /no_think, per row and per message), the mode is recorded
per row, non-thinking rows are "n/a" in think scores, and evaluation measures mode adherence for every model."""
from __future__ import annotations

import json
from io import StringIO

import pytest
from conftest import run_script
from oracles import assert_exit, follows_mode, raises_naming

from medsft.adherence import measure
from medsft.chat import output_shape as shape
from medsft.chat import prompt_text, question_mode
from medsft.cot import cot_scores
from medsft.files import MedsftError, read_jsonl
from medsft.rouge import rouge_scores

THINK_OK = "<think>\n先想一想：头痛三天伴发热，需排除感染。\n</think>\n\n建议就医。"
EMPTY_THINK = "<think>\n\n</think>\n\n建议就医。"
NO_THINK = "建议就医。"
UNCLOSED = "<think>\n想啊想"
NO_ANSWER = "<think>\n想完了：头痛三天伴发热，需排除感染。\n</think>\n\n"


# --- the shape each mode asks for ------------------------------------------------------------------------------


@pytest.mark.parametrize("output, think, off, kind", [
    (THINK_OK, True, False, "think"),
    (EMPTY_THINK, False, False, "empty_think"),  # obeys the soft switch only (below)
    (NO_THINK, False, True, "no_think"),
    (UNCLOSED, False, False, "unclosed"),
    (NO_ANSWER, False, False, "no_answer"),
    ("", False, False, "no_answer"),
    ("<think>\n\n</think>\n\n", False, False, "no_answer"),  # an empty think and nothing after it is not an answer
    # a think tag inside the answer: the model lost track of where its think ends, which obeys no switch
    (EMPTY_THINK + "\n</think>\n\n再说一遍。", False, False, "stray_tag"),
    (THINK_OK + "\n</think>\n\n再说一遍。", False, False, "stray_tag"),
    (THINK_OK + "<think>\n又想了。", False, False, "stray_tag"),
    ("建议就医。\n</think>\n\n再说一遍。</think>", False, False, "stray_tag"),
])
def test_follows_mode_on_every_shape(output, think, off, kind):
    assert follows_mode(output, "think") is think
    assert follows_mode(output, "no_think_soft") is (off or kind == "empty_think")
    assert follows_mode(output, "no_think_hard") is off
    assert shape(output) == kind


# think collapse must not pay: (output, the modes it obeys)
COLLAPSE = [
    ("<think>\n。\n</think>\n\n答案：C", {"no_think_soft"}),  # a think of one punctuation mark is no think
    ("<think>\n嗯，好的。\n</think>\n\n答案：C", {"no_think_soft"}),  # nor is one word
    ("<think>1234567890123456</think>\n\n答案：C", {"no_think_soft"}),  # nor a run of digits: no word in it
    ("<think>\n1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13\n</think>\n\n答案：C", {"no_think_soft"}),
    ("分析：头痛三天伴发热，需排除感染。</think>\n\n答案：C", set()),  # no opening tag: a stray closing tag
    ("</think>\n\n答案：C", set()),  # a leading </think>
    ("<think>\n\n</think>\n\n答案：C", {"no_think_soft"}),  # hard mode: the template closed the think already
    ("答案：C", {"no_think_soft", "no_think_hard"}),
    (THINK_OK, {"think"}),
]


@pytest.mark.parametrize("output, obeys", COLLAPSE)
def test_a_collapsed_think_obeys_no_thinking_mode(output, obeys):
    assert {m for m in ("think", "no_think_soft", "no_think_hard") if follows_mode(output, m)} == obeys


def test_adherence_reports_the_mean_answer_length_per_mode():
    """Reasoning moved from the think into a no-think answer shows as a longer answer beside the same adherence."""
    rows = {"no_think_hard": [{"output": "答案：C", "mode": "no_think_hard"},
                              {"output": "先分析：" + "头痛" * 20 + "\n答案：C", "mode": "no_think_hard"}]}
    got = measure(rows)["no_think_hard"]
    assert got["rate"] == 1.0 and got["answer_chars"] == (len("答案：C") + len("先分析：" + "头痛" * 20 + "\n答案：C")) / 2


def test_question_mode_follows_qwen3_rules():
    assert question_mode("头痛怎么办") == "think"
    assert question_mode("头痛怎么办 /no_think") == "no_think_soft"
    assert question_mode("/no_think 头痛怎么办 /think") == "think"  # the last switch wins
    assert question_mode("/think 头痛怎么办 /no_think") == "no_think_soft"
    assert question_mode("头痛怎么办 /think", enable_thinking=False) == "no_think_hard"  # the hard switch wins


def test_measure_counts_only_rows_of_the_mode():
    rows = {"think": [{"output": THINK_OK}, {"output": UNCLOSED}, {"output": EMPTY_THINK, "mode": "no_think_soft"}],
            "no_think_soft": [{"output": EMPTY_THINK, "mode": "no_think_soft"},
                              {"output": THINK_OK, "mode": "no_think_soft"}],
            "no_think_hard": None}
    got = measure(rows)
    assert got["think"]["ok"] == 1 and got["think"]["n"] == 2 and got["think"]["rate"] == 0.5
    assert got["think"]["shapes"]["unclosed"] == 1
    assert got["no_think_soft"]["rate"] == 0.5
    assert got["no_think_hard"] is None


def test_babble_cut_off_at_max_new_tokens_obeys_no_switch():
    """A random model's output has no think tags and never ends: that is not a no-think answer."""
    rows = [{"output": "的的 血压 的，", "mode": "no_think_hard", "finished": False},
            {"output": NO_THINK, "mode": "no_think_hard", "finished": True},
            {"output": EMPTY_THINK, "mode": "no_think_hard", "finished": False}]
    got = measure({"no_think_hard": rows})["no_think_hard"]
    assert (got["ok"], got["n"]) == (1, 3)
    assert got["shapes"]["cut_off"] == 2 and got["shapes"]["no_think"] == 1


# --- non-thinking rows are n/a in think scores -----------------------------------------------------------------


def _row(i, output, mode="think"):
    from medsft.chat import split_output

    think, answer, status = split_output(output)
    return {"id": i, "question": f"问题{i}", "ref_think": f"参考思考{i}。需要检查血压。", "ref_answer": f"参考回答{i}。",
            "mode": mode, "output": output, "think": think, "answer": answer, "think_status": status,
            "new_tokens": 5, "finished": True}


def test_rows_asked_not_to_think_are_na_not_zero():
    thinking = [_row(i, f"<think>\n参考思考{i}。需要检查血压。\n</think>\n\n参考回答{i}。") for i in range(3)]
    off = [_row(3, "参考回答3。", "no_think_hard"), _row(4, EMPTY_THINK, "no_think_soft")]
    summary, per_sample = cot_scores(thinking + off, workers=1, progress=False)
    alone, _ = cot_scores(thinking, workers=1, progress=False)
    assert summary["n_think_na"] == 2 and summary["n_scored"] == 3
    assert summary["scores"]["f1"] == pytest.approx(1.0)  # zeros for the off rows would pull it to 0.6
    assert summary["baselines"]["reference_as_think"] == alone["baselines"]["reference_as_think"]
    assert [p["f1"] for p in per_sample[3:]] == [None, None]
    rouge, rows = rouge_scores(thinking + off, workers=1, progress=False)
    assert rouge["views"]["think"]["n_na"] == 2 and rouge["views"]["answer"]["n_na"] == 0
    assert rouge["views"]["think"]["rouge-1"]["f"] == pytest.approx(100.0)
    assert rows[3]["think"] is None and rows[3]["answer"] is not None


# --- batch predictions in each mode ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from medsft.models import load_model, load_tokenizer

    return load_model("tiny"), load_tokenizer("tiny")


QUESTIONS = ["头痛三天，伴有低烧，应该怎么办？", "糖尿病的早期症状有哪些？ /no_think", "失眠"]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    d = tmp_path_factory.mktemp("thinking")
    rows = [{"id": f"q{i}", "question": q, "think": f"参考思考{i}", "answer": f"参考回答{i}"}
            for i, q in enumerate(QUESTIONS)]
    (d / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return d


def _greedy(model, tokenizer, prompt: str, n: int) -> str:
    import torch

    from medsft.generate import eos_ids

    enc = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=eos_ids(model, tokenizer),
                             pad_token_id=tokenizer.pad_token_id)[0, enc["input_ids"].shape[1]:].tolist()
    eos = set(eos_ids(model, tokenizer))
    cut = next((k for k, t in enumerate(out) if t in eos), len(out))
    return tokenizer.decode(out[:cut], skip_special_tokens=True)


@pytest.fixture(scope="module")
def predicted(split):
    """inference.py run once on the split in the three modes, as pipeline.sh runs it: thinking on (preds.jsonl),
    /no_think and enable_thinking=False (beside it)."""
    run_script("inference.py", *_common(split), "--modes=think,no_think_soft,no_think_hard")
    return split


def _common(split, output="preds.jsonl"):
    return ["--model_dir=tiny", f"--input={split}/test.jsonl", f"--output={split}/{output}", "--do_sample=false",
            "--max_new_tokens=12"]


def test_one_run_per_switch_predicts_what_the_modes_run_does(predicted):
    """Each switch in a run of its own writes, byte for byte, the file the one-load run wrote for that mode."""
    for switch, mode in (("--soft_switch=/no_think", "no_think_soft"), ("--enable_thinking=false", "no_think_hard")):
        run_script("inference.py", *_common(predicted, "own.jsonl"), switch)
        own = (predicted / f"own.{mode}.jsonl").read_bytes()
        assert own.replace(b"own.", b"preds.") == (predicted / f"preds.{mode}.jsonl").read_bytes(), mode
        config = json.loads((predicted / f"preds.{mode}.config.json").read_text(encoding="utf-8"))
        assert (config["ENABLE_THINKING"], config["SOFT_SWITCH"]) == {"no_think_soft": (True, "/no_think"),
                                                                      "no_think_hard": (False, "")}[mode]


def test_each_mode_has_its_file_and_its_mode_per_row(predicted):
    think = read_jsonl(predicted / "preds.jsonl")
    soft = read_jsonl(predicted / "preds.no_think_soft.jsonl")
    hard = read_jsonl(predicted / "preds.no_think_hard.jsonl")
    # a question that carries its own /no_think is answered (and recorded) in that mode, whatever the file's mode
    assert [r["mode"] for r in think] == ["think", "no_think_soft", "think"]
    assert [r["mode"] for r in soft] == ["no_think_soft"] * 3
    assert [r["mode"] for r in hard] == ["no_think_hard"] * 3
    assert [r["question"] for r in soft] == QUESTIONS  # the switch is not written into the row's question
    summary = json.loads((predicted / "preds.no_think_hard.summary.json").read_text(encoding="utf-8"))
    assert summary["enable_thinking"] is False and summary["modes"] == {"no_think_hard": 3}
    config = json.loads((predicted / "preds.no_think_soft.config.json").read_text(encoding="utf-8"))
    assert config["OUTPUT"].endswith("preds.no_think_soft.jsonl")


def test_each_mode_generates_from_its_own_prompt(predicted, tiny):
    """The recorded output is the greedy continuation of exactly the prompt of its mode (the tiny model's random
    outputs differ between prompts, so a wrong prompt shows)."""
    model, tokenizer = tiny
    for name, mode in (("preds.jsonl", "think"), ("preds.no_think_soft.jsonl", "no_think_soft"),
                       ("preds.no_think_hard.jsonl", "no_think_hard")):
        for row in read_jsonl(predicted / name):
            prompt = prompt_text(tokenizer, row["question"], mode=row["mode"])
            if mode == "no_think_hard":
                assert prompt.endswith("<think>\n\n</think>\n\n")
            if row["mode"] == "no_think_soft":
                assert prompt.count("/no_think") == 1  # appended once, or kept from the question
            assert row["output"] == _greedy(model, tokenizer, prompt, 12), (name, row["id"])
    soft, think = read_jsonl(predicted / "preds.no_think_soft.jsonl"), read_jsonl(predicted / "preds.jsonl")
    assert soft[0]["output"] != think[0]["output"]


def test_a_file_is_never_resumed_in_another_mode(predicted, tmp_path):
    from medsft.predict import predict_file

    out = tmp_path / "p.jsonl"
    out.write_bytes((predicted / "preds.jsonl").read_bytes())
    with raises_naming(MedsftError, f"{out}:1:", "no_think_hard", "--enable_thinking", "--output"):  # row, mode, fix
        predict_file("tiny", predicted / "test.jsonl", out, enable_thinking=False, do_sample=False,
                     max_new_tokens=12, progress=False)


def test_bad_switch_values_fail_before_loading(split):
    proc = run_script("inference.py", "--model_dir=tiny", f"--input={split}/test.jsonl", "--soft_switch=/nothink",
                      check=False)
    assert_exit(proc, 1, "--soft_switch='/nothink'", "/no_think")  # the bad value, and the one that works


def test_bad_modes_fail_before_loading(split):
    for args, facts in ((["--modes=think,think"], ["--modes=think,think", "no_think_soft"]),
                        (["--modes=think,nothink"], ["--modes=think,nothink", "no_think_hard"]),
                        (["--modes=think,no_think_soft", "--enable_thinking=false"], ["--enable_thinking"]),
                        (["--modes=no_think_soft", "--question=头痛"], ["--modes=no_think_soft", "--input"])):
        inputs = [] if "--question=头痛" in args else [f"--input={split}/test.jsonl", f"--output={split}/bad.jsonl"]
        proc = run_script("inference.py", "--model_dir=tiny", *inputs, *args, check=False)
        assert_exit(proc, 1, *facts)
    assert not list(split.glob("bad*"))


# --- the chat ---------------------------------------------------------------------------------------------------


def test_chat_switches_per_message_and_by_command(tiny):
    from medsft.chat_repl import SectionPrinter, chat
    from medsft.generate import generate

    model, tokenizer = tiny
    script = "头痛怎么办 /no_think\n/thinking\n失眠\n失眠 /think\n/no_think\n/think\n失眠\n"
    out = StringIO()
    chat(model, tokenizer, stdin=StringIO(script), out=out, max_new_tokens=8, do_sample=False)
    text = out.getvalue()
    labels = [line for line in text.splitlines() if line.startswith(("〔", "（默认"))]
    assert labels == ["〔思考模式：关（/no_think）〕",
                      "（默认思考模式：关（enable_thinking=False））",
                      "〔思考模式：关（enable_thinking=False）〕",
                      "〔思考模式：开〕",  # /think in a message reopens thinking under a default of off
                      "（默认思考模式：关（enable_thinking=False））",
                      "（默认思考模式：开）",
                      "〔思考模式：开〕"]
    # the first answer is printed as batch generation in soft mode answers the same question
    first = generate(model, tokenizer, ["头痛怎么办 /no_think"], max_new_tokens=8, do_sample=False, progress=False,
                     modes=["no_think_soft"])[0]["output"]
    shown = []
    printer = SectionPrinter(shown.append)
    printer.feed(first)
    printer.close()
    assert "〔思考模式：关（/no_think）〕\n" + "".join(shown) in text
    hard_default = StringIO()
    chat(model, tokenizer, question="头痛怎么办", out=hard_default, max_new_tokens=8, do_sample=False,
         mode="no_think_hard")
    assert hard_default.getvalue().startswith("〔思考模式：关（enable_thinking=False）〕")


# --- evaluation: adherence for every model, in JSON, report and charts ------------------------------------------


def _pred(i, row, output, model, mode="think", adapter=None):
    from medsft.chat import split_output

    think, answer, status = split_output(output)
    p = {"id": f"q{i}", "question": row["question"], "ref_think": row["think"], "ref_answer": row["answer"],
         "mode": mode, "output": output, "think": think, "answer": answer, "think_status": status,
         "new_tokens": 5, "finished": status != "unclosed", "model": model}
    if adapter:
        p["adapter"] = adapter
    return p


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_evaluate_reports_adherence_per_model_and_mode(tmp_path, demo_data_path):
    """Scripted predictions of known shapes: full obeys every switch on 9 of 10 rows; the base model thinks
    whatever it is told (soft 0/10) and has no hard-switch predictions; LoRA has only thinking predictions."""
    rows = read_jsonl(demo_data_path)[:10]
    _write(tmp_path / "test.jsonl", [{"id": f"q{i}", **r} for i, r in enumerate(rows)])
    ok = {"think": lambda r: f"<think>\n{r['think']}\n</think>\n\n{r['answer']}",
          "no_think_soft": lambda r: f"<think>\n\n</think>\n\n{r['answer']}", "no_think_hard": lambda r: r["answer"]}
    for mode, suffix in (("think", ""), ("no_think_soft", ".no_think_soft"), ("no_think_hard", ".no_think_hard")):
        _write(tmp_path / f"predictions_full{suffix}.jsonl",
               [_pred(i, r, UNCLOSED if i == 0 else ok[mode](r), "output/full", mode) for i, r in enumerate(rows)])
    _write(tmp_path / "predictions_base.jsonl", [_pred(i, r, ok["think"](r), "tiny") for i, r in enumerate(rows)])
    _write(tmp_path / "predictions_base.no_think_soft.jsonl",
           [_pred(i, r, ok["think"](r), "tiny", "no_think_soft") for i, r in enumerate(rows)])
    _write(tmp_path / "predictions_lora.jsonl",
           [_pred(i, r, ok["think"](r), "tiny", adapter="output/lora") for i, r in enumerate(rows)])
    args = [f"--base_predictions={tmp_path}/predictions_base.jsonl", f"--test_file={tmp_path}/test.jsonl",
            f"--results_dir={tmp_path}/results", "--workers=1"]
    full = run_script("evaluate.py", f"--predictions={tmp_path}/predictions_full.jsonl", *args)
    lora = run_script("evaluate_lora.py", f"--predictions={tmp_path}/predictions_lora.jsonl", *args)
    assert full.returncode == 0 and lora.returncode == 0, full.stderr[-2000:] + lora.stderr[-2000:]
    assert "full: adherence think-on=0.90 (9/10), no-think-soft=0.90 (9/10), no-think-hard=0.90 (9/10)" in full.stdout
    assert "--enable_thinking=false" in full.stdout  # the command for the base model's missing hard-switch file
    res = tmp_path / "results"
    cot = {t: json.loads((res / f"cot_{t}.json").read_text(encoding="utf-8")) for t in ("base", "full", "lora")}
    assert cot["full"]["adherence"]["no_think_hard"]["rate"] == pytest.approx(0.9)
    assert cot["base"]["adherence"]["think"]["rate"] == 1.0
    assert cot["base"]["adherence"]["no_think_soft"]["rate"] == 0.0
    assert cot["base"]["adherence"]["no_think_hard"] is None
    assert cot["lora"]["adherence"]["no_think_soft"] is None
    assert cot["full"]["adherence"]["no_think_soft"]["shapes"] == {"think": 0, "empty_think": 9, "no_think": 0,
                                                                   "unclosed": 1, "no_answer": 0, "stray_tag": 0,
                                                                   "cut_off": 0}
    readme = (res / "README.md").read_text(encoding="utf-8")
    assert "## Thinking switches (mode adherence)" in readme
    answer = sum(len(r["answer"].strip()) for r in rows[1:]) / 10  # the unclosed row 0 has no answer
    cell = f"0.90 (9/10); answer {answer:.0f} chars"
    assert f"| full fine-tune | {cell} | {cell} | {cell} |" in readme
    assert cot["full"]["adherence"]["no_think_hard"]["answer_chars"] == pytest.approx(answer)
    assert "| base (untuned) | 1.00 (10/10); answer" in readme and "| not measured |" in readme
    for png in ("adherence.png", "think_status.png"):
        assert (res / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"![{png}]({png})" in readme
    # the base model's predictions name the tiny spec: the report says this is the plumbing check
    assert "This is the plumbing check" in readme


def test_the_chat_shows_no_reasoning_header_for_an_empty_think():
    from medsft.chat_repl import SectionPrinter

    for output, shown in ((EMPTY_THINK, "【回答】\n建议就医。\n"), (THINK_OK, "【思考】\n先想一想：头痛三天伴发热，需排除感染。\n【回答】\n建议就医。\n")):
        for size in (1, 4, len(output)):  # however the stream is chunked
            out = []
            printer = SectionPrinter(out.append)
            for k in range(0, len(output), size):
                printer.feed(output[k:k + size])
            printer.close()
            assert "".join(out) == shown


def test_each_modes_switches_give_that_mode():
    from medsft.chat import MODES
    from medsft.predict import MODE_SWITCHES, asked

    assert tuple(MODE_SWITCHES) == MODES
    for mode, (enable, soft) in MODE_SWITCHES.items():
        assert question_mode(asked("头痛", soft), enable) == mode
