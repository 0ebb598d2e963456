"""The chat format shared by training and inference, checked against the REAL Qwen3 tokenizer (../shared)."""

import json

import pytest

from medsft.chat import (IGNORE_INDEX, SYSTEM_PROMPT, format_reference, prompt_text, split_output,
                         tokenize_example)


def qwen3_text(question, think, answer):
    # Written out from Qwen3's documented format, independently of the tokenizer's template
    return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n<think>\n{think}\n</think>\n\n{answer}<|im_end|>\n")


def template_ids(tok, messages, **kw):
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def real_rows(sample_rows_path):
    rows = [json.loads(line) for line in sample_rows_path.read_text(encoding="utf-8").splitlines()]
    return [{k: r[k].strip() for k in ("question", "think", "answer")} for r in rows]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory, demo_data_path):
    from medsft.models import demo_builders

    if not demo_data_path.is_file():
        pytest.fail(f"{demo_data_path} missing")
    return demo_builders().build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), demo_data_path)


def check_properties(tok, row):
    ex = tokenize_example(tok, row, max_length=100_000)
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels) == len(ex["attention_mask"]) and set(ex["attention_mask"]) == {1}
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": format_reference(row["think"], row["answer"])}]
    # input_ids are the tokenizer's own chat template of [system, user, assistant]
    assert ids == template_ids(tok, messages)
    # the masked prefix is exactly the generation prompt inference uses
    prompt = template_ids(tok, messages[:2], add_generation_prompt=True)
    n_masked = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert n_masked == len(prompt) and ids[:n_masked] == prompt
    assert tok(prompt_text(tok, row["question"]), add_special_tokens=False)["input_ids"] == prompt
    # everything after it, <think> through <|im_end|>, is trained, and labels equal inputs there
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert trained == [lab for lab in labels if lab != IGNORE_INDEX]
    first_masked_after = next((k for k in range(n_masked, len(labels)) if labels[k] == IGNORE_INDEX), len(labels))
    assert all(lab == IGNORE_INDEX for lab in labels[first_masked_after:])
    assert tok.decode(trained) == f"<think>\n{row['think']}\n</think>\n\n{row['answer']}<|im_end|>"
    assert trained[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    return ex


def test_real_tokenizer_all_sample_rows(real_tokenizer, real_rows):
    for row in real_rows:
        ex = check_properties(real_tokenizer, row)
        expected = real_tokenizer(qwen3_text(**row), add_special_tokens=False)["input_ids"]
        assert ex["input_ids"] == expected


def test_real_tokenizer_think_tokens_are_single_tokens(real_tokenizer, real_rows):
    ex = tokenize_example(real_tokenizer, real_rows[0], max_length=100_000)
    think_open = real_tokenizer.convert_tokens_to_ids("<think>")
    think_close = real_tokenizer.convert_tokens_to_ids("</think>")
    trained = [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    assert trained[0] == think_open and think_close in trained


def test_too_long_is_none_not_truncated(real_tokenizer, real_rows):
    row = real_rows[0]
    n = len(tokenize_example(real_tokenizer, row, max_length=100_000)["input_ids"])
    assert tokenize_example(real_tokenizer, row, max_length=n - 1) is None
    assert len(tokenize_example(real_tokenizer, row, max_length=n)["input_ids"]) == n


def test_project_tiny_tokenizer_has_the_same_format(tiny_tokenizer, demo_data_path):
    rows = [json.loads(line) for line in demo_data_path.read_text(encoding="utf-8").splitlines()]
    for row in rows[:10]:
        check_properties(tiny_tokenizer, row)
        ex = tokenize_example(tiny_tokenizer, row, max_length=100_000)
        assert tiny_tokenizer.decode(ex["input_ids"]) == qwen3_text(row["question"], row["think"], row["answer"])


def test_multi_turn_history_drops_old_reasoning(real_tokenizer):
    history = [{"role": "user", "content": "问1"}, {"role": "assistant", "content": "答1", "reasoning_content": "想1"}]
    text = prompt_text(real_tokenizer, "问2", history=history)
    assert "想1" not in text and "答1" in text and text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("text,expected", [
    ("<think>\n想一想\n</think>\n\n答案", ("想一想", "答案", "closed")),
    ("<think>\n想一想，还没想完", ("想一想，还没想完", "", "unclosed")),
    ("答案在前<think>\n想一想，还没想完", ("想一想，还没想完", "", "unclosed")),  # text before it is no answer
    ("直接回答", ("", "直接回答", "absent")),
    ("想一想\n</think>\n\n答案", ("想一想", "答案", "closed")),
    ("", ("", "", "absent")),
    ("<think>\n\n</think>\n\n只有答案", ("", "只有答案", "closed")),
])
def test_split_output(text, expected):
    assert split_output(text) == expected


def test_split_inverts_format_reference():
    assert split_output(format_reference("a\nb", "c")) == ("a\nb", "c", "closed")
