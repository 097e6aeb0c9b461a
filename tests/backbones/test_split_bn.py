"""SplitBatchNorm equals BatchNorm applied to each contiguous split (outputs, gradients, running
statistics as the mean of the per-split updates), is plain BN in eval mode, keeps BatchNorm's state
names, and survives the trainer's SyncBatchNorm conversion. (Its cross-rank running statistics are
tested by the 2-process MoCo equivalence in tests/distributed.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from siamssl.backbones import SplitBatchNorm, convert_split_batchnorm
from siamssl.distributed import convert_sync_batchnorm


@pytest.mark.parametrize("shape", [(12, 5), (8, 4, 3, 3)])
@pytest.mark.parametrize("splits", [1, 2, 4])
def test_training_mode_equals_per_split_batchnorm(shape, splits):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * 2 + 1
    reference_bns = []
    bn = nn.BatchNorm1d(shape[1]) if len(shape) == 2 else nn.BatchNorm2d(shape[1])
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    bn = bn.double()
    split = SplitBatchNorm.from_batchnorm(bn, splits).double()
    x_split, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = split(x_split)
    parts = []
    for chunk in x_ref.chunk(splits):
        reference = bn.__class__(shape[1]).double()
        reference.load_state_dict(bn.state_dict())
        reference_bns.append(reference)
        parts.append(reference(chunk))
    expected = torch.cat(parts)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x_split.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(split.running_mean, torch.stack([r.running_mean for r in reference_bns]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([r.running_var for r in reference_bns]).mean(0))
    assert int(split.num_batches_tracked) == int(bn.num_batches_tracked) + 1


def test_eval_mode_is_plain_batchnorm_and_state_names_match():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    bn(torch.randn(8, 3, 2, 2) * 3)  # non-trivial running statistics
    split = SplitBatchNorm.from_batchnorm(bn, 4)
    bn.eval(), split.eval()
    x = torch.randn(5, 3, 2, 2)  # any batch size in eval mode
    torch.testing.assert_close(split(x), bn(x))
    assert split.state_dict().keys() == bn.state_dict().keys()
    nn.BatchNorm2d(3).load_state_dict(split.state_dict())


def test_conversion_replaces_every_batchnorm_and_sync_bn_leaves_it_alone():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4 * 4)))
    convert_split_batchnorm(net, 2)
    assert isinstance(net[1], SplitBatchNorm) and isinstance(net[2][1], SplitBatchNorm) and net[1].num_splits == 2
    converted = convert_sync_batchnorm(net)  # the trainer's trainer.sync_bn conversion
    assert isinstance(converted[1], SplitBatchNorm) and isinstance(converted[2][1], SplitBatchNorm)


def test_uneven_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="batch of 6 does not split into 4"):
        SplitBatchNorm(3, 4)(torch.randn(6, 3))


@pytest.mark.parametrize("splits", [1, 2, 4])
def test_channels_last_input_gives_a_channels_last_output_equal_to_the_contiguous_path(splits):
    torch.manual_seed(0)
    x = torch.randn(8, 5, 3, 4, dtype=torch.float64) * 2 + 1
    weight = torch.randn(8, 5, 3, 4, dtype=torch.float64)
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        bn = SplitBatchNorm(5, splits).double()
        torch.manual_seed(1)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        inp = x.clone().contiguous(memory_format=memory_format).requires_grad_(True)
        out = bn(inp)
        (out * weight).sum().backward()
        results.append((out, inp.grad, bn.weight.grad, bn.running_mean.clone(), bn.running_var.clone()))
    (out_c, *rest_c), (out_cl, *rest_cl) = results
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and not out_cl.is_contiguous()
    torch.testing.assert_close(out_cl, out_c, rtol=1e-12, atol=1e-12)
    for a, b in zip(rest_cl, rest_c):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
