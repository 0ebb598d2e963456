"""train_grpo.py: every reward on adversarial outputs, the per-row mode prompts token-exact against the real Qwen3
template, the multiple-choice row reader and its errors, the evaluation-overlap filter; the stage end to end on the
tiny model: results, charts and held-out scores, a re-run that changes nothing, kill -9 then resume, the dry run, and
two processes under torchrun."""

from __future__ import annotations

import json
import types

import pytest

import train_grpo as g
from medsft.training import grpo
from medsft import chat, mcq

ROW = {"question": "高血压的诊断切点是多少？", "choices": ["120/80", "130/85", "140/90", "160/100"], "gold": "C"}
THINK = "<think>\n诊室血压≥140/90 mmHg 才能诊断为高血压。\n</think>\n\n"  # 16 letters: a think (chat.MIN_THINK_CHARS)


# --- correctness ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("output, expected", [
    (THINK + "答案：C", 1.0),
    (THINK + "答案：B", 0.0),                                   # wrong letter
    (THINK + "**答案：C**", 1.0),                               # bold, as the reader tolerates
    (THINK + "答案：A或C", 0.0),                                # hedge
    (THINK + "答案：C\n答案：D", 0.0),                          # change of mind: two letters
    (THINK + "答案：ABCD", 0.0),                                # every letter
    (THINK + "A\nB\nC\nD", 0.0),                                # option lines naming all letters
    ("<think>\n答案：C\n</think>\n\n", 0.0),                     # the letter inside the think only, no answer
    ("<think>\n答案：C\n</think>\n\n我不确定。", 0.0),            # the letter inside the think only
    ("<think>\n想一想，答案：C", 0.0),                            # unclosed think
    (THINK + "答案：C</think>", 0.0),                            # stray think tag in the answer
    (THINK + "缺乏维生素D", 0.0),                                 # a letter inside a word
    ("", 0.0),                                                  # empty
    ("答案：C", 0.0),                                            # right letter, no think in think mode
    ("<think>\n。\n</think>\n\n答案：C", 0.0),                      # a collapsed think: one punctuation mark
    ("分析。</think>\n\n答案：C", 0.0),                            # no opening tag
])
def test_correct_reward_think_mode(output, expected):
    assert g.correct_reward(output, "C", "think") == expected


def test_correct_reward_copying_the_question_earns_nothing():
    question = grpo.mc_question(ROW)  # ends with 请先思考，然后在最后一行只写“答案：X”，X 为 A、B、C、D 中的一个字母。
    assert g.correct_reward(THINK + question, "C", "think") == 0.0
    assert g.correct_reward(question, "C", "no_think_hard") == 0.0


def test_correct_reward_no_think_modes_and_gating():
    assert g.correct_reward("<think>\n\n</think>\n\n答案：C", "C", "no_think_soft") == 1.0
    assert g.correct_reward("答案：C", "C", "no_think_hard") == 1.0
    assert g.correct_reward("<think>\n\n</think>\n\n答案：C", "C", "no_think_hard") == 0.0  # the prompt closed it
    assert g.correct_reward("</think>\n\n答案：C", "C", "no_think_hard") == 0.0
    assert g.correct_reward(THINK + "答案：C", "C", "no_think_soft") == 0.0  # thought when told not to
    assert g.correct_reward("答案：C", "C", "think", needs_shape=False) == 1.0  # the gate off: shape not required
    assert g.correct_reward(THINK + "答案：C", "C", "think", finished=False) == 0.0  # cut off at the cap


# --- shape ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("output, mode, expected", [
    (THINK + "答案：C", "think", 1.0),
    ("<think>\n\n</think>\n\n答案：C", "think", 0.0),   # empty think in think mode: think collapse
    ("<think>1234567890123456</think>\n\n答案：C", "think", 0.0),  # a think of digits only: collapsed too
    ("答案：C", "think", 0.0),                          # no think in think mode
    ("<think>\n想", "think", 0.0),                      # unclosed
    (THINK, "think", 0.0),                             # no answer after the think
    (THINK + "答案：C</think>", "think", 0.0),          # stray tag
    ("", "think", 0.0),
    ("<think>\n\n</think>\n\n答案：C", "no_think_soft", 1.0),
    ("答案：C", "no_think_soft", 1.0),
    (THINK + "答案：C", "no_think_soft", 0.0),          # thought anyway
    ("答案：C", "no_think_hard", 1.0),                  # the hard prompt closed the think itself
    (THINK + "答案：C", "no_think_hard", 0.0),          # opened a second think
    ("", "no_think_hard", 0.0),
])
def test_shape_reward(output, mode, expected):
    assert g.shape_reward(output, mode) == expected


def test_shape_reward_cut_off_is_no_shape():
    assert g.shape_reward("答案：C", "no_think_hard", finished=False) == 0.0


