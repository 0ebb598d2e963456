"""Qwen3's hybrid thinking formats (think, /no_think, enable_thinking=False), token-exact against the REAL
tokenizer's own template in ../shared, with the same masking rule as thinking rows."""

from __future__ import annotations

import json

import pytest
from oracles import raises_naming

from medsft.chat import IGNORE_INDEX, SYSTEM_PROMPT, example_modes, prompt_text, tokenize_example


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def rows(sample_rows_path):
    rows = [json.loads(line) for line in sample_rows_path.read_text(encoding="utf-8").splitlines()][:40]
    return [{k: r[k].strip() for k in ("question", "think", "answer")} for r in rows]


def test_hard_no_think_is_the_templates_enable_thinking_false(real_tokenizer, rows):
    for row in rows:
        ex = tokenize_example(real_tokenizer, row, 100_000, mode="no_think_hard")
        # written out independently: the template's enable_thinking=False prompt closes an empty think block
        prompt = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{row['question']}<|im_end|>\n"
                  "<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert ex["input_ids"] == _ids(real_tokenizer, prompt + row["answer"] + "<|im_end|>\n")
        gen = real_tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT},
                                                  {"role": "user", "content": row["question"]}], tokenize=False,
                                                 add_generation_prompt=True, enable_thinking=False)
        assert gen == prompt == prompt_text(real_tokenizer, row["question"], mode="no_think_hard")
        n = len(_ids(real_tokenizer, prompt))
        assert ex["labels"][:n] == [IGNORE_INDEX] * n  # the prompt, empty think block included, is masked
        trained = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
        assert trained == _ids(real_tokenizer, row["answer"] + "<|im_end|>")


def test_soft_no_think_trains_the_empty_think_block(real_tokenizer, rows):
    for row in rows:
        ex = tokenize_example(real_tokenizer, row, 100_000, mode="no_think_soft")
        question = row["question"] + " /no_think"
        prompt = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
                  "<|im_start|>assistant\n")
        target = f"<think>\n\n</think>\n\n{row['answer']}<|im_end|>"
        assert ex["input_ids"] == _ids(real_tokenizer, prompt + target + "\n")
        assert prompt == prompt_text(real_tokenizer, row["question"], mode="no_think_soft")
        trained = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
        assert trained == _ids(real_tokenizer, target)
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question},
                    {"role": "assistant", "content": row["answer"], "reasoning_content": ""}]
        assert real_tokenizer.apply_chat_template(messages, tokenize=False) == prompt + target + "\n"


def test_a_row_with_an_empty_think_never_becomes_a_thinking_example(real_tokenizer, rows):
    row = {**rows[0], "think": "  \n"}
    assert tokenize_example(real_tokenizer, row, 100_000) == tokenize_example(real_tokenizer, row, 100_000,
                                                                               mode="no_think_hard")


def test_thinking_prompt_is_unchanged(real_tokenizer, rows):
    assert prompt_text(real_tokenizer, rows[0]["question"]).endswith("<|im_start|>assistant\n")
    assert prompt_text(real_tokenizer, rows[0]["question"], mode="think") == prompt_text(real_tokenizer,
                                                                                         rows[0]["question"])


def test_example_modes_are_seeded_and_near_the_ratio():
    ids = [f"r{i}" for i in range(4000)]
    a = example_modes(ids, 0.25, seed=42)
    assert a == example_modes(ids, 0.25, seed=42)  # the same rows on every run and resume
    assert a != example_modes(ids, 0.25, seed=7)
    share = {m: a.count(m) / len(a) for m in set(a)}
    assert share["think"] == pytest.approx(0.75, abs=0.03)
    assert share["no_think_hard"] == pytest.approx(0.125, abs=0.02)
    assert share["no_think_soft"] == pytest.approx(0.125, abs=0.02)
    assert set(example_modes(ids, 0.0, seed=1)) == {"think"}


def test_training_examples_mix_the_modes_by_seed(tmp_path):
    """prepare_examples turns NO_THINK_RATIO of the rows into non-thinking examples, the same ones on every run;
    an empty think is never trained as thinking (any tokenizer: the tiny one here)."""
    from medsft.models import load_tokenizer
    from medsft.training.sft import prepare_examples

    tok = load_tokenizer("tiny")
    rows = [{"id": f"r{i}", "question": f"问题{i}？", "think": "" if i == 0 else f"思考{i}。", "answer": f"回答{i}。"}
            for i in range(60)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    a, stats = prepare_examples(path, tok, 512, no_think_ratio=0.5, seed=3)
    b, _ = prepare_examples(path, tok, 512, no_think_ratio=0.5, seed=3)
    assert a == b
    assert sum(stats["modes"].values()) == 60 and min(stats["modes"].values()) >= 10, stats["modes"]
    _, none = prepare_examples(path, tok, 512)
    assert none["modes"] == {"think": 59, "no_think_hard": 1, "no_think_soft": 0}  # row 0 has an empty think
    think_open = tok.convert_tokens_to_ids("<think>")
    trained = [[t for t, lab in zip(e["input_ids"], e["labels"]) if lab != -100] for e in a]
    hard = sum(1 for t in trained if think_open not in t)
    assert hard == stats["modes"]["no_think_hard"]  # hard examples train the answer alone


def test_a_rows_own_mode_field_wins_over_the_ratio(tmp_path):
    """A row may fix its own mode (`"mode": "no_think_soft"`, as demo/augment.py writes them); NO_THINK_RATIO then
    picks among the rows without one. A mode that is not one of the three is an error naming file:line."""
    from medsft.files import MedsftError
    from medsft.models import load_tokenizer
    from medsft.training.sft import prepare_examples

    tok = load_tokenizer("tiny")
    fixed = ["think", "no_think_soft", "no_think_hard"]
    rows = [{"id": f"r{i}", "question": f"问题{i}？", "think": f"思考{i}。", "answer": f"回答{i}。",
             **({"mode": fixed[i % 3]} if i < 30 else {})} for i in range(60)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    ex, stats = prepare_examples(path, tok, 512, no_think_ratio=0.0, seed=3)
    assert stats["modes"] == {"think": 40, "no_think_hard": 10, "no_think_soft": 10}
    think_open = tok.convert_tokens_to_ids("<think>")
    for i, e in enumerate(ex[:30]):
        has_soft = "/no_think" in tok.decode(e["input_ids"])
        trained = [t for t, lab in zip(e["input_ids"], e["labels"]) if lab != -100]
        assert has_soft == (fixed[i % 3] == "no_think_soft"), i
        assert (think_open in trained) == (fixed[i % 3] != "no_think_hard"), i
    rows[7]["mode"] = "no_think"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with raises_naming(MedsftError, f"{path}:8:", "'mode'", "'no_think'", "no_think_soft"):  # row, field, value, fix
        prepare_examples(path, tok, 512)
