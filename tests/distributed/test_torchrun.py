"""The command line under ``torchrun`` on CPU (gloo): one run directory written by rank 0 only, and
checkpoints that resume under 1 or 2 processes, on one "node" or two (c10d rendezvous on localhost).

Every run trains the same 8 steps (2 epochs × 4 steps of a global batch of 16) from the same data,
so all of them must end at the same parameters: tolerance ``1e-5`` absolute on every tensor of
the final checkpoints, ``rtol=1e-5, atol=1e-6`` on the logged losses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


def _cli(launcher: list[str], config: Path, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "siamssl.train", "--config", str(config), *overrides]
    return subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(*processes: subprocess.Popen) -> str:
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    return "\n".join(outputs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)["model"]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(run_dir) if "loss" in r}


def _assert_same_model(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert (actual[key].double() - value.double()).abs().max().item() <= 1e-5, key


def _assert_same_losses(actual: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(actual) == sorted(expected)
    torch.testing.assert_close(torch.tensor([actual[s] for s in sorted(actual)]), torch.tensor([expected[s] for s in sorted(expected)]), rtol=1e-5, atol=1e-6)


def test_torchrun_two_processes_then_resume_under_one_and_under_two_nodes(tmp_path):
    raw = tiny_raw(tmp_path / "unused", "trainer.keep_epoch_checkpoints=true")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    two = tmp_path / "two_processes"
    job = _cli(["--standalone", "--nproc_per_node=2"], config, f"output_dir={two}")

    # Meanwhile, the same run on one process, in this process ...
    one = tmp_path / "one_process"
    Trainer(config_from_dict({**raw, "output_dir": str(one)})).fit()

    # ... and its copy, as if stopped after epoch 1, continued in place on 2 nodes × 1 process.
    resumed_on_two = tmp_path / "resumed_on_two"
    shutil.copytree(one, resumed_on_two)
    shutil.copyfile(one / "checkpoints" / "epoch_0001.pt", resumed_on_two / "checkpoints" / "last.pt")
    port = _free_port()
    nodes = [
        _cli(["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=resume"],
             config, f"output_dir={resumed_on_two}", "trainer.resume=true")
        for _ in range(2)
    ]  # fmt: skip
    log = _finish(job)

    # Rank 0 alone writes: one run directory with one metrics file, one summary, the checkpoints.
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and two in p.parents) == [
        f"two_processes/{name}"
        for name in ("checkpoints/epoch_0001.pt", "checkpoints/epoch_0002.pt", "checkpoints/last.pt", "config.yaml", "metrics.jsonl", "summary.json")
    ]
    records = _records(two)
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8]
    assert [r["epoch"] for r in records if "knn_top1" in r] == [1, 2]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8 and summary["global_batch_size"] == 16
    assert log.count("siamssl: done:") == 1 and "2 process(es) with SyncBatchNorm" in log  # only rank 0 talks
    _assert_same_model(_model(two), _model(one))
    _assert_same_losses(_losses(two), _losses(one))
    lr = lambda run: [r["lr"] for r in _records(run) if "lr" in r]  # noqa: E731
    assert lr(two) == lr(one) and lr(one)[0] <= 0.05 * 16 / 256  # base_lr × global batch / 256, cosine-decayed

    # The 2-process checkpoint of epoch 1 continues on 1 process.
    resumed_on_one = tmp_path / "resumed_on_one"
    resume = {**raw["trainer"], "resume": str(two / "checkpoints" / "epoch_0001.pt")}
    Trainer(config_from_dict({**raw, "output_dir": str(resumed_on_one), "trainer": resume})).fit()
    _assert_same_model(_model(resumed_on_one), _model(two))

    _finish(*nodes)
    _assert_same_model(_model(resumed_on_two), _model(one))
    _assert_same_losses(_losses(resumed_on_two), _losses(one))  # metrics after step 4 were redone, once
    assert json.loads((resumed_on_two / "summary.json").read_text())["world_size"] == 2