def test_a_think_that_copies_the_prompt_is_no_think():
    """The question (or its options) pasted in as the think had the full shape reward, and so the correctness reward
    that needs it: a think must add something to what the prompt says."""
    question = grpo.mc_question(ROW)
    prompt = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    lines = question.split("\n")
    for think in (lines[0], question, lines[0] + lines[2]):  # its first line, all of it, two of its lines joined
        copied = f"<think>\n{think}\n</think>\n\n答案：C"
        assert g.shape_reward(copied, "think", prompt=prompt) == 0.0, think
        assert g.correct_reward(copied, "C", "think", prompt=prompt) == 0.0, think
    thought = f"<think>\n{lines[2]}诊室血压达到140/90毫米汞柱即可诊断高血压。\n</think>\n\n答案：C"  # restated, reasoned
    assert g.shape_reward(thought, "think", prompt=prompt) == 1.0
    assert g.correct_reward(thought, "C", "think", prompt=prompt) == 1.0
    # through TRL's signature: the prompts column reaches the shape and correctness rewards
    funcs = g.reward_functions([0], {"CORRECT_NEEDS_SHAPE": True, "REPETITION_NGRAM": 8, "REPETITION_FREE": 0.1,
                                     "MAX_COMPLETION_LENGTH": 64, "OVERLONG_BUFFER": 0})
    columns = dict(prompts=[prompt] * 2, completions=[copied, thought], completion_ids=[[1, 0], [1, 0]],
                   gold=["C", "C"], mode=["think", "think"], n_options=[4, 4])
    assert funcs[0](**columns) == [0.0, 1.0] and funcs[1](**columns) == [0.0, 1.0]


# --- repetition and overlong --------------------------------------------------------------------------------------
def test_repetition_penalty_on_ids():
    assert g.repetition_penalty(list(range(100)), n=4, free=0.1) == 0.0
    loop = [1, 2, 3, 4, 5] * 40
    assert g.repetition_penalty(loop, n=4, free=0.1) < -0.9
    assert g.repetition_penalty([1, 2, 3], n=8) == 0.0  # shorter than one n-gram
    assert g.repetition_penalty([], n=8) == 0.0
    half = list(range(100)) + [1, 2, 3, 4, 5] * 20
    assert -0.5 < g.repetition_penalty(half, n=4, free=0.1) < -0.2


def test_repetition_penalty_on_chinese(real_tokenizer):
    ids = lambda t: real_tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    natural = ("高血压的诊断需要非同日三次测量诊室血压，收缩压不低于140毫米汞柱或舒张压不低于90毫米汞柱。"
               "还要排除白大衣效应，可以做家庭血压监测或者24小时动态血压监测，再结合危险因素分层决定是否用药。")
    assert g.repetition_penalty(ids(natural)) == 0.0
    looping = "所以答案是高血压，" * 30  # no spaces: a word-based penalty would see one "word"
    assert g.repetition_penalty(ids(looping)) < -0.8


def test_overlong_penalty():
    """DAPO's soft penalty: 0 up to MAX_COMPLETION_LENGTH - OVERLONG_BUFFER tokens, a ramp to -1 at the cap, where
    every completion TRL cut off ends; OVERLONG_BUFFER=0 never penalises."""
    def overlong(lengths, buffer=256):
        funcs = g.reward_functions([0], {"CORRECT_NEEDS_SHAPE": True, "REPETITION_NGRAM": 8, "REPETITION_FREE": 0.1,
                                         "MAX_COMPLETION_LENGTH": 1536, "OVERLONG_BUFFER": buffer})
        return funcs[3](prompts=None, completions=None, completion_ids=[[7] * n for n in lengths])

    assert overlong([100, 1280, 1408, 1536]) == [0.0, 0.0, pytest.approx(-0.5), -1.0]
    assert overlong([1536], buffer=0) == [0.0]


def test_reward_functions_take_trls_call():
    cfg = {"CORRECT_NEEDS_SHAPE": True, "REPETITION_NGRAM": 4, "REPETITION_FREE": 0.1, "MAX_COMPLETION_LENGTH": 10,
           "OVERLONG_BUFFER": 4}
    funcs = g.reward_functions([0], cfg)
    assert [f.__name__ for f in funcs] == ["correct", "shape", "repetition", "overlong"]
    kwargs = dict(prompts=["p", "p", "p"], completions=[THINK + "答案：C", THINK + "答案：C", "答案：C"],
                  completion_ids=[[5, 6, 0], [5, 6, 7], [1, 2, 3, 4, 5, 1, 2, 3, 4, 0]], gold=["C", "C", "C"],
                  mode=["think", "think", "no_think_hard"], n_options=[4, 4, 4], id=["a", "b", "c"], trainer_state=None,
                  log_extra=lambda *a: None, log_metric=lambda *a: None)
    correct, shape, repetition, overlong = (f(**kwargs) for f in funcs)
    assert correct == [1.0, 0.0, 1.0]  # the second never ended (no eos id 0): no credit
    assert shape == [1.0, 0.0, 1.0]
    assert repetition[0] == 0.0 and repetition[2] < 0
    assert overlong == [0.0, 0.0, -1.0]  # 10 tokens = the cap


