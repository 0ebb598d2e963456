"""export.py: the GGUF holds what llama.cpp needs to run the tiny model exactly as transformers does.

llama.cpp itself is the oracle through the prebuilt `xllamacpp` wheel (a test-only dependency CI installs); those
tests skip cleanly without it. q4_k_m needs the optional prebuilt ggml library (libggml-python) and skips without it.
The tiny model uses the real Qwen3 tokenizer when ../shared is there, else the project-built one.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from oracles import lines_naming, raises_naming

pytest.importorskip("gguf")

QUESTION = "头痛三天，伴有低烧，怎么办？ Fever 38.5 for 3333 hours, I'm   tired\n\n\tok?"


def run_export(*args: str) -> str:
    """Run export.py in this process as `python export.py ARGS` would; returns what it printed."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(sys, "argv", ["export.py", *args])
        mp.setattr(sys, "excepthook", sys.excepthook)  # configure() installs its own
        runpy.run_path(str(ROOT / "export.py"), run_name="__main__")
    return out.getvalue()


def has_ggml() -> bool:
    try:
        import libggml  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    from medsft.models import resolve_model

    return Path(resolve_model("tiny"))


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def exports(tiny_dir, tmp_path_factory):
    """quantization -> (gguf path, printed output) of the tiny model; q4_k_m only with the ggml library."""
    base = tmp_path_factory.mktemp("export")
    done = {}
    for quant in ("f32", "q8_0", "f16", "bf16") + (("q4_k_m",) if has_ggml() else ()):
        printed = run_export(f"--model_dir={tiny_dir}", f"--output_dir={base / quant}", "--name=tiny",
                             f"--quantization={quant}")
        done[quant] = (base / quant / f"tiny-{quant}.gguf", printed)
    return done


@functools.lru_cache(maxsize=None)
def reader(path):
    """A parsed GGUF file (parsing the 150k-token vocabulary takes seconds: each file is read once)."""
    from gguf import GGUFReader

    return GGUFReader(path)


def field(r, key):
    return r.fields[key].contents() if key in r.fields else None


def hf_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.float().numpy() for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def dequantized(t):
    import numpy as np
    from gguf import quants

    return quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(tuple(reversed([int(n) for n in t.shape])))


def compare_tensors(path, hf: dict, n_layers: int, limit: float):
    """Every GGUF tensor against its HF tensor: relative RMS error per tensor; returns {name: error}."""
    import numpy as np
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, n_layers)
    by_gguf = {names.get_name(k, try_suffixes=(".weight",)): k for k in hf}
    errors = {}
    for t in reader(path).tensors:
        want = hf[by_gguf[t.name]]
        got = dequantized(t)
        assert got.shape == want.shape, t.name
        errors[t.name] = float(np.sqrt(np.mean((got - want) ** 2)) / max(np.sqrt(np.mean(want ** 2)), 1e-12))
        assert errors[t.name] <= limit, (t.name, t.tensor_type.name, errors[t.name])
    assert {by_gguf[n] for n in errors} == set(hf) - {"lm_head.weight"}  # every tensor, the tied head dropped
    return errors


# --- metadata, tokenizer, tensors ------------------------------------------------------------------------------


