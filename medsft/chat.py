"""The one chat format of training, inference and evaluation (the tokenizer's own Qwen3 chat template), the thinking
modes and the think split. Text never becomes a control token: rows holding one are rejected before training, and
inference tokenizes message contents as plain text (``prompt_ids``)."""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
import weakref

SYSTEM_PROMPT = "你是一个医学专家，你需要根据用户的问题，给出带有思考的回答。"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
THINK_TAGS = re.compile(r"</?think>")
# Letters (CJK or Latin; digits are no words) a think needs to count as one: every think of the real dataset has over
# 470 and the demo rows over 290, so 16 (a short clause) only fails a token gesture (`。`, `嗯，好的。`, a run of
# digits) that would let GRPO drop the think
MIN_THINK_CHARS = 16
IGNORE_INDEX = -100  # label of tokens that carry no loss (transformers' convention)
STATUSES = ("closed", "unclosed", "absent")  # think status of a generated answer (see split_output)
# How a question asks for reasoning, in display order. think: <think>…</think> then the answer. no_think_soft:
# "/no_think" ends the user turn; the model writes the empty think block. no_think_hard: enable_thinking=False (the
# prompt itself closes an empty think block).
MODES = ("think", "no_think_soft", "no_think_hard")
MODE_LABELS = {"think": "thinking on", "no_think_soft": "/no_think (soft switch)",
               "no_think_hard": "enable_thinking=False (hard switch)"}
SHORT = {"think": "think-on", "no_think_soft": "no-think-soft", "no_think_hard": "no-think-hard"}
FLAGS = {"think": "", "no_think_soft": "--soft_switch=/no_think", "no_think_hard": "--enable_thinking=false"}
SOFT_SWITCH = {"no_think_soft": " /no_think"}
SWITCHES = ("/think", "/no_think")  # Qwen3's soft switches, typed in a user turn
# The Qwen3 tokenizer family's added tokens other than the think tags, in id order (a test keeps it equal to the real
# tokenizer's): in a row's text they would be parsed as turns or tool/vision/FIM markers.
CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                  "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
                  "<|file_sep|>", "<tool_response>", "</tool_response>")

def question_mode(question: str, enable_thinking: bool = True) -> str:
    """The mode Qwen3 answers ``question`` in: enable_thinking=False is the hard switch (no soft switch can reopen
    the think the prompt closed); otherwise the last ``/think`` or ``/no_think`` in the question wins."""
    if not enable_thinking:
        return "no_think_hard"
    return "no_think_soft" if question.rfind("/no_think") > question.rfind("/think") else "think"

def output_shape(output: str, finished: bool = True) -> str:
    """The shape of a generated assistant text (``finished``: it ended with end-of-turn): think, empty_think (no
    think content: blank, or fewer than MIN_THINK_CHARS letters), no_think, unclosed, no_answer,
    stray_tag (a think tag inside the answer, or a closing tag never opened) or cut_off (it never ended)."""
    think, answer, status = split_output(output)
    if status == "unclosed":
        return "unclosed"
    if not finished:  # text that never ended is no answer of any shape: a random model's babble lands here
        return "cut_off"
    if THINK_OPEN in answer or THINK_CLOSE in answer or (status == "closed" and THINK_OPEN not in output):
        return "stray_tag"
    if not answer:
        return "no_answer"
    if status == "absent":
        return "no_think"
    return "think" if sum(unicodedata.category(c)[0] == "L" for c in think) >= MIN_THINK_CHARS else "empty_think"

def obeying_shapes(mode: str) -> tuple[str, ...]:
    """The ``output_shape`` values that obey ``mode``: the hard switch's prompt closed the think already, so any
    think block after it (even an empty one) disobeys; the soft switch asks for the empty block."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    return {"think": ("think",), "no_think_soft": ("empty_think", "no_think"), "no_think_hard": ("no_think",)}[mode]

def build_messages(question, think=None, answer=None, system=None, history=None) -> list[dict]:
    """System, earlier ``{"role", "content"[, "reasoning_content"]}`` turns, the question and, for training, the
    assistant's think + answer (Qwen3's template drops the reasoning of turns before the last question)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT if system is None else system}]
    messages += list(history or [])
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer, "reasoning_content": think or ""})
    return messages

