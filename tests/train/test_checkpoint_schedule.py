"""When checkpoints are written: every ``trainer.checkpoint_every_minutes`` of wall time (at log
steps and epoch ends), every ``checkpoint_every_epochs`` epochs when set, at the end; and a run that
dies after a time-based mid-epoch checkpoint resumes exactly (same weights, same logged losses as
the uninterrupted run)."""

from __future__ import annotations

import json

import pytest
import torch

import siamssl.train.trainer as trainer_module
from siamssl.checkpoint import load_checkpoint
from siamssl.config import config_from_dict
from siamssl.eval.monitors import MONITORS, Monitor
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw


def _fit(raw):
    return Trainer(config_from_dict(raw)).fit()


@pytest.fixture
def saved_steps(monkeypatch):
    """The global step of every checkpoint written."""
    steps: list[int] = []
    original = trainer_module.save_atomic

    def recording(state, path):  # type: ignore[no-untyped-def]
        steps.append(int(state["global_step"]))
        original(state, path)

    monkeypatch.setattr(trainer_module, "save_atomic", recording)
    return steps


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ((), [8]),  # default: 10 minutes; two 1-second epochs: only the end of training
        (("trainer.checkpoint_every_epochs=1",), [4, 8]),
        (("trainer.keep_epoch_checkpoints=true",), [4, 8]),  # kept epoch files imply every epoch
        (("trainer.checkpoint_every_minutes=1e-9",), [2, 4, 6, 8]),  # due at every log step (every 2 steps)
        (("trainer.checkpoint_every_minutes=1e-9", "trainer.log_every_steps=3"), [3, 4, 6, 8]),  # log steps and the epoch end
        (("trainer.checkpoint_every_minutes=null", "trainer.checkpoint_every_steps=3"), [3, 6, 8]),
    ],
)
def test_checkpoints_are_written_when_due(tmp_path, saved_steps, overrides, expected):
    _fit(tiny_raw(tmp_path / "run", *overrides))
    assert saved_steps == expected


def test_kept_epoch_checkpoints(tmp_path):
    _fit(tiny_raw(tmp_path / "run", "trainer.keep_epoch_checkpoints=true"))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0002.pt"]


class _CrashAt6(Monitor):
    """Kills the run (not a clean interruption: no checkpoint) inside step 6."""

    def __init__(self, options, context):  # type: ignore[no-untyped-def]
        super().__init__(options, context)
        self.steps = 0

    def on_step(self, batch, outputs):  # type: ignore[no-untyped-def]
        self.steps += 1
        if self.steps == 6:
            raise RuntimeError("simulated crash")


if "crash_at_step_6" not in MONITORS:
    MONITORS.register("crash_at_step_6")(_CrashAt6)


def test_resume_after_a_time_based_mid_epoch_checkpoint_matches_the_uninterrupted_run(tmp_path):
    common = ("trainer.checkpoint_every_minutes=1e-9", "trainer.log_every_steps=1", "eval.monitors=[knn, embedding_std, online_probe]")
    reference = tmp_path / "reference"
    _fit(tiny_raw(reference, *common))

    crashed = tmp_path / "crashed"
    raw = tiny_raw(crashed, *common)
    raw["eval"]["monitors"] = ["knn", "embedding_std", "online_probe", "crash_at_step_6"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(raw)
    state = load_checkpoint(crashed / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 5)  # written by time, mid-epoch

    raw["eval"]["monitors"] = ["knn", "embedding_std", "online_probe"]
    raw["trainer"]["resume"] = True
    _fit(raw)
    expected, actual = load_checkpoint(reference / "checkpoints" / "last.pt"), load_checkpoint(crashed / "checkpoints" / "last.pt")
    assert actual["global_step"] == 8
    for key, value in expected["model"].items():
        assert torch.equal(value, actual["model"][key]), key
    for key, value in expected["monitors"]["online_probe"]["classifier"].items():
        assert torch.equal(value, actual["monitors"]["online_probe"]["classifier"][key]), key
    assert expected["last_metrics"] == actual["last_metrics"]
    losses = lambda d: [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]  # noqa: E731
    assert losses(reference) == losses(crashed)
