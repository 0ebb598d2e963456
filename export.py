"""Export the tuned model to one GGUF file for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile.

Reads   MODEL_DIR: a full fine-tune (default output/full, written by train.py) or a LoRA / QLoRA adapter (output/lora,
        written by train_lora.py; merged in fp32, tensor by tensor while writing, into the unquantized base model
        it records, at the revision it was trained on). Qwen3 only.
Writes  OUTPUT_DIR/: <NAME>-<QUANTIZATION>.gguf, Modelfile, export_config.json (the resolved config, written last:
        the set is whole when it is there); verify.json with --verify (pip install xllamacpp), which describes the
        .gguf beside it only: a re-export removes the previous one.

    python export.py                                                  # output/full -> export/full, q8_0
    python export.py --model_dir=output/lora --output_dir=export/lora # LoRA: merged into its base as it is written
    python export.py --quantization=f16                               # f32 | f16 | bf16 | q8_0 | q4_k_m
    python export.py --quantization=q4_k_m     # needs the prebuilt ggml library: pip install -r requirements-export.txt
    python export.py --verify=20    # then llama.cpp answers 20 test questions in each thinking mode beside transformers
    ollama create medsft-full -f export/full/Modelfile && ollama run medsft-full
    llama-cli -m export/full/medsft-full-q8_0.gguf --jinja            # the chat template inside the file
    llama-server -m export/full/medsft-full-q8_0.gguf --jinja          # OpenAI API; the think as reasoning_content

The file carries what llama.cpp needs to run the model as transformers does (metadata as llama.cpp's own
convert_hf_to_gguf.py writes it for qwen3, the tokenizer with its token types, eos <|im_end|>, no BOS, the
tokenizer's chat template, the generation_config sampling defaults; general.* naming the true base model). The
Modelfile's TEMPLATE is Qwen3's chat template in Ollama's terms (thinking, tools). Tensors are converted one at a
time, so memory stays about one tensor above what is being written. Nothing is compiled or downloaded. docs/export.md
has the details and a comparison with llama.cpp's converter.
"""

import ctypes
import functools
import json
import math
import os
import re
from pathlib import Path

from medsft.chat import SYSTEM_PROMPT
from medsft.config import configure, save_config
from medsft.files import MedsftError, atomic_write_bytes, write_json

MODEL_DIR = "output/full"  # a Hugging Face Qwen3 model folder (train.py) or a LoRA adapter folder (train_lora.py)
BASE_MODEL = None  # LoRA only: the base model spec to merge into; None = the one recorded in adapter_config.json
MODEL_REVISION = ""  # LoRA only: ModelScope revision of the base; "" = the one the adapter was trained on (train_config.json)
OUTPUT_DIR = "export/full"  # where the .gguf, the Modelfile and export_config.json go
QUANTIZATION = "q8_0"  # q8_0 (near-lossless, 1.8 GB for 1.7B) | f16 | bf16 | f32 | q4_k_m (needs libggml-python)
NAME = ""  # model name (file <NAME>-<QUANTIZATION>.gguf, `ollama create NAME`); "" = medsft-<MODEL_DIR's folder name>
SYSTEM = SYSTEM_PROMPT  # the Modelfile's SYSTEM prompt (the one the model was fine-tuned with); "" = none
LICENSE = "apache-2.0"  # license of the weights (Qwen3's): the GGUF's general.license and the Modelfile's LICENSE; "" = none
VERIFY = 0  # after writing: llama.cpp (pip install xllamacpp) answers this many test questions in each thinking mode beside transformers, report in OUTPUT_DIR/verify.json; 0 = no check
VERIFY_INPUT = "data/test.jsonl"  # --verify's questions (JSONL rows with a question); missing: the demo rows
VERIFY_TOKENS = 32  # greedy new tokens per answer compared; f32 and f16 files must give transformers' first tokens exactly
NUM_CTX = 8192  # Ollama context window (num_ctx): prompt + a think and answer (inference allows 2,048 new tokens)

