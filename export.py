"""Export the tuned model to one GGUF file for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile.

Reads   MODEL_DIR: a full fine-tune (default output/full, written by train.py) or a LoRA adapter (output/lora,
        written by train_lora.py; merged in fp32 into the base model it records first). Qwen3 only.
Writes  OUTPUT_DIR/: <NAME>-<QUANTIZATION>.gguf, Modelfile, export_config.json (the resolved config).

    python export.py                                                  # output/full -> export/full, q8_0
    python export.py --model_dir=output/lora --output_dir=export/lora # LoRA: merged into its base first
    python export.py --quantization=f16                               # f32 | f16 | bf16 | q8_0 | q4_k_m
    python export.py --quantization=q4_k_m     # needs the prebuilt ggml library: pip install -r requirements-export.txt
    ollama create medsft-full -f export/full/Modelfile && ollama run medsft-full
    llama-cli -m export/full/medsft-full-q8_0.gguf --jinja            # the chat template inside the file

The file carries what llama.cpp needs to run the model as transformers does (metadata as llama.cpp's own
convert_hf_to_gguf.py writes it for qwen3, the tokenizer with its token types, eos <|im_end|>, no BOS, the
tokenizer's chat template, the generation_config sampling defaults). Tensors are converted one at a time, so
memory stays about one tensor above what is being written. Nothing is compiled or downloaded. docs/export.md
has the details and a comparison with llama.cpp's converter.
"""

import ctypes
import functools
import json
import math
import os
from pathlib import Path

from medsft.chat import SYSTEM_PROMPT
from medsft.config import configure, save_config
from medsft.files import MedsftError, atomic_write_bytes

MODEL_DIR = "output/full"  # a Hugging Face Qwen3 model folder (train.py) or a LoRA adapter folder (train_lora.py)
BASE_MODEL = None  # LoRA only: the base model spec to merge into; None = the one recorded in adapter_config.json
OUTPUT_DIR = "export/full"  # where the .gguf, the Modelfile and export_config.json go
QUANTIZATION = "q8_0"  # q8_0 (near-lossless, 1.8 GB for 1.7B) | f16 | bf16 | f32 | q4_k_m (needs libggml-python)
NAME = ""  # model name (file <NAME>-<QUANTIZATION>.gguf, `ollama create NAME`); "" = medsft-<MODEL_DIR's folder name>
SYSTEM = SYSTEM_PROMPT  # the Modelfile's SYSTEM prompt (the one the model was fine-tuned with); "" = none
LICENSE = "apache-2.0"  # license of the weights (Qwen3's): the GGUF's general.license and the Modelfile's LICENSE; "" = none
NUM_CTX = 8192  # Ollama context window (num_ctx): prompt + a think and answer (inference allows 2,048 new tokens)

_QUANTIZATIONS = ("q8_0", "f16", "bf16", "f32", "q4_k_m")
# Qwen2's pre-tokenizer regex (Qwen3 shares it): llama.cpp's pre-type "qwen2" splits text exactly so
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
_CHUNK_ELEMENTS = 1 << 20  # rows of a tensor converted at a time (4 MiB of fp32: the quantizer's passes stay in cache)


# --- 1. the source: a model folder, or a LoRA adapter merged into its base ------------------------------------------

def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def check_qwen3(folder: Path, what: str) -> dict:
    """config.json of ``folder``, refusing what this exporter cannot write exactly."""
    config = read_json(folder / "config.json")
    if not config:
        raise MedsftError(f"{what} {folder} has no config.json: pass --model_dir=<a Hugging Face model folder written "
                          "by train.py, or a LoRA adapter folder written by train_lora.py>")
    arch = (config.get("architectures") or ["?"])[0]
    if config.get("model_type") != "qwen3" or arch != "Qwen3ForCausalLM":
        raise MedsftError(f"{what} {folder} is a {config.get('model_type')} model ({arch}), not Qwen3ForCausalLM: "
                          "export.py writes Qwen3's GGUF layout only; convert other models with llama.cpp's "
                          "convert_hf_to_gguf.py")
    quant = config.get("quantization_config") or {}
    if quant:
        raise MedsftError(f"{what} {folder} holds {quant.get('quant_method', 'quantized')} weights "
                          f"({'4-bit' if quant.get('load_in_4bit') else 'quantized'}): a GGUF is written from full "
                          "weights. Export the LoRA adapter instead (--model_dir=output/lora: it is merged into the "
                          "bf16 base it records), or pass --base_model=<the unquantized base, e.g. Qwen/Qwen3-1.7B>")
    return config


