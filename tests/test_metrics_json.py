"""metrics.jsonl and summary.json are strict JSON: a NaN or infinity is written as null, with the
reason under "non_finite", never as the NaN / Infinity literals Python's json writes and JSON lacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import NANO, launch

from nanodist.train.metrics import finite_only, to_json

NAN, INF = float("nan"), float("inf")


def strict_loads(text: str):
    """json.loads that fails on NaN, Infinity and -Infinity, as a JSON parser in any other language would."""
    def refuse(literal: str):
        raise ValueError(f"{literal} is not JSON")

    return json.loads(text, parse_constant=refuse)


def read_strict_jsonl(path: Path) -> list[dict]:
    return [strict_loads(line) for line in path.read_text().splitlines()]


# (record, what finite_only makes of it)
CASES = [
    ({"step": 3, "loss": 2.5}, {"step": 3, "loss": 2.5}),
    ({"step": 3, "loss": NAN}, {"step": 3, "loss": None, "non_finite": {"loss": "nan"}}),
    ({"grad_norm": INF, "mfu": None}, {"grad_norm": None, "mfu": None, "non_finite": {"grad_norm": "inf"}}),
    ({"mesh": {"tp": 2}, "memory": [1.0, -INF]}, {"mesh": {"tp": 2}, "memory": [1.0, None], "non_finite": {"memory.1": "-inf"}}),
]


@pytest.mark.parametrize("record,expected", CASES, ids=["finite", "nan", "inf", "nested"])
def test_non_finite_values_become_null_with_the_reason(record, expected):
    assert finite_only(record) == expected
    assert strict_loads(to_json(record)) == expected


def test_a_diverging_run_writes_strict_json(tmp_path):
    """lr=1e20 makes every loss after the first update NaN; with nan_policy=skip the run goes on, logging them."""
    launch(tmp_path, *NANO, "train=smoke", "train.max_steps=2", "checkpoint.enabled=false", "optim.lr=1e20",
           "optim.warmup_steps=0", "train.nan_policy=skip", timeout=180)
    records = read_strict_jsonl(tmp_path / "metrics.jsonl")
    summary = strict_loads((tmp_path / "summary.json").read_text())
    assert records[-1]["loss"] is None and records[-1]["non_finite"]["loss"] == "nan"
    assert summary["final_loss"] is None and summary["non_finite"]["final_loss"] == "nan"
    assert summary["skipped_steps"] == 1