_QUANTIZATIONS = ("q8_0", "f16", "bf16", "f32", "q4_k_m")
# Qwen2's pre-tokenizer regex (Qwen3 shares it): llama.cpp's pre-type "qwen2" splits text exactly so
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
_CHUNK_ELEMENTS = 1 << 20  # rows of a tensor converted at a time (4 MiB of fp32: the quantizer's passes stay in cache)


# --- 1. the source: a model folder, or a LoRA adapter merged into its base ------------------------------------------

def read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when there is none. Every input is read before anything is written."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        problem = "" if isinstance(data, dict) else f"it holds a JSON {type(data).__name__}, not an object"
    except (OSError, ValueError) as e:  # a JSONDecodeError or UnicodeDecodeError is a ValueError
        problem = str(e)
    if problem:
        raise MedsftError(f"{path} cannot be read as JSON ({problem}): restore the file (train.py, train_lora.py or "
                          "the model download wrote it), then run export.py again")
    return data


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


def trained_on(folder: Path) -> tuple[str | None, str]:
    """(base model spec, its MODEL_REVISION) a train.py / train_lora.py output records (train_config.json)."""
    from medsft.models import base_model_of

    read_json(folder / "adapter_config.json")  # checked first: base_model_of reads it as it is
    conf = read_json(folder / "train_config.json")
    spec = base_model_of(folder)
    same = isinstance(conf, dict) and conf.get("MODEL") == spec
    return spec, str(conf.get("MODEL_REVISION") or "") if same else ""


def open_source(model_dir: Path, base_model, model_revision: str) -> dict:
    """config folder, tokenizer folder, config, the true base (spec, revision) and tensors: each HF name maps to
    (shape, rows) where ``rows(start, stop)`` reads those rows as fp32 numpy, a LoRA adapter merged in as they are read."""
    if not (model_dir / "adapter_config.json").is_file():
        config = check_qwen3(model_dir, "MODEL_DIR")
        spec, revision = trained_on(model_dir)
        return {"config_dir": model_dir, "tokenizer_dir": model_dir, "config": config, "base": spec,
                "revision": revision, "tensors": safetensors_tensors(model_dir)}
    from medsft.models import pin_revision, resolve_model  # a base spec (a hub id, "tiny", a folder) -> its folder

    spec, trained_revision = trained_on(model_dir)
    base = base_model or spec
    if not base:
        raise MedsftError(f"{model_dir}/adapter_config.json names no base model: pass --base_model=<spec>")
    revision = model_revision or (trained_revision if base == spec else "")
    pin_revision(base, revision)  # the base revision the adapter was trained on, as inference_lora.py loads it
    base_dir = Path(resolve_model(base))
    config = check_qwen3(base_dir, f"the adapter's base {base}:")
    tensors = merged_tensors(safetensors_tensors(base_dir), model_dir, config)
    quantized = str(read_json(model_dir / "train_config.json").get("QUANTIZATION", "none")).lower() == "4bit"
    print(f"merging the LoRA adapter {model_dir} into {base}{'@' + revision if revision else ''} tensor by tensor "
          "(fp32, on the CPU)" + (": a QLoRA adapter, trained on that base quantized to 4-bit NF4 at load; it merges "
                                  "into the unquantized weights, the ones inference_lora.py scores" if quantized else ""))
    tokenizer_dir = model_dir if (model_dir / "tokenizer_config.json").is_file() else base_dir
    return {"config_dir": base_dir, "tokenizer_dir": tokenizer_dir, "config": config, "base": base,
            "revision": revision, "tensors": tensors, "qlora": quantized}


_LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")  # peft's saved names of a Linear's factors


