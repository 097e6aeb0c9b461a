"""The built-in procedurally generated dataset: ``shapes`` (no download, deterministic).

Every image shows 3-4 copies of **one** shape - the class - one per quadrant, at random sizes,
positions and small rotations (+-20 degrees), each copy filled with its own random two-colour
gradient, over a smooth multi-coloured background (four random corner colours blended
bilinearly). Shapes are always lighter than the background (dark, any hue; shapes light, any hue),
so their outline is visible in every colour channel and in grayscale. Images are rendered with 2x
supersampling (anti-aliased edges); only torch is needed.

Why this design: a self-supervised method learns what two augmented views of one image share.
With random resized crops (scale 0.2-1), colour jitter and grayscale, what all views of an image
share here is the *class shape*, and little else:

* a crop of a quarter of the image holds about one copy, so two views usually show **different
  copies** of the shape, in different colours, sizes and poses: the positive pair itself says
  "same shape, different colour/pose", the invariance that defines the class;
* crops see different parts of the background gradient and different copies, so colour is a weak
  signature of an image (with one flat background colour per image, SSL told images apart by that
  colour and ignored the shapes); colour jitter with a large hue range removes the rest;
* colour carries no class information at all (a colour-histogram kNN is at chance, see the tests),
  and a randomly initialised CNN, whose pooled features are dominated by colour, stays close to
  chance too, which leaves room to measure what training learns.

The classes differ by geometry only (filled/hollow, straight/curved edges, convex/concave) and none
is a rotation of another. There is no pixel noise: i.i.d. noise is a per-image texture that
survives the augmentations. Rotations are small because no standard augmentation rotates: full
rotation is a nuisance the views never teach invariance to, and slowed learning markedly.

Images and labels are deterministic functions of ``(num_images, image_size, seed)``; classes are
balanced (counts differ by at most one) and shuffled. Train and test splits use different seeds.
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


def _random_hsv(shape: tuple[int, ...], dark: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Random HSV colours: any hue, saturation in [0.35, 1]; value in [0.08, 0.42] where ``dark``
    (broadcast to ``shape``) is True, else in [0.62, 1]."""
    h = torch.rand(shape, generator=g)
    s = 0.35 + 0.65 * torch.rand(shape, generator=g)
    t = torch.rand(shape, generator=g)
    v = torch.where(dark, 0.08 + 0.34 * t, 0.62 + 0.38 * t)
    return h, s, v


def _random_colours(shape: tuple[int, ...], dark: Tensor, g: torch.Generator) -> Tensor:
    """Random RGB colours (``shape`` + (3,)) drawn as in :func:`_random_hsv`."""
    return _hsv_to_rgb(*_random_hsv(shape, dark, g))


# ------------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class _Layout:
    """How images are composed; :data:`LAYOUTS` names the supported ones."""

    instances: tuple[int, int] = (3, 4)  # min, max copies of the class shape per image
    radius: tuple[float, float] = (0.3, 0.45)  # in units of half the image width
    jitter: float = 0.3  # max centre offset of a single copy, in units of half the image width
    rotation: float = 20.0  # max rotation in degrees either way (180: any orientation)
    dark_shapes_p: float = 0.0  # probability of dark shapes on a light background (else the reverse)
    gradient_fill: bool = True  # shapes filled with a two-colour gradient instead of a flat colour


LAYOUTS: dict[str, _Layout] = {
    # The demo's dataset, described in the module docstring.
    "scattered": _Layout(),
    # One large copy per image, light on dark or dark on light: easier, and recognisable at 16 px
    # (the CPU tests' size), where the scattered copies are only a few pixels wide.
    "single": _Layout(instances=(1, 1), radius=(0.45, 0.75), dark_shapes_p=0.5),
}


