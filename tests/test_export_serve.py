"""Serving the exported file with llama.cpp's OpenAI-compatible server (`llama-server -m <file> --jinja`; here the same
server through the prebuilt xllamacpp wheel, which CI installs, on its HTTP port): the think comes back apart as
`reasoning_content`, and `chat_template_kwargs: {"enable_thinking": false}` gives no think. The tiny model babbles,
so a grammar makes it write a think and an answer; what is tested is the server's handling of the file's template.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from test_export import run_export, tiny_dir, tiny_tokenizer  # noqa: F401 - module fixtures shared with test_export.py

pytest.importorskip("gguf")
xl = pytest.importorskip("xllamacpp", reason="llama.cpp's server: pip install xllamacpp")

QUESTION = "头痛三天，伴有低烧，怎么办？"
THINK, ANSWER = "先问体温和伴随症状", "多休息，多喝水"


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("serve")
    run_export(f"--model_dir={tiny_dir}", f"--output_dir={out}", "--name=tiny", "--quantization=q8_0")
    params = xl.CommonParams()
    params.model.path = str(out / "tiny-q8_0.gguf")
    params.n_ctx, params.n_parallel, params.warmup, params.use_jinja, params.verbosity = 1024, 1, False, True, -1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    running = xl.Server(params)  # as `llama-server -m tiny-q8_0.gguf --jinja`, its defaults otherwise
    yield running.listening_address
    del running


def chat(url: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def test_the_think_comes_back_as_reasoning_content(server):
    grammar = f'root ::= "<think>\\n" "{THINK}" "\\n</think>\\n\\n" "{ANSWER}"'  # a think, then an answer
    out = chat(server, {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 64, "temperature": 0,
                        "grammar": grammar})
    message = out["choices"][0]["message"]
    assert message["reasoning_content"].strip() == THINK
    assert message["content"] == ANSWER and "<think>" not in message["content"]


def test_enable_thinking_false_gives_no_think(server, tiny_tokenizer):  # noqa: F811
    messages = [{"role": "user", "content": QUESTION}]
    out = chat(server, {"messages": messages, "max_tokens": 16, "temperature": 0, "grammar": f'root ::= "{ANSWER}"',
                        "chat_template_kwargs": {"enable_thinking": False}})
    message = out["choices"][0]["message"]
    assert message["content"] == ANSWER and not message.get("reasoning_content")
    # the prompt holds Qwen3's empty think block, token for token as transformers writes it
    prompt = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                enable_thinking=False)
    assert prompt.endswith("<think>\n\n</think>\n\n")
    assert out["usage"]["prompt_tokens"] == len(tiny_tokenizer(prompt, add_special_tokens=False).input_ids)
