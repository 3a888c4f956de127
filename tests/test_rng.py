"""Dropout's random stream per rank: different on data-parallel ranks, shared inside a model replica.

Each rank's mesh position is played by this one process under a fake process group (collectives
move nothing), so every rank of a dp_shard=2 x tp=2 mesh can be asked for its seed in turn.
"""

from __future__ import annotations

import pytest
import torch

from nanodist.parallel.dims import ParallelDims
from nanodist.tools.dryrun import fake_process_group
from nanodist.train.rng import rank_seed

DIMS = ParallelDims(dp_shard=2, tp=2)  # ranks 0,1 form replica dp 0 (tp 0,1); ranks 2,3 replica dp 1


def dropout_mask_on(rank: int, seed: int = 1337) -> torch.Tensor:
    """The dropout mask rank `rank` draws first, seeded as the Trainer seeds it."""
    with fake_process_group(rank, DIMS.world_size):
        torch.manual_seed(rank_seed(seed, DIMS.build_mesh("cpu")))
    return torch.nn.functional.dropout(torch.ones(64), p=0.5) > 0


def test_data_parallel_ranks_draw_different_dropout_masks():
    assert not torch.equal(dropout_mask_on(0), dropout_mask_on(2))


@pytest.mark.parametrize("a,b", [(0, 1), (2, 3)], ids=["replica0", "replica1"])
def test_tensor_parallel_ranks_of_one_replica_draw_the_same_mask(a, b):
    assert torch.equal(dropout_mask_on(a), dropout_mask_on(b))


def test_one_process_keeps_the_configured_seed():
    assert rank_seed(1337, None) == 1337
