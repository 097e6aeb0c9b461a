"""The built-in procedurally generated dataset: ``shapes``.

Every image shows 2-4 copies of **one** shape - the class - drawn at random positions, sizes and
rotations, each copy in its own random colour, over a smooth multi-coloured background (four random
corner colours blended bilinearly). Images are rendered with 2x supersampling, so edges are
anti-aliased, and depend only on torch.

Why this design: a self-supervised method learns what two augmented views of one image share and
what tells images apart. With the usual recipe (random resized crops, colour jitter, grayscale,
flips) the only thing every view of an image keeps is *the shape*:

* crops see different parts of the background gradient, so a crop's background colour is not a
  stable signature of its image (a single flat background colour was: SSL learnt to tell images
  apart by it and ignored the shapes);
* the shapes of one image each have their own colour, and a crop often holds only some of them,
  so the foreground colours change from view to view too, and colour jitter/grayscale blur the rest;
* every copy in an image is the class shape, so (almost) any crop contains an instance, or a large
  part of one, of the class; rotation, scale, position and polarity (dark shapes on a light
  background or the reverse) vary freely, so neither pixel positions nor colour statistics reveal
  the class (a colour-histogram kNN classifier is close to chance, see the tests).

The classes differ by geometry only (filled/hollow, straight/curved edges, convex/concave), and
none is a rotation of another, so full random rotation keeps them distinct. There is no pixel
noise: i.i.d. noise is a per-image texture that survives the augmentations.

Images and labels are deterministic functions of ``(num_images, image_size, seed)``; classes are
balanced (counts differ by at most one). Train and test splits use different seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SHAPE_CLASSES: tuple[str, ...] = (
    "disk",
    "square",
    "triangle",
    "cross",
    "ring",
    "frame",
    "star",
    "crescent",
    "heart",
    "hourglass",
)

_SUPERSAMPLE = 2
_CHUNK = 2048


# ------------------------------------------------------------------------------------------------
# Shapes as implicit masks in local coordinates (u, v): the shape fits roughly in the unit disk.


def _disk(u: Tensor, v: Tensor) -> Tensor:
    return u * u + v * v <= 0.85**2


def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.68


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    # Equilateral triangle inscribed in a circle of radius 1: three half-planes at distance 0.5.
    inside = v >= -0.5
    for angle in (math.pi / 6, 5 * math.pi / 6):
        inside &= u * math.cos(angle) + v * math.sin(angle) <= 0.5
    return inside


def _cross(u: Tensor, v: Tensor) -> Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.28) & (av <= 0.92)) | ((av <= 0.28) & (au <= 0.92))


def _ring(u: Tensor, v: Tensor) -> Tensor:
    r2 = u * u + v * v
    return (r2 <= 0.92**2) & (r2 >= 0.52**2)


def _frame(u: Tensor, v: Tensor) -> Tensor:
    m = torch.maximum(u.abs(), v.abs())
    return (m <= 0.74) & (m >= 0.4)


def _star(u: Tensor, v: Tensor) -> Tensor:
    # Five-pointed star: fold the angle into [0, pi/5] (tip on the x axis), then test the point
    # against the edge from the tip (1, 0) to the inner vertex at radius 0.42, angle pi/5.
    sector = 2 * math.pi / 5
    theta = torch.atan2(v, u)
    phi = (torch.remainder(theta + sector / 2, sector) - sector / 2).abs()
    r = torch.sqrt(u * u + v * v)
    x, y = r * torch.cos(phi), r * torch.sin(phi)
    qx, qy = 0.42 * math.cos(sector / 2), 0.42 * math.sin(sector / 2)
    # Inside when (tip -> point) is on the origin side of (tip -> inner vertex).
    return (qx - 1.0) * y - qy * (x - 1.0) >= 0


def _crescent(u: Tensor, v: Tensor) -> Tensor:
    return (u * u + v * v <= 0.9**2) & ((u - 0.42) ** 2 + v * v >= 0.7**2)


def _heart(u: Tensor, v: Tensor) -> Tensor:
    x, y = 1.25 * u, -1.25 * v + 0.12
    s = x * x + y * y - 1
    return s * s * s - x * x * y * y * y <= 0


def _hourglass(u: Tensor, v: Tensor) -> Tensor:
    return (u.abs() <= 0.85 * v.abs()) & (v.abs() <= 0.9)


_SHAPES = (_disk, _square, _triangle, _cross, _ring, _frame, _star, _crescent, _heart, _hourglass)
assert len(_SHAPES) == len(SHAPE_CLASSES)


# ------------------------------------------------------------------------------------------------
# Colours


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """HSV in [0, 1] (any shape) to RGB with a trailing dimension of 3."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    channel = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v.unsqueeze(-1) * (1 - s.unsqueeze(-1) * channel)


def _random_colours(shape: tuple[int, ...], dark: Tensor, g: torch.Generator) -> Tensor:
    """Random colours (shape + (3,)): any hue, saturation in [0.35, 1]; value in [0.08, 0.42] where
    ``dark`` (broadcast to ``shape``) is True, else in [0.62, 1]."""
    h = torch.rand(shape, generator=g)
    s = 0.35 + 0.65 * torch.rand(shape, generator=g)
    t = torch.rand(shape, generator=g)
    v = torch.where(dark, 0.08 + 0.34 * t, 0.62 + 0.38 * t)
    return _hsv_to_rgb(h, s, v)


