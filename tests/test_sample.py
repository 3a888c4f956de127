"""The end-of-run text sample works under every kind of layout, real characters in, real text out.

Sequence parallelism splits every sequence over tp, so growing the context one token at a time used
to break it (a DTensor redistribute of an uneven split); pipelines used to skip the sample silently.
Each row trains two steps on shakespeare_char through launch.py and must end "completed" with a
sample of the asked length in the dataset's alphabet.
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, launch, read_summary

TOKENS = 24
COMMON = ["model=nano", "data=shakespeare_char", "model.pad_vocab_to_multiple=8", "train.max_steps=2",
          "train.batch_size=8", "train.eval_interval=0", f"train.sample_tokens={TOKENS}", "checkpoint.enabled=false"]

LAYOUTS = [
    ("tp_sp(2)", ["parallel=tp_sp", "mesh.tp=2"]),
    ("fsdp_tp(2x2)", ["parallel=fsdp_tp", "mesh=2x2"]),
    ("pp_1f1b(2)", ["parallel=pp_1f1b", "mesh.pp=2"]),
    ("pp_zbv(2, V)", ["parallel=pp_zbv", "mesh.pp=2"]),
    ("pp_tp(2x2)", ["parallel=pp_tp", "mesh=2x2"]),
]


@pytest.mark.multiprocess
@pytest.mark.parametrize("overrides", [row[1] for row in LAYOUTS], ids=[row[0] for row in LAYOUTS])
def test_run_ends_with_a_text_sample(overrides, tmp_path):
    launch(tmp_path, *COMMON, *overrides, timeout=600)
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed"
    alphabet = set(json.loads((ROOT / "data" / "shakespeare_char" / "meta.json").read_text())["chars"])
    prompt = "\n"  # train.sample_prompt's default
    assert len(summary["sample"]) == len(prompt) + TOKENS and set(summary["sample"]) <= alphabet
