"""Multi-crop (Caron et al., SwAV 2020): crops of one resolution go through the backbone together.

``batch.views`` holds the global crops, then the small crops. Concatenating the consecutive crops of
each resolution gives one backbone pass per resolution (two for 2×224 + 6×96) instead of one per
crop, and BatchNorm statistics shared by the crops of a pass, as SwAV's ``ResNet.forward`` and DINO's
``MultiCropWrapper`` do.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def resolution_groups(crops: Sequence[Tensor]) -> list[slice]:
    """Runs of consecutive crops with the same spatial size, as slices into ``crops``."""
    if not crops:
        raise ValueError("no crops to group")
    groups, start = [], 0
    for i in range(1, len(crops) + 1):
        if i == len(crops) or crops[i].shape[-2:] != crops[start].shape[-2:]:
            groups.append(slice(start, i))
            start = i
    return groups


def forward_by_resolution(module: Callable[[Tensor], Tensor], crops: Sequence[Tensor]) -> Tensor:
    """``module`` applied to every crop, one call per run of same-resolution crops.

    Returns the outputs of all crops concatenated along the batch in crop order: rows
    ``[v·B, (v+1)·B)`` belong to crop ``v`` when every crop has ``B`` samples.
    """
    outputs = [
        module(crops[group.start] if group.stop - group.start == 1 else torch.cat(list(crops[group]), dim=0))
        for group in resolution_groups(crops)
    ]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
