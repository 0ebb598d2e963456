"""Generation for inference, the training preview and the benchmark: batched (``generate``), streamed
(``stream``) or on vLLM (``generate_vllm``), all from ``chat.prompt_ids`` (a typed control token stays text)."""

from __future__ import annotations

import copy
import importlib.util
import json
import threading
from pathlib import Path

from tqdm import tqdm

from .chat import prompt_ids
from .files import MedsftError

# torch, transformers and vllm are imported inside the functions that use them: --help and checks stay instant

def eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted(set(ids) | {tokenizer.eos_token_id})

def check_decoding(max_new_tokens, do_sample, temperature=None, top_p=None, top_k=None, *,
                   length_option="max_new_tokens", greedy_option="--do_sample=false", **_) -> None:
    """Reject decoding settings transformers would refuse (or silently misuse): each script calls it once, before
    any model loads, naming its own length option and its greedy switch (None: the script always samples)."""
    if max_new_tokens < 1:
        raise MedsftError(f"--{length_option}={max_new_tokens}: must be at least 1")
    if do_sample and temperature is not None and temperature <= 0:
        raise MedsftError(f"--temperature={temperature}: must be > 0 when sampling"
                          + (f"; for greedy use {greedy_option}" if greedy_option else ""))
    if top_p is not None and not 0 < top_p <= 1:
        raise MedsftError(f"--top_p={top_p}: must be in (0, 1]")
    if top_k is not None and top_k < 0:
        raise MedsftError(f"--top_k={top_k}: must be >= 0 (0 = off)")

def generation_config(model, tokenizer, *, max_new_tokens, do_sample, temperature=None, top_p=None, top_k=None):
    """The model's own generation_config (Qwen3: thinking-mode sampling) with this run's overrides (the script
    checked them with ``check_decoding`` before any model loaded)."""
    gc = copy.deepcopy(model.generation_config)
    gc.max_new_tokens = max_new_tokens
    gc.do_sample = do_sample
    gc.eos_token_id = eos_ids(model, tokenizer)
    gc.pad_token_id = tokenizer.pad_token_id
    if do_sample:
        for name, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k)):
            if value is not None:
                setattr(gc, name, value)
    else:  # greedy: neutral sampling knobs (None would be refilled from the model's config, then warned about)
        gc.temperature, gc.top_p, gc.top_k = 1.0, 1.0, 50
    return gc

def used_settings(gc) -> dict:
    """The decoding settings a generation_config actually applies (sampling knobs are None under greedy)."""
    return {"max_new_tokens": gc.max_new_tokens, "do_sample": bool(gc.do_sample),
            "temperature": gc.temperature if gc.do_sample else None,
            "top_p": gc.top_p if gc.do_sample else None,
            "top_k": gc.top_k if gc.do_sample else None}

def _result(tokenizer, new: list[int], stop: set[int]) -> dict:
    """Cut generated ids at the first end-of-turn token and decode them (special tokens dropped, <think> kept)."""
    cut = next((k for k, t in enumerate(new) if t in stop), None)
    tokens = new if cut is None else new[:cut]
    return {
        "output": tokenizer.decode(tokens, skip_special_tokens=True),
        "new_tokens": len(tokens) + (cut is not None),  # the end-of-turn token was generated too
        "finished": cut is not None,
    }

def generate(model, tokenizer, questions, *, max_new_tokens, do_sample, seed=42, batch_size=8, system=None,
             temperature=None, top_p=None, top_k=None, progress=True, histories=None, on_batch=None,
             modes=None) -> list[dict]:
    """``{"output", "new_tokens", "finished"}`` per question, in order, in batches (longest first: an out-of-memory
    shows at once); ``on_batch([(index, result)])`` after each; ``modes``: a ``chat.MODES`` name per question."""
    import torch

    tokenizer.padding_side = "left"
    prompts = [prompt_ids(tokenizer, q, system=system, history=(histories[i] if histories else None),
                          mode=modes[i] if modes else "think")
               for i, q in enumerate(questions)]
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    gc = generation_config(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=do_sample,
                           temperature=temperature, top_p=top_p, top_k=top_k)
    stop = set(gc.eos_token_id)
    results: list[dict | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc="generate", unit="q", disable=not progress)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt").to(device)
        torch.manual_seed(seed + start)  # reproducible run to run; a sampled row also depends on its batch
        with torch.inference_mode():
            out = model.generate(**enc, generation_config=gc)
        for row, i in enumerate(idx):
            results[i] = _result(tokenizer, out[row, enc["input_ids"].shape[1]:].tolist(), stop)
        bar.update(len(idx))
        if on_batch is not None:
            on_batch([(i, results[i]) for i in idx])
    bar.close()
    model.train(was_training)
    return results

