"""Tokenizers and the distributed loader."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import SHARED_DATA
from nanodist.data import BatchLayout, TokenLoader
from nanodist.tokenizer import CharTokenizer, GPT2Tokenizer

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
    a, b, c = loader().next(), loader().next(), loader(seed=1).next()
    assert torch.equal(a[0][0], b[0][0])
    assert not torch.equal(a[0][0], c[0][0])


def test_targets_are_inputs_shifted_by_one():
    x, y = loader().next()[0]
    assert torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("dp_size,grad_accum", [(2, 1), (4, 1), (2, 2)])
def test_dp_ranks_and_micro_steps_partition_the_single_process_batch(dp_size, grad_accum):
    whole = loader().next()[0][0]
    parts = [loader(dp_size, rank, grad_accum).next() for rank in range(dp_size)]
    rows = torch.cat([parts[rank][micro][0] for micro in range(grad_accum) for rank in range(dp_size)])
    assert torch.equal(rows, whole)


def test_loader_position_survives_save_and_restore():
    first = loader()
    first.next(), first.next()
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(first.next()[0][0], resumed.next()[0][0])
