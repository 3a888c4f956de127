"""Dropout's random stream per rank: different on data-parallel ranks, shared inside a model replica;
and what a resumed run's generators hold, under the layout that saved them and under another.

Each rank's mesh position is played by this one process under a fake process group (collectives
move nothing), so every rank of a dp_shard=2 x tp=2 mesh can be asked for its seed in turn. The
resume rows run for real through the launcher, with a callback that records each rank's generator.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import NANO, ROOT, launch, subprocess_env

from nanodist.parallel.dims import ParallelDims
from nanodist.tools.dryrun import fake_process_group
from nanodist.train.callbacks import Callback
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


# ---- resuming under another layout ----

class RngProbe(Callback):
    """Writes this rank's global generator state as training is about to start (after any resume)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_fit_start(self, trainer) -> None:
        torch.save(torch.get_rng_state(), Path(self.out_dir) / f"rng_probe_rank{trainer.rank.rank}.pt")


# A run started through the product with the probe among its callbacks (ranks unpickle it from this module).
DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from hydra import compose, initialize_config_dir
from nanodist.config import register_configs
from nanodist.launch.local import launch
from test_rng import ROOT, RngProbe
register_configs()
with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
    cfg = compose("config", overrides=[*sys.argv[3:], f"output_dir={sys.argv[2]}"])
launch(cfg, [RngProbe(sys.argv[2])])
"""
SEED = 1337
# Dropout on: training draws from the generators, so a restored state differs from a fresh one.
SOURCE = [*NANO, "model.dropout=0.1", "train.batch_size=8", "train.eval_interval=0", "train.max_steps=4",
          f"train.seed={SEED}"]


def run_with_probe(run_dir: Path, *overrides: str) -> None:
    run_dir.mkdir(parents=True)
    result = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT / "tests"), str(run_dir), *overrides], cwd=ROOT,
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def ddp_checkpoint(tmp_path_factory) -> Path:
    """A ddp(2) run's step-4 checkpoint, with each rank's generator state (rng_rank<r>.pt)."""
    run_dir = tmp_path_factory.mktemp("source")
    launch(run_dir, *SOURCE, "parallel=ddp", "mesh.dp_replicate=2")
    checkpoint = run_dir / "checkpoints" / "step_0000004"
    for rank in range(2):  # else the rows below could not tell a restored state from a fresh one
        assert not torch.equal(torch.load(checkpoint / f"rng_rank{rank}.pt")["cpu"], fresh(SEED + rank))
    return checkpoint


def fresh(seed: int) -> torch.Tensor:
    """The global generator's state right after torch.manual_seed(seed), as a fresh run seeds it."""
    generator = torch.Generator().manual_seed(seed)
    return generator.get_state()


# (resumed under, its ranks, what each rank's generator holds as training resumes, whether the log says so)
RESUMES = [
    ("ddp(2), as saved", ["parallel=ddp", "mesh.dp_replicate=2"], 2, lambda ckpt, r: torch.load(ckpt / f"rng_rank{r}.pt")["cpu"], False),
    ("fsdp(2)", ["parallel=fsdp", "mesh.dp_shard=2"], 2, lambda ckpt, r: fresh(SEED + r), True),
    ("single", ["parallel=single"], 1, lambda ckpt, r: fresh(SEED), True),
]


@pytest.mark.multiprocess
@pytest.mark.parametrize("layout,overrides,ranks,expected,logged", RESUMES, ids=[row[0] for row in RESUMES])
def test_under_another_layout_the_generators_start_as_a_fresh_run_seeds_them(layout, overrides, ranks, expected, logged,
                                                                             ddp_checkpoint, tmp_path):
    run_with_probe(tmp_path / "run", *SOURCE, *overrides, "train.max_steps=5", f"checkpoint.resume_from={ddp_checkpoint}")
    for rank in range(ranks):
        assert torch.equal(torch.load(tmp_path / "run" / f"rng_probe_rank{rank}.pt"), expected(ddp_checkpoint, rank)), rank
    log = (tmp_path / "run" / "rank0.log").read_text()
    assert f"resumed from {ddp_checkpoint} (step 4)" in log
    assert (f"RNG states not restored: {ddp_checkpoint} was saved under another layout" in log) == logged