def merged_tensors(tensors: dict, adapter_dir: Path, config: dict) -> dict:
    """``tensors`` with each LoRA-targeted weight read as W + (B @ A) * scaling, peft's merge_and_unload in fp32;
    the delta of one tensor is held only while that tensor is converted."""
    from safetensors.torch import load_file

    conf = read_json(adapter_dir / "adapter_config.json")
    unsupported = [k for k in ("use_dora", "alpha_pattern", "rank_pattern", "modules_to_save", "fan_in_fan_out")
                   if conf.get(k)] + (["bias"] if conf.get("bias", "none") != "none" else [])
    file = adapter_dir / "adapter_model.safetensors"
    if unsupported or not file.is_file():
        what = f"sets {', '.join(unsupported)}" if unsupported else "has no adapter_model.safetensors"
        raise MedsftError(f"{adapter_dir}/adapter_config.json {what}: export.py merges plain LoRA adapters "
                          "(train_lora.py's). Merge it with peft first (python inference_lora.py --merge=true "
                          f"--adapter_dir={adapter_dir}), then export the merged folder: --model_dir=output/lora-merged")
    r, alpha = conf["r"], conf.get("lora_alpha", conf["r"])
    scaling = alpha / math.sqrt(r) if conf.get("use_rslora") else alpha / r
    factors: dict = {}
    for key, value in load_file(file).items():
        m = _LORA_KEY.fullmatch(key)
        if not m or f"{m.group(1)}.weight" not in tensors:
            raise MedsftError(f"{file}: {key} is not a LoRA factor of a weight of the base: merge it with peft first "
                              "(python inference_lora.py --merge=true), then export the merged folder")
        factors.setdefault(f"{m.group(1)}.weight", {})[m.group(2)] = value.float()
    if config.get("tie_word_embeddings") and "lm_head.weight" in factors:
        raise MedsftError(f"{file} adapts lm_head, which this base ties to the embeddings: merge it with peft first")
    out = dict(tensors)
    for name, ab in factors.items():
        shape, rows = tensors[name]
        if set(ab) != {"A", "B"} or ab["B"].shape[0] != shape[0] or ab["A"].shape[1] != shape[1]:
            raise MedsftError(f"{file}: the LoRA factors of {name} do not fit its shape {shape}: is this the adapter's "
                              "base? pass --base_model=<the base it was trained on>")
        out[name] = (shape, _MergedRows(rows, ab["A"], ab["B"], scaling, shape[0]))
    return out


class _MergedRows:
    """rows(start, stop) of W + (B @ A) * scaling; the delta is computed on the first read, freed after the last."""

    def __init__(self, rows, a, b, scaling, n):
        self.rows, self.a, self.b, self.scaling, self.n, self.delta = rows, a, b, scaling, n, None

    def __call__(self, start, stop):
        import torch

        if self.delta is None:
            with torch.no_grad():  # exactly peft's get_delta_weight: (B @ A) * scaling, in fp32
                self.delta = ((self.b @ self.a) * self.scaling).numpy()
        out = self.rows(start, stop) + self.delta[start:stop]
        if stop >= self.n:
            self.delta = None
        return out


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

_SIZE_IN_NAME = re.compile(r"(?P<basename>.+?)-(?P<size>\d+(?:\.\d+)?[KMBT])(?=-|$)", re.I)  # "Qwen3-1.7B"


def describe(name: str, base: str | None, revision: str, license_id: str, computed_size: str | None) -> dict:
    """general.* as Ollama and LM Studio show them, from what the exporter knows: the true base (a LoRA's, not the
    folder it was read from), its revision, the license; never a local path."""
    from medsft.models import is_hub_id

    hub = bool(base) and is_hub_id(base) and not Path(base).expanduser().is_dir()
    base_name = (base.split("/")[1] if hub else Path(base).name) if base else ""
    m = _SIZE_IN_NAME.match(base_name)
    out = {"name": name, "basename": m.group("basename") if m else base_name or name, "finetune": name,
           "size_label": m.group("size") if m else computed_size, "license": license_id or None, "base_models": None}
    if base:
        entry = {"name": base_name}
        if hub:
            entry.update(organization=base.split("/")[0], repo_url=f"https://modelscope.cn/models/{base}")
        if revision:
            entry["version"] = revision
        out["base_models"] = [entry]
    return out


def add_metadata(writer, config: dict, config_dir: Path, described: dict, quantization: str) -> dict:
    """Architecture, file type and general.* keys; returns the general.* written."""
    import gguf

    total, shared, expert, n_expert = writer.get_total_parameter_count()
    read = gguf.Metadata.load(None, config_dir, described["name"], total)  # only generation_config's sampling is kept
    meta = gguf.Metadata(**{k: v for k, v in vars(read).items() if k.startswith("sampling_")})
    described = {**described, "size_label": described["size_label"] or gguf.size_label(total, shared, expert, n_expert)}
    for key, value in described.items():
        setattr(meta, key, value)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)
    general = described
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
    return general


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