def _template(tokenizer, messages, mode: str, **kw) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    return tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=mode != "no_think_hard", **kw)

def prompt_text(tokenizer, question, system=None, history=None, mode: str = "think") -> str:
    """The generation prompt as text (the model is fed its ``prompt_ids``); ``no_think_soft`` appends `` /no_think``
    unless the question already switches thinking off itself."""
    return _template(tokenizer, _prompt_messages(question, system, history, mode), mode, add_generation_prompt=True)

def _prompt_messages(question, system, history, mode: str) -> list[dict]:
    if mode == "no_think_soft" and question_mode(question) != mode:
        question = question + SOFT_SWITCH[mode]
    return build_messages(question, system=system, history=history)

def control_tokens(tokenizer=None) -> tuple[str, ...]:
    """``CONTROL_TOKENS`` plus ``tokenizer``'s own added tokens other than the think tags."""
    added = tokenizer.get_added_vocab() if tokenizer is not None else {}
    return CONTROL_TOKENS + tuple(t for t in sorted(added) if t not in CONTROL_TOKENS + (THINK_OPEN, THINK_CLOSE))

def find_control_token(row: dict, fields, tokens=CONTROL_TOKENS) -> tuple[str, str] | None:
    """``(field, token)`` for the first of ``row``'s text ``fields`` holding a control token's text (the token that
    comes first in it), else None."""
    for k in fields:
        text = str(row.get(k) or "")
        found = [(text.find(t), t) for t in tokens if t in text]
        if found:
            return k, min(found)[1]
    return None

_PLAIN = weakref.WeakKeyDictionary()  # tokenizer -> a copy that knows no added token (built on first need)

def _text_ids(tokenizer, text: str) -> list[int]:
    # text holding no added token takes the tokenizer's own path, so ordinary text gets exactly the usual ids
    if not any(t in text for t in tokenizer.get_added_vocab()):
        return _ids(tokenizer, text)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python-only tokenizer: special tokens at least are split into plain text
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if tokenizer not in _PLAIN:
        from tokenizers import Tokenizer

        spec = json.loads(backend.to_str())
        spec["added_tokens"] = []  # the same normalizer, pre-tokenizer and BPE merges, with nothing matched first
        _PLAIN[tokenizer] = Tokenizer.from_str(json.dumps(spec))
    return _PLAIN[tokenizer].encode(text, add_special_tokens=False).ids

def prompt_ids(tokenizer, question, system=None, history=None, mode: str = "think") -> list[int]:
    """The token ids of ``prompt_text`` with every message content read as plain text (a typed ``<|im_end|>`` can
    never open a turn); the template's own control tokens stay single tokens. Ordinary text: the same ids."""
    messages = _prompt_messages(question, system, history, mode)
    mark = f"\ue000{uuid.uuid4().hex}"  # a private-use character: no template op (strip, split) touches it
    texts, masked = [], []
    for m in messages:
        m = dict(m)
        for key in ("content", "reasoning_content"):
            if isinstance(m.get(key), str):
                texts.append(m[key])
                m[key] = f"{mark}{len(texts) - 1}\ue001"
        masked.append(m)
    # the skeleton is split on the added tokens; contents go in verbatim, so none can steer the template either
    skeleton = _template(tokenizer, masked, mode, add_generation_prompt=True)
    added = tokenizer.get_added_vocab()
    token_re = "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))
    ids, text = [], ""
    for k, piece in enumerate(re.split(f"{re.escape(mark)}(\\d+)\ue001", skeleton)):
        if k % 2:  # a placeholder: the content itself, verbatim
            text += texts[int(piece)]
            continue
        for j, part in enumerate(re.split(f"({token_re})", piece) if token_re else [piece]):
            if j % 2:  # one of the template's own added tokens
                ids += _text_ids(tokenizer, text) + [added[part]]
                text = ""
            else:
                text += part
    return ids + _text_ids(tokenizer, text)

