"""The reference implementations through the product: what each shards, measured per rank, and checkpoints
that move between native and reference layouts. (Their losses: test_parity.py's reference rows.)"""

from __future__ import annotations

import pytest
from conftest import NANO, launch, read_metrics, read_summary

STEPS = ["train.max_steps=2", "train.batch_size=8", "train.eval_interval=0", "checkpoint.enabled=false"]
REFERENCE = "parallel.implementation=reference"
STATE = ("param_bytes", "grad_bytes", "optim_bytes")

# (id, overrides, ranks N, the state figures that must fall to <= 1.05 / N of one process's)
SHARDED_STATE = [
    ("zero1(2)", ["parallel=zero1", "mesh=ranks2"], 2, ("optim_bytes",)),
    ("zero1(2) reference", ["parallel=zero1", "mesh=ranks2", REFERENCE], 2, ("optim_bytes",)),
    ("fsdp(2) reference", ["parallel=fsdp", "mesh=ranks2", REFERENCE], 2, STATE),
    ("fsdp(4) reference", ["parallel=fsdp", "mesh=ranks4", REFERENCE], 4, STATE),
]


@pytest.fixture(scope="module")
def single_state(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("single")
    launch(run_dir, *NANO, *STEPS)
    return read_summary(run_dir)


@pytest.mark.multiprocess
@pytest.mark.parametrize("overrides,ranks,figures", [pytest.param(o, n, f, id=i) for i, o, n, f in SHARDED_STATE])
def test_sharded_state_per_rank_is_one_nth_of_one_process(overrides, ranks, figures, single_state, tmp_path):
    launch(tmp_path, *NANO, *STEPS, *overrides, timeout=600)
    summary = read_summary(tmp_path)
    for figure in figures:
        assert summary[figure] <= 1.05 * single_state[figure] / ranks, (figure, summary[figure], single_state[figure])


@pytest.mark.multiprocess
@pytest.mark.parametrize("saved,resumed", [
    pytest.param("native", "reference", id="native->reference"),
    pytest.param("reference", "native", id="reference->native"),
])
@pytest.mark.parametrize("strategy", [["parallel=fsdp", "mesh=ranks2"], ["parallel=tp_sp", "mesh=ranks2"]],
                         ids=["fsdp", "tp_sp"])
def test_a_checkpoint_moves_between_native_and_reference(strategy, saved, resumed, tmp_path):
    """Saved after 2 of 4 steps under one implementation, continued under the other: the losses of steps 3
    and 4 equal those of a run that never stopped."""
    common = [*NANO, "train.batch_size=8", "train.eval_interval=0", "train.log_interval=1", "checkpoint.interval=2",
              *strategy]
    launch(tmp_path / "whole", *common, "train.max_steps=4", f"parallel.implementation={saved}", timeout=600)
    launch(tmp_path / "first", *common, "train.max_steps=2", f"parallel.implementation={saved}", timeout=600)
    launch(tmp_path / "rest", *common, "train.max_steps=4", f"parallel.implementation={resumed}",
           f"checkpoint.resume_from={tmp_path / 'first'}", timeout=600)
    whole = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "whole")}
    rest = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "rest")}
    assert sorted(rest) == [2, 3]
    for step, loss in rest.items():
        assert loss == pytest.approx(whole[step], rel=1e-5), step
