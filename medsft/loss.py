"""Causal-LM cross-entropy that never holds the full (tokens x 151,936) logits: the CPU-or-GPU twin of Liger's
fused linear + cross-entropy, in plain PyTorch.

Only supervised positions (labels != -100) get logits at all, and those in chunks of ``chunk_tokens``: each
chunk's logits are recomputed in the backward pass (activation checkpointing) instead of being stored. The sum is
divided exactly as transformers' ``ForCausalLMLoss`` divides it (by ``num_items_in_batch`` when the Trainer
passes it, else by the number of supervised tokens), so losses and gradients equal the plain loss's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .chat import IGNORE_INDEX
from .memory import CHUNK_TOKENS


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")


def chunked_causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           num_items_in_batch=None, chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """Mean next-token cross-entropy of ``hidden @ weight.T`` against ``labels`` (shifted here, as transformers
    does: position t predicts label t + 1)."""
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).to(hidden.device)
    flat = hidden.reshape(-1, hidden.size(-1))
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    flat, targets = flat.index_select(0, keep), targets.index_select(0, keep)
    # Only the selected rows reach the loss, so a NaN/inf at an unsupervised position cannot. A micro-batch that
    # supervises nothing still runs one empty chunk: a 0.0 whose (zero) gradients reach the decoder and the head,
    # so backward works and DDP sees every parameter used.
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, max(targets.numel(), 1), chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(_chunk_loss, flat[start:end], weight, targets[start:end], use_reentrant=False)
    denom = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    # a step with no target token at all gives 0.0, not 0 / 0 = NaN
    denom = denom.to(total.device).clamp(min=1) if torch.is_tensor(denom) else max(denom, 1)
    return total / denom


def causal_parts(model):
    """``(decoder, head)`` of a causal LM, through a peft wrapper: the decoder gives hidden states, the head's
    weight turns them into logits inside the chunked loss."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def chunked_forward_loss(model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """The training loss of ``model`` on a collated batch (``labels`` included) through the chunked loss."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    decoder, head = causal_parts(model)
    hidden = decoder(**inputs).last_hidden_state
    return chunked_causal_lm_loss(hidden, head.weight, labels, num_items_in_batch)