def open_source(model_dir: Path, base_model):
    """(config folder, tokenizer folder, config, tensors) where tensors maps each HF name to (shape, rows) and
    ``rows(start, stop)`` reads those rows as fp32 numpy."""
    if not (model_dir / "adapter_config.json").is_file():
        config = check_qwen3(model_dir, "MODEL_DIR")
        return model_dir, model_dir, config, safetensors_tensors(model_dir)
    from medsft.models import resolve_model  # a base spec (a hub id, "tiny", a folder) -> its local folder

    base = base_model or read_json(model_dir / "adapter_config.json").get("base_model_name_or_path")
    if not base:
        raise MedsftError(f"{model_dir}/adapter_config.json names no base model: pass --base_model=<spec>")
    base_dir = Path(resolve_model(base))
    config = check_qwen3(base_dir, f"the adapter's base {base}:")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    print(f"merging the LoRA adapter {model_dir} into {base} (fp32, on the CPU)")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
    merged = PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload()
    state = merged.state_dict()
    tensors = {name: (tuple(t.shape), lambda a, b, t=t: t[a:b].float().numpy()) for name, t in state.items()}
    tokenizer_dir = model_dir if (model_dir / "tokenizer_config.json").is_file() else base_dir
    return base_dir, tokenizer_dir, config, tensors


_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}  # what Hugging Face saves Qwen3 weights in