# --- 5. --verify: llama.cpp on the written file beside transformers, the same prompts, all three thinking modes ------

def llama_cpp():
    try:
        import xllamacpp
    except ImportError:
        raise MedsftError("--verify runs the file in llama.cpp through its prebuilt Python wheel: pip install "
                          "xllamacpp (or drop --verify)") from None
    return xllamacpp


def verify_questions(path: str, n: int) -> tuple[list[str], str]:
    """The first ``n`` questions of ``path`` (the demo rows when it is missing) and the file they came from."""
    from medsft.models import DEMO_DATA

    file = Path(path) if Path(path).is_file() else DEMO_DATA
    questions = []
    for i, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and len(questions) < n:
            try:
                row = json.loads(line)
                questions.append(row["question"].strip())
            except (ValueError, KeyError, TypeError, AttributeError):
                raise MedsftError(f"{file} line {i}: expected a JSON object with a \"question\" string; fix the row "
                                  "or pass --verify_input=<a JSONL file of questions>") from None
    if not questions:
        raise MedsftError(f"{file} holds no question: pass --verify_input=<a JSONL file with question rows>")
    return questions, str(file)


def reference_model(model_dir: Path, src: dict, quantization: str):
    """The model as transformers runs it (a LoRA adapter on its base, unmerged, as inference_lora.py scores it), in
    fp32; for f16 / bf16 files its matrices are rounded as the file rounds them, so only the runtime is compared."""
    import torch
    from transformers import AutoModelForCausalLM

    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(src["config_dir"], dtype=torch.float32, use_safetensors=True)
        model = PeftModel.from_pretrained(base, str(model_dir))
        if quantization in ("f16", "bf16"):  # the file rounds W + BA, not the factors
            model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    rounded = {"f16": torch.float16, "bf16": torch.bfloat16}.get(quantization)
    with torch.no_grad():
        for p in model.parameters():
            if rounded is not None and p.dim() > 1:
                p.copy_(p.to(rounded).float())
    return model.eval()


def llama_server(xl, path: Path, n_ctx: int):
    params = xl.CommonParams()
    params.model.path = str(path)
    params.n_ctx, params.n_parallel, params.warmup, params.use_jinja = n_ctx, 1, False, True
    params.verbosity = -1  # errors only: llama.cpp's load and timing log would bury the report
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = max(1, min(4, os.cpu_count() or 1))
    # fp32 throughout, as transformers computes: llama.cpp's defaults (an f16 KV cache, flash attention with f16
    # products on the CPU) move logits by ~0.04, enough to flip a near-tie; the file is what is checked here
    params.cache_type_k = params.cache_type_v = xl.ggml_type.GGML_TYPE_F32
    params.flash_attn_type = xl.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return xl.Server(params)


