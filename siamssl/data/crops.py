"""Resized crops of images of different sizes in a few batched operations.

Images decoded from files differ in size, so the crop+resize of the batched engine (two batched
matrix products over images of one size, :func:`siamssl.data.batched.resized_crops`) does not apply
directly, and one ``F.interpolate`` per image and view costs 1,024 calls per step for a batch of 512
with 2 views. Here the crops (any mix of images and views) are grouped by size on a geometric grid
(factor ``1.25`` per side by default), each group is copied into one zero-padded uint8 tensor of its
largest crop, and resized with the same separable antialiased filter matrices as the batched engine
(:func:`~siamssl.data.batched.resize_weights`): each crop's matrices weight its own rows and columns
only, so the padding never contributes. Results equal ``F.interpolate(crop, antialias=True)`` to float
rounding; the work is a handful of kernels per size group instead of several per crop, and the
padding adds at most 1.25² = 56% to a group's multiply work. On the CPU, where arithmetic rather
than calls is the cost, each crop keeps its own ``F.interpolate``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from siamssl.data.batched import resize_weights, to_device

#: Crops whose heights (and widths) are within this factor of each other share a group.
GROUP_FACTOR = 1.25


def size_groups(heights: list[int], widths: list[int], factor: float = GROUP_FACTOR) -> list[list[int]]:
    """Positions of the crops grouped by size: crops whose sides fall in the same cell of a
    geometric grid of ``factor`` share a group (sorted, so the grouping is deterministic)."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    log_factor = math.log(factor)
    for i, (h, w) in enumerate(zip(heights, widths)):
        groups[(int(math.log(max(h, 1)) / log_factor), int(math.log(max(w, 1)) / log_factor))].append(i)
    return [groups[key] for key in sorted(groups)]


def resized_crops_of_images(
    images: list[Tensor], boxes: Tensor, flip: Tensor, size: int, interpolation: str,
    grouped: Optional[bool] = None, factor: float = GROUP_FACTOR,
) -> Tensor:
    """Crop box ``boxes[v, n]`` (top, left, height, width) of ``images[n]`` (uint8 (3, Hₙ, Wₙ), any
    sizes), resize it to ``size``² with the antialiased ``interpolation`` filter, mirror it where
    ``flip[v, n]``: float32 (V, N, 3, size, size) in [0, 1] (not clamped) on the images' device.
    ``boxes`` and ``flip`` are host tensors.

    ``grouped`` (default: on every device but the CPU) resizes by size groups with matrix products;
    otherwise each crop has its own ``F.interpolate``. The matrices cost O(h·w·size) multiply-adds
    per crop against the filter's O((h + size)·w·taps): free on a GPU, where the number of kernel
    launches is what counts, but several times slower on CPU cores for crops of large photos."""
    device = images[0].device
    if not (device.type != "cpu" if grouped is None else grouped):
        return _one_by_one(images, boxes, flip, size, interpolation)
    views, count = boxes.shape[:2]
    flat_boxes = boxes.reshape(-1, 4)
    tops, lefts, heights, widths = (column.tolist() for column in flat_boxes.unbind(1))
    flips = flip.reshape(-1).tolist()
    out = torch.empty(views * count, 3, size, size, device=device)
    for group in size_groups(heights, widths, factor):
        group_height = max(heights[i] for i in group)
        group_width = max(widths[i] for i in group)
        padded = torch.zeros(len(group), 3, group_height, group_width, dtype=torch.uint8, device=device)
        for slot, i in enumerate(group):
            top, left, h, w = tops[i], lefts[i], heights[i], widths[i]
            padded[slot, :, :h, :w] = images[i % count][:, top : top + h, left : left + w]
        zeros = torch.zeros(len(group), dtype=torch.long)
        lengths_h = torch.tensor([heights[i] for i in group])
        lengths_w = torch.tensor([widths[i] for i in group])
        rows = resize_weights(to_device(zeros, device), to_device(lengths_h, device), group_height, size, interpolation)
        cols = resize_weights(to_device(zeros, device), to_device(lengths_w, device), group_width, size, interpolation)
        mirrored = torch.tensor([flips[i] for i in group]).view(-1, 1, 1)
        cols = torch.where(to_device(mirrored, device), cols.flip(1), cols)
        # columns first as one (3H × W)·(W × S) product per crop, then rows (as the batched engine)
        x = torch.bmm(padded.to(torch.float32).view(len(group), 3 * group_height, group_width), cols.transpose(1, 2))
        x = torch.matmul(rows.mul_(1.0 / 255.0).unsqueeze(1), x.view(len(group), 3, group_height, size))
        out.index_copy_(0, to_device(torch.tensor(group), device), x)
    return out.view(views, count, 3, size, size)


def _one_by_one(images: list[Tensor], boxes: Tensor, flip: Tensor, size: int, interpolation: str) -> Tensor:
    views, count = boxes.shape[:2]
    mode = "bicubic" if interpolation == "bicubic" else "bilinear"
    crops = []
    for v in range(views):
        for n, image in enumerate(images):
            top, left, h, w = boxes[v, n].tolist()
            crop = image[:, top : top + h, left : left + w].unsqueeze(0).to(torch.float32)
            crop = F.interpolate(crop, size=(size, size), mode=mode, align_corners=False, antialias=True)
            crops.append(crop.flip(-1) if bool(flip[v, n]) else crop)
    return torch.cat(crops).view(views, count, 3, size, size).mul_(1.0 / 255.0)
