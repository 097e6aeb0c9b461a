"""The SimSiam ablation script end to end at a seconds-long scale (plumbing: one trainer run per
variant, curves read back from metrics.jsonl, table, figure), and its outcome rule. The collapse
itself needs minutes of training: the script's own output and
tests/methods/test_simsiam.py::test_without_stop_gradient_the_output_collapses_and_with_it_it_does_not
cover it."""

from __future__ import annotations

import importlib.util
import json
import math

from tests.scripts.loader import load_script


def _load_script():
    return load_script("reproduce_simsiam_ablations")


def test_script_writes_table_curves_and_figure(tmp_path):
    script = _load_script()
    args = [
        "--output-dir", str(tmp_path), "--variants", "baseline,no_predictor", "--threads", "1",
        "--set", "data.shapes.num_train=128", "--set", "data.shapes.num_test=64", "--set", "trainer.max_steps=4",
    ]  # fmt: skip
    assert script.main(args) == 0
    curves = json.loads((tmp_path / "ablations.json").read_text())
    assert list(curves) == ["baseline", "no_predictor"]
    for name, result in curves.items():
        history = result["history"]
        assert history["epoch"] == [2]  # 2 steps per epoch, 4 steps, evaluated every 2 epochs
        assert math.isfinite(history["loss"][0]) and -1.0 <= history["loss"][0] <= 1.0
        assert 0.0 < history["z_std"][0] and 0.0 <= history["knn_top1"][0] <= 1.0
        assert (tmp_path / name / "metrics.jsonl").is_file()
    table = (tmp_path / "ablations.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| baseline |") and table[3].startswith("| no_predictor |")
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (tmp_path / "ablations.png").is_file() == has_matplotlib


def test_unknown_variant_is_refused(tmp_path, capsys):
    assert _load_script().main(["--output-dir", str(tmp_path), "--variants", "baseline,no_sg"]) == 2
    assert "unknown variant(s) no_sg" in capsys.readouterr().err


def test_outcome_rule():
    outcome = _load_script().outcome
    healthy = 1 / math.sqrt(64)
    assert outcome({"z_std": [0.3 * healthy], "loss": [-0.99]}, 64, -0.9) == "collapses"
    assert outcome({"z_std": [healthy], "loss": [-0.25]}, 64, -0.9) == "no convergence"
    assert outcome({"z_std": [healthy], "loss": [-0.8]}, 64, -0.9) == "works"
    # A healthy projector std (output BatchNorm) but kNN below the random encoder's: collapsed backbone.
    assert outcome({"z_std": [healthy], "loss": [-0.8], "knn_top1": [0.11]}, 64, -0.9, random_init_knn=0.17) == "collapses"
    assert outcome({"z_std": [healthy], "loss": [-0.8], "knn_top1": [0.25]}, 64, -0.9, random_init_knn=0.17) == "works"
