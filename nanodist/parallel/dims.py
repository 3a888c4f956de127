"""ParallelDims: the validated sizes of the five mesh dims, and the one DeviceMesh built from them.

Dims, outermost first: pp, dp_replicate, dp_shard, cp, tp. TP is innermost so that its heavy traffic
stays on the fastest links (inside a node); PP is outermost since it sends the least. CP (context
parallelism) sits next to dp_shard, as in torchtitan, so FSDP can shard over the flattened
dp_shard x cp: cp ranks hold different tokens of the same sequences, and like dp ranks they
each compute a share of every gradient. Every
strategy reads its process groups from this one mesh by name, through the sub-meshes below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from nanodist.config import MESH_DIMS, ConfigError, resolved_mesh


@dataclass(frozen=True)
class ParallelDims:
    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    cp: int = 1
    tp: int = 1

    def __post_init__(self):
        for dim in MESH_DIMS:
            if getattr(self, dim) < 1:
                raise ConfigError(f"mesh.{dim}={getattr(self, dim)} must be a positive size.")

    @classmethod
    def from_config(cls, cfg, world_size: Optional[int] = None) -> "ParallelDims":
        """Sizes from cfg.mesh (and mesh.shape); dp_shard=-1 takes what `world_size` leaves over."""
        sizes = resolved_mesh(cfg)
        if sizes["dp_shard"] == -1:
            others = math.prod(s for d, s in sizes.items() if d != "dp_shard")
            sizes["dp_shard"] = (world_size or others) // others
        return cls(**sizes)

    @property
    def world_size(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.cp * self.tp

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many different slices of each global batch are in flight."""
        return self.dp_replicate * self.dp_shard

    def build_mesh(self, device_type: str) -> "Mesh":
        """One mesh over all ranks with every dim named, size-1 dims included, plus its flattened groups."""
        mesh = init_device_mesh(device_type, tuple(getattr(self, d) for d in MESH_DIMS), mesh_dim_names=MESH_DIMS)
        return Mesh(
            mesh,
            dp=mesh[("dp_replicate", "dp_shard")]._flatten("dp"),
            dp_shard_cp=mesh[("dp_shard", "cp")]._flatten("dp_shard_cp"),
            dp_cp=mesh[("dp_replicate", "dp_shard", "cp")]._flatten("dp_cp"),
        )


@dataclass(frozen=True)
class Mesh:
    """The world mesh, indexed by dim name(s), plus three flattened ones: "dp" (the ranks that read
    different rows of a batch), "dp_shard_cp" (the ranks FSDP shards over) and "dp_cp" (the ranks
    whose losses make up one step's mean: different rows, or different tokens of the same rows).

    The flattened meshes are kept here rather than sliced from the root, which torch deprecates.
    """

    world: DeviceMesh
    dp: DeviceMesh
    dp_shard_cp: DeviceMesh
    dp_cp: DeviceMesh

    def __getitem__(self, names: str | tuple[str, ...]) -> DeviceMesh:
        if names in ("dp", "dp_shard_cp", "dp_cp"):
            return getattr(self, names)
        return self.world[names]