def test_metadata_and_token_types(exports, tiny_dir, tiny_tokenizer):
    import gguf
    from gguf import GGMLQuantizationType as T, TokenType

    config = json.loads((tiny_dir / "config.json").read_text())
    r = reader(exports["f32"][0])
    assert field(r, "general.architecture") == "qwen3"
    assert field(r, "general.name") == "tiny"
    expect = {"block_count": config["num_hidden_layers"], "context_length": config["max_position_embeddings"],
              "embedding_length": config["hidden_size"], "feed_forward_length": config["intermediate_size"],
              "attention.head_count": config["num_attention_heads"],
              "attention.head_count_kv": config["num_key_value_heads"],
              "attention.key_length": config["head_dim"], "attention.value_length": config["head_dim"]}
    for key, value in expect.items():
        assert field(r, f"qwen3.{key}") == value, key
    assert field(r, "qwen3.rope.freq_base") == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert field(r, "qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    assert field(r, "general.file_type") == gguf.LlamaFileType.ALL_F32
    # general.*: from what the exporter knows (a folder with no train_config.json: no base model, the size counted)
    assert field(r, "general.basename") == "tiny" and field(r, "general.finetune") == "tiny"
    assert field(r, "general.license") == "apache-2.0" and field(r, "general.size_label")
    assert "general.base_model.count" not in r.fields
    # tokenizer: byte-level BPE, the right pre-tokenizer, tokens padded to the model's vocab, eos/pad, no BOS
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    real = "<|im_start|>" in tiny_tokenizer.get_vocab() and len(tiny_tokenizer) > 150_000
    assert field(r, "tokenizer.ggml.pre") == ("qwen2" if real else "gpt-2")
    tokens, types = field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == config["vocab_size"]
    vocab = tiny_tokenizer.get_vocab()
    for token, kind in (("<|im_end|>", TokenType.CONTROL), ("<|im_start|>", TokenType.CONTROL),
                        ("<|endoftext|>", TokenType.CONTROL), ("<think>", TokenType.USER_DEFINED),
                        ("</think>", TokenType.USER_DEFINED)):
        assert tokens[vocab[token]] == token and types[vocab[token]] == kind, token
    assert types[vocab["Ġthe"] if "Ġthe" in vocab else 300] == TokenType.NORMAL
    if len(vocab) < config["vocab_size"]:
        assert types[-1] == TokenType.UNUSED and tokens[-1] == f"[PAD{config['vocab_size'] - 1}]"
    assert field(r, "tokenizer.ggml.eos_token_id") == vocab["<|im_end|>"]
    assert field(r, "tokenizer.ggml.padding_token_id") == vocab["<|endoftext|>"]
    assert field(r, "tokenizer.ggml.add_bos_token") is False
    assert len(field(r, "tokenizer.ggml.merges")) > 1000
    assert field(r, "tokenizer.chat_template") == tiny_tokenizer.chat_template
    # generation_config's sampling defaults (Qwen3's thinking mode)
    assert field(r, "general.sampling.temp") == pytest.approx(0.6)
    assert field(r, "general.sampling.top_p") == pytest.approx(0.95)
    assert field(r, "general.sampling.top_k") == 20
    # tied lm_head dropped; norms F32
    tensors = {t.name: t for t in r.tensors}
    assert "output.weight" not in tensors and "token_embd.weight" in tensors
    assert all(t.tensor_type == T.F32 for n, t in tensors.items() if n.endswith("norm.weight"))


@pytest.mark.parametrize("quant,limit", [("f32", 0.0), ("f16", 1e-3), ("bf16", 5e-3), ("q8_0", 0.01)])
def test_every_tensor_against_safetensors(exports, tiny_dir, quant, limit):
    from gguf import GGMLQuantizationType as T

    config = json.loads((tiny_dir / "config.json").read_text())
    compare_tensors(exports[quant][0], hf_tensors(tiny_dir), config["num_hidden_layers"], limit)
    want = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}[quant]
    tensors = reader(exports[quant][0]).tensors
    assert {t.tensor_type for t in tensors if not t.name.endswith("norm.weight")} == {want}  # norms stay F32
    assert {t.tensor_type for t in tensors if t.name.endswith("norm.weight")} == {T.F32}


@pytest.fixture(scope="module")
def wide_dir(tiny_dir, tmp_path_factory):
    """A 2-layer Qwen3 whose rows are multiples of 256, so q4_k_m really writes Q4_K and Q6_K blocks."""
    import shutil

    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = tmp_path_factory.mktemp("wide")
    for f in tiny_dir.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "generation_config")):
            shutil.copy(f, out / f.name)
    base = json.loads((tiny_dir / "config.json").read_text())
    config = Qwen3Config(vocab_size=base["vocab_size"], hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
                         max_position_embeddings=4096, eos_token_id=base["eos_token_id"],
                         bos_token_id=base["bos_token_id"], pad_token_id=base["pad_token_id"])
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    return out


