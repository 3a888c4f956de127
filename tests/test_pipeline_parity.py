"""Every pipeline schedule, and pp composed with FSDP and TP, trains the same model as one process.

The rows live here rather than in test_parity.py because a pipeline needs untied embeddings
(`model.tie_embeddings=false`, the tie would span the first and last stage), so the reference run
differs from that table's. Everything else is that file's settings; evaluation is on, to check
that eval under PP reports the same validation loss too. Tolerance: the same rtol 1e-5 (measured
differences are ~1e-7, fp32 reduction order only).
"""

from __future__ import annotations

import pytest
import torch.distributed.pipelining as pipelining

from conftest import launch, read_metrics
from test_parity import COMMON, RTOL, STEPS

PP_COMMON = [*COMMON, "model.tie_embeddings=false", "train.eval_interval=3", "train.eval_iters=1"]
NO_DUALPIPEV = pytest.mark.skipif(not hasattr(pipelining, "ScheduleDualPipeV"), reason="this torch has no DualPipeV")

# nano has 4 layers, so pp=2 with 2 stages per rank gives one layer per virtual stage.
PIPELINES = [
    pytest.param(["parallel=pp_gpipe", "mesh.pp=2"], id="pp_gpipe(2)"),
    pytest.param(["parallel=pp_1f1b", "mesh.pp=2"], id="pp_1f1b(2)"),
    pytest.param(["parallel=pp_1f1b", "mesh.pp=2", "train.grad_accum=2"], id="pp_1f1b(2)+accum(2)"),
    pytest.param(["parallel=pp_interleaved", "mesh.pp=2"], id="pp_interleaved(2x2 stages)"),
    pytest.param(["parallel=pp_looped_bfs", "mesh.pp=2"], id="pp_looped_bfs(2x2 stages)"),
    pytest.param(["parallel=pp_interleaved_zb", "mesh.pp=2"], id="pp_interleaved_zb(2x2 stages)"),
    pytest.param(["parallel=pp_zbv", "mesh.pp=2"], id="pp_zbv(2, V)"),
    pytest.param(["parallel=pp_dualpipev", "mesh.pp=2"], id="pp_dualpipev(2, V)", marks=NO_DUALPIPEV),
    pytest.param(["parallel=pp_fsdp", "mesh=2x2"], id="pp_fsdp(2x2)"),
    pytest.param(["parallel=pp_tp", "mesh=2x2"], id="pp_tp(2x2)"),
    pytest.param(["parallel=3d", "mesh=2x2x2"], id="3d(2x2x2)"),
]


@pytest.fixture(scope="module")
def untied_single_process_curve(tmp_path_factory) -> list[dict]:
    run_dir = tmp_path_factory.mktemp("single_untied")
    launch(run_dir, *PP_COMMON, "parallel=single")
    return read_metrics(run_dir)


@pytest.mark.multiprocess
@pytest.mark.parametrize("overrides", PIPELINES)
def test_pipeline_matches_single_process(overrides, untied_single_process_curve, tmp_path):
    launch(tmp_path, *PP_COMMON, *overrides, timeout=900)
    curve = read_metrics(tmp_path)
    assert [r["step"] for r in curve] == [r["step"] for r in untied_single_process_curve] == list(range(STEPS))
    for ours, reference in zip(curve, untied_single_process_curve):
        for key in ("loss", "grad_norm", "val_loss"):
            assert ours.get(key) == pytest.approx(reference.get(key), rel=RTOL), f"{key} at step {ours['step']}"
