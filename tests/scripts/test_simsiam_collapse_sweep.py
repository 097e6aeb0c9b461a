"""The collapse sweep's bookkeeping: curves read back from metrics.jsonl, the outcome rule, and one
table row per (lr, wd, variant) with the seeds side by side. The runs themselves take minutes (the
script's own output, docs/why_siamese.md)."""

from __future__ import annotations

import json

from tests.scripts.loader import load_script


def _write_run(path, knn, z_std, rankme, random_init=0.17):
    path.mkdir(parents=True)
    records = [{"step": 0, "epoch": 0, "knn_top1_random_init": random_init}]
    for epoch, (k, z, r) in enumerate(zip(knn, z_std, rankme), start=1):
        records.append({"step": epoch * 10 - 5, "epoch": epoch - 1, "loss": -0.5 - 0.1 * epoch})
        records.append({"step": epoch * 10, "epoch": epoch, "knn_top1": k, "z_std": z, "feat_rankme": r})
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_outcome_rule():
    outcome = load_script("simsiam_collapse_sweep").outcome
    assert outcome({"knn_top1": 0.12}, 0.17) == "collapses"
    assert outcome({"knn_top1": 0.25}, 0.17) == "learns"
    assert outcome({"knn_top1": 0.18}, 0.17) == "neither"


def test_curves_and_table(tmp_path):
    script = load_script("simsiam_collapse_sweep")
    results = []
    for seed in (0, 1):
        for variant, knn in (("baseline", [0.2, 0.26]), ("no_predictor", [0.15, 0.12])):
            run = tmp_path / f"{variant}_{seed}"
            _write_run(run, knn, [0.12, 0.11], [4.0, 1.5])
            curves = script.read_curves(run)
            assert curves["epoch"] == [1, 2] and curves["knn_top1"] == knn and curves["knn_top1_random_init"] == 0.17
            assert curves["loss"] == [-0.6, -0.7]  # the last logged loss before each evaluation
            results.append({"seed": seed, "lr": 4.0, "wd": 1e-3, "variant": variant, "curves": curves})
    table = script.summarize(results, dim=64).splitlines()
    assert len(table) == 4
    assert table[2].startswith("| 4 | 0.001 | baseline | 0.88 / 0.88 | 1.5 / 1.5 | 26.0 / 26.0 | 17.0 / 17.0 | learns in 2/2")
    assert table[3].startswith("| 4 | 0.001 | no_predictor |") and "collapses in 2/2" in table[3]
