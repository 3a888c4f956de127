"""Every layout the config groups allow on N ranks: strategy x mesh x accumulation x microbatches x
activation checkpointing, each checked by the launcher's own validator.

Strategies are the files of conf/parallel/ (whatever it holds: new ones join the plan when they are
added) and meshes every way of writing N as a product over the strategy's own `mesh_dims`, each at
least 2 (a dim of size 1 is another strategy's layout). Nothing here needs torch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from nanodist.config import MESH_DIMS, ConfigError, validate_relations, validate_vocab
from nanodist.config.validate import validate_domains
from nanodist.config.schema import ParallelConfig

STRATEGIES = Path(__file__).resolve().parents[2] / "conf" / "parallel"
AC_MODES = ("none", "full")
MICROBATCHES_PER_STAGE = (1, 2, 4)


@dataclass
class Layout:
    """One candidate: its composed config, and why it cannot run (None when it can)."""

    strategy: str
    mesh: dict
    cfg: DictConfig
    reason: Optional[str] = None
    estimate: dict = field(default_factory=dict)

    @property
    def overrides(self) -> list[str]:
        """The launch.py overrides that select this layout."""
        t, pp = self.cfg.train, self.cfg.parallel.pp
        out = [f"parallel={self.strategy}", *(f"mesh.{d}={s}" for d, s in self.mesh.items() if s > 1)]
        out += [f"train.grad_accum={t.grad_accum}", f"train.activation_checkpointing={t.activation_checkpointing}"]
        if self.cfg.parallel.pipeline and pp.n_microbatches is not None:
            out.append(f"parallel.pp.n_microbatches={pp.n_microbatches}")
        return out


def strategy_configs(names: list[str]) -> dict[str, DictConfig]:
    """conf/parallel/<name>.yaml over the schema's defaults, for the names asked (all when none are)."""
    found = {p.stem: p for p in sorted(STRATEGIES.glob("*.yaml"))}
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ConfigError(f"plan.strategies holds {unknown[0]}, which is not in conf/parallel/; use one of {', '.join(found)}.")
    schema = OmegaConf.structured(ParallelConfig)
    return {n: OmegaConf.merge(schema, OmegaConf.load(found[n])) for n in (names or found)}


def meshes(dims: list[str], world: int) -> Iterator[dict]:
    """Every assignment of sizes >= 2 to `dims` whose product is `world` (the empty mesh for 1 rank)."""
    if not dims:
        if world == 1:
            yield {}
        return
    for size in range(2, world + 1):
        if world % size == 0:
            for rest in meshes(dims[1:], world // size):
                yield {dims[0]: size, **rest}


def option_grid(cfg: DictConfig, parallel: DictConfig, mesh: dict) -> Iterator[dict]:
    """The train / pipeline options tried for one strategy and mesh."""
    plan = cfg.plan
    acs = list(plan.activation_checkpointing) or list(AC_MODES)
    accums = list(plan.grad_accum) or [cfg.train.grad_accum]
    pp = mesh.get("pp", 1)
    microbatches = [None]
    if parallel.pipeline:
        microbatches += [k * pp for k in (list(plan.microbatches_per_stage) or MICROBATCHES_PER_STAGE)]
    for ac, accum, n in itertools.product(acs, accums, microbatches):
        yield {"train": {"activation_checkpointing": ac, "grad_accum": accum}, "parallel": {"pp": {"n_microbatches": n}}}


def enumerate_layouts(cfg: DictConfig, world: int, vocab: int) -> list[Layout]:
    """Every layout on `world` ranks, each validated as launch.py would validate it on that many processes."""
    layouts = []
    validate_domains(cfg)  # the fields the planner leaves alone, once; what it sets comes from conf/ and the grid
    plain = OmegaConf.to_container(cfg)
    for name, parallel in strategy_configs(list(cfg.plan.strategies)).items():
        shapes = list(meshes(list(parallel.mesh_dims), world))
        if not shapes:
            dims = " x ".join(parallel.mesh_dims) or "no mesh dims"
            reason = f"parallel={name} has no mesh of {world} ranks: {dims}, each of size 2 or more"
            layouts.append(Layout(name, {}, OmegaConf.merge(cfg, {"parallel": parallel}), reason))
        for mesh in shapes:
            sizes = {d: mesh.get(d, 1) for d in MESH_DIMS}
            base = {**plain, "parallel": OmegaConf.to_container(parallel), "mesh": {"shape": None, **sizes}}
            for options in option_grid(cfg, parallel, mesh):
                layout = Layout(name, mesh, layout_config(base, options))
                layout.reason = invalid_reason(layout.cfg, world, vocab)
                layouts.append(layout)
    return layouts


def layout_config(base: dict, options: dict) -> DictConfig:
    """`base` with the grid's train and pipeline options: plain dicts, as merging whole configs per layout is slow."""
    train = {**base["train"], **options["train"]}
    parallel = {**base["parallel"], "pp": {**base["parallel"]["pp"], **options["parallel"]["pp"]}}
    return OmegaConf.create({**base, "train": train, "parallel": parallel})


def invalid_reason(cfg: DictConfig, world: int, vocab: int) -> Optional[str]:
    """The validator's one sentence for a layout that cannot run, or None."""
    try:
        validate_relations(cfg, world_size=world)
        validate_vocab(cfg, vocab)
    except ConfigError as err:
        return str(err)
    return None
