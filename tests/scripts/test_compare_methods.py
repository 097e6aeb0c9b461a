"""The method-comparison script end to end on a tiny image folder: every requested method trains
with the shared backbone, steps and batch, and the table holds its kNN next to the random init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from tests.scripts.loader import load_script


def _load_script():
    return load_script("compare_methods")


def _image_folder(root: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 8), ("test", 4)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                write_png(torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8), str(folder / f"{i}.png"))
    return root


def test_every_method_gets_the_same_budget_and_a_row(tmp_path):
    root = _image_folder(tmp_path / "data")
    out = tmp_path / "out"
    args = [
        "--root", str(root), "--output-dir", str(out), "--methods", "simsiam,byol", "--steps", "2", "--batch-size", "8",
        "--backbone", "resnet_narrow", "--workers", "0", "--set", "backbone.widths=[8, 8, 8, 8]",
        "--set", "data.augment.crop_size=16", "--set", "data.cache_dir=" + str(tmp_path / "cache"),
        "--set", "eval.knn.k=4", "--set", "trainer.precision=fp32",
    ]  # fmt: skip
    assert _load_script().main(args) == 0
    results = json.loads((out / "comparison.json").read_text())["results"]
    assert [r["method"] for r in results] == ["simsiam", "byol"]
    for r in results:
        assert 0.0 <= r["knn_top1"] <= 1.0 and 0.0 <= r["knn_top1_random_init"] <= 1.0
        summary = json.loads((out / r["method"] / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["global_batch_size"] == 8
    table = (out / "comparison.md").read_text().splitlines()
    assert table[2].startswith("| simsiam |") and table[3].startswith("| byol |")


def test_unknown_method_and_missing_root_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _load_script().main(["--root", str(tmp_path), "--methods", "simsiam,moco"])
    assert "unknown method(s) moco" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _load_script().main(["--root", str(tmp_path / "nowhere")])
    assert "no train/ folder" in capsys.readouterr().err
