"""A rank that learns of another rank's failure ends at once, whatever its main thread is waiting on;
and the fault-injection spec the tests use is checked before anything starts.

The whole-job cases (a rank of 2 raising under launch.py, torchrun and SLURM) are in test_launch.py
and test_slurm.py; here one process stands for a rank whose peer's failure no socket reports (an
NCCL collective keeps waiting when a peer leaves): only the store's failure key can end it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch.distributed as dist
from conftest import ROOT, subprocess_env

from nanodist.config import ConfigError
from nanodist.train.faults import Fault, parse_fault

# A rank 0 whose main thread waits for ever, as in a collective that will never complete.
WAITING_RANK = """
import sys, time
from nanodist.train.failure import FailureWatch
FailureWatch(0, sys.argv[1], "ddp", poll_s=0.2)
print("watching", flush=True)
time.sleep(120)
"""


def mark(stores: list[dist.TCPStore]) -> str:
    """Rank 1 failed first and said so."""
    stores[0].compare_set("nanodist/failed/0", "", "rank 1 failed: RuntimeError: boom")
    return "rank 1 failed: RuntimeError: boom"


def stop(stores: list[dist.TCPStore]) -> str:
    """The store's host (rank 0 of a SLURM or local job; here the test) is gone."""
    stores.clear()
    return "rank 0 is gone"


@pytest.mark.multiprocess
@pytest.mark.parametrize("event", [mark, stop], ids=["marked", "store-gone"])
def test_a_waiting_rank_ends_within_seconds_of_a_failure_elsewhere(event, tmp_path):
    stores = [dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)]
    env = {**subprocess_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(stores[0].port)}
    rank = subprocess.Popen([sys.executable, "-c", WAITING_RANK, str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert rank.stdout.readline().strip() == "watching"
    expected = event(stores)
    start = time.time()
    _, stderr = rank.communicate(timeout=30)
    assert rank.returncode == 1 and time.time() - start < 5
    line = stderr.strip().splitlines()[-1]  # the logger, unconfigured here, also prints it
    assert line.startswith(f"error: {expected}") and line.endswith("rank 0 stops too."), line


@pytest.mark.parametrize("spec,fault", [
    (None, None),
    ("1:3:step:raise", Fault(1, 3, "step", "raise")),
    ("0:4:save:kill", Fault(0, 4, "save", "kill")),
    ("1:2:eval:kill", Fault(1, 2, "eval", "kill")),
    ("1:4:write:enospc", Fault(1, 4, "write", "enospc")),
])
def test_a_fault_spec_is_read(spec, fault):
    assert parse_fault(spec) == fault


@pytest.mark.parametrize("spec", ["1:3:step", "one:3:step:raise", "1:-3:step:raise", "1:3:backward:raise", "1:3:step:explode"])
def test_a_malformed_fault_spec_is_refused_in_one_sentence(spec):
    with pytest.raises(ConfigError) as err:
        parse_fault(spec)
    message = str(err.value)
    assert message.startswith(f"train.fault={spec} is not RANK:STEP:PHASE:KIND") and "\n" not in message