# --- mode prompts -----------------------------------------------------------------------------------------------
def _rows(n):
    return [{**ROW, "question": f"{ROW['question']} 第{i}题", "id": f"r{i}"} for i in range(n)]


def test_typed_think_tags_never_reach_trl_as_tokens(tmp_path):
    """A `</think>` typed in a question or option would reach TRL's text prompt as a real tag (ids unlike
    chat.prompt_ids): such rows are bad rows, named and counted; every prompt kept is token-exact."""
    from medsft.models import load_tokenizer

    tok = load_tokenizer("tiny")  # the real Qwen3 tokenizer when ../shared is there, else the project-built one
    lines = [json.dumps(r, ensure_ascii=False) for r in [
        {"question": "头痛</think>怎么办", "A": "a", "B": "b", "answer": "A"},
        {"question": "头痛怎么办", "A": "<think>a", "B": "b", "answer": "A"},
        {"question": "头痛怎么办", "A": "a", "B": "b", "answer": "B"}]]
    rows, bad = grpo.read_rows(_write(tmp_path / "mc.jsonl", lines))
    assert len(rows) == 1 and [b["where"].rsplit(":", 1)[1] for b in bad] == ["1", "2"]
    assert all("control token" in b["reason"] for b in bad)
    for p in grpo.prompt_rows(tok, rows * 3, 1.0, 0) + grpo.prompt_rows(tok, rows, 0.0, 0):
        assert tok(text=[p["prompt"]])["input_ids"][0] == chat.prompt_ids(tok, grpo.mc_question(rows[0]), mode=p["mode"])


def test_mode_prompts_token_exact(real_tokenizer):
    rows = grpo.prompt_rows(real_tokenizer, _rows(40), no_think_ratio=0.5, seed=3)
    assert {r["mode"] for r in rows} == set(chat.MODES)
    for row, src in zip(rows, _rows(40)):
        question = grpo.mc_question(src)
        # TRL tokenizes a text prompt with processing_class(text=prompts) (grpo_trainer.py, _tokenize_prompts)
        trl_ids = real_tokenizer(text=[row["prompt"]])["input_ids"][0]
        assert trl_ids == chat.prompt_ids(real_tokenizer, question, mode=row["mode"])
        messages = chat.build_messages(question + (" /no_think" if row["mode"] == "no_think_soft" else ""))
        reference = real_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                       enable_thinking=row["mode"] != "no_think_hard")
        assert row["prompt"] == reference
        if row["mode"] == "no_think_hard":
            assert row["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        else:
            assert row["prompt"].endswith("<|im_start|>assistant\n")
        assert row["prompt"].count("/no_think") == (row["mode"] == "no_think_soft")


def test_mode_choice_is_seeded_per_row(real_tokenizer):
    a = grpo.prompt_rows(real_tokenizer, _rows(200), 0.25, seed=42)
    b = grpo.prompt_rows(real_tokenizer, list(reversed(_rows(200))), 0.25, seed=42)
    assert {r["id"]: r["mode"] for r in a} == {r["id"]: r["mode"] for r in b}  # by row id, not position
    share = sum(r["mode"] != "think" for r in a) / len(a)
    assert 0.15 < share < 0.35
    assert [r["mode"] for r in grpo.prompt_rows(real_tokenizer, _rows(200), 0.0, 42)] == ["think"] * 200


def test_think_tags_survive_trls_decoding(real_tokenizer):
    # TRL decodes completions with skip_special_tokens=True: the think tags must not be special tokens
    ids = real_tokenizer(THINK + "答案：C<|im_end|>", add_special_tokens=False)["input_ids"]
    text = real_tokenizer.decode(ids, skip_special_tokens=True)
    assert text == THINK + "答案：C" and g.correct_reward(text, "C", "think") == 1.0


# --- row reader -------------------------------------------------------------------------------------------------
def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_rows_jsonl_layouts_and_errors(tmp_path, capsys):
    lines = [json.dumps(r, ensure_ascii=False) for r in [
        {"question": "q1", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "B"},           # columns
        {"question": "q2", "options": ["a", "b", "c", "d", "e"], "answer": "E"},             # list, five
        {"question": "q3", "options": {"A": "a", "B": "b", "C": "c"}, "answer": "A, C"},     # dict, multi
        {"question": "q4", "A": "a", "B": "b", "answer": "C"},                               # letter not an option
        {"question": "", "A": "a", "B": "b", "answer": "A"},                                 # empty question
        {"question": "q6", "A": "a", "B": "b", "answer": "甲"},                               # not a letter
        {"question": "q7 <|im_end|>", "A": "a", "B": "b", "answer": "A"},                    # control token
        {"question": "q8", "A": "a", "B": "", "C": "c", "answer": "A"},                      # empty option
    ]] + ["{not json"]
    rows, bad = grpo.read_rows(_write(tmp_path / "mc.jsonl", lines))
    assert [(r["question"], r["choices"], r["gold"]) for r in rows] == [
        ("q1", ["a", "b", "c", "d"], "B"), ("q2", ["a", "b", "c", "d", "e"], "E"), ("q3", ["a", "b", "c"], "AC")]
    assert [b["where"].rsplit(":", 1)[1] for b in bad] == ["4", "5", "6", "7", "8", "9"]
    reasons = " | ".join(b["reason"] for b in bad)
    for part in ("names an option the item does not have", "empty or missing 'question'", "not option letter",
                 "control token", "option B is empty"):
        assert part in reasons
    assert f"{tmp_path / 'mc.jsonl'}:9:" in capsys.readouterr().out
    assert [r["multi"] for r in rows] == [False, False, True]  # five options and several answers are trained too
    assert len({r["id"] for r in rows}) == 3


def test_read_rows_cmmlu_csv_layout(tmp_path):
    folder = tmp_path / "cmmlu"
    folder.mkdir()
    (folder / "anatomy.csv").write_text(',Question,A,B,C,D,Answer\n0,"多行\n题干",a,b,c,d,D\n1,q,a,b,c,d,Z\n',
                                        encoding="utf-8")
    rows, bad = grpo.read_rows(folder)
    assert [(r["question"], r["gold"]) for r in rows] == [("多行\n题干", "D")]
    assert bad == [{"where": f"{folder / 'anatomy.csv'}:4", "reason": "answer 'Z' is not option letter(s) A-D"}]


def test_read_rows_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mc.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q", "choices": ["a", "b", "c", "d"], "answer": "a"},
                                         {"question": "q2", "choices": ["a"], "answer": "A"}]), path)
    rows, bad = grpo.read_rows(path)
    assert rows[0]["gold"] == "A" and bad[0]["where"].endswith(":row 2") and "1 options" in bad[0]["reason"]


