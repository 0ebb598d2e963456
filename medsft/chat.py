"""The one chat format shared by training, inference and evaluation (the tokenizer's own Qwen3 chat template).

Training renders [system, user, assistant] with the tokenizer's chat template and masks exactly the generation
prompt that inference feeds the model, so what the model learns to continue is what it is later asked to continue.
"""

from __future__ import annotations

SYSTEM_PROMPT = "你是一个医学专家，你需要根据用户的问题，给出带有思考的回答。"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
IGNORE_INDEX = -100  # label of tokens that carry no loss (transformers' convention)
STATUSES = ("closed", "unclosed", "absent")  # think status of a generated answer (see split_output)


def build_messages(question, think=None, answer=None, system=None, history=None) -> list[dict]:
    """Chat messages: system, earlier turns, the user question and, for training, the assistant's think + answer.

    ``history`` is a list of earlier ``{"role", "content"[, "reasoning_content"]}`` turns; Qwen3's template drops
    the reasoning of turns before the last question, as the model was trained.
    """
    messages = [{"role": "system", "content": SYSTEM_PROMPT if system is None else system}]
    messages += list(history or [])
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer, "reasoning_content": think or ""})
    return messages


def prompt_text(tokenizer, question, system=None, history=None) -> str:
    """The generation prompt inference feeds the model (ends with ``<|im_start|>assistant\\n``)."""
    return tokenizer.apply_chat_template(
        build_messages(question, system=system, history=history), tokenize=False, add_generation_prompt=True
    )


def format_reference(think: str, answer: str) -> str:
    """The assistant text exactly as Qwen3's template renders a think + answer turn (without ``<|im_end|>``)."""
    return f"{THINK_OPEN}\n{think.strip(chr(10))}\n{THINK_CLOSE}\n\n{answer.lstrip(chr(10))}"


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_example(tokenizer, row: dict, max_length: int, system=None) -> dict | None:
    """Tokenize one {question, think, answer} row for SFT.

    ``input_ids`` are the chat template of [system, user, assistant]; ``labels`` are -100 over the generation
    prompt and equal to ``input_ids`` from ``<think>`` through the answer's ``<|im_end|>``. Template text after
    ``<|im_end|>`` (a newline the model never generates) is masked too. Returns None when the example is longer
    than ``max_length``: a truncated example would teach the model not to stop.
    """
    messages = build_messages(row["question"], row["think"], row["answer"], system=system)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prompt):
        raise ValueError("chat template does not render the generation prompt as a prefix of the full conversation")
    prompt_ids = _ids(tokenizer, prompt)
    input_ids = _ids(tokenizer, full)
    if input_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("prompt tokens differ between the prompt alone and the full conversation")
    if len(input_ids) > max_length:
        return None
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end = len(input_ids) - input_ids[::-1].index(eos)  # just past the assistant's <|im_end|>
    labels = [IGNORE_INDEX] * len(prompt_ids) + input_ids[len(prompt_ids):end] + [IGNORE_INDEX] * (len(input_ids) - end)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def split_output(text: str) -> tuple[str, str, str]:
    """Split a generated assistant text into ``(think, answer, status)``.

    status: ``closed`` (``<think>…</think>`` then the answer), ``unclosed`` (``<think>`` with no ``</think>``: the
    generation was cut off mid-thought; answer is empty) or ``absent`` (no think block; all text is the answer).
    """
    if THINK_CLOSE in text:
        head, _, answer = text.partition(THINK_CLOSE)
        think = head.split(THINK_OPEN, 1)[-1]
        return think.strip(), answer.strip(), "closed"
    if THINK_OPEN in text:
        before, _, think = text.partition(THINK_OPEN)
        return think.strip(), before.strip(), "unclosed"
    return "", text.strip(), "absent"
