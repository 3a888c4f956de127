"""Export to Hugging Face GPT-2: transformers' GPT2LMHeadModel gives our logits; sampling works from both forms."""

from __future__ import annotations

import string

import pytest
import torch

from nanodist.config import OptimConfig
from nanodist.model import GPT, GPTConfig
from nanodist.tools.export import main as export_main
from nanodist.tools.sample import main as sample_main
from nanodist.train.checkpoint import SHAPE_FIELDS, Checkpointer, load_model
from nanodist.train.optim import build_optimizer

transformers = pytest.importorskip("transformers")

CHARS = list(" " + string.ascii_letters + string.digits + ".,")  # 65; the model pads its vocabulary to 72


def save_checkpoint(root, config: GPTConfig) -> GPT:
    """A checkpoint of a model whose every weight (biases included) is random, as after training."""
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    optimizer = build_optimizer(model.parameters(), OptimConfig())
    shape = {k: getattr(config, k) for k in SHAPE_FIELDS}
    tokenizer = {"tokenizer": "char", "chars": CHARS, "vocab_size": len(CHARS), "tokenizer_file": None}
    info = {"model": shape, "layout": {"parallel": "single"}, "tokenizer": tokenizer}
    Checkpointer(root, [model], optimizer, info, torch.device("cpu")).save(1, {"step": 1})
    return model


@pytest.mark.parametrize(
    "config",
    [
        GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=72),
        GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=72, bias=False, tie_embeddings=False),
        GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=72, true_vocab_size=65),
    ],
    ids=["tied", "untied-no-bias", "padded-65-to-72"],
)
def test_export_gives_our_logits_in_transformers(tmp_path, config):
    model = save_checkpoint(tmp_path / "ckpt", config)
    export_main([f"checkpoint={tmp_path / 'ckpt'}", f"out={tmp_path / 'hf'}"])
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    vocab = config.true_vocab_size or config.vocab_size
    assert hf.config.vocab_size == vocab  # the padding stays behind
    tokens = torch.randint(0, vocab, (2, config.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model.eval()(tokens)[..., :vocab], hf(tokens).logits
    assert ours.abs().max() > 1  # the comparison below is not between near-zero logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_sample_from_checkpoint_and_export(tmp_path, capsys):
    config = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=72)
    save_checkpoint(tmp_path / "ckpt", config)
    export_main([f"checkpoint={tmp_path / 'ckpt'}", f"out={tmp_path / 'hf'}"])
    args = ["prompt=Hello", "max_new_tokens=20", "seed=3"]
    from_checkpoint = sample_main([f"checkpoint={tmp_path / 'ckpt'}", *args])
    from_export = sample_main([f"checkpoint={tmp_path / 'hf'}", *args])
    assert from_checkpoint.startswith("Hello") and len(from_checkpoint) == 25
    assert from_export == from_checkpoint
    loaded, _ = load_model(tmp_path / "ckpt")
    assert loaded.config == config
