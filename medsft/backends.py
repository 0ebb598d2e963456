"""The two engines behind batch predictions, behind one interface: transformers (default) and vLLM (optional)."""

from __future__ import annotations

from . import generate as gen
from .adapters import adapter_tokenizer_spec, load_for_inference
from .files import MedsftError
from .models import load_tokenizer, resolve_model

BACKENDS = ("transformers", "vllm")
VLLM_MIN_CHUNK = 64  # vLLM schedules its own batches; hand it at least this many questions between saves

def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise MedsftError(f"--backend={backend}: expected one of {', '.join(BACKENDS)}")
    if backend == "vllm":
        gen.require_vllm()

def load_backend(backend, model, adapter_dir, *, max_new_tokens, do_sample, seed, batch_size, system, temperature,
                 top_p, top_k):
    """Load ``model`` (+ ``adapter_dir``) on ``backend``; return (decoding settings, run(questions, on_batch, modes))."""
    if backend == "vllm":
        model_dir = resolve_model(model)
        tokenizer = load_tokenizer(adapter_tokenizer_spec(model, adapter_dir))
        settings = gen.vllm_settings(model_dir, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                     temperature=temperature, top_p=top_p, top_k=top_k)
        llm = gen.load_vllm(model_dir, seed=seed, adapter_dir=adapter_dir)
        stop = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")})

        def run(questions, on_batch, modes=None):
            return gen.generate_vllm(llm, tokenizer, questions, settings=settings, stop_ids=stop, seed=seed,
                                     system=system, adapter_dir=adapter_dir, on_batch=on_batch,
                                     batch_size=max(batch_size, VLLM_MIN_CHUNK), modes=modes)

        return settings, run
    net, tokenizer = load_for_inference(model, adapter_dir)
    settings = gen.used_settings(gen.generation_config(net, tokenizer, max_new_tokens=max_new_tokens,
                                                       do_sample=do_sample, temperature=temperature, top_p=top_p,
                                                       top_k=top_k))

    def run(questions, on_batch, modes=None):
        return gen.generate(net, tokenizer, questions, max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed,
                            batch_size=batch_size, system=system, temperature=temperature, top_p=top_p, top_k=top_k,
                            progress=False, on_batch=on_batch, modes=modes)

    return settings, run
