"""Text generation: sample tokens one at a time from any function that predicts the next one.

The predictor is the plain model on one process, or a step runner under any parallel layout, where
every rank runs it in step and gets the same logits, so the same seed gives the same text on all.
The context is right-padded to a multiple of `pad_to` and the next token read at the last real
position: causal attention makes the padding invisible to it, and sequence parallelism, which
splits the sequence over the tp ranks, always gets a length it can split.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor


@torch.no_grad()
def generate(next_logits: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor, new_tokens: int, seed: int,
             temperature: float = 0.8, top_k: int = 200, vocab_size: Optional[int] = None) -> torch.Tensor:
    """Append `new_tokens` tokens to `ids` (1, T), each drawn from `next_logits(ids)` (1, vocab).

    Only ids below `vocab_size` (the tokenizer's: a padded vocabulary's padding never) are drawn.
    """
    gen = torch.Generator(device=ids.device).manual_seed(seed)
    for _ in range(new_tokens):
        logits = next_logits(ids)[:, :vocab_size] / temperature
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -float("inf"))
        next_id = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def generate_text(next_logits: Callable[[torch.Tensor], torch.Tensor], tokenizer, prompt: str, new_tokens: int,
                  seed: int, device: torch.device, temperature: float = 0.8, top_k: int = 200) -> str:
    """`prompt` and `new_tokens` sampled tokens after it, as text (an empty prompt starts from token 0).

    A prompt the tokenizer cannot encode raises its KeyError."""
    ids = torch.tensor([tokenizer.encode(prompt) or [0]], dtype=torch.long, device=device)
    out = generate(next_logits, ids, new_tokens, seed, temperature, top_k, tokenizer.vocab_size)
    return tokenizer.decode(out[0].tolist())


def padded_window(ids: torch.Tensor, block_size: int, pad_to: int) -> tuple[torch.Tensor, int]:
    """The last tokens of `ids` that fit the block (a multiple of `pad_to`), right-padded to a multiple of
    `pad_to`, and how many of them are real."""
    context = ids[:, -(block_size // pad_to * pad_to):]
    length = context.size(1)
    return torch.nn.functional.pad(context, (0, -(-length // pad_to) * pad_to - length)), length


@torch.no_grad()
def next_token_logits(model: nn.Module, ids: torch.Tensor, pad_to: int = 1,
                      gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """fp32 logits (1, vocab) of a whole model (plain or sharded) for the token after `ids`; `gather`
    joins a reference layout's vocab shards."""
    window, length = padded_window(ids, model.config.block_size, pad_to)
    logits = model(window)
    if gather is not None:
        logits = gather(logits)
    if isinstance(logits, DTensor):  # vocab-sharded under loss parallelism
        logits = logits.full_tensor()
    return logits[:, length - 1, :].float()
