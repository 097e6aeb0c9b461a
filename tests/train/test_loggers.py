"""trainer.loggers: TensorBoard and W&B receive the same numbers as metrics.jsonl (read back from
their own files), the report's figures reach TensorBoard, a resumed run's TensorBoard log has no
stale steps, and W&B logs offline without an API key or network."""

from __future__ import annotations

import importlib.util
import json
import struct
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from siamssl.config import config_from_dict
from siamssl.errors import ConfigError
from siamssl.eval.report import ReportOptions, write_report
from siamssl.loggers import TensorBoardLogger
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw


def _records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """metrics.jsonl's training windows and evaluations."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r], [r for r in records if "knn_top1" in r]


def _train(run_dir: Path, *overrides: str) -> dict:
    return Trainer(config_from_dict(tiny_raw(run_dir, *overrides))).fit()


def _events(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_tensorboard_has_every_logged_metric_and_the_report_figures(run_dir):
    _train(run_dir, "trainer.loggers=[jsonl, tensorboard]")
    train, evaluations = _records(run_dir)
    events = _events(run_dir / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    assert {f"train/{k}" for k in train[0] if k not in ("step", "epoch")} <= scalars
    for key in ("loss", "lr", "images_per_s"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in train]
    knn_curve = [(e.step, e.value) for e in events.Scalars("eval/knn_top1")]
    assert len(knn_curve) == 2 and knn_curve == [(r["step"], pytest.approx(r["knn_top1"], rel=1e-6)) for r in evaluations]
    assert "eval/z_std" in scalars

    write_report(run_dir, ReportOptions(checkpoint=False), quiet=True)
    images = _events(run_dir / "tensorboard").Images("report/training")
    assert len(images) == 1 and images[0].step == train[-1]["step"]
    from PIL import Image

    with Image.open(run_dir / "report" / "training.png") as png:
        assert (images[0].width, images[0].height) == png.size


def test_jsonl_only_by_default_and_the_report_leaves_tensorboard_alone(run_dir):
    _train(run_dir, "trainer.epochs=1")
    assert (run_dir / "metrics.jsonl").is_file() and not (run_dir / "tensorboard").exists()
    write_report(run_dir, ReportOptions(checkpoint=False), quiet=True)
    assert not (run_dir / "tensorboard").exists()


def test_tensorboard_without_jsonl(run_dir):
    _train(run_dir, "trainer.loggers=[tensorboard]", "trainer.epochs=1")
    assert not (run_dir / "metrics.jsonl").exists()
    assert [e.step for e in _events(run_dir / "tensorboard").Scalars("train/loss")] == [2, 4]


def test_a_resumed_tensorboard_log_drops_the_steps_after_the_checkpoint(tmp_path):
    first = TensorBoardLogger(tmp_path)
    for step in (1, 2, 3, 4):  # steps 3 and 4 were logged after the checkpoint at step 2, then lost
        first.log_metrics({"step": step, "epoch": 0, "loss": 10.0 + step}, "train")
    first.close()
    resumed = TensorBoardLogger(tmp_path, resumed_at=2)
    for step in (3, 4):
        resumed.log_metrics({"step": step, "epoch": 0, "loss": 20.0 + step}, "train")
    resumed.close()
    assert [(e.step, e.value) for e in _events(tmp_path).Scalars("train/loss")] == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]


def test_logger_names_and_missing_packages_fail_in_one_line(run_dir, monkeypatch):
    with pytest.raises(ConfigError, match="unknown logger 'tensorbord' \\(did you mean 'tensorboard'\\?\\)"):
        config_from_dict(tiny_raw(run_dir, "trainer.loggers=[jsonl, tensorbord]"))
    with pytest.raises(ConfigError, match="did you mean 'trainer.wandb.project'"):
        config_from_dict(tiny_raw(run_dir, "trainer.wandb.projet=x"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"needs the wandb package: pip install 'siamssl\[wandb\]'"):
        Trainer(config_from_dict(tiny_raw(run_dir, "trainer.loggers=[jsonl, wandb]")))
    assert not run_dir.exists()  # nothing was written


# ------------------------------------------------------------------------------------------ wandb


def wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then
    LevelDB-log framing (32 KiB blocks; each chunk: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, chunks, position, block = [], [], 7, 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            break
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def test_wandb_logs_offline_without_an_api_key(run_dir, tmp_path, monkeypatch):
    for variable in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    summary = _train(run_dir, "trainer.loggers=[jsonl, wandb]", "trainer.wandb.project=siamssl-test")
    train, evaluations = _records(run_dir)
    files = list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, "no offline run folder"
    assert files[0].stem == f"run-{(run_dir / 'wandb_run_id').read_text().strip()}"
    deadline = time.monotonic() + 60  # wandb's service process may still be flushing the file after finish()
    records = wandb_records(files[0])
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, "the offline run file was never completed"
        time.sleep(0.2)
        records = wandb_records(files[0])
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs[0].display_name == "run" and runs[0].project == "siamssl-test"
    config = {item.key: json.loads(item.value_json) for item in runs[0].config.update}
    assert config["method"]["name"] == "simsiam" and config["trainer"]["loggers"] == ["jsonl", "wandb"]
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    losses = [(h["step"], h["train/loss"]) for h in history if "train/loss" in h]
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in train]
    assert [(h["step"], h["eval/knn_top1"]) for h in history if "eval/knn_top1" in h] == [(r["step"], r["knn_top1"]) for r in evaluations]
    final = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
             for r in records if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    assert final["knn_top1"] == summary["knn_top1"] and final["steps"] == summary["steps"]


def test_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    from siamssl.loggers import LoggerContext, WandbLogger, WandbOptions

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    options = WandbOptions(mode="offline", project="p")
    first = WandbLogger(LoggerContext(tmp_path, {"seed": 0}, options))
    first.close(failed=True)  # e.g. interrupted
    resumed = WandbLogger(LoggerContext(tmp_path, {"seed": 0}, options, resumed_at=3))
    resumed.close()
    fresh = WandbLogger(LoggerContext(tmp_path, {"seed": 0}, options))  # a new run (overwrite) gets a new id
    fresh.close()
    assert resumed.run.id == first.run.id != fresh.run.id