def _render_chunk(labels: Tensor, image_size: int, g: torch.Generator, layout: _Layout) -> Tensor:
    n = labels.shape[0]
    size = image_size * _SUPERSAMPLE
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")

    # Polarity: dark shapes on a light background, or (the default, always) light shapes on a dark one.
    dark_shapes = torch.rand(n, generator=g) < layout.dark_shapes_p

    # Colours are affine or bilinear in the pixel coordinates, so each is a (n*3, 4) @ (4, size*size)
    # product with the basis [1, x, y, xy].
    basis = torch.stack([torch.ones_like(xx), xx, yy, xx * yy]).reshape(4, size * size)

    # Background: four random corner colours blended bilinearly.
    corners = _random_colours((n, 4), ~dark_shapes[:, None], g)  # (n, 4, 3) at (x, y) = (-1,-1), (1,-1), (-1,1), (1,1)
    c00, c10, c01, c11 = corners.unbind(1)
    coeffs = 0.25 * torch.stack(
        [c00 + c10 + c01 + c11, c10 + c11 - c00 - c01, c01 + c11 - c00 - c10, c00 + c11 - c10 - c01], dim=-1
    )  # (n, 3, 4)
    canvas = (coeffs.reshape(n * 3, 4) @ basis).reshape(n, 3, size, size)

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
    # Each copy's fill: a gradient between two colours of the same brightness band whose hues differ
    # by at most 60 degrees, so that the blend never darkens into the background's band.
    hue_a, sat_a, val_a = _random_hsv((n, k_max), dark_shapes[:, None], g)
    colour_a = _hsv_to_rgb(hue_a, sat_a, val_a)  # (n, K, 3)
    _, sat_b, val_b = _random_hsv((n, k_max), dark_shapes[:, None], g)
    hue_b = torch.remainder(hue_a + (torch.rand(n, k_max, generator=g) - 0.5) / 3, 1.0)
    colour_b = _hsv_to_rgb(hue_b, sat_b, val_b) if layout.gradient_fill else colour_a
    fill_angle = 2 * math.pi * torch.rand(n, k_max, generator=g)

    for k in range(k_max):
        # Local coordinates (u, v) of every pixel in copy k's frame (rotated, scaled to the unit
        # disk): affine in (x, y), so one matrix product per class.
        cos, sin = torch.cos(angle[:, k]), torch.sin(angle[:, k])
        inv_r = 1.0 / radius[:, k]
        uv_coeffs = torch.stack(
            [
                torch.stack([-inv_r * (cos * cx[:, k] + sin * cy[:, k]), inv_r * cos, inv_r * sin], dim=-1),
                torch.stack([-inv_r * (cos * cy[:, k] - sin * cx[:, k]), -inv_r * sin, inv_r * cos], dim=-1),
            ],
            dim=1,
        )  # (n, 2, 3)
        mask = torch.zeros(n, size, size, dtype=torch.bool)
        for cls, shape_fn in enumerate(_SHAPES):
            idx = torch.nonzero((labels == cls) & (count > k)).flatten()
            if idx.numel():
                uv = (uv_coeffs[idx].reshape(-1, 3) @ basis[:3]).reshape(-1, 2, size, size)
                mask[idx] = shape_fn(uv[:, 0], uv[:, 1])
        # Fill: a gradient from colour a (at t=0) to colour b (t=1) across the copy, in direction
        # psi, t = 0.5 + 0.5 * (projection of (x - cx, y - cy) on psi) / radius: affine in (x, y).
        psi = fill_angle[:, k]
        tx = 0.5 * torch.cos(psi) / radius[:, k]
        ty = 0.5 * torch.sin(psi) / radius[:, k]
        t0 = 0.5 - tx * cx[:, k] - ty * cy[:, k]
        ca, cd = colour_a[:, k], colour_b[:, k] - colour_a[:, k]  # (n, 3)
        fill_coeffs = torch.stack(
            [ca + cd * t0[:, None], cd * tx[:, None], cd * ty[:, None], torch.zeros_like(ca)], dim=-1
        )  # (n, 3, 4)
        fill = (fill_coeffs.reshape(n * 3, 4) @ basis).reshape(n, 3, size, size)
        canvas = torch.where(mask.unsqueeze(1), fill, canvas)

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


def generate_shapes(num_images: int, image_size: int = 32, seed: int = 0, layout: str = "scattered") -> tuple[Tensor, Tensor]:
    """Generate the shapes dataset.

    Args:
        num_images: number of images; classes are balanced (their counts differ by at most one).
        image_size: height and width in pixels (>= 8; 32 is the quickstart's size).
        seed: the random seed; use different seeds for the train and test splits.
        layout: ``scattered`` (3-4 copies, the default) or ``single`` (one large copy), see :data:`LAYOUTS`.

    Returns:
        ``(images, labels)``: uint8 ``(num_images, 3, image_size, image_size)`` and int64
        ``(num_images,)`` with values in ``range(len(SHAPE_CLASSES))``. Deterministic in
        ``(num_images, image_size, seed)``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown shapes layout {layout!r}; choose from: {', '.join(LAYOUTS)}")
    return _generate(num_images, image_size, seed, LAYOUTS[layout])
