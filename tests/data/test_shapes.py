"""The built-in procedural dataset: determinism, format, balance, and that the class is in the
geometry (a colour-free mask descriptor classifies it) and not in the colours (colour histograms
are at chance)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from siamssl.data.shapes import _SHAPES, SHAPE_CLASSES, generate_shapes

NUM_CLASSES = len(SHAPE_CLASSES)


@pytest.fixture(scope="module")
def splits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A small train split and a test split drawn with another seed, as the dataset builder does."""
    return generate_shapes(600, 32, seed=0), generate_shapes(300, 32, seed=1)


def _knn_top1(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """Weighted cosine kNN (weights exp(sim / 0.1)), top-1 accuracy."""
    sim = F.normalize(test_x.float(), dim=1) @ F.normalize(train_x.float(), dim=1).t()
    top_sim, top_idx = sim.topk(20, dim=1)
    votes = torch.zeros(test_x.shape[0], NUM_CLASSES)
    votes.scatter_add_(1, train_y[top_idx], (top_sim / 0.1).exp())
    return float((votes.argmax(1) == test_y).float().mean())


def _colour_histogram(images: torch.Tensor, bins: int = 4) -> torch.Tensor:
    """Joint RGB histogram with bins³ cells (square-rooted)."""
    q = (images.long() * bins // 256).clamp_(max=bins - 1)
    code = ((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]).flatten(1)
    hist = torch.zeros(images.shape[0], bins**3)
    hist.scatter_add_(1, code, torch.ones(code.shape))
    return hist.sqrt()


def _mask_patterns(images: torch.Tensor) -> torch.Tensor:
    """Colour-free geometry: threshold the HSV value (shapes are light, backgrounds dark) into a
    binary mask, then histogram its 3×3 binary patterns (edges, corners, curvature), uniform regions
    left out. Translation invariant, blind to every colour."""
    mask = (images.amax(1, keepdim=True) > 133).float()  # HSV value > 0.52
    weights = (2 ** torch.arange(9, dtype=torch.float32)).reshape(1, 1, 3, 3)
    code = F.conv2d(mask, weights).long().flatten(1)
    hist = torch.zeros(images.shape[0], 512)
    hist.scatter_add_(1, code, torch.ones(code.shape))
    hist[:, 0] = hist[:, 511] = 0
    return hist.sqrt()


def test_classes() -> None:
    assert len(SHAPE_CLASSES) == 10
    assert len(set(SHAPE_CLASSES)) == NUM_CLASSES
    assert len(_SHAPES) == NUM_CLASSES


@pytest.mark.parametrize("size", [8, 16, 32])
def test_format(size: int) -> None:
    images, labels = generate_shapes(23, image_size=size, seed=3)
    assert images.shape == (23, 3, size, size) and images.dtype == torch.uint8 and images.is_contiguous()
    assert labels.shape == (23,) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < NUM_CLASSES


def test_images_have_light_shapes_on_dark_backgrounds(splits) -> None:
    (images, _), _ = splits
    value = images.amax(1).flatten(1).float() / 255  # HSV value
    assert float(value.amax(1).min()) >= 0.6  # every image holds a light shape
    border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, :, 0], images[:, :, :, -1]], dim=2)
    assert float(border.amax(1).float().mean() / 255) < 0.5  # backgrounds are mostly dark
    foreground = (value > 0.52).float().mean(1)
    assert 0.05 < float(foreground.min()) and float(foreground.max()) < 0.6


def test_empty() -> None:
    images, labels = generate_shapes(0)
    assert images.shape == (0, 3, 32, 32) and labels.shape == (0,)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate_shapes(-1)
    with pytest.raises(ValueError):
        generate_shapes(4, image_size=4)


def test_deterministic() -> None:
    a_img, a_lab = generate_shapes(30, 24, seed=7)
    b_img, b_lab = generate_shapes(30, 24, seed=7)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)


def test_seeds_and_images_differ() -> None:
    a_img, a_lab = generate_shapes(100, 16, seed=0)
    b_img, b_lab = generate_shapes(100, 16, seed=1)
    assert not torch.equal(a_lab, b_lab)
    both = torch.cat([a_img, b_img]).flatten(1).double()
    # No image repeats, within a split or across the two.
    dist = torch.cdist(both, both) + torch.eye(200, dtype=torch.double) * 1e9
    assert float(dist.min()) > 0


@pytest.mark.parametrize("n", [10, 95, 1003])
def test_balanced_and_shuffled(n: int) -> None:
    _, labels = generate_shapes(n, 8, seed=2)
    counts = torch.bincount(labels, minlength=NUM_CLASSES)
    assert int(counts.max() - counts.min()) <= 1
    if n > 10:
        assert not torch.equal(labels, torch.arange(n) % NUM_CLASSES)


def test_colour_does_not_reveal_class(splits) -> None:
    """Colour histograms, which survive crops and mild colour jitter, are at chance (0.1) for the class."""
    (train_x, train_y), (test_x, test_y) = splits
    assert _knn_top1(_colour_histogram(train_x), train_y, _colour_histogram(test_x), test_y) < 0.2


def test_geometry_reveals_class(splits) -> None:
    """With every colour stripped, the local geometry of the shape mask classifies almost perfectly:
    the classes are distinguishable, by shape alone."""
    (train_x, train_y), (test_x, test_y) = splits
    assert _knn_top1(_mask_patterns(train_x), train_y, _mask_patterns(test_x), test_y) > 0.8


def test_classes_are_distinct_shapes() -> None:
    """No two class masks coincide under any rotation (IoU of the canonical masks < 0.8)."""
    axis = torch.linspace(-1.05, 1.05, 64)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    masks = []
    for fn in _SHAPES:
        rotations = []
        for step in range(36):
            c, s = math.cos(step * math.pi / 18), math.sin(step * math.pi / 18)
            rotations.append(fn(c * xx + s * yy, -s * xx + c * yy))
        masks.append(torch.stack(rotations))  # (36, 64, 64)
    for i in range(NUM_CLASSES):
        for j in range(i + 1, NUM_CLASSES):
            inter = (masks[i][:1] & masks[j]).sum((1, 2)).float()
            union = (masks[i][:1] | masks[j]).sum((1, 2)).float()
            iou = float((inter / union).max())
            assert iou < 0.8, (SHAPE_CLASSES[i], SHAPE_CLASSES[j], iou)



def test_layouts() -> None:
    """The layout changes the images, not the labels; an unknown layout is a clear error."""
    scattered, labels = generate_shapes(20, 16, seed=4)
    single, single_labels = generate_shapes(20, 16, seed=4, layout="single")
    assert torch.equal(labels, single_labels) and not torch.equal(scattered, single)
    assert torch.equal(single, generate_shapes(20, 16, seed=4, layout="single")[0])
    with pytest.raises(ValueError, match="unknown shapes layout 'grid'; choose from: scattered, single"):
        generate_shapes(4, layout="grid")