@pytest.mark.skipif(not has_ggml(), reason="q4_k_m needs the prebuilt ggml library (pip install libggml-python)")
def test_q4_k_m_against_safetensors(wide_dir, exports, tiny_dir, tmp_path):
    from gguf import GGMLQuantizationType as T

    run_export(f"--model_dir={wide_dir}", f"--output_dir={tmp_path}", "--name=wide", "--quantization=q4_k_m")
    path = tmp_path / "wide-q4_k_m.gguf"
    errors = compare_tensors(path, hf_tensors(wide_dir), 2, 0.10)
    types = {t.name: t.tensor_type for t in reader(path).tensors}
    # llama-quantize's Q4_K_M: Q6_K for the (tied) output and attn_v / ffn_down of the layers use_more_bits picks
    assert types["token_embd.weight"] == T.Q6_K and types["blk.0.attn_q.weight"] == T.Q4_K
    assert types["blk.0.attn_v.weight"] == T.Q4_K and types["blk.1.attn_v.weight"] == T.Q6_K
    assert types["blk.1.ffn_down.weight"] == T.Q6_K and types["blk.0.ffn_down.weight"] == T.Q4_K
    assert max(errors.values()) > 0.01  # really 4-6 bits
    # the tiny model's 64-wide rows take llama-quantize's fallbacks (Q5_0, Q8_0); still within 10%
    config = json.loads((tiny_dir / "config.json").read_text())
    compare_tensors(exports["q4_k_m"][0], hf_tensors(tiny_dir), config["num_hidden_layers"], 0.10)


def test_transformers_reloads_the_f32_file_with_equal_logits(exports, tiny_dir, tiny_model):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = exports["f32"][0]
    # transformers ignores the stored head_dim (falls back to hidden/heads): pass the config
    back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                config=AutoConfig.from_pretrained(tiny_dir)).eval()
    ids = torch.tensor([[1, 5, 42, 7, 300, 2]])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, tiny_model(ids).logits)


# --- llama.cpp itself --------------------------------------------------------------------------------------------


def greedy_ids(model, ids: list[int], n: int) -> list[int]:
    import torch

    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            x = torch.cat([x, model(x).logits[0, -1].argmax().view(1, 1)], 1)
    return x[0, len(ids):].tolist()


@contextlib.contextmanager
def llama_cpp(path: Path):
    xl = pytest.importorskip("xllamacpp", reason="llama.cpp oracle: pip install xllamacpp (test-only)")
    params = xl.CommonParams()
    params.model.path = str(path)
    params.n_ctx, params.n_parallel, params.warmup, params.use_jinja = 512, 1, False, True
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    # fp32 throughout, as transformers computes: llama.cpp's defaults (an f16 KV cache, flash attention on the CPU
    # with f16 products) move the logits by ~0.04, enough to flip a near-tie of a random model
    params.cache_type_k = params.cache_type_v = xl.ggml_type.GGML_TYPE_F32
    params.flash_attn_type = xl.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    server = xl.Server(params)
    try:
        yield server
    finally:
        del server


def token_bytes(tokenizer, token_id: int) -> bytes:
    from gguf.vocab import bytes_to_unicode

    text = tokenizer.convert_ids_to_tokens(token_id)
    if text in tokenizer.get_added_vocab():
        return text.encode()
    decode = {c: b for b, c in bytes_to_unicode().items()}
    return bytes(decode[c] for c in text)


def assert_same_greedy(server, tokenizer, model, ids: list[int], n: int) -> None:
    """llama.cpp's greedy continuation of ``ids`` is transformers' token for token. Its logprobs list one entry per
    token, except where a token ends inside a UTF-8 character (the server then regroups the bytes of neighbouring
    tokens): the bytes must be the same, and the ids it lists must be transformers' tokens, in order."""
    out = server.handle_completions({"prompt": ids, "max_tokens": n, "temperature": 0, "logprobs": 1,
                                     "ignore_eos": True, "cache_prompt": False})
    want = greedy_ids(model, ids, n)
    entries = out["choices"][0]["logprobs"]["content"]
    assert out["usage"]["completion_tokens"] == n
    assert b"".join(bytes(e["bytes"]) for e in entries) == b"".join(token_bytes(tokenizer, t) for t in want)
    rest = iter(want)
    assert all(any(e["id"] == t for t in rest) for e in entries), ([e["id"] for e in entries], want)
    if all(len(token_bytes(tokenizer, t).decode("utf-8", "ignore")) for t in want):  # whole characters only
        assert [e["id"] for e in entries] == want