def post(server, route: str, body: dict) -> dict:
    import urllib.request

    request = urllib.request.Request(server.listening_address + route, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as answer:
        return json.loads(answer.read())


def verify(path: Path, model_dir: Path, src: dict, quantization: str, asked: tuple, k: int, system: str) -> dict:
    """Greedy answers of llama.cpp (the file, its embedded template) and transformers (the trained model) to the
    same prompts in each thinking mode: token agreement, mode adherence of both, and whether llama.cpp renders each
    mode's prompt to transformers' tokens."""
    import torch
    from transformers import AutoTokenizer

    from medsft.adherence import line, measure
    from medsft.chat import MODES, SHORT, SOFT_SWITCH, build_messages, prompt_ids, question_mode
    from medsft.generate import eos_ids

    xl = llama_cpp()
    questions, source = asked
    tokenizer = AutoTokenizer.from_pretrained(src["tokenizer_dir"])
    model = reference_model(model_dir, src, quantization)
    stops = eos_ids(model, tokenizer)
    prompts = {(mode, q): prompt_ids(tokenizer, q, system=system, mode=mode) for mode in MODES for q in questions}
    server = llama_server(xl, path, max(len(p) for p in prompts.values()) + k + 16)
    rows, outputs = [], {"transformers": {m: [] for m in MODES}, "llama.cpp": {m: [] for m in MODES}}
    try:
        for (mode, question), ids in prompts.items():
            # transformers: greedy, stopped at end of turn
            with torch.no_grad():
                new = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     do_sample=False, max_new_tokens=k, eos_token_id=stops,
                                     pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
            # llama.cpp: the same ids, greedy; it stops at its end-of-generation tokens
            got = post(server, "/completion", {"prompt": ids, "n_predict": k, "temperature": 0, "top_k": 1,
                                               "return_tokens": True, "cache_prompt": False})
            theirs = got.get("tokens") or []
            ours = new[:next((i for i, t in enumerate(new) if t in stops), len(new))]
            ended = {"transformers": len(ours) < len(new), "llama.cpp": got.get("stop_type") == "eos"}
            theirs_full = theirs + ([stops[0]] if ended["llama.cpp"] else [])
            ours_full = ours + ([stops[0]] if ended["transformers"] else [])
            same = next((i for i, (a, b) in enumerate(zip(ours_full, theirs_full)) if a != b),
                        min(len(ours_full), len(theirs_full)))
            identical = ours_full == theirs_full
            # llama.cpp's own rendering of this mode's messages with the template inside the file
            text = question + SOFT_SWITCH[mode] if mode == "no_think_soft" and question_mode(question) != mode else question
            rendered = post(server, "/apply-template", {"messages": build_messages(text, system=system),
                                                        "chat_template_kwargs": {"enable_thinking": mode != "no_think_hard"}})
            tokens = post(server, "/tokenize", {"content": rendered["prompt"], "add_special": False,
                                                "parse_special": True})["tokens"]
            for engine, out in (("transformers", ours), ("llama.cpp", theirs)):
                outputs[engine][mode].append({"mode": mode, "finished": ended[engine],
                                              "output": tokenizer.decode(out, skip_special_tokens=True)})
            rows.append({"mode": mode, "question": question, "agreeing_tokens": same,
                         "compared_tokens": max(len(ours_full), len(theirs_full)), "identical": identical,
                         "template_same_tokens": tokens == ids, "transformers": ours, "llama.cpp": theirs})
    finally:
        del server
    exact = quantization in ("f32", "f16")
    per_mode = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        per_mode[mode] = {"identical": sum(r["identical"] for r in mine), "n": len(mine),
                          "agreement": round(sum(r["agreeing_tokens"] / max(1, r["compared_tokens"]) for r in mine)
                                             / len(mine), 4),
                          "template_same_tokens": sum(r["template_same_tokens"] for r in mine)}
    adherence = {engine: measure(outputs[engine]) for engine in outputs}
    report = {"gguf": str(path), "quantization": quantization, "questions": len(questions), "source": source,
              "tokens": k, "exact_required": exact, "modes": per_mode, "adherence": adherence,
              "passed": all(r["template_same_tokens"] for r in rows) and (not exact or all(r["identical"] for r in rows)),
              "rows": rows}
    print(f"verify: llama.cpp on {path.name} beside transformers, greedy, {len(questions)} questions of {source}, "
          f"first {k} tokens")
    for mode, m in per_mode.items():
        print(f"  {SHORT[mode]:<14} identical {m['identical']}/{m['n']}, token agreement {m['agreement']:.2f}, "
              f"template renders the same tokens {m['template_same_tokens']}/{m['n']}")
    for engine, a in adherence.items():
        print(f"  adherence {engine:<12} {line(a)}")
    return report


def main():
    cfg = configure(globals())
    # 1. Check the options and the source before any weight is read
    if QUANTIZATION not in _QUANTIZATIONS:
        raise MedsftError(f"--quantization={QUANTIZATION}: expected one of {' | '.join(_QUANTIZATIONS)}")
    ggml = ggml_library() if QUANTIZATION == "q4_k_m" else None
    if VERIFY < 0 or VERIFY_TOKENS < 1:
        raise MedsftError(f"--verify={VERIFY} --verify_tokens={VERIFY_TOKENS}: expected a question count >= 0 "
                          "(0 = no check) and at least 1 token")
    if VERIFY:
        llama_cpp()  # fail before writing, not after
        asked = verify_questions(VERIFY_INPUT, VERIFY)
    model_dir = Path(MODEL_DIR).expanduser()
    if not model_dir.is_dir():
        raise MedsftError(f"MODEL_DIR {MODEL_DIR} not found: run train.py (output/full) or train_lora.py "
                          "(output/lora) first, or pass --model_dir=<folder>")
    name = NAME or f"medsft-{model_dir.resolve().name}"
    out_dir = Path(OUTPUT_DIR)
    gguf_path = out_dir / f"{name}-{QUANTIZATION}.gguf"
    src = open_source(model_dir, BASE_MODEL, MODEL_REVISION)
    config_dir, tokenizer_dir, config, tensors = src["config_dir"], src["tokenizer_dir"], src["config"], src["tensors"]
    plan = plan_tensors(tensors, config, QUANTIZATION)
    generation = read_json(config_dir / "generation_config.json")  # every input is read before anything is written
    for tokenizer_file in ("tokenizer_config.json", "tokenizer.json"):
        read_json(tokenizer_dir / tokenizer_file)

    # 2. Header: tensor table, architecture metadata, tokenizer (held until the file is opened for the tensor data)
    import gguf
    import numpy as np

    tmp = gguf_path.with_name(f".{gguf_path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, "qwen3")
    for gguf_name, _, shape, qtype in plan:
        writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), tensor_nbytes(shape, qtype), raw_dtype=qtype)
    general = add_metadata(writer, config, config_dir, describe(name, src["base"], src["revision"], LICENSE, None),
                           QUANTIZATION)
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

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, item in enumerate(plan, 1):
            writer.write_tensor_data(tensor_bytes(item))
            print(f"\r[{i}/{len(plan)}] {item[0]:<28} {item[3].name:<5} {'x'.join(map(str, item[2])):<12}", end="",
                  flush=True)
        writer.close()
        # 4. The set: a previous export's export_config.json (the completion marker, written last) and verify.json
        # (which describes only the file it checked) go first, then the file, the Modelfile, the marker
        for stale in ("export_config.json", "verify.json"):
            (out_dir / stale).unlink(missing_ok=True)
        os.replace(tmp, gguf_path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    print()

    atomic_write_bytes(out_dir / "Modelfile", modelfile(gguf_path.name, generation, SYSTEM, NUM_CTX, LICENSE).encode())
    used = {**cfg, "NAME": name, "GGUF": str(gguf_path), "BYTES": gguf_path.stat().st_size, "TENSORS": len(plan),
            "SOURCE": str(config_dir), "BASE": src["base"], "BASE_REVISION": src["revision"] or None,
            "QLORA": src.get("qlora", False), "GENERAL": general, **{k.upper(): v for k, v in facts.items()}}
    print(f"wrote {gguf_path} ({gguf_path.stat().st_size / 2**20:.1f} MiB), {out_dir / 'Modelfile'}, "
          f"{save_config(used, out_dir / 'export_config.json')}")
    print(f"\n  ollama create {name} -f {out_dir / 'Modelfile'}\n  ollama run {name}\n"
          f"  llama-cli -m {gguf_path} --jinja\n")

    # 5. --verify: the written file in llama.cpp beside transformers, in all three thinking modes
    if VERIFY:
        report = verify(gguf_path, model_dir, src, QUANTIZATION, asked, VERIFY_TOKENS, SYSTEM)
        write_json(out_dir / "verify.json", report)  # never NaN: null with the reason beside it
        if not report["passed"]:
            raise MedsftError(f"--verify: llama.cpp does not run {gguf_path.name} as transformers runs the model "
                              f"(see {out_dir / 'verify.json'}): " + ("a prompt renders to other tokens" if not all(
                                  r["template_same_tokens"] for r in report["rows"]) else
                                  f"{QUANTIZATION} must give the same greedy tokens"))
        print(f"wrote {out_dir / 'verify.json'}")


if __name__ == "__main__":
    main()
