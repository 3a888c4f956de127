"""Tokenizers, the distributed loader, and the data/<name>/prepare.py scripts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SHARED_DATA, subprocess_env
from omegaconf import OmegaConf

from nanodist.data.tokenizer import CharTokenizer, GPT2Tokenizer
from nanodist.train.loader import BatchLayout, TokenLoader

SYNTHETIC = OmegaConf.create({"name": "synthetic", "dir": "unused"})


def test_gpt2_tokenizer_from_local_file_round_trips():
    tok = GPT2Tokenizer(str(SHARED_DATA / "gpt2" / "gpt2.tiktoken"))
    assert tok.encode("Hello world") == [15496, 995]
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert tok.decode(tok.encode(text)) == text


def test_char_tokenizer_round_trips():
    text = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text()[:5000]
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text))


def loader(dp_size=1, dp_rank=0, grad_accum=1, seed=0):
    return TokenLoader(SYNTHETIC, "train", 8, BatchLayout(8, grad_accum, dp_size, dp_rank), seed, vocab_size=100)


def test_loader_is_deterministic_for_a_seed_and_differs_across_seeds():
    a, b, c = loader().micro_batches(0), loader().micro_batches(0), loader(seed=1).micro_batches(0)
    assert torch.equal(a[0][0], b[0][0])
    assert not torch.equal(a[0][0], c[0][0])


def test_targets_are_inputs_shifted_by_one():
    x, y = loader().micro_batches(0)[0]
    assert torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("dp_size,grad_accum", [(2, 1), (4, 1), (2, 2)])
def test_dp_ranks_and_micro_steps_partition_the_single_process_batch(dp_size, grad_accum):
    whole = loader().micro_batches(0)[0][0]
    parts = [loader(dp_size, rank, grad_accum).micro_batches(0) for rank in range(dp_size)]
    rows = torch.cat([parts[rank][micro][0] for micro in range(grad_accum) for rank in range(dp_size)])
    assert torch.equal(rows, whole)


def test_a_steps_batch_depends_on_the_step_alone_so_a_resumed_loader_needs_no_state():
    used = loader()
    used.micro_batches(0), used.micro_batches(1)
    assert torch.equal(used.micro_batches(2)[0][0], loader().micro_batches(2)[0][0])
    assert not torch.equal(loader().micro_batches(2)[0][0], loader().micro_batches(3)[0][0])


def prepare_script(*arguments: str, cwd=ROOT) -> subprocess.CompletedProcess:
    """`python data/shakespeare_char/prepare.py arguments...` as a user runs it."""
    script = ROOT / "data" / "shakespeare_char" / "prepare.py"
    return subprocess.run([sys.executable, str(script), *arguments], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def test_prepare_script_writes_the_char_dataset_where_dir_says(tmp_path):
    out = tmp_path / "sc"
    result = prepare_script(f"dir={out}", cwd=tmp_path)  # from another cwd: the script finds the project itself
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "meta.json").read_text())["vocab_size"] == 65
    train, val = ((out / f"{split}.bin").stat().st_size // 2 for split in ("train", "val"))
    assert 8 * val < train < 10 * val  # the 90/10 split
    assert str(out) in result.stdout and f"{train:,} tokens" in result.stdout


@pytest.mark.parametrize("argument", ["vocab=65", "data.dir=/tmp/x", "max_bytes=lots", "force=maybe"])
def test_prepare_script_refuses_a_bad_argument_in_one_line(tmp_path, argument):
    result = prepare_script(f"dir={tmp_path / 'sc'}", argument)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "sc").exists()  # refused before anything was written


def test_a_forced_preparation_whose_source_is_gone_keeps_the_prepared_dataset(tmp_path):
    out = tmp_path / "sc"
    assert prepare_script(f"dir={out}").returncode == 0
    before = (out / "meta.json").read_text()
    result = prepare_script(f"dir={out}", f"source={tmp_path / 'missing.txt'}", "force=true")
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert (out / "meta.json").read_text() == before
