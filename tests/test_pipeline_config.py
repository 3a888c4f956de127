"""Pipeline configs that cannot run are refused by `validate` in one sentence, before any rank starts.

Most cases call `nanodist.config.validate` on a config composed in-process (no subprocess, so
cheap); one goes through launch.py to check the user-facing contract: exit code 2, no traceback.
"""

from __future__ import annotations

import pytest
from conftest import NANO, ROOT, launch
from hydra import compose, initialize_config_dir

from nanodist.config import PP_SCHEDULES, ConfigError, register_configs, validate
from nanodist.parallel.pp import split_layers, stage_ids

register_configs()

# A pipeline config that passes: nano (4 layers, tied embeddings), batch 8 on 2 pp ranks.
GOOD = [*NANO, "train.batch_size=8", "mesh.pp=2"]

# (id, overrides on top of GOOD, words the one sentence must contain)
BAD_INPUTS = [
    ("more_stages_than_layers", ["parallel=pp_1f1b", "mesh.pp=5"], "5 pipeline stages"),
    ("virtual_stages_too_few_layers", ["parallel=pp_interleaved", "mesh.pp=4"], "8 pipeline stages"),
    ("v_with_too_few_layers", ["parallel=pp_zbv", "model.n_layer=3"], "need at least one layer each but model.n_layer=3"),
    ("microbatches_not_dividing", ["parallel=pp_1f1b", "parallel.pp.n_microbatches=3"], "n_microbatches=3 does not divide"),
    ("microbatches_after_dp_and_accum", ["parallel=pp_fsdp", "mesh=2x2", "train.grad_accum=2", "parallel.pp.n_microbatches=4"],
     "does not divide the per-rank micro-batch of 2 sequences"),
    ("v_needs_two_stages_per_rank", ["parallel=pp_zbv", "parallel.pp.stages_per_rank=3"], "needs parallel.pp.stages_per_rank exactly 2"),
    ("interleaved_needs_virtual_stages", ["parallel=pp_interleaved", "parallel.pp.stages_per_rank=1"], "at least 2"),
    ("single_stage_schedule", ["parallel=pp_1f1b", "parallel.pp.stages_per_rank=2"], "exactly 1"),
    ("unknown_schedule", ["parallel=pp_1f1b", "parallel.pp.schedule=Zigzag"], "Zigzag is not a pipeline schedule"),
    ("tied_v_under_fsdp", ["parallel=pp_fsdp", "mesh=2x2", "parallel.pp.schedule=ZBVZeroBubble", "parallel.pp.stages_per_rank=2"],
     "FSDP cannot share the tied embedding between two stages"),
    ("pipeline_on_one_rank", ["parallel=pp_1f1b", "mesh.pp=1"], "mesh.pp=1; set mesh.pp=2"),
    ("layers_per_stage_sum", ["parallel=pp_1f1b", "parallel.pp.layers_per_stage=[1,2]"], "4 in all"),
    ("1f1b_too_few_microbatches", ["parallel=pp_1f1b", "mesh.pp=4", "parallel.pp.n_microbatches=2"], ">= mesh.pp=4, not 2"),
    ("dualpipev_too_few_microbatches", ["parallel=pp_dualpipev", "parallel.pp.n_microbatches=2"], ">= its 4 stages"),
]


def composed(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*GOOD, *overrides])


@pytest.mark.parametrize("overrides,words", [(o, w) for _, o, w in BAD_INPUTS], ids=[i for i, _, _ in BAD_INPUTS])
def test_bad_pipeline_config_is_one_sentence(overrides, words):
    with pytest.raises(ConfigError) as err:
        validate(composed(*overrides))
    message = str(err.value)
    assert words in message
    assert message.endswith(".") and message.count(". ") == 0, "one sentence"


@pytest.mark.parametrize("option", ["pp_gpipe", "pp_1f1b", "pp_interleaved", "pp_looped_bfs", "pp_interleaved_zb", "pp_zbv", "pp_dualpipev"])
def test_every_schedule_option_validates_at_pp2(option):
    validate(composed(f"parallel={option}"))


@pytest.mark.parametrize("option,mesh", [("pp_fsdp", "2x2"), ("pp_tp", "2x2"), ("3d", "2x2x2")])
def test_composed_options_validate(option, mesh):
    validate(composed(f"parallel={option}", f"mesh={mesh}"))


def test_cli_refuses_with_exit_code_2_and_no_traceback(tmp_path):
    result = launch(tmp_path, *GOOD, "parallel=pp_1f1b", "parallel.pp.n_microbatches=3", check=False, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: parallel.pp.n_microbatches=3 does not divide"), result.stderr


def test_split_layers_even_with_remainder_first_and_as_given():
    assert split_layers(5, 2, []) == [range(0, 3), range(3, 5)]
    assert split_layers(4, 4, []) == [range(i, i + 1) for i in range(4)]
    assert split_layers(6, 2, [1, 5]) == [range(0, 1), range(1, 6)]


def test_stage_placement_loop_and_v():
    assert [stage_ids("1F1B", 4, 1, r) for r in range(4)] == [[0], [1], [2], [3]]
    assert [stage_ids("Interleaved1F1B", 2, 2, r) for r in range(2)] == [[0, 2], [1, 3]]
    assert [stage_ids("ZBVZeroBubble", 2, 2, r) for r in range(2)] == [[0, 3], [1, 2]]
    assert set(PP_SCHEDULES.values()) == {"single", "looped", "v"}
