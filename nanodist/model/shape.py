"""The model's shape from the run config: the bridge from `nanodist.config` to `GPTConfig`."""

from __future__ import annotations

from nanodist.config import padded_vocab_size
from nanodist.model.gpt import GPTConfig


def gpt_config(cfg, dataset_vocab: int) -> GPTConfig:
    """The config's model shape, with the dataset's vocabulary padded as asked (the padding masked out)."""
    m = cfg.model
    vocab, true_vocab = padded_vocab_size(m, dataset_vocab), m.vocab_size or dataset_vocab
    return GPTConfig(m.n_layer, m.n_head, m.n_embd, m.block_size, vocab, m.dropout, m.bias, m.tie_embeddings,
                     true_vocab if true_vocab < vocab else None)
