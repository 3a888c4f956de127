"""Checkpoints in one process: exact resume, async saves, damaged checkpoints, other shapes, NaN losses.

The first tests drive `Checkpointer` directly on a tiny GPT (no subprocess, a second or two each);
the last ones run launch.py as a user would, for what only a whole run shows (exit codes, messages).
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import NANO, launch, read_summary

from nanodist.config import OptimConfig
from nanodist.model import GPT, GPTConfig
from nanodist.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    checkpoint_dirs,
    load_model,
    problem,
)
from nanodist.train.metrics import drop_steps_from
from nanodist.train.optim import build_optimizer
from nanodist.train.state import TrainState

# Dropout on, so that resuming exactly also needs the RNG state back.
CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=64, dropout=0.1)
LAYOUT = {"parallel": "single", "mesh": {"pp": 1, "dp_replicate": 1, "dp_shard": 1, "tp": 1}}


def info(config: GPTConfig = CONFIG) -> dict:
    shape = {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "tie_embeddings")}
    return {"model": shape, "layout": LAYOUT, "tokenizer": {"tokenizer": "none"}}


def trainer(root, config: GPTConfig = CONFIG, device: str = "cpu", **options) -> tuple[GPT, torch.optim.Optimizer, Checkpointer]:
    """A fresh model, optimizer and checkpointer; the RNG is scrambled so only a resume can restore it."""
    torch.manual_seed(len(str(root)) + 12345)
    if device == "cuda":
        torch.cuda.manual_seed(len(str(root)) + 12345)
    model = GPT(config)
    model.init_weights(0)
    model.to(device)
    optimizer = build_optimizer(model.parameters(), OptimConfig(lr=3e-3))
    return model, optimizer, Checkpointer(root, [model], optimizer, info(config), torch.device(device), **options)


def train_steps(model: GPT, optimizer: torch.optim.Optimizer, steps: range) -> list[float]:
    """Plain steps on batches that depend only on the step index, like the real loader."""
    losses = []
    for step in steps:
        tokens = torch.randint(0, model.config.vocab_size, (4, 17), generator=torch.Generator().manual_seed(step))
        tokens = tokens.to(model.lm_head.weight.device)
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.fixture
def warnings_logged():
    """Warnings of the "nanodist" logger (a handler of its own: train's setup may stop propagation)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("nanodist")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_resume_continues_bitwise(tmp_path, async_save, device):
    model, optimizer, ckpt = trainer(tmp_path, device=device, async_save=async_save)
    train_steps(model, optimizer, range(0, 3))
    ckpt.save(3, {"step": 3})
    # Async: training changes the weights while the checkpoint is written; the copy must not see it.
    uninterrupted = train_steps(model, optimizer, range(3, 7))
    ckpt.wait()
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step_0000003"]

    model, optimizer, ckpt = trainer(tmp_path, device=device)
    assert ckpt.resume()["step"] == 3
    assert train_steps(model, optimizer, range(3, 7)) == uninterrupted


def test_keeps_last_k_and_clears_unfinished(tmp_path):
    model, optimizer, ckpt = trainer(tmp_path, interval=2, keep_last=2)
    for step in range(1, 8):
        train_steps(model, optimizer, range(step - 1, step))
        ckpt.maybe_save(step, {"step": step})
    ckpt.maybe_save(7, {"step": 7}, final=True)
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step_0000007", "step_0000006"]
    (tmp_path / "step_0000008.tmp").mkdir()  # a save cut short by a crash
    trainer(tmp_path)
    assert not (tmp_path / "step_0000008.tmp").exists()


def damage_truncate(path):
    data = next(path.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def damage_overwrite(path):
    """Same size, garbage content: only reading it can tell."""
    metadata = path / ".metadata"
    metadata.write_bytes(b"\0" * metadata.stat().st_size)


def damage_flip_byte(path):
    """One byte flipped in the middle of a .distcp file's tensor bytes, size kept: DCP alone loads it silently.

    Each item is a small zip record there; on this tiny model the file's very middle may hit a
    record's header (which torch's reader does notice), so the byte is the middle of the largest
    record, a weight matrix's data, as the middle of a real model's file almost always is.
    """
    data = next(path.glob("*.distcp"))
    content = bytearray(data.read_bytes())
    starts = [m.start() for m in re.finditer(b"PK\x03\x04", content)] + [len(content)]
    start, end = max(zip(starts, starts[1:]), key=lambda pair: pair[1] - pair[0])
    content[(start + end) // 2] ^= 0xFF
    data.write_bytes(bytes(content))


@pytest.mark.parametrize("damage", [damage_truncate, damage_overwrite, damage_flip_byte],
                         ids=["truncated", "corrupted-metadata", "flipped-byte"])
def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, damage, warnings_logged):
    model, optimizer, ckpt = trainer(tmp_path)
    train_steps(model, optimizer, range(0, 2))
    ckpt.save(2, {"step": 2})
    uninterrupted = train_steps(model, optimizer, range(2, 4))
    ckpt.save(4, {"step": 4})
    damage(tmp_path / "step_0000004")

    model, optimizer, ckpt = trainer(tmp_path)
    assert ckpt.resume()["step"] == 2
    assert train_steps(model, optimizer, range(2, 4)) == uninterrupted
    [warning] = [r.getMessage() for r in warnings_logged]
    assert "step_0000004 is unusable" in warning and "falling back" in warning and "\n" not in warning


def test_no_usable_checkpoint_is_an_error(tmp_path):
    model, optimizer, ckpt = trainer(tmp_path)
    ckpt.save(1, {"step": 1})
    damage_truncate(tmp_path / "step_0000001")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        trainer(tmp_path)[2].resume()


def test_other_model_shape_is_refused_in_one_sentence(tmp_path):
    _, _, ckpt = trainer(tmp_path)
    ckpt.save(1, {"step": 1})
    wider = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    with pytest.raises(CheckpointError) as err:
        trainer(tmp_path / "other", wider)[2].resume(resume_from=str(tmp_path))
    message = str(err.value)
    assert "n_embd=16" in message and "n_embd=32" in message and message.count(". ") == 0 and "\n" not in message


def test_load_model_gives_the_saved_weights(tmp_path):
    model, optimizer, ckpt = trainer(tmp_path)
    train_steps(model, optimizer, range(0, 2))
    ckpt.save(2, {"step": 2})
    loaded, meta = load_model(tmp_path)
    assert meta["step"] == 2
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_resumed_run_forgets_the_steps_it_will_log_again(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(6)) + '{"step": 6, "lo')
    drop_steps_from(path, 4)  # resumed from the step-4 checkpoint; the killed attempt got to step 6
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2, 3]


