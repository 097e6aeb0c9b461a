"""Two processes on B samples each compute what one process computes on 2B: the mean loss, the
averaged gradients, the NCE constants, and banks that are identical on every rank after each step
(InstDisc and CMC, NCE, gloo on the CPU). The encoders have no BatchNorm so the comparison is exact."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from siamssl.methods import CMC, Batch, InstDisc, MethodContext, TrainingProgress

NUM_SAMPLES, BATCH, SIZE = 24, 8, 8
MEAN, STD = (0.5, 0.4, 0.45), (0.25, 0.2, 0.3)


def _encoder(in_channels: int = 3) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * SIZE * SIZE, 12), nn.ReLU()), 12


def _methods() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    backbone, dim = _encoder()
    instdisc = InstDisc(backbone, dim, InstDisc.Config(embedding_dim=6, num_negatives=10, temperature=0.2), NUM_SAMPLES)
    context = MethodContext(NUM_SAMPLES, BATCH, 3, 10, SIZE, make_backbone=lambda in_channels=3: _encoder(in_channels),
                            image_mean=MEAN, image_std=STD)
    backbone, dim = _encoder()
    cmc = CMC.from_config(CMC.Config(embedding_dim=6, num_negatives=10, temperature=0.2), backbone, dim, context)
    return {"instdisc": instdisc, "cmc": cmc}


def _batches() -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    rgb = [torch.rand(BATCH, 3, SIZE, SIZE, generator=g) for _ in range(2)]
    views = [(x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1) for x in rgb]
    order = torch.randperm(NUM_SAMPLES, generator=g)
    return [Batch(views=[views[s]], index=order[s * BATCH : (s + 1) * BATCH]) for s in range(2)]


def _train(method: nn.Module, rank: int, world: int) -> dict[str, object]:
    """Two steps on this rank's slice; gradients averaged over ranks as DistributedDataParallel does."""
    losses, grads = [], []
    for step, batch in enumerate(_batches()):
        rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        local = Batch(views=[batch.views[0][rows]], index=batch.index[rows])
        progress = TrainingProgress(step, 10, 0, 3)
        loss = method(local, progress)["loss"]
        method.zero_grad()
        loss.backward()
        flat = torch.cat([p.grad.flatten() for p in method.parameters()])
        summed_loss = loss.detach().clone()
        if world > 1:
            dist.all_reduce(flat)
            dist.all_reduce(summed_loss)
        losses.append(summed_loss / world)
        grads.append(flat / world)
        with torch.no_grad():
            offset = 0
            for p in method.parameters():
                p -= 0.5 * flat[offset : offset + p.numel()].view_as(p) / world
                offset += p.numel()
        method.on_after_optimizer_step(progress)
    buffers = {name: b.clone() for name, b in method.named_buffers() if "bank" in name}
    return {"losses": losses, "grads": grads, "buffers": buffers}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        results = {name: _train(method, rank, 2) for name, method in _methods().items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # tear gloo down only once no peer is still communicating (else: SIGABRT)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for name, method in _methods().items():
        single = _train(method, 0, 1)
        for r in ranks:
            for a, b in zip(r[name]["losses"], single["losses"]):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            for a, b in zip(r[name]["grads"], single["grads"]):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
            assert r[name]["buffers"].keys() == single["buffers"].keys()
            for key, value in single["buffers"].items():
                torch.testing.assert_close(r[name]["buffers"][key], value, rtol=1e-5, atol=1e-6, msg=f"{name} {key}")
        for key in single["buffers"]:  # identical on every rank
            assert torch.equal(ranks[0][name]["buffers"][key], ranks[1][name]["buffers"][key]), (name, key)
        assert all(float(v) > 0 for k, v in single["buffers"].items() if k.endswith("nce_normalizer"))