# ------------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class _Layout:
    """How images are composed (exploration knobs; :func:`generate_shapes` uses the default)."""

    instances: tuple[int, int] = (1, 1)  # min, max copies of the class shape per image
    radius: tuple[float, float] = (0.45, 0.75)  # in units of half the image width
    jitter: float = 0.3  # max centre offset (single instance) in units of half the image width
    rotation: float = 20.0  # max rotation in degrees either way (180: any orientation)
    dark_shapes_p: float = 0.5  # probability of dark shapes on a light background (else the reverse)
    gradient_fill: bool = True  # shapes filled with a two-colour gradient instead of a flat colour


def _render_chunk(labels: Tensor, image_size: int, g: torch.Generator, layout: _Layout) -> Tensor:
    n = labels.shape[0]
    size = image_size * _SUPERSAMPLE
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")

    # Polarity: dark shapes on a light background, or light shapes on a dark one.
    dark_shapes = torch.rand(n, generator=g) < layout.dark_shapes_p

    # Background: four random corner colours blended bilinearly.
    corners = _random_colours((n, 4), ~dark_shapes[:, None], g)  # (n, 4, 3)
    wx = ((xx + 1) / 2)[None, None]
    wy = ((yy + 1) / 2)[None, None]
    c = corners.permute(0, 2, 1)[:, :, :, None, None]  # (n, 3, 4, 1, 1)
    canvas = (1 - wy) * ((1 - wx) * c[:, :, 0] + wx * c[:, :, 1]) + wy * ((1 - wx) * c[:, :, 2] + wx * c[:, :, 3])

    k_max = layout.instances[1]
    count = torch.randint(layout.instances[0], k_max + 1, (n,), generator=g)
    lo, hi = layout.radius
    radius = lo + (hi - lo) * torch.rand(n, k_max, generator=g)
    if k_max == 1:
        cx = (2 * torch.rand(n, 1, generator=g) - 1) * layout.jitter
        cy = (2 * torch.rand(n, 1, generator=g) - 1) * layout.jitter
    else:
        # Each copy in a distinct cell of a 2x2 grid (spread out, little overlap).
        cells = torch.argsort(torch.rand(n, 4, generator=g), dim=1)[:, :k_max]
        slack = (0.5 - 0.5 * radius).clamp(min=0.0)
        cx = (cells % 2).float() - 0.5 + (2 * torch.rand(n, k_max, generator=g) - 1) * slack
        cy = (cells // 2).float() - 0.5 + (2 * torch.rand(n, k_max, generator=g) - 1) * slack
    angle = math.radians(layout.rotation) * (2 * torch.rand(n, k_max, generator=g) - 1)
    colour_a = _random_colours((n, k_max), dark_shapes[:, None], g)  # (n, K, 3)
    colour_b = _random_colours((n, k_max), dark_shapes[:, None], g) if layout.gradient_fill else colour_a
    fill_angle = 2 * math.pi * torch.rand(n, k_max, generator=g)

    for k in range(k_max):
        present = count > k
        cos, sin = torch.cos(angle[:, k]), torch.sin(angle[:, k])
        for cls, shape_fn in enumerate(_SHAPES):
            idx = torch.nonzero(present & (labels == cls)).flatten()
            if idx.numel() == 0:
                continue
            dx = xx[None] - cx[idx, k, None, None]
            dy = yy[None] - cy[idx, k, None, None]
            r = radius[idx, k, None, None]
            u = (cos[idx, None, None] * dx + sin[idx, None, None] * dy) / r
            v = (-sin[idx, None, None] * dx + cos[idx, None, None] * dy) / r
            mask = shape_fn(u, v).unsqueeze(1)  # (m, 1, size, size)
            # Fill: gradient from colour a to colour b across the shape, in a random direction.
            fa = fill_angle[idx, k, None, None]
            t = ((u * torch.cos(fa) + v * torch.sin(fa)) * 0.5 + 0.5).clamp_(0, 1).unsqueeze(1)
            a = colour_a[idx, k, :, None, None]
            b = colour_b[idx, k, :, None, None]
            canvas[idx] = torch.where(mask, a + (b - a) * t, canvas[idx])

    if _SUPERSAMPLE > 1:
        canvas = torch.nn.functional.avg_pool2d(canvas, _SUPERSAMPLE)
    return (canvas * 255).round_().clamp_(0, 255).to(torch.uint8)


def _generate(num_images: int, image_size: int, seed: int, layout: _Layout) -> tuple[Tensor, Tensor]:
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    g = torch.Generator().manual_seed(int(seed))
    num_classes = len(SHAPE_CLASSES)
    labels = torch.arange(num_images, dtype=torch.int64) % num_classes
    labels = labels[torch.randperm(num_images, generator=g)]
    images = torch.empty((num_images, 3, image_size, image_size), dtype=torch.uint8)
    for start in range(0, num_images, _CHUNK):
        stop = min(num_images, start + _CHUNK)
        images[start:stop] = _render_chunk(labels[start:stop], image_size, g, layout)
    return images, labels


def generate_shapes(num_images: int, image_size: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Generate the shapes dataset.

    Args:
        num_images: number of images; classes are balanced (their counts differ by at most one).
        image_size: height and width in pixels (>= 8; 32 is the quickstart's size).
        seed: the random seed; use different seeds for the train and test splits.

    Returns:
        ``(images, labels)``: uint8 ``(num_images, 3, image_size, image_size)`` and int64
        ``(num_images,)`` with values in ``range(len(SHAPE_CLASSES))``. Deterministic in
        ``(num_images, image_size, seed)``.
    """
    return _generate(num_images, image_size, seed, _Layout())