def test_read_rows_fails_clearly(tmp_path):
    with pytest.raises(g.MedsftError, match="no valid multiple-choice rows"):
        grpo.read_rows(_write(tmp_path / "bad.jsonl", ['{"question": "q"}']))
    with pytest.raises(g.MedsftError, match="unknown file type"):
        grpo.read_rows(_write(tmp_path / "x.txt", ["x"]))
    with pytest.raises(g.MedsftError, match="no such file"):
        grpo.read_rows(tmp_path / "missing.jsonl")


# --- evaluation overlap, held-out split, results ------------------------------------------------------------------
def _drop_eval_overlap(rows, keys):
    """What train_grpo.py keeps of its rows: those that are no evaluation item (in any option order)."""
    kept = [r for r in rows if not mcq.overlaps(r["question"], r["choices"], keys)]
    return kept, len(rows) - len(kept)


def test_eval_overlap_dropped(tmp_path):
    test = _write(tmp_path / "test.jsonl", [json.dumps({"question": "高血压的诊断切点是多少？", "think": "t",
                                                          "answer": "a"}, ensure_ascii=False)])
    keys, sources = grpo.eval_keys(str(test), "", "")
    assert sources == {str(test): 1}
    rows = [{**ROW, "question": "高血压的诊断切点是多少?  "}, {**ROW, "question": "糖尿病的诊断切点是多少？"}]
    kept, dropped = _drop_eval_overlap(rows, keys)  # full-width ？ vs ?, trailing spaces: the same question
    assert dropped == 1 and kept[0]["question"].startswith("糖尿病")
    with pytest.raises(g.MedsftError, match="no such file"):
        grpo.eval_keys(str(tmp_path / "none.jsonl"), "", "")


