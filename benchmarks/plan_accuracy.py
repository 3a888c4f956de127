"""The planner's per-rank estimate against real CPU ranks: state bytes, activation bytes, forward
collective bytes, for ddp, fsdp, tp_sp, fsdp_tp, pp_1f1b and 3d at 2-8 ranks.

    python benchmarks/plan_accuracy.py        # prints the table, writes results/plan_accuracy_cpu.json

Each case starts its ranks (gloo, spawned here), each rank builds its stage as training does
(`parallelize`: real weights), runs one micro-batch forward (and the loss on the last stage) on
real data, a backward and one AdamW step, and the first rank of every pipeline rank reports:
parameter, gradient and optimizer bytes of its real tensors; the bytes autograd saved for backward,
found by walking the autograd graph after the forward (every node's `_saved_*` tensors, each storage
once, parameters left out): not the saved-tensor hooks the estimate's meter uses; and the payload
of the collectives its forward issued on real tensors. The estimate is the dry run's fake build of
the same rank (`estimate_position`), for one microbatch.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.distributed._functional_collectives import AsyncCollectiveTensor  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from torch.distributed.tensor.parallel import loss_parallel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nanodist.config import register_configs, seq_len_of  # noqa: E402
from nanodist.model import cross_entropy, gpt_config  # noqa: E402
from nanodist.parallel.dims import ParallelDims  # noqa: E402
from nanodist.parallel.parallelize import parallelize  # noqa: E402
from nanodist.tools.collectives import CollectiveBytes  # noqa: E402
from nanodist.tools.dryrun import estimate_position, fake_process_group, meta_stage, micro_batch, stage_input_tokens, stage_specs  # noqa: E402
from nanodist.train.meters import state_bytes  # noqa: E402

MODEL = ["model=nano", "model.n_layer=4", "data=synthetic", "data.synthetic_vocab_size=128", "train.batch_size=8"]
CASES = [("ddp", ["mesh.dp_replicate=2"]), ("fsdp", ["mesh.dp_shard=4"]), ("tp_sp", ["mesh.tp=2"]),
         ("fsdp_tp", ["mesh=2x2"]), ("pp_1f1b", ["mesh.pp=2"]), ("3d", ["mesh=2x2x2"])]
VOCAB = 128


def compose(strategy: str, mesh: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[*MODEL, f"parallel={strategy}", *mesh, "output_dir=/tmp/plan_accuracy"])
    from omegaconf import OmegaConf

    return OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True))


def is_parameter(t: torch.Tensor, params: set) -> bool:
    """A parameter or a view of one (a transposed weight saved by a matmul): state, not activations."""
    base = t if t._base is None else t._base
    return (base.is_leaf and base.requires_grad) or t.untyped_storage().data_ptr() in params


def saved_by_graph(root: torch.Tensor, model: torch.nn.Module) -> int:
    """Bytes of every tensor the autograd graph under `root` saved, each storage once, parameters left out."""
    params = {(p.to_local() if isinstance(p, DTensor) else p).untyped_storage().data_ptr() for p in model.parameters()}
    seen, storages, stack = set(), {}, [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                values = getattr(node, name)
                for t in values if isinstance(values, (tuple, list)) else [values]:
                    local = t.to_local() if isinstance(t, DTensor) else t
                    if isinstance(local, AsyncCollectiveTensor):  # a collective's result, as the meter unwraps it
                        local = local.elem
                    # A storage freed since (FSDP resharding its gathered weights) holds nothing now.
                    if isinstance(local, torch.Tensor) and local.untyped_storage().nbytes() and not is_parameter(local, params):
                        storages[local.untyped_storage().data_ptr()] = local.untyped_storage().nbytes()
        stack += [fn for fn, _ in node.next_functions]
    return sum(storages.values())


def rank_main(rank: int, world: int, cfg_yaml: str, init_file: str, out: str) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(cfg_yaml)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    dims = ParallelDims.from_config(cfg)
    mesh, config = dims.build_mesh("cpu"), gpt_config(cfg, VOCAB)
    pp_rank = rank // (world // dims.pp)
    (stage, layers, first, last), = stage_specs(cfg, dims, config, pp_rank)
    model = parallelize(meta_stage(config, layers, first, last), dims, mesh, cfg, torch.device("cpu"))
    rows, seq = micro_batch(cfg, dims), seq_len_of(cfg)
    window = torch.randint(0, VOCAB, (rows, seq + 1))
    x = window[:, :-1] if first else torch.randn(rows, stage_input_tokens(cfg, dims, seq), config.n_embd, requires_grad=True)
    ctx = loss_parallel() if cfg.parallel.loss_parallel else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
    with ctx:
        with CollectiveBytes(world) as comms:  # the forward's collectives, as the estimate counts them
            y = model(x)
            root = cross_entropy(y, window[:, 1:]) if last else y
        saved = saved_by_graph(root, model)
        (root if last else (y.to_local() if isinstance(y, DTensor) else y).sum()).backward()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    opt.step()
    if rank % (world // dims.pp) == 0:
        Path(out, f"{pp_rank}.json").write_text(json.dumps({**state_bytes([model], opt), "activation_bytes": saved,
                                                            "collectives": comms.bytes}))
    dist.barrier()
    dist.destroy_process_group()


def measure(cfg) -> list[dict]:
    dims = ParallelDims.from_config(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        from omegaconf import OmegaConf

        mp.spawn(rank_main, args=(dims.world_size, OmegaConf.to_yaml(cfg), f"{tmp}/init", tmp), nprocs=dims.world_size)
        return [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(dims.pp)]


def estimate(cfg) -> list[dict]:
    dims = ParallelDims.from_config(cfg)
    config, rows = gpt_config(cfg, VOCAB), micro_batch(cfg, dims)
    with fake_process_group(0, dims.world_size):
        mesh = dims.build_mesh("cpu")
        return [estimate_position(cfg, dims, mesh, config, r, [rows]) | {"rows": rows} for r in range(dims.pp)]


def main() -> None:
    rows, keys = [], ("param_bytes", "grad_bytes", "optim_bytes")
    print(f"{'case':<22} {'pp rank':>7} {'state est':>10} {'state real':>10} {'act est':>9} {'act real':>9} {'act err':>8} {'comm est':>9} {'comm real':>9}")
    for strategy, mesh in CASES:
        cfg = compose(strategy, mesh)
        for pp_rank, (est, real) in enumerate(zip(estimate(cfg), measure(cfg))):
            state_est, state_real = sum(est[k] for k in keys), sum(real[k] for k in keys)
            act_est = est["activations"][est["rows"]][0]
            comm_est, comm_real = sum(est["collectives"][est["rows"]].values()), sum(real["collectives"].values())
            row = {"case": f"{strategy} {' '.join(mesh)}", "pp_rank": pp_rank, "state_est": state_est, "state_real": state_real,
                   "act_est": act_est, "act_real": real["activation_bytes"], "comm_est": comm_est, "comm_real": comm_real,
                   "comm_est_by_kind": est["collectives"][est["rows"]], "comm_real_by_kind": real["collectives"]}
            rows.append(row)
            err = (act_est - real["activation_bytes"]) / real["activation_bytes"] if real["activation_bytes"] else 0.0
            print(f"{row['case']:<22} {pp_rank:>7} {state_est:>10} {state_real:>10} {act_est:>9} {real['activation_bytes']:>9} "
                  f"{100 * err:>7.1f}% {comm_est:>9} {comm_real:>9}")
    (ROOT / "benchmarks" / "results" / "plan_accuracy_cpu.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
