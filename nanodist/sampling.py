"""Text generation from a trained model (every rank runs it in step, so sharded models work too)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor

from nanodist.tokenizer import CharTokenizer, GPT2Tokenizer


def tokenizer_for(meta: dict, data_cfg):
    if meta["tokenizer"] == "char":
        return CharTokenizer(meta["chars"])
    if meta["tokenizer"] == "gpt2":
        return GPT2Tokenizer(data_cfg.tokenizer_file)
    return None


@torch.no_grad()
def generate(model: nn.Module, ids: torch.Tensor, new_tokens: int, block_size: int, seed: int,
             temperature: float = 0.8, top_k: int = 200) -> torch.Tensor:
    """Append `new_tokens` sampled tokens to `ids` (1, T); the same seed gives the same text on every rank."""
    gen = torch.Generator(device=ids.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    for _ in range(new_tokens):
        logits = model(ids[:, -block_size:])
        if isinstance(logits, DTensor):  # vocab-sharded under loss parallelism
            logits = logits.full_tensor()
        logits = logits[:, -1, :].float() / temperature
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -float("inf"))
        next_id = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
        ids = torch.cat([ids, next_id], dim=1)
    model.train(was_training)
    return ids


def generate_text(model: nn.Module, cfg, meta: dict, device: torch.device, new_tokens: int) -> str:
    tokenizer = tokenizer_for(meta, cfg.data)
    if tokenizer is None:
        return ""
    prompt = tokenizer.encode(cfg.train.sample_prompt) or [0]
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    out = generate(model, ids, new_tokens, cfg.model.block_size, cfg.train.seed)
    return tokenizer.decode([min(i, tokenizer.vocab_size - 1) for i in out[0].tolist()])
