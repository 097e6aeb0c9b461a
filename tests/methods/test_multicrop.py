"""Multi-crop as a data feature of every method: the loader delivers ``[global crops..., small
crops...]`` with their own sizes, and same-resolution crops share one backbone pass."""

from __future__ import annotations

import torch
from torch import nn

from siamssl.data import AugmentConfig, DataConfig, ShapesConfig, TrainLoader, build_dataset, view_transforms
from siamssl.methods.multicrop import forward_by_resolution, resolution_groups


def test_loader_delivers_global_then_small_crops_of_their_sizes() -> None:
    data = build_dataset(DataConfig(dataset="shapes", shapes=ShapesConfig(num_train=16, num_test=4, image_size=16)))
    augment = AugmentConfig(views=2, crop_size=16, small_crops=3, small_crop_size=8)
    loader = TrainLoader(data.train, view_transforms(augment, data.mean, data.std), 8, seed=0)
    batch = next(iter(loader.batches(0)))
    assert [tuple(v.shape) for v in batch.views] == [(8, 3, 16, 16)] * 2 + [(8, 3, 8, 8)] * 3
    assert all(v.dtype == torch.float32 for v in batch.views)
    # Every crop is a different random view of the same images.
    assert not torch.equal(batch.views[2], batch.views[3])
    # The same position gets the same crops again (deterministic in seed, epoch, position).
    again = next(iter(loader.batches(0)))
    assert all(torch.equal(a, b) for a, b in zip(batch.views, again.views))


def test_resolution_groups_are_runs_of_consecutive_sizes() -> None:
    crops = [torch.zeros(2, 3, s, s) for s in (32, 32, 16, 16, 16, 32)]
    assert resolution_groups(crops) == [slice(0, 2), slice(2, 5), slice(5, 6)]
    assert resolution_groups(crops[:1]) == [slice(0, 1)]


class _CountingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.bn(self.conv(x)).mean(dim=(2, 3))


def test_one_backbone_pass_per_resolution_with_outputs_in_crop_order() -> None:
    torch.manual_seed(0)
    net = _CountingNet()
    crops = [torch.randn(5, 3, 12, 12) for _ in range(2)] + [torch.randn(5, 3, 6, 6) for _ in range(3)]
    out = forward_by_resolution(net, crops)
    assert net.calls == [10, 15] and out.shape == (25, 4)
    # Train mode: BatchNorm statistics are shared within a resolution, as one concatenated pass.
    expected = torch.cat([net(torch.cat(crops[:2])), net(torch.cat(crops[2:]))])
    torch.testing.assert_close(out, expected)
    # Eval mode: each crop's rows equal the crop forwarded alone.
    net.eval()
    out = forward_by_resolution(net, crops)
    for v, crop in enumerate(crops):
        torch.testing.assert_close(out[5 * v : 5 * (v + 1)], net(crop), rtol=1e-5, atol=1e-6)
