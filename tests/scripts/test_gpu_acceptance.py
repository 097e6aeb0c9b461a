"""The GPU acceptance script rehearsed on the CPU: every stage runs at toy size, every method's recipe
trains a step without a host synchronization, and the report holds every table."""

from __future__ import annotations

import json

import pytest
import torch

from siamssl.methods import METHODS
from tests.scripts.loader import load_script


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    script = load_script("gpu_acceptance")
    out = tmp_path_factory.mktemp("gpu-acceptance")
    threads = torch.get_num_threads()
    try:
        assert script.main(["--dry-run", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "gpu_acceptance.json").read_text()), (out / "gpu_acceptance.md").read_text(), out


def test_every_stage_ran_and_nothing_was_skipped(dry_run):
    results, _, out = dry_run
    for stage in ("machine", "throughput", "imagefolder", "correctness", "learning"):
        assert stage in results, stage
    for cell in results["throughput"]["cells"]:
        assert "error" not in cell and "skipped" not in cell, cell
        assert cell["batched_images_per_s"] > 0 and cell["torchvision_images_per_s"] > 0
        assert cell["flops_per_image"] > 0
    assert {(c["precision"], c["compile"]) for c in results["throughput"]["cells"]} == {("fp32", False), ("bf16", True)}
    imagefolder = results["imagefolder"]
    assert "error" not in imagefolder, imagefolder
    assert imagefolder["bench"]["step_images_per_s"] > 0 and imagefolder["check"]["same_indices_as_cpu"]
    assert imagefolder["check"]["corrupt_warnings"] == 1
    assert not (out / "scratch").exists()  # generated images and runs are removed


def test_every_method_trains_finite_without_host_syncs(dry_run):
    results, _, _ = dry_run
    rows = results["correctness"]["rows"]
    library = set(load_script("gpu_acceptance").library_methods())
    assert library and library <= set(METHODS.names())
    covered = {r["method"] for r in rows}
    assert covered | set(results["correctness"]["methods_without_recipe"]) == library
    assert not results["correctness"]["methods_without_recipe"], "every registered method needs a CIFAR recipe"
    for row in rows:
        assert "error" not in row, row
        assert row["finite"] and row["host_syncs"] == 0, row


def test_learning_stage_reports_knn_next_to_lightly(dry_run):
    results, report, _ = dry_run
    learning = results["learning"]
    assert 0.0 <= learning["knn_top1"] <= 1.0 and 0.0 <= learning["knn_top1_random_init"] <= 1.0
    assert learning["epochs"] == 1 and learning["lightly_reference"]
    for heading in ("## Throughput", "## ImageFolder path", "training step", "## Correctness", "## Learning", "MFU"):
        assert heading in report


def test_budget_shares_leave_the_learning_stage_the_rest():
    script = load_script("gpu_acceptance")
    budget = script.Budget(100.0)
    assert budget.deadline(0.5) - budget.start == pytest.approx(50.0, abs=1.0)
    assert script.Budget(float("inf")).deadline(0.1) == float("inf")
    assert script.SHARES["learning"] == 1.0 and all(0 < v <= 1 for v in script.SHARES.values())
