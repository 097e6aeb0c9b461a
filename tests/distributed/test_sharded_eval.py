"""Evaluation under torchrun: 2 gloo processes, each embedding half of the images, report what one
process reports; monitors make no collective call in the training step (the online probe: exactly
one, its flattened gradient all-reduce).

One ``torchrun --nproc_per_node=2`` job (``tests/distributed/eval_harness.py``); the one-process
references are computed here with the same functions while it runs. Tolerances: kNN and probe
accuracies exactly equal (the embedded features differ by float32 rounding only); the probe's
training loss (a mean of per-rank means vs one mean) within ``1e-6`` relative; diagnostics and
probe weights within ``1e-5``; ``z_std`` of a whole run within 10% (its 2-process value averages
per-rank stds over batches of 8, the 1-process value stds over 16: an O(1/B) difference).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.distributed import eval_harness

REPO = Path(__file__).resolve().parents[2]
WORLD = eval_harness.WORLD


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sharded_eval")
    (root / "multi").mkdir()
    spec = root / "spec.json"
    spec.write_text(json.dumps({"out": str(root / "multi")}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", "tests.distributed.eval_harness", str(spec)]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        single = {
            "summary": Trainer(config_from_dict(eval_harness.run_config(root / "single" / "run"))).fit(),
            "monitors": eval_harness.monitor_results(),
            "probe": eval_harness.probe_results(),
        }
    finally:
        output, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"the 2-process job failed:\n{output[-6000:]}")
    multi = [torch.load(root / "multi" / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"single": single, "multi": multi}


def test_train_leaves_a_process_group_it_did_not_create(job):
    assert all(rank["train"]["group_kept"] for rank in job["multi"])


def test_a_two_process_run_evaluates_like_a_one_process_run(job):
    single = job["single"]["summary"]
    for rank in job["multi"]:
        multi = rank["train"]["summary"]
        assert multi["world_size"] == WORLD
        for key in ("knn_top1", "online_probe_top1", "online_probe_train_top1"):
            assert multi[key] == single[key], key
        assert multi["online_probe_train_loss"] == pytest.approx(single["online_probe_train_loss"], rel=1e-5)
        for key in [k for k in single if k.startswith(("feat_", "emb_"))]:
            assert multi[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key
        assert multi["z_std"] == pytest.approx(single["z_std"], rel=0.1)


def test_each_rank_embeds_its_half_and_the_results_equal_one_process(job):
    single = job["single"]["monitors"]
    assert single["embedded"]["knn"] == [41, 23]  # the bank, then the queries
    for r, rank in enumerate(job["multi"]):
        monitors = rank["monitors"]
        assert monitors["embedded"]["knn"] == [[21, 12], [20, 11]][r]
        assert monitors["embedded"]["online_probe"] == [[12], [11]][r]
        for name in ("knn", "knn_fp16"):
            assert monitors["values"][name] == single["values"][name], name
        probe, reference = monitors["values"]["online_probe"], single["values"]["online_probe"]
        assert probe.keys() == reference.keys()
        for key in ("online_probe_train_top1", "online_probe_top1"):
            assert probe[key] == reference[key], key
        assert probe["online_probe_train_loss"] == pytest.approx(reference["online_probe_train_loss"], rel=1e-6)
        for key, value in single["values"]["diagnostics"].items():
            assert monitors["values"]["diagnostics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert 0.0 < single["values"]["knn"]["knn_top1"] < 1.0  # not a degenerate case


def test_embedding_std_is_the_mean_of_per_rank_batch_stds_over_steps_and_ranks(job):
    expected = []
    for step in range(4):
        embedding = eval_harness._stream(step)[2]
        expected += [F.normalize(part, dim=1).std(dim=0).mean().item() for part in embedding.chunk(WORLD)]
    for rank in job["multi"]:
        assert rank["monitors"]["values"]["embedding_std"]["z_std"] == pytest.approx(sum(expected) / len(expected), rel=1e-9)


def test_monitors_make_no_collective_in_the_step_and_few_at_evaluation(job):
    for rank in job["multi"]:
        monitors = rank["monitors"]
        assert monitors["on_step_collectives"] == {"knn": 0, "knn_fp16": 0, "embedding_std": 0, "diagnostics": 0, "online_probe": 4}
        # kNN: gather bank features and labels, sum the correct answers; probe: statistics, then test accuracy
        assert monitors["evaluate_collectives"]["knn"] == 3
        assert monitors["evaluate_collectives"]["embedding_std"] == 1
        assert monitors["evaluate_collectives"]["online_probe"] == 2
    assert all(count == 0 for count in job["single"]["monitors"]["on_step_collectives"].values())


def test_online_probe_on_two_processes_equals_one_process_on_the_global_batch(job):
    reference = job["single"]["probe"]
    for rank in job["multi"]:
        assert reference.keys() == rank["probe"].keys()
        for key, value in reference.items():
            torch.testing.assert_close(rank["probe"][key], value, atol=1e-6, rtol=1e-5)
