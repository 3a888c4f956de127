"""Tensor and sequence parallelism for the GPT, on the mesh's tp dim.

Layout, per block: QKV and MLP-up column-wise (each rank owns n_head / tp whole heads, thanks to
the head-major QKV rows), attention-out and MLP-down row-wise. The token embedding is split by
vocabulary and the LM head by output vocabulary: both shard the same (vocab, n_embd) weight on dim
0, so the tied weight stays one parameter. With sequence parallelism the LayerNorms and the
residual stream between blocks hold 1/tp of the sequence, and with loss parallelism the logits
stay sharded by vocabulary into the cross-entropy.
"""

from __future__ import annotations

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool, loss_parallel: bool) -> nn.Module:
    """Shard `model` (or a pipeline stage of it) in place over `tp_mesh`."""
    t = model.transformer
    tied = model.lm_head is not None and "wte" in t and model.lm_head.weight is t.wte.weight
    # Between blocks the residual stream is replicated (plain TP) or split by sequence (SP).
    stream = Shard(1) if sequence_parallel else Replicate()

    if "wte" in t:
        # Positions stay replicated: each rank adds them to the full sequence before it is split.
        parallelize_module(t.wte, tp_mesh, RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()))
    blocks = list(t.h.values())
    for block in blocks:
        plan = {
            "attn.c_attn": ColwiseParallel(),
            "attn.c_proj": RowwiseParallel(output_layouts=stream),
            "mlp.c_fc": ColwiseParallel(),
            "mlp.c_proj": RowwiseParallel(output_layouts=stream),
        }
        if sequence_parallel:
            plan.update(
                {
                    "ln_1": SequenceParallel(),
                    "ln_2": SequenceParallel(),
                    "attn": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
                    "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
                }
            )
        parallelize_module(block, tp_mesh, plan)
    if sequence_parallel and "wte" in t and blocks:
        # The embedding output is the full sequence; the first block keeps only this rank's part.
        parallelize_module(
            blocks[0],
            tp_mesh,
            PrepareModuleInput(input_layouts=(Replicate(),), desired_input_layouts=(Shard(1),), use_local_output=True),
        )
    if "ln_f" in t and sequence_parallel:
        parallelize_module(t.ln_f, tp_mesh, SequenceParallel())
    if model.lm_head is not None:
        parallelize_module(
            model.lm_head,
            tp_mesh,
            ColwiseParallel(
                input_layouts=stream,
                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                use_local_output=not loss_parallel,
            ),
        )
    if tied:
        model.lm_head.weight = t.wte.weight
    return model


def enable_async_tp(tp_mesh: DeviceMesh) -> None:
    """Let inductor overlap TP's all-gathers and reduce-scatters with the matmuls they feed.

    Compiled blocks only, on CUDA: the collectives become symmetric-memory micro-pipelines.
    """
    import torch._inductor.config as inductor_config
    from torch.distributed._symmetric_memory import enable_symm_mem_for_group

    inductor_config._micro_pipeline_tp = True
    enable_symm_mem_for_group(tp_mesh.get_group().group_name)
