"""Random state: each data-parallel rank's own dropout seed, and the states a checkpoint saves.

Weights never draw from the global generator (each parameter has its own, seeded by its name), so
the global one serves dropout alone. Data-parallel ranks see different rows and must draw different
masks (offset by the dp rank, as nanoGPT and torchtitan do); the ranks of one model replica (tp,
pp) hold pieces of the same activations and must draw the same ones.
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
