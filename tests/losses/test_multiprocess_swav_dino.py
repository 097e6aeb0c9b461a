"""Two CPU processes (gloo) give the one-process results: Sinkhorn's normalizers are all-reduced, so
each rank's codes are the rows of the global codes; the mean of the ranks' SwAV losses is the
global loss; DINO's centre moves by the mean of the teacher logits over all ranks."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from siamssl.losses import sinkhorn_knopp, swav_loss

WORLD = 2


def _global_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(16, 6, generator=g, dtype=torch.float64), dim=1) @ torch.nn.functional.normalize(
        torch.randn(10, 6, generator=g, dtype=torch.float64), dim=1
    ).t()
    crop_scores = (2 * torch.rand(3, 16, 10, generator=g, dtype=torch.float64) - 1)
    teacher = torch.randn(2, 16, 12, generator=g)
    return scores, crop_scores, teacher


def _worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        scores, crop_scores, teacher = _global_inputs()
        rows = slice(8 * rank, 8 * (rank + 1))
        codes = sinkhorn_knopp(scores[rows], 0.05, 3)
        torch.testing.assert_close(codes, sinkhorn_knopp(scores, 0.05, 3, gather_distributed=False)[rows], rtol=1e-10, atol=1e-12)

        global_codes = torch.stack([sinkhorn_knopp(crop_scores[c], 0.05, 3, gather_distributed=False) for c in (0, 1)])
        local_codes = torch.stack([sinkhorn_knopp(crop_scores[c, rows], 0.05, 3) for c in (0, 1)])
        torch.testing.assert_close(local_codes, global_codes[:, rows], rtol=1e-10, atol=1e-12)
        local_loss = swav_loss(crop_scores[:, rows], local_codes, [0, 1])
        mean_loss = local_loss.detach().clone()
        dist.all_reduce(mean_loss)
        torch.testing.assert_close(mean_loss / WORLD, swav_loss(crop_scores, global_codes, [0, 1]), rtol=1e-5, atol=1e-6)

        from siamssl.backbones import build_backbone
        from siamssl.methods import DINO

        backbone, dim = build_backbone("resnet_narrow", cifar_stem=True, widths=(8, 8, 8, 8))
        method = DINO(backbone, dim, DINO.Config(out_dim=12, hidden_dim=8, bottleneck_dim=4, center_momentum=0.9))
        local_teacher = teacher[:, rows].reshape(-1, 12)
        method._update_center(local_teacher)
        torch.testing.assert_close(method.center, 0.1 * teacher.reshape(-1, 12).mean(dim=0, keepdim=True), rtol=1e-5, atol=1e-7)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD, join=True)
