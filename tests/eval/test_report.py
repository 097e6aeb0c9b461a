"""The report command, and the 2-D embeddings behind its picture."""

import math
import sys

import torch

from siamssl.eval.embedding2d import conditional_affinities, pca_2d, tsne
from siamssl.eval.report import MATPLOTLIB_MISSING, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_report_writes_non_empty_pngs_and_markdown(trained_run, capsys):
    assert main([str(trained_run), "embedding_samples=32", "max_samples=32", "device=cpu"]) == 0
    import matplotlib.image

    for name in ("training", "spectrum", "embedding_2d"):
        path = trained_run / "report" / f"{name}.png"
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
        assert pixels[..., :3].std() > 0.01  # not a blank canvas
    markdown = (trained_run / "report.md").read_text()
    for expected in ("report/training.png", "report/spectrum.png", "report/embedding_2d.png", "RankMe",
                     "knn_top1 (monitor)", "simsiam", "resnet_narrow"):
        assert expected in markdown, expected


def test_report_of_an_interrupted_run_reads_the_checkpoint(trained_run, tmp_path):
    import shutil

    from siamssl.checkpoint import load_checkpoint, save_atomic

    run = tmp_path / "interrupted"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("report*", "eval_cache", "*.json"))
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["global_step"] = 6  # as if stopped before the end, with no summary.json
    save_atomic(state, run / "checkpoints" / "last.pt")
    assert main([str(run), "checkpoint=false"]) == 0
    markdown = (run / "report.md").read_text()
    assert "6 of 8 (unfinished)" in markdown and "knn_top1_random_init (monitor)" in markdown
    assert (run / "report" / "training.png").read_bytes().startswith(PNG_SIGNATURE)


def test_report_without_matplotlib_says_how_to_install_it(trained_run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main([str(trained_run)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {MATPLOTLIB_MISSING}"


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: '{tmp_path}' has no metrics.jsonl: is it a siamssl run directory?"


def blobs(per_class=40, num_classes=4, dim=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=g) * 6
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centers[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_tsne_affinities_have_the_requested_perplexity():
    x, _ = blobs()
    p = conditional_affinities(x.double(), perplexity=15.0)
    assert torch.allclose(p.sum(dim=1), torch.ones(len(x), dtype=torch.float64))
    assert torch.all(p.diagonal() == 0)
    entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim=1)
    assert torch.allclose(entropy, torch.full_like(entropy, math.log(15.0)), atol=1e-4)


def test_tsne_keeps_well_separated_clusters_apart():
    x, labels = blobs()
    y = tsne(x, perplexity=15.0, iterations=400)
    assert y.shape == (len(x), 2) and torch.isfinite(y).all()
    distances = torch.cdist(y, y)
    distances.fill_diagonal_(float("inf"))
    neighbours = distances.topk(5, largest=False).indices
    assert (labels[neighbours] == labels[:, None]).float().mean() >= 0.98
    assert torch.equal(y, tsne(x, perplexity=15.0, iterations=400))  # deterministic


def test_pca_recovers_the_dominant_axes():
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    coordinates = torch.randn(500, 6, generator=g) * torch.tensor([10.0, 5.0, 0.1, 0.1, 0.1, 0.1])
    points = pca_2d(coordinates @ basis.t())
    # up to sign, the two projections are the two large coordinates
    for k in range(2):
        correlation = torch.corrcoef(torch.stack([points[:, k], coordinates[:, k]]))[0, 1]
        assert abs(float(correlation)) > 0.999