def test_llama_cpp_runs_the_f32_file_as_transformers(exports, tiny_tokenizer, tiny_model):
    from medsft.chat import SYSTEM_PROMPT

    with llama_cpp(exports["f32"][0]) as server:
        # greedy tokens from the same prompt ids
        prompt = tiny_tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                                    add_generation_prompt=True)
        ids = tiny_tokenizer(prompt, add_special_tokens=False).input_ids
        assert_same_greedy(server, tiny_tokenizer, tiny_model, ids, 16)
        # llama.cpp's own tokenizer on a raw prompt: same count as transformers (no BOS; digits, spaces, CJK)
        raw = server.handle_completions({"prompt": QUESTION, "max_tokens": 1, "temperature": 0})
        assert raw["usage"]["prompt_tokens"] == len(tiny_tokenizer(QUESTION, add_special_tokens=False).input_ids)
        # llama.cpp's rendering of the embedded chat template, thinking on and off
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}]
        counts = {}
        for thinking in (True, False):
            out = server.handle_chat_completions({"messages": messages, "max_tokens": 1, "temperature": 0,
                                                  "chat_template_kwargs": {"enable_thinking": thinking}})
            text = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=thinking)
            want = len(tiny_tokenizer(text, add_special_tokens=False).input_ids)
            assert out["usage"]["prompt_tokens"] == want, thinking
            counts[thinking] = want
        empty_think = tiny_tokenizer("<think>\n\n</think>\n\n", add_special_tokens=False).input_ids
        assert counts[False] == counts[True] + len(empty_think)  # thinking off: the empty think block


def test_llama_cpp_runs_the_q8_0_file(exports, tiny_tokenizer, tiny_model):
    ids = tiny_tokenizer("<|im_start|>user\n" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n",
                         add_special_tokens=False).input_ids
    with llama_cpp(exports["q8_0"][0]) as server:  # q8_0 need not match fp32 greedy: it loads and generates
        out = server.handle_completions({"prompt": ids, "max_tokens": 4, "temperature": 0, "ignore_eos": True})
    assert out["usage"]["completion_tokens"] == 4


# --- LoRA --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir, tmp_path_factory):
    """A random (non-zero) LoRA adapter on tiny, recorded as trained on the spec "tiny" (as train_lora.py does)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("lora") / "adapter"
    config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM", init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32), config)
    model.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "tiny"}))
    return out


def test_lora_export_equals_the_merged_model(adapter_dir, tiny_dir, tiny_tokenizer, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import transformers

    with pytest.MonkeyPatch.context() as mp:  # streamed: no model is built, the adapter is merged tensor by tensor
        mp.setattr(transformers.AutoModelForCausalLM, "from_pretrained", None)
        printed = run_export(f"--model_dir={adapter_dir}", f"--output_dir={tmp_path}", "--quantization=f32")
    path = tmp_path / "medsft-adapter-f32.gguf"
    assert path.is_file() and "ollama create medsft-adapter" in printed and lines_naming(printed, adapter_dir), printed
    r = reader(path)
    assert field(r, "general.base_model.count") == 1 and field(r, "general.base_model.0.name") == "tiny"
    assert field(r, "general.basename") == "tiny" and field(r, "general.finetune") == "medsft-adapter"
    assert field(r, "tokenizer.ggml.add_bos_token") is False
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()
    state = {k: v.numpy() for k, v in merged.state_dict().items()}
    errors = compare_tensors(path, state, 2, 0.0)
    original = hf_tensors(tiny_dir)
    assert (state["model.layers.0.self_attn.q_proj.weight"] != original["model.layers.0.self_attn.q_proj.weight"]).any()
    assert len(errors) == len(state) - 1
    ids = tiny_tokenizer("<|im_start|>user\n" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n",
                         add_special_tokens=False).input_ids
    pytest.importorskip("xllamacpp", reason="llama.cpp oracle: pip install xllamacpp (test-only)")
    with llama_cpp(path) as server:
        assert_same_greedy(server, tiny_tokenizer, merged, ids, 16)


def test_lora_export_names_its_true_base_at_its_trained_revision(adapter_dir, tiny_dir, tmp_path):
    """A QLoRA adapter trained on Qwen/Qwen3-1.7B at MODEL_REVISION v1.0: the base is fetched at v1.0 (the hub is
    stood in by tiny's folder), the GGUF names that base, and the output says the unquantized base was used."""
    import medsft.models as models

    qlora = tmp_path / "qlora"
    shutil.copytree(adapter_dir, qlora)
    conf = json.loads((qlora / "adapter_config.json").read_text())
    (qlora / "adapter_config.json").write_text(json.dumps({**conf, "base_model_name_or_path": "Qwen/Qwen3-1.7B"}))
    (qlora / "train_config.json").write_text(json.dumps({"MODEL": "Qwen/Qwen3-1.7B", "MODEL_REVISION": "v1.0",
                                                          "QUANTIZATION": "4bit"}))
    asked = []

    def resolve(spec, config_only=False):
        asked.append((spec, models._PINNED.get(spec)))
        return tiny_dir

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "resolve_model", resolve)
        mp.setattr(models, "_PINNED", {})
        printed = run_export(f"--model_dir={qlora}", f"--output_dir={tmp_path / 'out'}", "--quantization=f16")
    assert asked == [("Qwen/Qwen3-1.7B", "v1.0")]
    assert lines_naming(printed, qlora, "Qwen/Qwen3-1.7B@v1.0", "QLoRA", "NF4"), printed  # what merges into what
    r = reader(tmp_path / "out" / "medsft-qlora-f16.gguf")
    expect = {"general.basename": "Qwen3", "general.size_label": "1.7B", "general.finetune": "medsft-qlora",
              "general.base_model.0.name": "Qwen3-1.7B", "general.base_model.0.organization": "Qwen",
              "general.base_model.0.version": "v1.0",
              "general.base_model.0.repo_url": "https://modelscope.cn/models/Qwen/Qwen3-1.7B"}
    assert {k: field(r, k) for k in expect} == expect
    config = json.loads((tmp_path / "out" / "export_config.json").read_text())
    assert config["BASE"] == "Qwen/Qwen3-1.7B" and config["BASE_REVISION"] == "v1.0" and config["QLORA"] is True