def test_eval_overlap_every_benchmark_item_in_any_option_order(tmp_path):
    """Every item of the benchmarks benchmark.py scores is dropped, in another option order or spelling too; a short
    stem that recurs across exams (下列哪项正确) is the same item only with the same options."""
    folder = tmp_path / "cmmlu"
    folder.mkdir()
    (folder / "anatomy.csv").write_text(",Question,A,B,C,D,Answer\n0,人体最大的器官是,皮肤,肝,肺,脑,A\n"
                                        "1,成人正常静息心率的范围是多少次每分钟,40,80,120,160,B\n", encoding="utf-8")
    cmb = tmp_path / "cmb.json"
    cmb.write_text(json.dumps([{"question": "下列哪项正确", "option": {"A": "甲", "B": "乙", "C": "丙"}, "answer": "A",
                                "question_type": "单项选择题"}], ensure_ascii=False), encoding="utf-8")
    keys, sources = grpo.eval_keys("", f"cmmlu={folder},cmb={cmb}", "anatomy")
    assert sources == {f"cmmlu={folder}": 2, f"cmb={cmb}": 1}
    rows = [{"question": "人体最大的器官是", "choices": ["肝", "皮肤", "脑", "肺"]},          # other option order
            {"question": "12. 成人正常静息心率的范围是多少次每分钟？", "choices": ["1", "2"]},  # long stem, numbered
            {"question": "下列哪项正确：", "choices": ["丙", "甲", "乙"]},                     # short stem, same options
            {"question": "下列哪项正确", "choices": ["丁", "戊", "己"]},                       # short stem, other options
            {"question": "人体最大的器官是", "choices": ["心", "胃", "肾", "脾"]}]
    kept, dropped = _drop_eval_overlap(rows, keys)
    assert dropped == 3 and kept == rows[3:]
    with pytest.raises(g.MedsftError, match="eval_benchmarks.*medqa_mcmle"):  # not found: refused, never skipped
        grpo.eval_keys("", f"medqa_mcmle={tmp_path / 'absent'}", "anatomy")


def test_split_heldout_is_seeded_and_disjoint():
    rows = [{**ROW, "question": f"第{i}问：血压多少？", "id": f"r{i}"} for i in range(50)]
    train, held = grpo.split_heldout(rows, 10, seed=1)
    assert len(held) == 10 and len(train) == 40 and not {r["id"] for r in held} & {r["id"] for r in train}
    assert grpo.split_heldout(list(reversed(rows)), 10, seed=1)[1] == list(reversed(held))


def test_split_heldout_keeps_each_question_on_one_side():
    """One question in several option orders and spellings is held out whole or trained on whole."""
    rows = [{**ROW, "question": f"问题{i}" + "？" * (k % 2), "choices": ROW["choices"][k:] + ROW["choices"][:k],
             "id": f"r{i}-{k}"} for i in range(30) for k in range(4)]
    for seed in range(5):
        train, held = grpo.split_heldout(rows, 7, seed=seed)
        key = lambda r: r["question"].rstrip("？")  # noqa: E731
        assert len({key(r) for r in held}) == 7 and len(held) == 28
        assert not {key(r) for r in held} & {key(r) for r in train}


def test_step_history_and_sampling():
    log = [{"step": 1, "rewards/correct/mean": 0.5, "rewards/correct/std": 0.1, "kl": 0.01,
            "completions/mean_length": 12.0, "completions/clipped_ratio": 0.25}, {"step": 2, "train_runtime": 3.0}]
    hist = grpo.step_history(log, ["correct", "shape"])
    assert hist == [{"step": 1, "correct_mean": 0.5, "correct_std": 0.1, "shape_mean": None, "shape_std": None,
                     **{k.replace("completions/", "completion_"): None for k in grpo._STEP_KEYS}, "kl": 0.01,
                     "completion_mean_length": 12.0, "completion_clipped_ratio": 0.25}]
    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(temperature=0.6, top_p=0.95, top_k=20))
    assert grpo.generation_settings(model, {"TEMPERATURE": None, "TOP_P": None, "TOP_K": None}) == \
        {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    assert grpo.generation_settings(model, {"TEMPERATURE": 1.0, "TOP_P": None, "TOP_K": 0})["top_k"] == 0


def test_mc_question_is_benchmarks_prompt():
    item = {"question": ROW["question"], "choices": ROW["choices"]}
    assert grpo.mc_question(ROW) == mcq.prompt(item)
    five = grpo.mc_question({**ROW, "choices": ROW["choices"] + ["180/110"], "gold": "AE", "multi": True})
    assert "多项选择题" in five and "E. 180/110" in five and "“答案：XY”，XY 为 A、B、C、D、E 中" in five


# --- end to end (tiny model, CPU) -----------------------------------------------------------------------------------
# --- the stage end to end (tiny) -----------------------------------------------------------------------------------
GRPO_ARGS = ["--model=tiny", "--eval_data=", "--eval_benchmarks=", "--heldout=4", "--num_generations=2", "--batch_size=2", "--grad_accum=2",
             "--max_completion_length=8", "--overlong_buffer=2", "--save_steps=1", "--learning_rate=1e-4",
             "--eval_batch_size=12"]


def _grpo_cmd(root, out, results, *extra):
    import sys

    return [sys.executable, str(root / "train_grpo.py"), *GRPO_ARGS, f"--dataset={root / 'demo/grpo_mcq.jsonl'}",
            f"--output_dir={out}", f"--results_dir={results}", *extra]


def _env(**extra):
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "SWANLAB_MODE": "disabled", **extra}