# ---- whole runs through launch.py ----

RUN = [*NANO, "train.max_steps=6", "train.batch_size=4", "train.log_interval=1", "train.eval_interval=0",
       "checkpoint.interval=1"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # A real overflow: after one step at lr 1e20 the weights are ~1e20 and attention scores overflow.
    result = launch(tmp_path, *RUN, "optim.lr=1e20", "optim.warmup_steps=0", check=False)
    assert result.returncode == 1
    [line] = [line for line in result.stdout.splitlines() if "the loss is nan" in line]
    assert line.startswith("step 2:") and "stopped" in line and "step_0000001" in line
    summary = read_summary(tmp_path)
    assert summary["status"] == "diverged" and summary["steps"] == 1
    assert summary["tokens_seen"] == 1 * 4 * 32  # the one step done (batch 4 x nano's 32 tokens), not max_steps
    [good] = checkpoint_dirs(tmp_path)
    assert good.name == "step_0000001" and problem(good) is None
    model, _ = load_model(good)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_loss_skips_the_update_when_asked(tmp_path):
    launch(tmp_path, *RUN, "optim.lr=1e20", "optim.warmup_steps=0", "train.nan_policy=skip")
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed" and summary["skipped_steps"] == 5
    assert summary["final_loss"] is None and summary["non_finite"]["final_loss"] == "nan"  # strict JSON: no NaN literal


def test_a_resumed_run_reports_the_totals_of_the_whole_run(tmp_path):
    """Skipped steps, tokens and steps come back with the checkpoint, so the resumed summary covers all."""
    overrides = [*RUN, "optim.lr=1e20", "optim.warmup_steps=0", "train.nan_policy=skip", "checkpoint.keep_last=0"]
    launch(tmp_path / "whole", *overrides)
    launch(tmp_path / "resumed", *overrides, f"checkpoint.resume_from={tmp_path / 'whole' / 'checkpoints' / 'step_0000003'}")
    whole, resumed = read_summary(tmp_path / "whole"), read_summary(tmp_path / "resumed")
    assert whole["skipped_steps"] == 5
    for key in ("skipped_steps", "tokens_seen", "steps"):
        assert resumed[key] == whole[key], key


def test_the_trainer_state_travels_in_the_checkpoint(tmp_path):
    model, optimizer, ckpt = trainer(tmp_path)
    train_steps(model, optimizer, range(3))
    saved = TrainState(step=3, loss=2.5, val_loss=2.75, best_val_loss=2.625, skipped_steps=1, tokens_seen=384,
                       timed_steps=2, timed_seconds=0.5, wall_time_s=7.0)
    ckpt.save(3, saved.state_dict())
    restored = TrainState()
    restored.load_state_dict(trainer(tmp_path)[2].resume()["trainer"])
    assert restored == saved


def test_resume_from_another_model_is_refused_before_training(tmp_path):
    launch(tmp_path / "a", *RUN, "train.max_steps=1")
    result = launch(tmp_path / "b", *RUN, "model.n_layer=2", f"checkpoint.resume_from={tmp_path / 'a'}", check=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: checkpoint ") and "n_layer=4" in line and "n_layer=2" in line
    assert not (tmp_path / "b" / "metrics.jsonl").exists()