def test_refuses_an_adapter_it_cannot_merge_exactly(adapter_dir, tmp_path):
    from medsft.files import MedsftError

    dora = tmp_path / "dora"
    shutil.copytree(adapter_dir, dora)
    conf = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**conf, "use_dora": True}))
    with raises_naming(MedsftError, dora / "adapter_config.json", "use_dora", "inference_lora.py --merge=true",
                       f"--adapter_dir={dora}"):  # the file, the setting, the command that merges it instead
        run_export(f"--model_dir={dora}", f"--output_dir={tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()


# --- the Modelfile, the config, the commands; refusals -----------------------------------------------------------


def parse_modelfile(text: str) -> dict:
    """Ollama's Modelfile syntax: INSTRUCTION value, values in \"\"\"...\"\"\" may span lines; repeatable PARAMETERs."""
    out: dict = {"PARAMETER": []}
    for m in re.finditer(r'^(\w+)[ \t]+("""(.*?)"""|[^\n]*)', text, re.S | re.M):
        key, value = m.group(1).upper(), m.group(3) if m.group(3) is not None else m.group(2).strip()
        assert key in ("FROM", "TEMPLATE", "SYSTEM", "LICENSE", "PARAMETER"), key
        if key == "PARAMETER":
            name, _, v = value.partition(" ")
            out["PARAMETER"].append((name, v.strip().strip('"')))
        else:
            out[key] = value
    return out


def test_modelfile_config_and_commands(exports):
    from medsft.chat import SYSTEM_PROMPT

    path, printed = exports["q8_0"]
    mf = parse_modelfile((path.parent / "Modelfile").read_text(encoding="utf-8"))
    assert (path.parent / mf["FROM"]).resolve() == path.resolve()
    assert mf["SYSTEM"] == SYSTEM_PROMPT
    params = mf["PARAMETER"]
    assert ("stop", "<|im_end|>") in params and ("stop", "<|im_start|>") in params
    values = dict(params)
    assert float(values["temperature"]) == 0.6 and float(values["top_p"]) == 0.95 and int(values["top_k"]) == 20
    assert int(values["num_ctx"]) >= 4096
    template = mf["TEMPLATE"]  # what Ollama makes of it: tests/test_export_ollama.py
    assert "/no_think" not in template and template.count("{{") == template.count("}}")
    config = json.loads((path.parent / "export_config.json").read_text())
    assert config["QUANTIZATION"] == "q8_0" and Path(config["GGUF"]).resolve() == path.resolve()
    for command in (f"ollama create tiny -f {path.parent / 'Modelfile'}", "ollama run tiny",
                    f"llama-cli -m {path} --jinja"):
        assert command in printed


def test_refuses_what_it_cannot_export(tmp_path, tiny_dir):
    from medsft.files import MedsftError

    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with raises_naming(MedsftError, llama, "LlamaForCausalLM", "Qwen3ForCausalLM", "convert_hf_to_gguf"):
        run_export(f"--model_dir={llama}", f"--output_dir={tmp_path / 'out'}")
    qlora = tmp_path / "nf4"
    qlora.mkdir()
    config = json.loads((tiny_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (qlora / "config.json").write_text(json.dumps(config))
    with raises_naming(MedsftError, qlora, "4-bit", "--model_dir=output/lora", "--base_model="):
        run_export(f"--model_dir={qlora}", f"--output_dir={tmp_path / 'out'}")
    with raises_naming(MedsftError, "--quantization=q3", "q8_0", "f16", "q4_k_m"):  # the value, the choices
        run_export("--quantization=q3", f"--model_dir={tiny_dir}")
    with pytest.MonkeyPatch.context() as mp, raises_naming(MedsftError, "--quantization=q4_k_m", "libggml-python",
                                                           "--quantization=f16", "ollama create -q q4_K_M"):
        mp.setitem(sys.modules, "libggml", None)  # as if the optional library were not installed
        run_export("--quantization=q4_k_m", f"--model_dir={tiny_dir}", f"--output_dir={tmp_path / 'out'}")
    with raises_naming(MedsftError, tmp_path / "missing", "train.py", "train_lora.py", "--model_dir="):
        run_export(f"--model_dir={tmp_path / 'missing'}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source, broken", [("full", "config.json"), ("full", "generation_config.json"),
                                            ("full", "tokenizer_config.json"), ("lora", "adapter_config.json")])
def test_a_broken_input_file_is_one_message_before_anything_is_written(tiny_dir, adapter_dir, tmp_path, source,
                                                                       broken):
    """A cut-short JSON input: one message naming it, and the previous export in OUTPUT_DIR is left as it was."""
    from medsft.files import MedsftError

    model, out = tmp_path / "model", tmp_path / "out"
    shutil.copytree(tiny_dir if source == "full" else adapter_dir, model)
    run_export(f"--model_dir={model}", f"--output_dir={out}", "--name=m", "--quantization=f32")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (model / broken).write_text('{"bos_token_id": 1,', encoding="utf-8")
    with raises_naming(MedsftError, model / broken):
        run_export(f"--model_dir={model}", f"--output_dir={out}", "--name=m", "--quantization=f32", "--license=mit")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_failure_after_the_file_is_replaced_leaves_no_completion_marker(tiny_dir, tmp_path):
    """export_config.json is written last: after a failure between the new .gguf and it, the folder holds no
    export_config.json (nor verify.json) describing the old export beside the new file; a re-run completes it."""
    import medsft.files as files

    out = tmp_path / "out"
    args = (f"--model_dir={tiny_dir}", f"--output_dir={out}", "--name=m", "--quantization=f32")
    run_export(*args)
    (out / "verify.json").write_text('{"gguf": "m-f32.gguf", "passed": true}')  # as --verify leaves it
    write = files.atomic_write_bytes

    def disk_full(path, data):
        if Path(path).name == "Modelfile":
            raise OSError(28, "No space left on device")
        return write(path, data)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(OSError):
        mp.setattr(files, "atomic_write_bytes", disk_full)
        run_export(*args, "--license=mit")  # another file at the same path
    assert not (out / "export_config.json").exists() and not (out / "verify.json").exists()
    run_export(*args, "--license=mit")
    config = json.loads((out / "export_config.json").read_text())
    assert config["LICENSE"] == "mit" and config["BYTES"] == (out / "m-f32.gguf").stat().st_size
    assert "mit" in parse_modelfile((out / "Modelfile").read_text(encoding="utf-8"))["LICENSE"]