def _run_grpo(root, tmp_path, *extra, name="out", check=True):
    import forkserver

    cmd = _grpo_cmd(root, tmp_path / name, tmp_path / f"{name}-results", *extra)
    done = forkserver.run(cmd, cwd=tmp_path, env=_env(), timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _results(tmp_path, name="out") -> dict:
    return json.loads((tmp_path / f"{name}-results" / "train_grpo.json").read_text(encoding="utf-8"))


def _tree(folder) -> dict:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _steps(out) -> list[dict]:
    state = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))
    keep = ("step", "loss", "kl", "rewards/correct/mean", "rewards/shape/mean", "completions/mean_length")
    return [{k: e.get(k) for k in keep} for e in state["log_history"] if "kl" in e]


needs_trl = pytest.mark.skipif(not __import__("importlib").util.find_spec("trl"), reason="needs trl (requirements.txt)")


@pytest.mark.parametrize("setting", ["--temperature=0", "--top_p=2", "--top_k=-1", "--max_completion_length=0"])
def test_bad_sampling_settings_fail_before_anything_loads(root, tmp_path, setting):
    from oracles import assert_exit

    done = _run_grpo(root, tmp_path, setting, check=False)
    assert_exit(done, 1, setting)
    assert not (tmp_path / "out").exists()  # refused before the run's folder, its lock or a model load