def safetensors_tensors(folder: Path) -> dict:
    """Read straight from the files (plain reads of the rows wanted: no mapping, no torch; RSS stays ~1 tensor)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise MedsftError(f"{folder} has no *.safetensors weights: export reads safetensors only (train.py writes them)")
    tensors = {}
    for file in files:
        with open(file, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise MedsftError(f"{file}: tensor {name} is {info['dtype']}; export reads F32, F16 and BF16 weights")
            shape, offset = tuple(info["shape"]), 8 + size + info["data_offsets"][0]
            tensors[name] = (shape, functools.partial(_read_rows, file, offset, shape, info["dtype"]))
    return tensors


def _read_rows(file, offset, shape, dtype, start, stop):
    import numpy as np

    width = math.prod(shape[1:])
    start, stop = (start, min(stop, shape[0])) if len(shape) > 1 else (0, shape[0])
    item = np.dtype(_SAFETENSORS_DTYPES[dtype])
    with open(file, "rb") as f:
        f.seek(offset + start * width * item.itemsize)
        data = np.frombuffer(f.read((stop - start) * width * item.itemsize), dtype=item)
    data = (data.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else data.astype(np.float32)
    return data.reshape((stop - start, *shape[1:]))


# --- 2. tensor names and types: as llama.cpp's converter (q8_0 | f16 | bf16 | f32) or llama-quantize (q4_k_m) -----

def plan_tensors(tensors: dict, config: dict, quantization: str) -> list[tuple[str, str, tuple, object]]:
    """[(gguf name, hf name, shape, GGML type)] in the source's order; a tied lm_head is dropped."""
    import gguf

    n_layers = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, n_layers)
    plan = []
    for hf_name, (shape, _) in tensors.items():
        if hf_name.endswith(".rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and config.get("tie_word_embeddings")):
            continue  # llama.cpp computes RoPE itself, and reuses token_embd as the output when tied
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise MedsftError(f"tensor {hf_name} has no place in Qwen3's GGUF layout: is this a plain Qwen3 model?")
        plan.append((name, hf_name, shape, tensor_type(name, shape, quantization, config)))
    return plan


def tensor_type(name: str, shape: tuple, quantization: str, config: dict):
    from gguf import GGMLQuantizationType as T

    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return T.F32  # norms stay F32, as llama.cpp's converter keeps them
    if quantization != "q4_k_m":
        want = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}[quantization]
        return T.F16 if want == T.Q8_0 and shape[-1] % 32 else want  # the converter's fallback for odd rows
    # llama-quantize's Q4_K_M: Q4_K, Q6_K for the output (token_embd when tied) and for attn_v / ffn_down in the
    # layers use_more_bits picks; rows not a multiple of 256 take its fallback types (Q4_K -> Q5_0, Q6_K -> Q8_0)
    n, layer = config["num_hidden_layers"], int(name.split(".")[1]) if name.startswith("blk.") else -1
    more_bits = layer >= 0 and (layer < n // 8 or layer >= 7 * n // 8 or (layer - n // 8) % 3 == 2)
    output = name == "output.weight" or (name == "token_embd.weight" and config.get("tie_word_embeddings"))
    q6 = output or (more_bits and name.endswith(("attn_v.weight", "ffn_down.weight")))
    if shape[-1] % 256:
        return T.Q8_0 if q6 else T.Q5_0
    return T.Q6_K if q6 else T.Q4_K


def ggml_library():
    """ggml's own quantizer (ggml_quantize_chunk, the code llama-quantize runs) from the prebuilt libggml-python."""
    try:
        import libggml
    except ImportError:
        raise MedsftError("--quantization=q4_k_m needs the prebuilt ggml library: pip install -r "
                          "requirements-export.txt (libggml-python). Or export f16 and let Ollama quantize it: "
                          "python export.py --quantization=f16, then ollama create -q q4_K_M NAME -f "
                          "OUTPUT_DIR/Modelfile") from None
    found = [p for p in sorted(Path(libggml.__file__).parent.glob("**/*ggml-base*")) if p.suffix in (".so", ".dylib", ".dll")]
    if not found:
        raise MedsftError(f"libggml-python is installed but holds no ggml-base library under {Path(libggml.__file__).parent}")
    lib = ctypes.CDLL(str(found[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def convert(rows, qtype, ggml=None):
    """fp32 rows -> the bytes of ``qtype`` (gguf's Python quantizers: bit-identical to ggml's for Q8_0)."""
    import numpy as np
    from gguf import GGMLQuantizationType as T, quants

    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if qtype == T.F32:
        return rows.view(np.uint8).reshape(-1)
    if ggml is None or qtype in (T.F16, T.BF16, T.Q8_0):
        return quants.quantize(rows, qtype).view(np.uint8).reshape(-1)
    out = np.empty(tensor_nbytes(rows.shape, qtype), dtype=np.uint8)
    ggml.ggml_quantize_chunk(int(qtype), rows.ctypes.data, out.ctypes.data, 0, rows.shape[0], rows.shape[1], None)
    return out


def tensor_nbytes(shape, qtype) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


# --- 3. metadata and tokenizer: what llama.cpp's converter writes for qwen3 --------------------------------------------

def add_metadata(writer, config: dict, config_dir: Path, name: str, quantization: str) -> None:
    import gguf

    total, shared, expert, n_expert = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, config_dir, name, total)  # name, size label, generation_config sampling
    meta.size_label = meta.size_label or gguf.size_label(total, shared, expert, n_expert)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
        raise MedsftError(f"RoPE scaling {rope} is not exported here: export a model without rope_scaling")
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 1_000_000.0))))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    file_types = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
                  "q4_k_m": "MOSTLY_Q4_K_M"}
    writer.add_file_type(gguf.LlamaFileType[file_types[quantization]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_tokenizer(writer, tokenizer_dir: Path, vocab_size: int) -> dict:
    """Tokens padded to the model's vocab size, their types, merges, special ids, chat template; returns facts."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    pre = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    if any(s.get("type") == "Split" and s.get("pattern", {}).get("Regex") == _QWEN2_SPLIT for s in steps):
        pre_type = "qwen2"
    elif any(s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps):
        pre_type = "gpt-2"  # the project-built tokenizer (byte-level BPE with GPT-2's split)
    else:
        raise MedsftError(f"{tokenizer_dir}: unknown pre-tokenizer {pre}: llama.cpp would split text differently")
    vocab, added, decoder = tok.get_vocab(), tok.get_added_vocab(), tok.added_tokens_decoder
    if max(vocab.values()) >= vocab_size:
        raise MedsftError(f"{tokenizer_dir}: the tokenizer has ids past the model's vocab_size {vocab_size}")
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]"), types.append(gguf.TokenType.UNUSED)
            continue
        kind = gguf.TokenType.NORMAL
        if token in added:  # <|im_end|> and friends are control tokens; <think> is user-defined, so it prints
            if not decoder[i].normalized:
                token = tok.decode(tok.encode(token, add_special_tokens=False))
            special = decoder[i].special or (token.startswith("<|") and token.endswith("|>"))
            kind = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
        tokens.append(token), types.append(kind)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_type)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True)  # merges, bos/eos/pad, chat template
    if not special.merges:
        special.merges = [" ".join(m) for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]
    special.special_token_ids.update(eos=tok.eos_token_id, pad=tok.pad_token_id)
    special.add_special_token["bos"] = False  # Qwen3 adds no BOS (transformers adds none either)
    if special.chat_template is None:
        special.chat_template = tok.chat_template
    if not special.chat_template:
        raise MedsftError(f"{tokenizer_dir}: the tokenizer has no chat template: train.py saves Qwen3's with it")
    special.add_to_gguf(writer, quiet=True)
    return {"pre_tokenizer": pre_type, "eos": tok.eos_token, "pad": tok.pad_token}


# --- 4. the Modelfile: ChatML with Qwen3's thinking switch, as its own chat template writes it --------------------

# Qwen3's own chat template (tokenizer_config.json) in Ollama's Go-template terms, so that Ollama's capability checks
# find thinking (a dot-relative .Thinking between text tags inside `range ... .Messages`: thinking/template.go InferTags)
# and tools with their round trip (.Tools, .ToolCalls, role "tool": server/images.go). Think off writes the empty think
# block Qwen3 writes for enable_thinking=False; thinks are kept only after the last question, as Qwen3 keeps them.
_TEMPLATE = """{{- $system := false }}{{- $lastQuery := -1 }}{{- $end := -1 }}
{{- range $i, $_ := .Messages }}{{ $end = $i }}{{ if eq .Role "user" }}{{ $lastQuery = $i }}{{ end }}
{{- if and (eq $i 0) (eq .Role "system") }}{{ $system = true }}{{ end }}{{ end }}
{{- if lt $lastQuery 0 }}{{ $lastQuery = $end }}{{ end }}
{{- if .Tools }}<|im_start|>system
{{ if $system }}{{ (index .Messages 0).Content }}

{{ end }}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>{{ range .Tools }}
{{ . }}{{ end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{{ else if $system }}<|im_start|>system
{{ (index .Messages 0).Content }}<|im_end|>
{{ end }}
{{- $prev := "" }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if and (eq $prev "tool") (ne .Role "tool") }}<|im_end|>
{{ end }}
{{- if or (eq .Role "user") (and (eq .Role "system") (ne $i 0)) }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if and (gt $i $lastQuery) (or $last .Thinking) }}<think>
{{ .Thinking }}
</think>

{{ end }}{{ .Content }}
{{- $content := .Content }}{{ if .ToolCalls }}{{ range $j, $_ := .ToolCalls }}{{ if or $j $content }}
<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
</tool_call>{{ else }}<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
</tool_call>{{ end }}{{ end }}{{ end }}
{{- if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}{{ if ne $prev "tool" }}<|im_start|>user{{ end }}
<tool_response>
{{ .Content }}
</tool_response>
{{- end }}
{{- $prev = .Role }}
{{- end }}
{{- if eq $prev "tool" }}<|im_end|>
{{ end }}
{{- if ne $prev "assistant" }}<|im_start|>assistant
{{ if and .IsThinkSet (not .Think) }}<think>

</think>

{{ end }}
{{- end }}"""


_LICENSE_URLS = {"apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0"}  # Qwen3's; others are written as named


def modelfile(gguf_name: str, generation: dict, system: str, num_ctx: int, license_id: str) -> str:
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{_TEMPLATE}"""', ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    if license_id:
        url = _LICENSE_URLS.get(license_id.lower())
        lines += [f'LICENSE """{license_id}{": " + url if url else ""}"""', ""]
    lines += ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|im_start|>"']
    for key, default in (("temperature", 0.6), ("top_p", 0.95), ("top_k", 20)):  # Qwen3's thinking-mode sampling
        lines.append(f"PARAMETER {key} {generation.get(key, default)}")
    lines.append("PARAMETER repeat_penalty 1")  # Qwen3 advises none; Ollama before 0.32.10 applied 1.1 to long thinks
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def main():
    cfg = configure(globals())
    # 1. Check the options and the source before any weight is read
    if QUANTIZATION not in _QUANTIZATIONS:
        raise MedsftError(f"--quantization={QUANTIZATION}: expected one of {' | '.join(_QUANTIZATIONS)}")
    ggml = ggml_library() if QUANTIZATION == "q4_k_m" else None
    model_dir = Path(MODEL_DIR).expanduser()
    if not model_dir.is_dir():
        raise MedsftError(f"MODEL_DIR {MODEL_DIR} not found: run train.py (output/full) or train_lora.py "
                          "(output/lora) first, or pass --model_dir=<folder>")
    name = NAME or f"medsft-{model_dir.resolve().name}"
    out_dir = Path(OUTPUT_DIR)
    gguf_path = out_dir / f"{name}-{QUANTIZATION}.gguf"
    config_dir, tokenizer_dir, config, tensors = open_source(model_dir, BASE_MODEL)
    plan = plan_tensors(tensors, config, QUANTIZATION)

    # 2. Header: tensor table, architecture metadata, tokenizer (written before any tensor data)
    import gguf
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = gguf_path.with_name(f".{gguf_path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, "qwen3")
    for gguf_name, _, shape, qtype in plan:
        writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), tensor_nbytes(shape, qtype), raw_dtype=qtype)
    add_metadata(writer, config, config_dir, name, QUANTIZATION)
    facts = add_tokenizer(writer, tokenizer_dir, config["vocab_size"])

    # 3. Tensor data, one tensor at a time, converted a chunk of rows at a time; renamed into place when complete
    def tensor_bytes(item):
        _, hf_name, shape, qtype = item
        data, rows, done = np.empty(tensor_nbytes(shape, qtype), dtype=np.uint8), tensors[hf_name][1], 0
        step = max(1, _CHUNK_ELEMENTS // (shape[-1] if len(shape) > 1 else 1))
        for start in range(0, shape[0] if len(shape) > 1 else 1, step):
            part = convert(rows(start, start + step), qtype, ggml)
            data[done:done + part.size] = part
            done += part.size
        return data

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, item in enumerate(plan, 1):
            writer.write_tensor_data(tensor_bytes(item))
            print(f"\r[{i}/{len(plan)}] {item[0]:<28} {item[3].name:<5} {'x'.join(map(str, item[2])):<12}", end="",
                  flush=True)
        writer.close()
        os.replace(tmp, gguf_path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    print()

    # 4. Modelfile and resolved config beside the file; the commands to run it
    generation = read_json(config_dir / "generation_config.json")
    atomic_write_bytes(out_dir / "Modelfile", modelfile(gguf_path.name, generation, SYSTEM, NUM_CTX, LICENSE).encode())
    used = {**cfg, "NAME": name, "GGUF": str(gguf_path), "BYTES": gguf_path.stat().st_size, "TENSORS": len(plan),
            "SOURCE": str(config_dir), **{k.upper(): v for k, v in facts.items()}}
    print(f"wrote {gguf_path} ({gguf_path.stat().st_size / 2**20:.1f} MiB), {out_dir / 'Modelfile'}, "
          f"{save_config(used, out_dir / 'export_config.json')}")
    print(f"\n  ollama create {name} -f {out_dir / 'Modelfile'}\n  ollama run {name}\n"
          f"  llama-cli -m {gguf_path} --jinja\n")


if __name__ == "__main__":
    main()
