"""Random state: each data-parallel rank's own dropout seed, and the states a checkpoint saves.

Weights never draw from the global generator (each parameter has its own, seeded by its name), so
the global one serves dropout alone. Data-parallel ranks see different rows and must draw different
masks (offset by the dp rank, as nanoGPT and torchtitan do); the ranks of one model replica (tp,
pp) hold pieces of the same activations and must draw the same ones.

A checkpoint keeps each rank's generator states (rng_rank<r>.pt). A resume under the layout that
saved them (same strategy, same mesh) gives every rank its own states back, so a run with dropout
continues exactly as if never stopped. Under another layout the ranks no longer correspond (rank
r of fsdp(2) is not rank r of ddp(2), and a tp rank has no dp twin), so none is restored: the
checkpointer logs "RNG states not restored: ... saved under another layout (...)" and each rank
keeps the generator the Trainer seeded, `rank_seed` of this layout, untouched since (weights,
data and the optimizer draw from it nothing), exactly as a fresh run of this layout starts.
Weights, optimizer state and the data position still resume exactly; only dropout's masks after
the resume differ from the uninterrupted run's (with dropout 0, the default, nothing differs).
tests/test_rng.py shows both cases.
"""

from __future__ import annotations

import torch


def rank_seed(seed: int, mesh) -> int:
    """The global generator's seed on this rank: `seed` plus its data-parallel rank."""
    return seed + (mesh["dp"].get_local_rank() if mesh is not None else 0)


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