@needs_trl
def test_two_grpo_steps_end_to_end_then_a_rerun_changes_nothing(root, tmp_path):
    _run_grpo(root, tmp_path, "--max_steps=2")  # beta 0.04: the reference model is built too
    results = _results(tmp_path)
    assert [s["step"] for s in results["steps"]] == [1, 2]
    for step in results["steps"]:
        for name in ("correct", "shape", "repetition", "overlong"):
            assert step[f"{name}_mean"] is not None and step[f"{name}_std"] is not None
        assert step["kl"] is not None and step["completion_mean_length"] <= 8
        assert step["completion_clipped_ratio"] is not None
    assert results["sampling"] == {"temperature": 0.6, "top_p": 0.95, "top_k": 20}  # Qwen3's, not TRL's 1.0/1.0/0
    assert results["data"]["train"] == 24 and results["data"]["heldout"] == 4
    # the held-out rows answered in all three modes before and after: 4 rows x 3 modes x 2
    for when in ("before", "after"):
        scores = results["heldout"][when]
        assert scores["n_rows"] == 4 and set(scores["by_mode"]) == set(chat.MODES)
        assert 0 <= scores["correct"] <= 1
    heldout = [json.loads(line) for line in (tmp_path / "out-results" / "grpo_heldout.jsonl").read_text().splitlines()]
    assert len(heldout) == 24 and {h["when"] for h in heldout} == {"before", "after"}
    assert {(h["id"], h["mode"]) for h in heldout if h["when"] == "before"} == \
        {(h["id"], h["mode"]) for h in heldout if h["when"] == "after"}
    for png in ("rewards.png", "completion_length.png"):
        assert (tmp_path / "out-results" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the results report shows the held-out table (the numbers of train_grpo.json) and the two charts
    from medsft import report

    report.build(tmp_path / "out-results")
    text = (tmp_path / "out-results" / "README.md").read_text(encoding="utf-8")
    after = results["heldout"]["after"]
    assert "## GRPO (held-out multiple choice)" in text and "![rewards.png](rewards.png)" in text
    change = results["heldout"]["change"]
    assert f"| after | {after['correct']:.3f} {change['after_ci95']} | {after['by_mode']['think']['correct']:.3f} / " in text
    assert change["n"] == 12 and f"McNemar p = {change['p']:.3g}" in text  # 4 held-out rows x 3 modes, paired
    out = tmp_path / "out"
    assert (out / "checkpoint-2").is_dir() and (out / "model.safetensors").is_file()
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["NUM_GENERATIONS"] == 2 and saved["BETA"] == 0.04  # the whole resolved config, not a subset
    # the same command again: a finished run, nothing to do, nothing touched
    before = {**_tree(out), **{f"results/{k}": v for k, v in _tree(tmp_path / "out-results").items()}}
    again = _run_grpo(root, tmp_path, "--max_steps=2")
    assert "already holds this finished run" in again.stdout
    assert {**_tree(out), **{f"results/{k}": v for k, v in _tree(tmp_path / "out-results").items()}} == before
    # other settings on a finished run: refused, never mixed in
    refused = _run_grpo(root, tmp_path, "--max_steps=2", "--beta=0.1", check=False)
    assert refused.returncode != 0 and "already holds a finished run" in refused.stderr


@needs_trl
def test_grpo_kill9_then_resume_continues_exactly(root, tmp_path):
    import signal
    import subprocess
    import time

    from medsft.training.checkpoints import checkpoints

    steps = 5
    _run_grpo(root, tmp_path, f"--max_steps={steps}", name="ref")
    out = tmp_path / "killed"
    proc = subprocess.Popen(_grpo_cmd(root, out, tmp_path / "killed-results", f"--max_steps={steps}"), cwd=tmp_path,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not any(ok and 1 < step < steps - 1 for step, _, ok in checkpoints(out)):
        assert proc.poll() is None and time.time() < deadline, "run ended before a checkpoint could be caught"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "trainer_state.json").exists()
    again = _run_grpo(root, tmp_path, f"--max_steps={steps}", name="killed", check=False)
    assert again.returncode != 0 and "--resume=true" in again.stderr  # an unfinished run is never overwritten
    # an unreadable newest checkpoint (a disk error) is moved aside, not deleted, and the one before is used
    newest = [path for _, path, ok in checkpoints(out) if ok][-1]
    (newest / "optimizer.pt").write_bytes(b"PK\x03\x04 torn")
    resumed = _run_grpo(root, tmp_path, f"--max_steps={steps}", "--resume=true", name="killed")
    assert "resume: continuing from" in resumed.stdout, resumed.stdout[-2000:]
    assert (out / f"unreadable-{newest.name}").is_dir()
    assert _steps(out) == _steps(tmp_path / "ref")  # generation, rewards and updates replay exactly


@needs_trl
def test_grpo_dry_run_counts_the_reference_and_writes_nothing(root, tmp_path, real_tokenizer_dir):
    import re

    def peak(beta):  # Qwen3-1.7B's real config.json: no weights exist or load
        done = _run_grpo(root, tmp_path, "--dry_run=true", f"--beta={beta}", f"--model={real_tokenizer_dir}")
        assert "nothing loaded or written" in done.stdout
        return float(re.search(r"estimated peak: ([0-9.]+) GiB", done.stdout).group(1))

    c = json.loads((real_tokenizer_dir / "config.json").read_text())
    d, hd, kv, heads = c["hidden_size"], c["head_dim"], c["num_key_value_heads"], c["num_attention_heads"]
    layer = d * heads * hd * 2 + 2 * d * kv * hd + 3 * d * c["intermediate_size"] + 2 * d + 2 * hd
    params = c["vocab_size"] * d + c["num_hidden_layers"] * layer + d  # the head is tied to the embedding
    # beta > 0 with full parameters: TRL holds a second bf16 copy of the weights as the reference model
    assert peak(0.04) - peak(0.0) == pytest.approx(params * 2 / 2 ** 30, abs=0.02)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out-results").exists()


@needs_trl
def test_grpo_on_two_processes_rank0_alone_writes(root, tmp_path):
    import sqlite3
    import subprocess
    import sys

    rows = tmp_path / "mc.jsonl"  # the demo rows and a bad one: read, checked and reported by rank 0 alone
    rows.write_text((root / "demo/grpo_mcq.jsonl").read_text(encoding="utf-8") + '{"question": "q"}\n', encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *[{"--dataset": f"--dataset={rows}", "--eval_benchmarks": f"--eval_benchmarks=cmb={root / 'demo/benchmarks/cmb'}"}
             .get(a.split("=")[0], a) for a in
             _grpo_cmd(root, tmp_path / "out", tmp_path / "out-results", "--max_steps=2", "--grad_accum=1")[1:]]]
    # tests/exit_check says (stderr "EXIT-CHECK:") whether each process ends its process group as it must
    env = _env(SWANLAB_MODE="local", PYTHONPATH=str(root / "tests" / "exit_check"))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "EXIT-CHECK" not in proc.stderr, proc.stderr[-3000:]
    results = tmp_path / "out-results"
    assert sorted(p.name for p in results.iterdir()) == ["completion_length.png", "grpo_heldout.jsonl",
                                                         "rewards.png", "train_grpo.json"]
    assert [s["step"] for s in _results(tmp_path)["steps"]] == [1, 2]
    with sqlite3.connect(tmp_path / "swanlog" / "runs.swanlab") as db:  # one experiment, not one per process
        assert [r[0] for r in db.execute("select status from experiment")] == [1]
    for line in ("estimated peak", "held-out before", "held-out after", "wrote:", "row skipped", "to train on"):
        assert proc.stdout.count(line) == 1, (line, proc.stdout[-3000:])


def test_help_lists_the_constants_only(root):
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, str(root / "train_grpo.py"), "--help"], capture_output=True, text=True,
                           timeout=120, check=True).stdout
    for name in ("--num_generations", "--beta", "--num_iterations", "--dry_run", "--swanlab_project"):
        assert name in shown
    for internal in ("--run_keys", "--step_keys", "--option_letters", "--question_keys"):  # tables, not settings
        assert internal not in shown


