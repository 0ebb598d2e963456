"""inference.py for a LoRA adapter: chat with it, predict a split with it, or merge it into a plain model.

Reads the adapter ADAPTER_DIR (default output/lora, written by train_lora.py) on top of its base model (the one
recorded in the adapter; BASE_MODEL overrides). Same modes, thinking switches (ENABLE_THINKING, SOFT_SWITCH) and
rows as inference.py (rows also carry `adapter`):

  python inference_lora.py                                # interactive chat (思考 / 回答, /reset, /exit, Ctrl-D)
  python inference_lora.py --question="头痛三天，伴有低烧，怎么办？"
  python inference_lora.py --input=data/test.jsonl        # -> results/predictions_lora.jsonl (+ .summary.json)
  python inference_lora.py --merge=true                   # -> output/lora-merged, a plain HF model directory

The merged directory (safetensors, tokenizer with chat template, generation_config) loads with
AutoModelForCausalLM and gives the same greedy answers as base + adapter: `python inference.py
--model_dir=output/lora-merged`.
"""

import json
from pathlib import Path

from medsft.adapters import check_adapter, load_for_inference, lora_base, merge_lora
from medsft.backends import check_backend
from medsft.chat_repl import chat, choose_mode
from medsft.config import configure, save_config
from medsft.generate import check_decoding
from medsft.files import MedsftError, disk_errors
from medsft.models import hub_revision, pin_revision
from medsft.chat import question_mode
from medsft.predict import mode_output, mode_runs, predict_file

ADAPTER_DIR = "output/lora"  # LoRA adapter directory (adapter_config.json + adapter weights)
BASE_MODEL = None  # base model spec; None = the base recorded in the adapter (adapter_config.json)
MODEL_REVISION = ""  # ModelScope revision of the base when it is a hub id (a tag, branch or commit id); "" = the one the adapter was trained on (its train_config.json), else the hub's current
MERGE = False  # true: fold the adapter into the base, write MERGED_DIR and exit
MERGED_DIR = "output/lora-merged"  # where --merge=true writes the merged model (replaced when complete)
QUESTION = ""  # one question to answer (streamed), then exit; "" = no single question
INPUT = ""  # JSONL split to predict (rows with question[, id, think, answer]), e.g. data/test.jsonl; "" = chat
OUTPUT = "results/predictions_lora.jsonl"  # batch predictions (resumed if present); summary beside it
MAX_NEW_TOKENS = 2048  # tokens generated per answer at most (reference think+answer averages ~900)
DO_SAMPLE = True  # true: Qwen3's thinking-mode sampling from the model's generation_config; false: greedy
TEMPERATURE = None  # sampling temperature; None = the model's generation_config (Qwen3: 0.6)
TOP_P = None  # nucleus sampling; None = the model's generation_config (Qwen3: 0.95)
TOP_K = None  # top-k sampling; None = the model's generation_config (Qwen3: 20)
ENABLE_THINKING = True  # false: Qwen3's hard switch (enable_thinking=False: the prompt closes an empty think; the model answers directly)
SOFT_SWITCH = ""  # "" | /no_think | /think: appended to every question (Qwen3's soft switch; the model writes an empty think after /no_think)
MODES = ""  # batch mode, several thinking modes from one model load: think,no_think_soft,no_think_hard (think -> OUTPUT, the others beside it); "" = the one mode the two switches give
SEED = 42  # sampling seed (same seed, same settings => same predictions)
BATCH_SIZE = 8  # questions generated together in batch mode (left-padded, sorted by prompt length)
BACKEND = "transformers"  # transformers | vllm (batch mode only, LoRA through vLLM's LoRA support)



def _trained_revision(adapter_dir, base) -> str:
    """The MODEL_REVISION train_lora.py trained the adapter with, if its base was ``base`` ("" when none is recorded)."""
    try:
        conf = json.loads((Path(adapter_dir) / "train_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    same = isinstance(conf, dict) and conf.get("MODEL") == base
    return str(conf.get("MODEL_REVISION") or "") if same else ""


def main():
    cfg = configure(globals())
    # 1. Check the adapter, its base, the mode and the backend before loading anything
    check_adapter(ADAPTER_DIR, flag="--adapter_dir", producer="train_lora.py")
    base = lora_base(ADAPTER_DIR, BASE_MODEL)
    pin_revision(base, MODEL_REVISION or _trained_revision(ADAPTER_DIR, base))  # an adapter fits its base's revision
    mode = "merge" if MERGE else choose_mode(QUESTION, INPUT)
    if MERGE and (QUESTION or INPUT):
        raise MedsftError("--merge=true only writes the merged model; then predict or chat with it: "
                          f"python inference.py --model_dir={MERGED_DIR} ...")
    check_backend(BACKEND)
    decoding = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=DO_SAMPLE, seed=SEED, temperature=TEMPERATURE,
                    top_p=TOP_P, top_k=TOP_K)
    check_decoding(**decoding)
    runs = mode_runs(MODES, ENABLE_THINKING, SOFT_SWITCH, OUTPUT if mode == "predict" else None)
    thinking = question_mode(SOFT_SWITCH, ENABLE_THINKING)
    if MODES and mode != "predict":
        raise MedsftError(f"--modes={MODES} predicts a file (--input); the chat switches with /no_think and /think")

    # 2. Merge: base + adapter -> a plain model directory
    if mode == "merge":
        print(f"wrote {merge_lora(ADAPTER_DIR, MERGED_DIR, base)}")
        return

    # 3. Batch mode: every row of INPUT -> OUTPUT (+ summary), resumable
    if mode == "predict":
        loaded = {}  # one model load for every mode
        for enable, soft in runs:  # other modes go beside OUTPUT: <stem>.<mode>.jsonl
            output = mode_output(OUTPUT, question_mode(soft, enable))
            predict_file(base, INPUT, output, adapter_dir=ADAPTER_DIR, batch_size=BATCH_SIZE, backend=BACKEND,
                         enable_thinking=enable, soft_switch=soft, loaded=loaded, **decoding)
            with disk_errors(output.parent, None, None):  # the predictions are complete: a re-run only writes this
                used = {**cfg, "ENABLE_THINKING": enable, "SOFT_SWITCH": soft, "OUTPUT": str(output),
                        "RESOLVED_REVISION": hub_revision(base)}  # None: not a hub id
                print(f"wrote {save_config(used, output.with_suffix('.config.json'))}")
        return

    # 4. One question or the interactive chat, streamed token by token
    if BACKEND != "transformers":
        raise MedsftError(f"--backend={BACKEND} serves batch predictions (--input); the chat streams with "
                          "transformers: drop --backend")
    model, tokenizer = load_for_inference(base, ADAPTER_DIR)
    chat(model, tokenizer, question=QUESTION.strip() if mode == "question" else None, mode=thinking,
         **decoding)


if __name__ == "__main__":
    main()
