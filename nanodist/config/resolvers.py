"""The OmegaConf resolvers conf/ uses, and the mesh sizes a config asks for once `mesh.shape` is applied."""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import OmegaConf

from nanodist.config.schema import MESH_DIMS, ConfigError


def spread_ranks(dims: Any, ranks: int) -> Optional[str]:
    """A mesh.shape laying `ranks` (a power of two) over a strategy's mesh dims, so sweeps can say
    "at 4 ranks" for every strategy: factors of 2 go to the first dim, the last, then those between."""
    dims, ranks = list(dims), int(ranks)
    if ranks & (ranks - 1) or ranks < 1 or (not dims and ranks > 1):
        raise ConfigError(f"cannot lay {ranks} ranks over the mesh dims {dims or 'none'}; use a power of two and a parallel strategy.")
    if not dims:
        return None
    order = list(dict.fromkeys([0, len(dims) - 1, *range(1, len(dims) - 1)]))
    sizes = [1] * len(dims)
    for i in range(ranks.bit_length() - 1):
        sizes[order[i % len(order)]] *= 2
    return "x".join(map(str, sizes))


def register_resolvers() -> None:
    """The resolvers conf/ uses (mesh/ranks*.yaml, experiments). Registered on import, because a SLURM
    job resolves its config in a process where launch.py's top level never ran."""
    OmegaConf.register_new_resolver("nanodist.spread", spread_ranks, replace=True)
    OmegaConf.register_new_resolver("nanodist.mul", lambda a, b: int(a) * int(b), replace=True)
    # Run and job dir names carry the overrides; a file name holds at most 255 bytes.
    OmegaConf.register_new_resolver("nanodist.clip", lambda text, n: str(text)[: int(n)], replace=True)


register_resolvers()


def resolved_mesh(cfg: Any) -> dict[str, int]:
    """The mesh sizes after applying `mesh.shape` to the strategy's dims (may still hold -1)."""
    sizes = {dim: int(cfg.mesh[dim]) for dim in MESH_DIMS}
    if cfg.mesh.shape is not None:
        parts = str(cfg.mesh.shape).lower().split("x")
        dims = list(cfg.parallel.mesh_dims)
        if not all(p.isdigit() for p in parts) or len(parts) != len(dims):
            raise ConfigError(
                f"mesh={cfg.mesh.shape} does not fit parallel={cfg.parallel.name}, whose mesh dims are "
                f"{dims or 'none'}; give {len(dims)} sizes like mesh={'x'.join(['2'] * len(dims)) or 'single'}."
            )
        sizes.update({dim: int(p) for dim, p in zip(dims, parts)})
    return sizes


