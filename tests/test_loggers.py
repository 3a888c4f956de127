"""Every logger option conf/ offers works after the README's setup: one tiny run each.

metrics.jsonl is written whatever the logger; the option adds a mirror of the same records
(TensorBoard event files, an offline wandb run) in the run dir, and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import NANO, ROOT, launch

from nanodist.config.domains import DOMAIN
from nanodist.config.schema import LoggerConfig
from test_metrics_json import read_strict_jsonl

TINY = [*NANO, "train=smoke", "train.max_steps=2", "checkpoint.enabled=false"]


def tensorboard_scalars(run_dir: Path) -> dict[str, list[int]]:
    """The steps each scalar tag holds in the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def check_none(run_dir: Path) -> None:
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "wandb").exists()


def check_tensorboard(run_dir: Path) -> None:
    scalars = tensorboard_scalars(run_dir)
    assert scalars["loss"] == [0, 1] and scalars["val_loss"] == [1], scalars
    assert not (run_dir / "wandb").exists()


def check_wandb(run_dir: Path) -> None:
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "one offline run with its records"
    assert not (run_dir / "tensorboard").exists()


# What each logger option leaves in the run dir besides metrics.jsonl.
CHECKS = {"none": check_none, "tensorboard": check_tensorboard, "wandb": check_wandb}


def test_every_logger_option_has_a_check_and_is_in_the_schemas_choices():
    options = {p.stem for p in (ROOT / "conf" / "logger").glob("*.yaml")}
    declared = LoggerConfig.__dataclass_fields__["name"].metadata[DOMAIN].options
    assert options == set(CHECKS) == set(declared)


@pytest.mark.parametrize("logger", sorted(CHECKS))
def test_a_tiny_run_with_each_logger(logger, tmp_path):
    launch(tmp_path, *TINY, f"logger={logger}", timeout=180)
    assert [r["step"] for r in read_strict_jsonl(tmp_path / "metrics.jsonl")] == [0, 1]
    CHECKS[logger](tmp_path)
