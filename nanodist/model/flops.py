"""How big a GPT is and what a training step costs: the figures behind tokens/s, MFU and the dry run."""

from __future__ import annotations

from nanodist.model.gpt import GPTConfig


def num_params(c: GPTConfig) -> int:
    """Parameters of the full model without positions (tied weights counted once), nanoGPT's MFU convention."""
    per_block = 12 * c.n_embd**2 + (13 * c.n_embd if c.bias else 4 * c.n_embd)
    total = c.n_layer * per_block + c.vocab_size * c.n_embd + 2 * c.n_embd
    return total if c.tie_embeddings else total + c.vocab_size * c.n_embd


def flops_per_token(c: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L H Q T."""
    return 6 * num_params(c) + 12 * c.n_layer * c.n_head * c.head_dim * seq_len