def test_grpo_config_turns_dropout_off_and_keeps_the_constants():
    """LoRA's dropout would make the KL term noisy from step 1 (two passes of the same weights differ)."""
    cfg = {k: v for k, v in vars(g).items() if k.isupper()}
    args = g.grpo_config({**cfg, "OUTPUT_DIR": "out", "OPTIM": "adamw_torch", "PRECISION": "fp32"},
                         {"temperature": 0.6, "top_p": 0.95, "top_k": 20}, lora=True, cpu=True)
    assert args.disable_dropout is True
    assert (args.beta, args.num_generations, args.temperature, args.max_completion_length) == \
        (g.BETA, g.NUM_GENERATIONS, 0.6, g.MAX_COMPLETION_LENGTH)


def test_heldout_change_gives_intervals_and_the_paired_test():
    before = [{"id": f"q{i}", "mode": m, "correct": float(i < 4)} for i in range(10) for m in ("think", "no_think_hard")]
    after = [{"id": f"q{i}", "mode": m, "correct": float(i < 9)} for i in range(10) for m in ("think", "no_think_hard")]
    ch = grpo.heldout_change(before, after)
    assert (ch["n"], ch["better"], ch["worse"]) == (20, 10, 0) and ch["p"] == 2 / 2 ** 10
    assert ch["before_ci95"][0] < 8 / 20 < ch["before_ci95"][1] and ch["after_ci95"][0] < 18 / 20 < ch["after_ci95"][1]


def test_medqa_mcmle_in_its_published_layout_is_a_grpo_dataset(shared_dir):
    """MedQA-MCMLE's splits (jind11 layout) are GRPO rows as they are: five options, the letter from answer_idx."""
    path = shared_dir / "medmcq" / "medqa_mcmle_dev.jsonl"
    if not path.is_file():
        pytest.skip("../shared/medmcq is absent")
    rows, bad = grpo.read_rows(path)
    assert (len(rows), bad) == (3425, []) and all(len(r["choices"]) == 5 and len(r["gold"]) == 1 for r in rows)
    train, held = grpo.split_heldout(rows, 64, 42)
    assert not {mcq_key(r) for r in held} & {mcq_key(r) for r in train}  # repeated questions stay on one side


def mcq_key(row):
    return mcq.question_key(row["question"])


def test_the_run_fingerprint_knows_the_weights_and_the_revision(tmp_path):
    """A resume after the model folder was retrained in place would reload another KL reference and another
    "before": the weights' identity is in the fingerprint (the resume check refuses a changed one), and so is the
    model's revision."""
    import torch

    from medsft.models import load_model

    model = load_model("tiny")
    model.save_pretrained(tmp_path / "m")
    cfg = {k: v for k, v in vars(g).items() if k.isupper() and not k.startswith("_")}
    cfg["MODEL"] = str(tmp_path / "m")
    first = g.fingerprint(cfg, [], [], tmp_path / "m")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(tmp_path / "m")  # retrained in place: same names and sizes
    second = g.fingerprint(cfg, [], [], tmp_path / "m")
    assert first["weights_sha256"] and first["weights_sha256"] != second["weights_sha256"]
    assert "MODEL_REVISION" in first and second != g.fingerprint({**cfg, "MODEL_REVISION": "v2"}, [], [], tmp_path / "m")
    # what selects or measures rows changes nothing trained: the rows are hashed as prompted
    assert g.fingerprint({**cfg, "EVAL_BATCH_SIZE": 3, "DATASET": "other.jsonl"}, [], [], tmp_path / "m") == second


@needs_trl
def test_a_new_adapters_rank_is_a_setting_and_its_memory_is_estimated(root, tmp_path, real_tokenizer_dir):
    """--adapter=lora trains an adapter of --lora_r (once a fixed 16 that the memory estimate assumed too)."""
    import re

    def peak(rank):  # Qwen3-1.7B's real config.json: no weights exist or load
        done = _run_grpo(root, tmp_path, "--dry_run=true", "--adapter=lora", f"--lora_r={rank}",
                         f"--model={real_tokenizer_dir}")
        return float(re.search(r"estimated peak: ([0-9.]+) GiB", done.stdout).group(1))

    c = json.loads((real_tokenizer_dir / "config.json").read_text())
    d, i, q, kv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"] * c["head_dim"], \
        c["num_key_value_heads"] * c["head_dim"]
    per_rank = c["num_hidden_layers"] * ((d + q) * 2 + (d + kv) * 2 + (d + i) * 3)  # A and B of every linear layer
    # fp32 adapter weights, gradients and two AdamW moments: 16 bytes per adapter parameter
    assert peak(64) - peak(16) == pytest.approx(48 * per_rank * 16 / 2 ** 30, abs=0.02)
    refused = _run_grpo(root, tmp_path, "--dry_run=true", "--adapter=lora", "--lora_r=0",
                        f"--model={real_tokenizer_dir}", check=False)
    assert refused.returncode != 0 and "--lora_r=0" in refused.stderr and "Traceback" not in refused.stderr