def format_reference(think: str, answer: str) -> str:
    """The assistant text exactly as Qwen3's template renders a think + answer turn (without ``<|im_end|>``)."""
    return f"{THINK_OPEN}\n{think.strip(chr(10))}\n{THINK_CLOSE}\n\n{answer.lstrip(chr(10))}"

def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]

def tokenize_example(tokenizer, row: dict, max_length: int, system=None, mode: str = "think") -> dict | None:
    """One {question, think, answer} row for SFT in ``mode``: ``labels`` are -100 over the generation prompt and
    after the answer's ``<|im_end|>``. None when longer than ``max_length`` (a truncated example would teach the
    model not to stop)."""
    if mode == "think" and not str(row.get("think") or "").strip():
        mode = "no_think_hard"  # a row whose think is empty is never a thinking example
    think = row["think"] if mode == "think" else ""
    messages = build_messages(row["question"] + SOFT_SWITCH.get(mode, ""), think, row["answer"], system=system)
    full = _template(tokenizer, messages, mode)
    prompt = _template(tokenizer, messages[:-1], mode, add_generation_prompt=True)
    if not full.startswith(prompt):
        raise ValueError("chat template does not render the generation prompt as a prefix of the full conversation")
    head = _ids(tokenizer, prompt)
    input_ids = _ids(tokenizer, full)
    if input_ids[: len(head)] != head:
        raise ValueError("prompt tokens differ between the prompt alone and the full conversation")
    if len(input_ids) > max_length:
        return None
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end = len(input_ids) - input_ids[::-1].index(eos)  # just past the assistant's <|im_end|>
    n_ends = input_ids[len(head):end].count(eos)
    if n_ends != 1:  # e.g. "<|im_end|>" in the answer's text: a fake turn would be learned as assistant output
        raise ValueError(f"the example supervises {n_ends} end-of-turn tokens ({tokenizer.convert_ids_to_tokens(eos)}),"
                         " expected exactly 1: a field holds a chat control token; reject the row (data.py does)")
    labels = [IGNORE_INDEX] * len(head) + input_ids[len(head):end] + [IGNORE_INDEX] * (len(input_ids) - end)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}

def example_modes(ids: list[str], no_think_ratio: float, seed: int) -> list[str]:
    """The mode of each training row: a hash of (seed, row id) puts a ``no_think_ratio`` share of rows, the same on
    every run and resume, in non-thinking modes, half hard and half soft."""
    out = []
    for row_id in ids:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{row_id}".encode()).digest()[:8], "big") / 2 ** 64
        if h >= no_think_ratio:
            out.append("think")
        else:
            out.append("no_think_hard" if h < no_think_ratio / 2 else "no_think_soft")
    return out

def split_output(text: str) -> tuple[str, str, str]:
    """``(think, answer, status)`` of a generated assistant text; status is closed, unclosed (cut off mid-thought:
    the answer is empty, text before the ``<think>`` included) or absent (no think block: all text is the answer)."""
    if THINK_CLOSE in text:
        head, _, answer = text.partition(THINK_CLOSE)
        think = head.split(THINK_OPEN, 1)[-1]
        return think.strip(), answer.strip(), "closed"
    if THINK_OPEN in text:
        return text.partition(THINK_OPEN)[2].strip(), "", "unclosed"
    return "", text.strip(), "absent"

def strip_think_tags(text: str) -> str:
    """``text`` with every think tag replaced by a line break (rouge's whole-output view)."""
    return THINK_TAGS.sub("\n", text)
