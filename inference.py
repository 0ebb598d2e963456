"""Talk to a fine-tuned model, or predict a whole split with it.

Reads the model MODEL_DIR (default output/full, written by train.py; any model spec works: the untuned base is
--model_dir=Qwen/Qwen3-1.7B, an offline CPU demo --model_dir=tiny) with the same system prompt and chat template
as training. Three modes:

  python inference.py                                  # interactive chat: streamed 【思考】 then 【回答】,
                                                       #   multi-turn; /reset, /exit, Ctrl-D
  python inference.py --question="头痛三天，伴有低烧，怎么办？"   # one streamed answer, then exit
  python inference.py --input=data/test.jsonl          # batch predictions -> results/predictions_full.jsonl
  python inference.py --model_dir=Qwen/Qwen3-1.7B --input=data/test.jsonl --output=results/predictions_base.jsonl

Batch mode writes OUTPUT (one row per input row: id, question, ref_think, ref_answer, mode, output, think, answer,
think_status, new_tokens, finished, model) and OUTPUT's <stem>.summary.json (settings, truncations, tokens/s).
It is resumable: rows already in OUTPUT are skipped, and OUTPUT is rewritten atomically after every batch.
Thinking is on by default; Qwen3's two switches turn it off, and predictions in those modes go beside OUTPUT:

  python inference.py --input=data/test.jsonl --soft_switch=/no_think     # -> predictions_full.no_think_soft.jsonl
  python inference.py --input=data/test.jsonl --enable_thinking=false     # -> predictions_full.no_think_hard.jsonl
  python inference.py --input=data/test.jsonl --modes=think,no_think_soft,no_think_hard   # all three, one model load

In the chat, /no_think or /think in a message switches that answer; /thinking flips the default.
"""


from medsft.adapters import load_for_inference
from medsft.backends import check_backend
from medsft.chat_repl import chat, choose_mode
from medsft.config import configure, save_config
from medsft.generate import check_decoding
from medsft.files import MedsftError, disk_errors
from medsft.model_checks import check_model
from medsft.models import hub_revision, pin_revision
from medsft.chat import question_mode
from medsft.predict import mode_output, mode_runs, predict_file

MODEL_DIR = "output/full"  # model spec: a trained dir, a ModelScope id (Qwen/Qwen3-1.7B = untuned base) or tiny
MODEL_REVISION = ""  # ModelScope revision of MODEL_DIR when it is a hub id (a tag, branch or commit id); "" = the hub's current (a whole cached snapshot is reused)
QUESTION = ""  # one question to answer (streamed), then exit; "" = no single question
INPUT = ""  # JSONL split to predict (rows with question[, id, think, answer]), e.g. data/test.jsonl; "" = chat
OUTPUT = "results/predictions_full.jsonl"  # batch predictions (resumed if present); summary beside it
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
BACKEND = "transformers"  # transformers | vllm (batch mode only; needs `pip install vllm` and a CUDA GPU)


def main():
    cfg = configure(globals())
    pin_revision(MODEL_DIR, MODEL_REVISION)
    # 1. Check the mode, the model and the backend before loading anything (predict_file checks INPUT and OUTPUT)
    mode = choose_mode(QUESTION, INPUT)
    check_model(MODEL_DIR, flag="--model_dir", producer="train.py")
    check_backend(BACKEND)
    decoding = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=DO_SAMPLE, seed=SEED, temperature=TEMPERATURE,
                    top_p=TOP_P, top_k=TOP_K)
    check_decoding(**decoding)
    runs = mode_runs(MODES, ENABLE_THINKING, SOFT_SWITCH, OUTPUT if mode == "predict" else None)
    thinking = question_mode(SOFT_SWITCH, ENABLE_THINKING)
    if MODES and mode != "predict":
        raise MedsftError(f"--modes={MODES} predicts a file (--input); the chat switches with /no_think and /think")

    # 2. Batch mode: every row of INPUT -> OUTPUT (+ summary), resumable
    if mode == "predict":
        loaded = {}  # one model load for every mode
        for enable, soft in runs:  # other modes go beside OUTPUT: <stem>.<mode>.jsonl
            output = mode_output(OUTPUT, question_mode(soft, enable))
            predict_file(MODEL_DIR, INPUT, output, batch_size=BATCH_SIZE, backend=BACKEND,
                         enable_thinking=enable, soft_switch=soft, loaded=loaded, **decoding)
            with disk_errors(output.parent, None, None):  # the predictions are complete: a re-run only writes this
                used = {**cfg, "ENABLE_THINKING": enable, "SOFT_SWITCH": soft, "OUTPUT": str(output),
                        "RESOLVED_REVISION": hub_revision(MODEL_DIR)}  # None: not a hub id
                print(f"wrote {save_config(used, output.with_suffix('.config.json'))}")
        return

    # 3. One question or the interactive chat, streamed token by token
    if BACKEND != "transformers":
        raise MedsftError(f"--backend={BACKEND} serves batch predictions (--input); the chat streams with "
                          "transformers: drop --backend")
    model, tokenizer = load_for_inference(MODEL_DIR)
    chat(model, tokenizer, question=QUESTION.strip() if mode == "question" else None, mode=thinking,
         **decoding)


if __name__ == "__main__":
    main()
