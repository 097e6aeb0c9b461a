import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from siamssl.errors import TrainingDiverged
from siamssl.methods import SimSiam, register_method
from siamssl.train.__main__ import main
from siamssl.checkpoint import load_checkpoint
from siamssl.config import config_from_dict
from siamssl.eval.monitors import MONITORS, Monitor
from siamssl.train.trainer import Interrupted, Trainer
from tests.conftest import tiny_raw

REPO = Path(__file__).resolve().parents[2]


def fit(raw):
    return Trainer(config_from_dict(raw)).fit()


def test_run_writes_config_metrics_summary_and_checkpoint(run_dir):
    summary = fit(tiny_raw(run_dir))
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    assert summary["steps"] == 8 and summary["epochs"] == 2
    assert 0.0 <= summary["knn_top1"] <= 1.0
    assert summary["z_std"] > 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8]
    assert [r["epoch"] for r in records if "knn_top1" in r] == [1, 2]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["global_step"] == 8


def test_max_steps_overrides_epochs_and_sets_schedule_length(run_dir):
    summary = fit(tiny_raw(run_dir, "trainer.epochs=50", "trainer.max_steps=3"))
    assert summary["steps"] == 3 and summary["epochs"] == 1


class _InterruptAt(Monitor):
    """Sends SIGINT to this process after a given number of steps (the real signal path)."""

    stop_after = 3

    def __init__(self, options, context):
        super().__init__(options, context)
        self.steps = 0

    def on_step(self, batch, outputs):
        self.steps += 1
        if self.steps == self.stop_after:
            os.kill(os.getpid(), signal.SIGINT)


if "interrupt_at_step_3" not in MONITORS:
    MONITORS.register("interrupt_at_step_3")(_InterruptAt)


def _final_state(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


@pytest.mark.parametrize("checkpoint_every_steps", [None, 2])
def test_interrupt_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, checkpoint_every_steps):
    extra = [f"trainer.checkpoint_every_steps={checkpoint_every_steps or 'null'}"]
    reference = tmp_path / "reference"
    fit(tiny_raw(reference, *extra))

    interrupted = tmp_path / "interrupted"
    raw = tiny_raw(interrupted, *extra, "eval.monitors=[knn, embedding_std, interrupt_at_step_3]")
    with pytest.raises(Interrupted, match="interrupted at step 3/8"):
        fit(raw)
    state = _final_state(interrupted)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 3, 3)  # mid-epoch: 4 steps/epoch

    raw["trainer"]["resume"] = True
    raw["eval"]["monitors"] = ["knn", "embedding_std"]
    fit(raw)

    expected, actual = _final_state(reference), _final_state(interrupted)
    assert actual["global_step"] == 8
    for key, value in expected["model"].items():
        assert torch.equal(value, actual["model"][key]), key
    assert expected["last_metrics"] == actual["last_metrics"]
    losses = lambda d: [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]  # noqa: E731
    assert losses(reference) == losses(interrupted)


@register_method("nan_after_4_steps")
class _NanAfter4Steps(SimSiam):
    @dataclass
    class Config(SimSiam.Config):
        pass

    def forward(self, batch, progress):
        out = super().forward(batch, progress)
        if progress.step >= 4:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(run_dir):
    raw = tiny_raw(run_dir, "method.name=nan_after_4_steps", "trainer.checkpoint_every_steps=2", "trainer.log_every_steps=1", "trainer.epochs=3")
    with pytest.raises(TrainingDiverged, match="NaN or infinite at step 5") as info:
        fit(raw)
    assert "checkpoints/last.pt" in str(info.value)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_existing_run_is_never_overwritten(run_dir, capsys):
    run_dir.mkdir(parents=True)
    (run_dir / "precious.txt").write_text("keep me")
    code = main(["--config", str(REPO / "configs" / "quickstart.yaml"), f"output_dir={run_dir}", "trainer.max_steps=1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: output_dir") and "trainer.resume=true" in err and "\n" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["precious.txt"]


def test_missing_data_path_fails_cleanly_and_writes_nothing(run_dir, capsys):
    code = main(["--config", str(REPO / "configs" / "quickstart.yaml"), "data.dataset=imagefolder", f"data.root={run_dir}/nope", f"output_dir={run_dir}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: data.root '{run_dir}/nope' does not exist"
    assert not run_dir.exists()


def test_cli_misspelt_key_exits_nonzero_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "siamssl.train", "--config", "configs/quickstart.yaml", "trainer.max_step=2", f"output_dir={tmp_path}/run"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown config key 'trainer.max_step'; did you mean 'trainer.max_steps'?"
    assert not (tmp_path / "run").exists()
