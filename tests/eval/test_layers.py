"""Layer-wise probes: every stage of a tiny run, trained and random init; the last stage agrees with
the kNN tool on backbone features, and the table and plot are written."""

from __future__ import annotations

import json

import pytest

from siamssl.eval.knn import KNNEvalOptions, evaluate_knn
from siamssl.eval.layers import LayersOptions, evaluate_layers, main


def test_every_stage_is_probed_and_the_last_agrees_with_the_knn_tool(trained_run, tmp_path):
    options = LayersOptions(k=10, device="cpu", output=str(tmp_path / "layers.json"))
    payload = evaluate_layers(trained_run, options, quiet=True)
    stages = payload["stages"]
    assert [s["stage"] for s in stages] == ["layer1", "layer2", "layer3", "layer4"]
    assert [s["dim"] for s in stages] == [8, 16, 16, 32]  # the tiny config's widths
    for s in stages:
        for key in ("knn_top1", "linear_top1", "knn_top1_random_init", "linear_top1_random_init"):
            assert 0.0 <= s[key] <= 1.0
    # The last stage is the backbone's output: the same kNN as the kNN tool, trained and random init.
    for random_init, key in ((False, "knn_top1"), (True, "knn_top1_random_init")):
        knn = evaluate_knn(trained_run, KNNEvalOptions(ks=[10], device="cpu", cache=False, random_init=random_init,
                                                      output=str(tmp_path / f"knn{random_init}.json")), quiet=True)
        assert stages[-1][key] == pytest.approx(knn["top1"]["10"], abs=1e-6)
    # The trained and the random-init encoders are different networks.
    assert any(s["knn_top1"] != s["knn_top1_random_init"] or s["linear_top1"] != s["linear_top1_random_init"] for s in stages)
    assert json.loads((tmp_path / "layers.json").read_text())["stages"] == stages
    assert "| layer2 | 16 |" in (tmp_path / "layers.md").read_text()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "layers.png").stat().st_size > 0


def test_command_line_rejects_an_unknown_option(trained_run, capsys):
    assert main(["--checkpoint", str(trained_run), "kk=3"]) == 2
    assert "did you mean 'k'" in capsys.readouterr().err
