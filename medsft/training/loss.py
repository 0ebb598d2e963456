"""The training loss: next-token cross-entropy that never holds the (tokens x vocabulary) logits. The head's logits
are made CHUNK_TOKENS supervised tokens at a time and recomputed in backward; the model's own forward computes it
(``install_chunked_loss``), so DDP / DeepSpeed see it. Imports torch: build_trainer imports it when training starts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..chat import IGNORE_INDEX
from ..memory import CHUNK_TOKENS

def _chunk_loss(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")

class ChunkedSum(torch.autograd.Function):
    """Sum of ``_chunk_loss`` over chunks, each chunk's graph rebuilt in backward (as checkpointing would). The
    head's gradient is returned as one contiguous tensor: autograd's own (``t()`` of a matmul) is a view, which
    the engine cannot add the tied input embedding's gradient into in place, so it held a third
    vocabulary-sized tensor at peak. Every value equals autograd's on ``_chunk_loss`` bit for bit."""

    @staticmethod
    def forward(ctx, flat, weight, targets, chunk_tokens):
        ctx.save_for_backward(flat, weight, targets)
        ctx.chunk_tokens = chunk_tokens
        total = torch.zeros((), dtype=torch.float32, device=flat.device)
        for start in range(0, max(targets.numel(), 1), chunk_tokens):  # no target: one empty chunk
            total = total + _chunk_loss(flat[start:start + chunk_tokens], weight, targets[start:start + chunk_tokens])
        return total

    @staticmethod
    def backward(ctx, grad_total):
        flat, weight, targets = ctx.saved_tensors
        step, need_w = ctx.chunk_tokens, ctx.needs_input_grad[1]
        grad_flat = torch.zeros_like(flat) if ctx.needs_input_grad[0] else None
        grad_weight = None
        for start in reversed(range(0, max(targets.numel(), 1), step)):  # the order autograd's engine runs them
            # the chunk's own graph, as checkpointing would rebuild it: its logits live only inside it
            h = flat[start:start + step].detach().requires_grad_()
            w = weight.detach().requires_grad_(need_w)
            with torch.enable_grad():
                loss = _chunk_loss(h, w, targets[start:start + step])
                grads = torch.autograd.grad(loss, (h, w) if need_w else (h,), grad_total)
            del loss
            if grad_flat is not None:
                grad_flat[start:start + step] = grads[0]
            if need_w:  # autograd's is a transposed view: the first is copied out so the sum can grow in place
                grad_weight = grads[1].clone() if grad_weight is None else grad_weight.add_(grads[1])
            del grads  # before the next chunk's: one vocabulary-sized tensor beside the sum, never two
        return grad_flat, grad_weight, None, None

def chunked_causal_lm_loss(hidden, weight, labels, num_items_in_batch=None, chunk_tokens: int = CHUNK_TOKENS):
    """Next-token cross-entropy of ``hidden @ weight.T`` over supervised positions only, CHUNK_TOKENS at a time
    (each chunk's logits recomputed in backward), divided as transformers' ForCausalLMLoss divides it."""
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).to(hidden.device)
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    flat, targets = hidden.reshape(-1, hidden.size(-1)).index_select(0, keep), targets.index_select(0, keep)
    # a micro-batch with no target still runs one empty chunk: zero gradients reach every parameter (DDP needs it)
    total = ChunkedSum.apply(flat, weight, targets, chunk_tokens)
    denom = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    # a step with no target token at all gives 0.0, not 0 / 0 = NaN
    denom = denom.to(total.device).clamp(min=1) if torch.is_tensor(denom) else max(denom, 1)
    return total / denom

def causal_parts(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()

def install_chunked_loss(model) -> None:
    """The model's own forward computes the chunked loss when given labels, so it runs inside DDP / DeepSpeed's
    wrapper (whose gradient sync would miss a loss computed beside it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "_medsft_chunked", False):
        return
    original = base.forward

    def forward(input_ids=None, attention_mask=None, labels=None, num_items_in_batch=None, **kwargs):
        if labels is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in ("return_dict", "use_cache")}
        decoder, head = causal_parts(base)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return CausalLMOutputWithPast(loss=chunked_causal_lm_loss(hidden, head.weight, labels, num_items_in_batch))

    base.forward = forward
    base._medsft_chunked = True
