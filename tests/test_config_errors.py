"""Bad input is refused before any process starts: one sentence on stderr, exit code 2, no traceback."""

from __future__ import annotations

import re

import pytest
from conftest import NANO, launch

# (id, overrides, words the sentence must contain, extra environment)
BAD_INPUTS = [
    ("heads", ["model.n_embd=30", "model.n_head=4"], "model.n_embd=30 is not divisible by model.n_head=4"),
    ("seq_len", ["train.seq_len=64"], "train.seq_len=64 exceeds model.block_size=32"),
    ("batch_split", ["train.batch_size=6", "train.grad_accum=4"], "train.batch_size=6 cannot be split"),
    ("lr", ["optim.lr=0"], "optim.lr=0.0 must be positive"),
    ("steps", ["train.max_steps=-1"], "train.max_steps=-1 is negative"),
    ("hsdp_one_group", ["parallel=hsdp", "mesh.dp_shard=2"], "parallel=hsdp needs at least 2 replica groups"),
    ("dp_batch", ["parallel=fsdp", "mesh.dp_shard=3", "train.batch_size=8"], "train.batch_size=8 cannot be split into 3"),
    ("mesh_shape", ["parallel=fsdp", "mesh=2x2"], "mesh=2x2 does not fit parallel=fsdp"),
    ("tp_heads", ["parallel=tp", "mesh.tp=3", "model.n_head=4"], "model.n_head=4 is not divisible by mesh.tp=3"),
    ("tp_vocab", ["parallel=tp", "mesh.tp=2", "data.synthetic_vocab_size=127"], "vocabulary of 127 tokens cannot be split"),
    ("sp_seq", ["parallel=tp_sp", "mesh.tp=2", "train.seq_len=31"], "does not divide it"),
    ("fused_loss_under_tp", ["parallel=tp", "mesh.tp=2", "train.fused_loss_chunk=64"], "which parallel=tp splits"),
    ("vocab_below_data", ["model.vocab_size=100"], "model.vocab_size=100 is smaller than data=synthetic's 128 tokens"),
    ("cp_seq", ["parallel=cp", "mesh.cp=2", "train.seq_len=30"], "cuts each 30-token sequence into 2 x mesh.cp = 4"),
    ("cp_one_rank", ["parallel=cp", "mesh.cp=1"], "parallel=cp splits sequences over mesh.cp ranks but mesh.cp=1"),
    ("cp_dropout", ["parallel=cp", "mesh.cp=2", "model.dropout=0.1"], "model.dropout=0.1 cannot match one process"),
    ("cp_without_strategy", ["parallel=fsdp", "mesh.cp=2"], "mesh.cp=2 needs a context-parallel strategy"),
    ("cp_with_ddp", ["parallel=cp", "mesh.cp=2", "parallel.data_parallel=ddp"], "not DDP or HSDP"),
    ("cp_sp_seq", ["parallel=fsdp_tp_cp", "mesh.shape=1x2x4", "train.seq_len=12"],
     "splits the 6-token sequence over mesh.tp=4"),
    ("reference_pipeline", ["parallel=pp_1f1b", "mesh.pp=2", "parallel.implementation=reference"],
     "covers data and tensor parallelism only"),
    ("reference_single", ["parallel.implementation=reference"], "has nothing to replace"),
    ("reference_compile", ["parallel=ddp", "mesh=ranks2", "parallel.implementation=reference", "train.compile=true"],
     "runs eagerly"),
    ("zero1_without_ddp", ["parallel=fsdp", "mesh=ranks2", "parallel.shard_optimizer=true"],
     "shards the optimizer over DDP replicas"),
    ("implementation_name", ["parallel.implementation=custom"], "parallel.implementation"),
]


def assert_one_sentence_error(result, words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), result.stderr
    assert words in lines[0]
    assert re.search(r"[;,] ", lines[0]) or "pick" in lines[0] or "use" in lines[0], "says how to fix it"


@pytest.mark.parametrize("overrides,words", [(o, w) for _, o, w in BAD_INPUTS], ids=[i for i, _, _ in BAD_INPUTS])
def test_bad_input_is_one_sentence_and_exit_code_2(overrides, words, tmp_path):
    assert_one_sentence_error(launch(tmp_path, *NANO, *overrides, check=False), words)


def test_missing_dataset_that_cannot_be_prepared(tmp_path):
    result = launch(tmp_path, "model=nano", "data=shakespeare_char", "train=smoke", f"data.dir={tmp_path}/data",
                    f"data.source={tmp_path}/missing.txt", check=False, timeout=60)
    assert_one_sentence_error(result, "does not exist")


def test_mesh_product_must_match_processes_started_by_torchrun(tmp_path):
    # torchrun's environment for rank 0 of 2: the check fires before any rendezvous.
    result = launch(tmp_path, *NANO, "parallel=fsdp", "mesh.dp_shard=4", check=False, env={"WORLD_SIZE": "2", "RANK": "0"})
    assert_one_sentence_error(result, "needs 4 processes but 2 were started")


def test_unknown_group_option_is_refused_by_hydra(tmp_path):
    result = launch(tmp_path, "parallel=fsdpp", check=False)
    assert result.returncode != 0
    assert "Could not find 'parallel/fsdpp'" in result.stderr


def test_mistyped_key_fails_at_composition(tmp_path):
    result = launch(tmp_path, "train.max_stepz=3", check=False)
    assert result.returncode != 0
    assert "max_stepz" in result.stderr
