"""The speed and memory levers: activation checkpointing, torch.compile, the SDPA backend, the profiler.

Each lever must leave training unchanged (the same losses as a plain eager run of the same
config) and do what it is for: checkpointing lowers the measured activation peak, compile really
compiles, the profiler writes a trace per rank.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import NANO, ROOT, launch, read_metrics

from nanodist.config import ConfigError, register_configs, validate
from nanodist.model import GPT, GPTConfig
from nanodist.parallel.ac import apply_ac
from nanodist.parallel.compile import apply_compile
from nanodist.train.meters import SavedActivations

COMMON = [*NANO, "train=smoke", "train.max_steps=3", "train.eval_interval=0", "checkpoint.enabled=false",
          "optim.lr=3e-3", "optim.warmup_steps=1"]


@pytest.fixture(scope="module")
def eager(tmp_path_factory) -> list[dict]:
    run_dir = tmp_path_factory.mktemp("eager")
    launch(run_dir, *COMMON)
    return read_metrics(run_dir)


def losses(curve: list[dict]) -> list[float]:
    return [r["loss"] for r in curve]


def test_activation_checkpointing_same_losses_lower_peak(eager, tmp_path):
    peaks = {"none": eager[-1]["activation_bytes"]}
    for mode in ("selective", "full"):
        launch(tmp_path / mode, *COMMON, f"train.activation_checkpointing={mode}", "train.ac_every=2")
        curve = read_metrics(tmp_path / mode)
        assert losses(curve) == pytest.approx(losses(eager), rel=1e-6), mode
        peaks[mode] = curve[-1]["activation_bytes"]
    print(f"measured activation peak, bytes: {peaks}")
    assert peaks["full"] < peaks["selective"] < peaks["none"]


def test_compile_with_checkpointing_matches_eager(eager, tmp_path):
    # torch's own log says the blocks and the loss went through inductor (not a silent fallback to eager).
    result = launch(tmp_path, *COMMON, "train.compile=true", "train.activation_checkpointing=full",
                    env={"TORCH_LOGS": "dynamo"}, timeout=600)
    log = result.stdout + result.stderr
    assert "done compiler function inductor" in log
    assert "start tracing forward" in log and "start tracing cross_entropy" in log
    curve = read_metrics(tmp_path)
    assert losses(curve) == pytest.approx(losses(eager), rel=1e-4)
    assert 0 < curve[-1]["activation_bytes"] < eager[-1]["activation_bytes"]


def test_levers_keep_parameter_names():
    """Weight init, checkpoints and export key on parameter names: compile and checkpointing leave them."""
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32)
    with torch.device("meta"):
        plain, levered = GPT(config), GPT(config)
    apply_ac(apply_compile(levered), "full", every=1)
    assert [n for n, _ in levered.named_parameters()] == [n for n, _ in plain.named_parameters()]


def test_activation_meter_counts_views_once_and_releases_in_backward():
    x = torch.randn(4, 8, requires_grad=True)
    with SavedActivations() as meter:
        y = x.exp()  # saves its output: 128 bytes
        z = (y[:2] * y[2:]).sum()  # saves two views of y: no new storage
    assert meter.peak == meter.current == 4 * 8 * 4
    z.backward()
    assert meter.current == 0


def test_sdpa_backend_and_profiler(eager, tmp_path):
    launch(tmp_path, *COMMON, "train.sdpa_backend=math", "train.profile_steps=[1]")
    assert losses(read_metrics(tmp_path)) == pytest.approx(losses(eager), rel=1e-5)
    traces = list((tmp_path / "profile").rglob("*.json"))
    assert [t.relative_to(tmp_path).as_posix() for t in traces] == ["profile/rank0/step1.json"]
    assert json.loads(traces[0].read_text())["traceEvents"]


@pytest.mark.parametrize(
    "override,words",
    [
        ("train.activation_checkpointing=partial", "is not a mode"),
        ("train.ac_every=0", "must be at least 1"),
        ("train.sdpa_backend=fast", "is not a backend"),
    ],
)
def test_bad_lever_is_refused(override, words):
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*NANO, override])
    with pytest.raises(ConfigError, match=words):
        validate(cfg)
