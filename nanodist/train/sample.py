"""The end-of-run text sample: every rank runs the same generation through its step runner."""

from __future__ import annotations

import torch

from nanodist.data import tokenizer_for
from nanodist.model import generate


def sample_text(runner, cfg, data_meta: dict, device: torch.device) -> str:
    """`train.sample_tokens` tokens after `train.sample_prompt`; "" for synthetic data (no tokenizer)."""
    tokenizer = tokenizer_for(data_meta, cfg.data.tokenizer_file)
    if tokenizer is None:
        return ""
    prompt = tokenizer.encode(cfg.train.sample_prompt) or [0]
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    for part in runner.parts:
        part.eval()
    out = generate(runner.next_logits, ids, cfg.train.sample_tokens, cfg.train.seed)
    for part in runner.parts:
        part.train()
    return tokenizer.decode([min(i, tokenizer.vocab_size - 1) for i in out[0].tolist()])