def stream(model, tokenizer, question, on_text, *, max_new_tokens, do_sample, seed=42, system=None, history=None,
           temperature=None, top_p=None, top_k=None, stop_event=None, mode="think") -> dict:
    """``generate``'s result for one question (the same tokens under greedy decoding), ``on_text(chunk)`` called as
    text comes; setting ``stop_event`` (Ctrl-C) ends it after the current token."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class _StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop_event.is_set(), dtype=torch.bool, device=input_ids.device)

    stop_event = stop_event or threading.Event()
    gc = generation_config(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=do_sample,
                           temperature=temperature, top_p=top_p, top_k=top_k)
    device = next(model.parameters()).device
    ids = prompt_ids(tokenizer, question, system=system, history=history, mode=mode)
    input_ids = torch.tensor([ids], device=device)
    enc = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    box: dict = {}

    def work():
        try:
            torch.manual_seed(seed)
            with torch.inference_mode():
                box["out"] = model.generate(**enc, generation_config=gc, streamer=streamer,
                                            stopping_criteria=StoppingCriteriaList([_StopOnEvent()]))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which re-raises it
            box["error"] = e
            streamer.end()  # unblock the reader

    was_training = model.training
    model.eval()
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        for chunk in streamer:
            on_text(chunk)
    except BaseException:
        stop_event.set()  # Ctrl-C while printing: stop the worker before re-raising
        raise
    finally:
        worker.join()
        model.train(was_training)
    if "error" in box:
        raise box["error"]
    return _result(tokenizer, box["out"][0, enc["input_ids"].shape[1]:].tolist(), set(gc.eos_token_id))

def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None

def require_vllm() -> None:
    if not vllm_available():
        raise MedsftError("--backend=vllm needs vLLM, which is not installed: `pip install vllm` (Linux + CUDA GPU), "
                          "or use the default --backend=transformers")

def load_vllm(model_dir, *, seed=42, adapter_dir=None, max_model_len=None):
    """A vLLM engine for a local model directory, with LoRA support switched on when an adapter is given."""
    require_vllm()
    from vllm import LLM

    kwargs = {"model": str(model_dir), "seed": seed, "trust_remote_code": False}
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    if adapter_dir is not None:
        rank = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8")).get("r", 16)
        # vLLM accepts only some LoRA ranks: the smallest one that holds this adapter
        max_rank = next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= int(rank)), int(rank))
        kwargs.update(enable_lora=True, max_lora_rank=max_rank, max_loras=1)
    return LLM(**kwargs)

def vllm_settings(model_dir, *, max_new_tokens, do_sample, temperature=None, top_p=None, top_k=None) -> dict:
    """The decoding settings vLLM will use: the model's generation_config.json with this run's overrides."""
    from transformers import GenerationConfig

    try:
        base = GenerationConfig.from_pretrained(model_dir)
    except OSError:  # no generation_config.json: transformers' defaults, as the transformers backend would use
        base = GenerationConfig()
    if not do_sample:
        return {"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"max_new_tokens": max_new_tokens, "do_sample": True,
            "temperature": base.temperature if temperature is None else temperature,
            "top_p": base.top_p if top_p is None else top_p,
            "top_k": base.top_k if top_k is None else top_k}

def generate_vllm(llm, tokenizer, questions, *, settings, stop_ids, seed=42, system=None, adapter_dir=None,
                  on_batch=None, batch_size=None, modes=None) -> list[dict]:
    """``generate`` on vLLM; each question samples with seed + index, so answers do not depend on what else is in
    flight; ``on_batch`` every ``batch_size`` questions."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    lora = LoRARequest("medsft-adapter", 1, str(adapter_dir)) if adapter_dir is not None else None
    # token ids, not text: vLLM would parse a typed "<|im_end|>" in a question as a real end of turn
    prompts = [{"prompt_token_ids": prompt_ids(tokenizer, q, system=system, mode=modes[i] if modes else "think")}
               for i, q in enumerate(questions)]
    results: list[dict] = []
    step = batch_size or len(prompts) or 1
    for start in range(0, len(prompts), step):
        params = []
        for i in range(start, min(start + step, len(prompts))):
            if settings["do_sample"]:
                params.append(SamplingParams(max_tokens=settings["max_new_tokens"], temperature=settings["temperature"],
                                             top_p=settings["top_p"], top_k=settings["top_k"] or -1, seed=seed + i,
                                             stop_token_ids=list(stop_ids), skip_special_tokens=True))
            else:
                params.append(SamplingParams(max_tokens=settings["max_new_tokens"], temperature=0.0,
                                             stop_token_ids=list(stop_ids), skip_special_tokens=True))
        outs = llm.generate(prompts[start:start + step], params, lora_request=lora, use_tqdm=False)
        chunk = []
        for k, out in enumerate(outs):
            o = out.outputs[0]
            chunk.append((start + k, {"output": o.text, "new_tokens": len(o.token_ids),
                                      "finished": o.finish_reason == "stop"}))
        results += [r for _, r in chunk]
        if on_batch is not None:
            on_batch(chunk)
    return results
