"""The Trainer's seams: a callback sees every step, evaluation and save, in order, on one process."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from conftest import NANO, ROOT

from nanodist.config import register_configs
from nanodist.parallel.process_group import RankInfo
from nanodist.train.callbacks import Callback
from nanodist.train.trainer import Trainer

STEPS = 6
OVERRIDES = [*NANO, f"train.max_steps={STEPS}", "train.batch_size=4", "train.log_interval=2", "train.eval_interval=3",
             "train.eval_iters=1", "checkpoint.interval=4"]


class Recorder(Callback):
    """Writes down every event it is called with."""

    def __init__(self):
        self.events: list[tuple] = []

    def on_fit_start(self, trainer):
        self.events.append(("fit_start", trainer.state.step))

    def on_step_start(self, trainer, step):
        self.events.append(("step_start", step))

    def on_step_end(self, trainer, record):
        self.events.append(("step_end", record["step"], "loss" in record, "val_loss" in record))

    def on_eval(self, trainer, step, val_loss):
        self.events.append(("eval", step))

    def on_save(self, trainer, step, path):
        self.events.append(("save", step, path.name))

    def on_fit_end(self, trainer, summary):
        self.events.append(("fit_end", summary["steps"]))


@pytest.fixture
def events(tmp_path) -> list[tuple]:
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*OVERRIDES, f"output_dir={tmp_path}"])
    recorder = Recorder()
    Trainer(cfg, RankInfo(0, 0, 1), torch.device("cpu"), [recorder]).fit()
    return recorder.events


def test_a_callback_sees_each_step_start_and_end_in_order(events):
    steps = [e for e in events if e[0] in ("step_start", "step_end")]
    assert [(e[0], e[1]) for e in steps] == [(kind, s) for s in range(STEPS) for kind in ("step_start", "step_end")]


def test_logged_steps_carry_the_metrics_record_and_eval_steps_the_val_loss(events):
    ends = {e[1]: e[2:] for e in events if e[0] == "step_end"}
    # logged: the first step, every 2nd, eval steps (3rd, 6th) and the last; evaluated: every 3rd
    assert ends == {0: (True, False), 1: (True, False), 2: (True, True), 3: (True, False), 4: (False, False),
                    5: (True, True)}
    assert [e for e in events if e[0] == "eval"] == [("eval", 2), ("eval", 5)]


def test_saves_are_announced_after_their_step_and_the_fit_ends_last(events):
    assert [e for e in events if e[0] == "save"] == [("save", 4, "step_0000004"), ("save", 6, "step_0000006")]
    assert events[0] == ("fit_start", 0) and events[-1] == ("fit_end", STEPS)
    assert events.index(("save", 4, "step_0000004")) == events.index(("step_end", 3, True, False)) + 1
