"""MoCo v1/v2: FIFO queue (exact contents, wrapping pointer), no same-step keys among the negatives
(also in the symmetric loss), Shuffle-BN (per-split statistics, gathered permutation, unshuffle),
constant-momentum EMA, clear config errors, and — with two gloo processes — the same loss,
gradients and queue as one process with the whole batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from siamssl.backbones.split_bn import SplitBatchNorm
from siamssl.errors import ConfigError
from siamssl.losses import info_nce
from siamssl.methods import MoCo
from tests.methods.helpers import progress, tiny_backbone, train, two_views


def _moco(global_batch: int = 8, num_processes: int = 1, **options) -> MoCo:
    torch.manual_seed(0)
    backbone, dim = tiny_backbone()
    settings = dict(proj_dim=8, head_hidden_dim=32, queue_size=64, momentum=0.9, bn_splits=2)
    settings.update(options)
    return MoCo(backbone, dim, MoCo.Config(**settings), global_batch, num_processes)


def test_queue_holds_exactly_the_last_keys_and_the_pointer_wraps():
    method = _moco(queue_size=8, global_batch=4, proj_dim=2)
    batches = [torch.full((4, 2), float(i)) for i in (1, 2, 3)]
    method.enqueue(batches[0])
    assert int(method.queue_ptr) == 4
    torch.testing.assert_close(method.queue[:4], batches[0])
    method.enqueue(batches[1])
    assert int(method.queue_ptr) == 0  # wrapped
    method.enqueue(batches[2])
    assert int(method.queue_ptr) == 4
    torch.testing.assert_close(method.queue, torch.cat([batches[2], batches[1]]))


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_uses_the_queue_before_this_step_and_keys_are_enqueued_after_it(symmetric):
    method = _moco(symmetric=symmetric, temperature=0.2)
    method.enqueue(F.normalize(torch.randn(24, 8), dim=1))  # a partly filled, non-trivial queue
    queue_before, ptr_before = method.queue.clone(), int(method.queue_ptr)
    batch = two_views(8, seed=1)
    x1, x2 = batch.views
    loss = method(batch, progress(5))["loss"]
    assert torch.equal(method.queue, queue_before)  # forward never touches the queue

    with torch.no_grad():  # train-mode BN and a per-step permutation: recomputation is exact
        q1, q2 = method.query(x1)[1], method.query(x2)[1]
        k2, all_k2 = method.keys(x2, 5, view=1)
        k1, all_k1 = method.keys(x1, 5, view=0)
    expected = info_nce(q1, k2, queue_before, 0.2)
    if symmetric:
        expected = expected + info_nce(q2, k1, queue_before, 0.2)
        # lightly's bug: the second term sees the keys of the first one already enqueued
        leaked = queue_before.clone()
        leaked[ptr_before : ptr_before + 8] = all_k2
        buggy = info_nce(q1, k2, queue_before, 0.2) + info_nce(q2, k1, leaked, 0.2)
        assert not torch.allclose(loss, buggy, rtol=1e-4)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)

    method.on_after_optimizer_step(progress(5))
    new = torch.cat([all_k1, all_k2]) if symmetric else all_k2
    torch.testing.assert_close(method.queue[ptr_before : ptr_before + new.shape[0]], new)
    assert torch.equal(method.queue[: ptr_before], queue_before[: ptr_before])
    assert int(method.queue_ptr) == ptr_before + new.shape[0]


def test_shuffle_bn_encodes_keys_in_shuffled_split_groups_and_unshuffles_them():
    method = _moco(bn_splits=2)
    assert all(isinstance(m, SplitBatchNorm) and m.num_splits == 2 for m in method.modules() if "BatchNorm" in type(m).__name__)
    x = two_views(8, seed=2).views[1]
    with torch.no_grad():
        local, everyone = method.keys(x, step=3, view=1)
        permutation = method.shuffle_permutation(8, 3, 1, x.device)
        shuffled = F.normalize(method.key_projector(method.key_backbone(x[permutation])), dim=1)
        unshuffled = torch.empty_like(shuffled)
        unshuffled[permutation] = shuffled
        in_order = F.normalize(method.key_projector(method.key_backbone(x)), dim=1)
    assert not torch.equal(permutation, torch.arange(8))
    torch.testing.assert_close(local, unshuffled)
    torch.testing.assert_close(everyone, unshuffled)
    assert not torch.allclose(local, in_order, atol=1e-3)  # the groups, hence the statistics, differ
    assert torch.equal(permutation, method.shuffle_permutation(8, 3, 1, x.device))  # deterministic
    assert not torch.equal(permutation, method.shuffle_permutation(8, 4, 1, x.device))

    plain = _moco(bn_splits=2, shuffle_bn=False)
    with torch.no_grad():
        torch.testing.assert_close(plain.keys(x, 3, 1)[0], F.normalize(plain.key_projector(plain.key_backbone(x)), dim=1))


def test_key_encoder_gets_no_gradient_and_moves_by_the_constant_ema():
    method = _moco(momentum=0.9)
    method(two_views(8, seed=3), progress(0))["loss"].backward()
    keys = list(method.key_backbone.parameters()) + list(method.key_projector.parameters())
    assert all(not p.requires_grad and p.grad is None for p in keys)
    with torch.no_grad():
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.add_(torch.randn_like(p))
    pairs = list(zip(keys, list(method.backbone.parameters()) + list(method.projector.parameters())))
    before = [(k.clone(), q.clone()) for k, q in pairs]
    method.on_after_optimizer_step(progress(7))
    for (k, _), (k_old, q) in zip(pairs, before):
        torch.testing.assert_close(k, 0.9 * k_old + 0.1 * q, rtol=0, atol=1e-6)


def test_v1_head_is_linear_and_v2_head_is_an_mlp_without_batchnorm():
    v1 = _moco(head="linear")
    assert isinstance(v1.projector, torch.nn.Linear) and v1.projector.bias is not None
    v2 = _moco(head="mlp")
    kinds = [type(m).__name__ for m in v2.projector]
    assert kinds == ["Linear", "ReLU", "Linear"] and all(m.bias is not None for m in v2.projector if isinstance(m, torch.nn.Linear))
    assert MoCo.Config().temperature == 0.2 and MoCo.Config().queue_size == 65536 and MoCo.Config().momentum == 0.999


def test_queue_size_and_bn_splits_errors_are_clear():
    with pytest.raises(ConfigError, match=r"method.queue_size=48 must be a multiple of the 32 keys enqueued per step .*symmetric.*queue_size=64"):
        _moco(queue_size=48, global_batch=16, symmetric=True)
    with pytest.raises(ConfigError, match="method.bn_splits=3 must be a multiple of the 2 process"):
        _moco(bn_splits=3, global_batch=12, num_processes=2, queue_size=48)
    with pytest.raises(ConfigError, match="divide data.batch_size=10"):
        _moco(bn_splits=4, global_batch=10, queue_size=40)


def test_no_collapse():
    std = train(_moco(global_batch=32, queue_size=256, symmetric=True, temperature=0.2, bn_splits=4), steps=60)
    assert std > 0.6 / math.sqrt(8), std


# ---------------------------------------------------------------- one process == two processes


def _one_step(method: MoCo, batch) -> dict:
    out = method(batch, progress(0))
    out["loss"].backward()
    grads = [p.grad.clone() for p in method.parameters() if p.requires_grad]
    method.on_after_optimizer_step(progress(0))
    return {"loss": out["loss"].detach(), "grads": grads, "queue": method.queue.clone(), "ptr": method.queue_ptr.clone()}


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        method = _moco(global_batch=16, num_processes=world, symmetric=True, bn_splits=4)
        full = two_views(16, seed=11)
        local = type(full)(views=[v[rank * 8 : (rank + 1) * 8] for v in full.views], index=full.index[rank * 8 : (rank + 1) * 8])
        result = _one_step(method, local)
        for tensor in [result["loss"], *result["grads"]]:  # DDP's gradient average
            dist.all_reduce(tensor)
            tensor /= world
        if rank == 0:
            torch.save(result, out_file)
    finally:
        dist.destroy_process_group()


def test_two_processes_compute_what_one_process_computes(tmp_path: Path):
    out_file = tmp_path / "distributed.pt"
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True, start_method="fork")
    distributed = torch.load(out_file, weights_only=True)
    single = _one_step(_moco(global_batch=16, num_processes=1, symmetric=True, bn_splits=4), two_views(16, seed=11))
    torch.testing.assert_close(distributed["loss"], single["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(distributed["grads"], single["grads"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(distributed["queue"], single["queue"], rtol=1e-5, atol=1e-6)
    assert int(distributed["ptr"]) == int(single["ptr"]) == 32
