"""The distributed token loader.

A step's global batch is a pure function of (seed, split, step): random windows of the token file,
or random tokens for synthetic data. Each data-parallel rank reads only its rows of each
micro-step, so any dp size and accumulation count sees exactly the batch one process would, and the
loader needs no state of its own: the step it is asked for (saved with the Trainer's state) is its position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nanodist.data import data_dir, read_meta
from nanodist.data.files import TokenFiles

SPLIT_SEED = {"train": 0, "val": 1}


@dataclass(frozen=True)
class BatchLayout:
    """How one step's global batch of `batch_size` sequences is cut across dp ranks and micro-steps."""

    batch_size: int
    grad_accum: int
    dp_size: int
    dp_rank: int

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // (self.grad_accum * self.dp_size)

    def rows(self, micro_step: int) -> slice:
        start = (micro_step * self.dp_size + self.dp_rank) * self.micro_batch_size
        return slice(start, start + self.micro_batch_size)


class TokenLoader:
    """This rank's (inputs, targets) micro-batches of any step: its position is the Trainer's step alone."""

    def __init__(self, data_cfg, split: str, seq_len: int, layout: BatchLayout, seed: int, vocab_size: int):
        self.split, self.seq_len, self.layout, self.seed = split, seq_len, layout, seed
        self.vocab_size = vocab_size
        self.synthetic = data_cfg.name == "synthetic"
        # Every file meta.json lists for the split (one, or shards), uint16 or uint32, as one sequence.
        self.tokens = None if self.synthetic else TokenFiles(data_dir(data_cfg), read_meta(data_cfg), split)
        if self.tokens is not None and len(self.tokens) <= seq_len:
            raise ValueError(f"{split}.bin holds {len(self.tokens)} tokens, too few for sequences of {seq_len}.")

    def micro_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches of global step `step`, each (inputs, targets) of (micro_batch, seq_len)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + SPLIT_SEED[self.split] * 7_919 + step)
        n, t = self.layout.batch_size, self.seq_len
        if self.synthetic:
            windows = torch.randint(0, self.vocab_size, (n, t + 1), generator=gen)
        else:
            starts = torch.randint(0, len(self.tokens) - t - 1, (n,), generator=gen).tolist()
        out = []
        for micro in range(self.layout.grad_accum):
            rows = self.layout.rows(micro)
            if self.synthetic:
                chunk = windows[rows]
            else:
                chunk = torch.from_numpy(np.stack([self.tokens.window(s, t + 1) for s in starts[rows]]))
            out.append((chunk[:, :-1], chunk[:, 1:]))
        return out
