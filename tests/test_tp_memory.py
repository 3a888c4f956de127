"""Tensor parallelism really splits the transformer blocks: per-rank bytes about 1/tp of one process."""

from __future__ import annotations

import pytest
import torch

from nanodist.model import GPT, GPTConfig
from nanodist.parallel.dims import ParallelDims
from nanodist.parallel.tensors import local_bytes
from nanodist.parallel.tp import apply_tp
from nanodist.tools.dryrun import fake_process_group

CONFIG = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=128)


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp", "tp_sp"])
def test_tp2_holds_about_half_of_the_block_parameters(sequence_parallel):
    with torch.device("meta"):
        whole, sharded = GPT(CONFIG), GPT(CONFIG)
    with fake_process_group(rank=0, world_size=2):
        mesh = ParallelDims(tp=2).build_mesh("cpu")
        apply_tp(sharded, mesh["tp"], sequence_parallel, loss_parallel=sequence_parallel)
    ratio = local_bytes(sharded.transformer.h.parameters()) / local_bytes(whole.transformer.h.parameters())
    # Matmul weights and column biases halve; LayerNorms and row-parallel biases stay whole (~1%).
    assert 0.5 < ratio < 0.52, ratio
    assert sharded.lm_head.weight is sharded.transformer.wte.weight
