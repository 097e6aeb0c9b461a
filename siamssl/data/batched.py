"""The batched augmentation engine: a whole batch of uint8 images to its augmented views in a few
tensor operations, on any device (CPU tensors, or CUDA where the images live on the GPU).

It realises the same recipe (:class:`~siamssl.data.config.AugmentConfig`) as the per-sample
torchvision pipeline of :mod:`siamssl.data.augment`, with the same parameter distributions
(torchvision v2 ``RandomResizedCrop``, ``RandomHorizontalFlip``, ``RandomApply(ColorJitter)``,
``RandomGrayscale``, ``RandomApply(GaussianBlur)``, ``RandomSolarize(128)``, ``Normalize``) and the same
formulas, but computed for every sample at once:

* **Random parameters** are drawn on the host, for the whole batch in one call, from an explicit
  :class:`torch.Generator` (:meth:`BatchedAugment.draw`): 36 uniforms per sample and view. The crop box
  is resolved from them exactly as torchvision does (10 attempts of area fraction × log-uniform aspect
  ratio, the first box that fits, else the central fallback). Because every random decision is known
  on the host, "apply with probability p" selects a subset with host-side indices: no data-dependent
  shape is ever read back from the device, so nothing synchronizes with the GPU.
* **Crop, resize and flip** are two batched matrix products, ``out = Wy · image · Wxᵀ``, with one pair
  of interpolation matrices per sample. The matrices hold the same antialiased separable filters as
  ``torch.nn.functional.interpolate(..., antialias=True)`` (triangle filter for bilinear, Keys cubic
  a = −0.5 for bicubic, widened by the scale factor when downscaling, renormalized at the crop border):
  torchvision's ``resized_crop(antialias=True)`` to float rounding, with no aliasing when a crop of a
  large image is shrunk and no reads outside the crop box. A horizontal flip reverses the rows of
  ``Wx``. Images of different sizes (folders decoded on the fly) are cropped into groups of
  similar crop sizes and resized with the same matrices (:mod:`siamssl.data.crops`).
* **Colour jitter** follows torchvision's float formulas: brightness ``f·x``, contrast blend with the
  mean of the grayscale image, saturation blend with the grayscale image, hue rotation in HSV;
  each followed by a clamp to [0, 1]. Every sample has its own random order of the four operations:
  the four "slots" are processed in turn, each slot blending every sample with its own factor and
  target (``f·x + (1 − f)·target``: brightness targets 0, contrast the grayscale mean, saturation the
  grayscale image; samples whose slot holds hue, or that skip jitter, get f = 1, an exact no-op),
  and the hue rotation runs on the subset whose slot holds hue.
* **Grayscale** (ITU-R 601-2 luma, as torchvision), **Gaussian blur** (separable, reflect padding,
  per-sample σ, kernel ≈ 10% of the crop like :func:`siamssl.data.augment.blur_kernel_size`) and
  **solarize** (pixels ≥ 128/255 inverted; on float values the threshold is 127.5/255, the value that
  rounds to 128) run on the subsets drawn for them; normalization is last.

**uint8 levels.** torchvision's pipeline runs on uint8 images: it rounds after the resize and the
blur and truncates (``.to(torch.uint8)``) after every jitter blend, the grayscale conversion and the
hue round trip, with contrast and saturation blending towards the floored grayscale. The engine
computes in float32 on the integer levels 0-255 and applies the same rounding and truncation at the
same places (:attr:`BatchedAugment.uint8_levels`, on by default), so for the same parameters its
views are torchvision's up to the fixed-point rounding of torchvision's uint8 resize kernel (a pixel
now and then one level off; ``scripts/augment_parity.py``, ``tests/data/test_augment_parity.py``).
Without it (float kernels, the engine before issue 11), truncation is the only difference, but a
systematic one: the float views were brighter by about 1.1/255 on average after colour jitter.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from siamssl.data.augment import blur_kernel_size
from siamssl.data.config import AugmentConfig

# Columns of the uniform draws of one sample and view.
_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback
_AREA = slice(0, 10)
_LOG_RATIO = slice(10, 20)
_POSITION = slice(20, 22)
_FLIP, _JITTER = 22, 23
_FACTORS = slice(24, 28)
_ORDER = slice(28, 32)
_GRAY, _BLUR, _SIGMA, _SOLARIZE = 32, 33, 34, 35
NUM_UNIFORMS = 36

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
SOLARIZE_THRESHOLD = 127.5 / 255.0  # float value that a uint8 pipeline rounds to 128 (torchvision's threshold)
UINT8_FROM_FLOAT = 255.0 + 1.0 - 1e-3  # torchvision's float -> uint8 conversion: ⌊x·(255 + 1 − ε)⌋


@dataclass(frozen=True)
class ViewGroup:
    """Views cropped to one size from the same images: the global crops or the local (small) crops.

    ``blur_p``/``solarize_p`` hold one probability per view of the group.
    """

    views: int
    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    blur_p: tuple[float, ...]
    solarize_p: tuple[float, ...]


@dataclass
class ViewParams:
    """The resolved random parameters of one :class:`ViewGroup` for N samples, host tensors with a
    leading (views, N) shape.

    ``boxes``: (top, left, height, width) of each crop in its source image. ``jitter_factors``:
    brightness, contrast and saturation factors and hue shift (1, 1, 1, 0 where jitter is not applied
    or a component is disabled). ``jitter_order``: the order of the four operations (0 brightness,
    1 contrast, 2 saturation, 3 hue), a permutation per sample. ``blur_sigma`` is used where ``blur``.
    """

    boxes: Tensor
    flip: Tensor
    jitter: Tensor
    jitter_factors: Tensor
    jitter_order: Tensor
    grayscale: Tensor
    blur: Tensor
    blur_sigma: Tensor
    solarize: Tensor

    @property
    def num_samples(self) -> int:
        return int(self.flip.shape[1])


_PARAM_FIELDS = [f.name for f in fields(ViewParams)]


@dataclass
class AugmentDraws:
    """Uniform draws of a batch, one (views, N, 36) float64 tensor per view group; host memory.

    Drawn for a whole global batch, then :meth:`slice` gives one process its samples: the
    augmentation of a sample does not depend on how many processes share the batch."""

    uniforms: list[Tensor]

    def slice(self, start: int, stop: int) -> "AugmentDraws":
        return AugmentDraws([u[:, start:stop] for u in self.uniforms])

    @property
    def num_samples(self) -> int:
        return int(self.uniforms[0].shape[1])


ImageBatch = Union[Tensor, Sequence[Tensor]]


class BatchedAugment:
    """Maps a batch of uint8 images, (B, 3, H, W) or a list of (3, Hᵢ, Wᵢ), to the list of normalized
    float32 views (B, 3, S, S) of an :class:`AugmentConfig`: ``cfg.views`` global crops then
    ``cfg.small_crops`` local crops, on the images' device.

    ``augment(images, generator=g)`` draws the random parameters from ``g`` (a CPU generator);
    ``augment(images, draws=augment.draw(n, g).slice(a, b))`` uses draws made for a larger batch.
    """

    #: CPU working-set size of one chunk of samples (fits in a typical L2 cache).
    cpu_chunk_bytes = 1 << 20
    #: Python threads that process CPU chunks (None: torch.get_num_threads()).
    cpu_threads: Optional[int] = None
    #: Work in uint8 levels (0-255) and quantize after each operation exactly where torchvision's
    #: uint8 kernels do (round after resize and blur, truncate after every jitter blend, grayscale
    #: and hue): the views of ``data.pipeline=torchvision`` for the same parameters. False: float
    #: kernels throughout (no quantization; the engine before issue 11, whose views were brighter by
    #: about 1.1/255 on average after colour jitter).
    uint8_levels: bool = True

    def __init__(self, cfg: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> None:
        self.cfg = cfg
        self.mean = tuple(float(m) for m in (cfg.mean or mean))
        self.std = tuple(float(s) for s in (cfg.std or std))
        self.interpolation = cfg.interpolation
        self._constants: dict[torch.device, tuple[Tensor, Tensor]] = {}
        brightness, contrast, saturation, hue = (float(v) for v in cfg.jitter)
        # torchvision ColorJitter ranges: [max(0, 1 − v), 1 + v] for the factors, [−h, h] for hue.
        self.factor_ranges = [(max(0.0, 1.0 - v), 1.0 + v) for v in (brightness, contrast, saturation)] + [(-hue, hue)]
        self.jitter_enabled = cfg.jitter_p > 0 and any(v > 0 for v in (brightness, contrast, saturation, hue))
        self.groups = [
            ViewGroup(
                cfg.views, cfg.crop_size, tuple(cfg.crop_scale), tuple(cfg.crop_ratio),
                tuple(cfg.view_probability("blur_p", v) for v in range(cfg.views)),
                tuple(cfg.view_probability("solarize_p", v) for v in range(cfg.views)),
            )
        ]
        if cfg.small_crops > 0:
            self.groups.append(
                ViewGroup(
                    cfg.small_crops, cfg.small_crop_size, tuple(cfg.small_crop_scale), tuple(cfg.crop_ratio),
                    (cfg.small_blur_p,) * cfg.small_crops, (0.0,) * cfg.small_crops,
                )
            )

    # ------------------------------------------------------------------------------ randomness

    def draw(self, batch_size: int, generator: torch.Generator) -> AugmentDraws:
        """All uniforms of a batch of ``batch_size`` samples, in one fixed order from ``generator``."""
        return AugmentDraws(
            [torch.rand(g.views, batch_size, NUM_UNIFORMS, dtype=torch.float64, generator=generator) for g in self.groups]
        )

    def resolve(self, group: ViewGroup, uniforms: Tensor, heights: Tensor, widths: Tensor) -> ViewParams:
        """Turn one group's uniforms into parameters for images of the given sizes ((N,) tensors)."""
        boxes = crop_boxes(uniforms, heights, widths, group.scale, group.ratio)
        flip = uniforms[..., _FLIP] < self.cfg.flip_p
        jitter = uniforms[..., _JITTER] < self.cfg.jitter_p if self.jitter_enabled else torch.zeros_like(flip)
        low = torch.tensor([r[0] for r in self.factor_ranges], dtype=torch.float64)
        high = torch.tensor([r[1] for r in self.factor_ranges], dtype=torch.float64)
        factors = low + (high - low) * uniforms[..., _FACTORS]
        identity = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
        factors = torch.where(jitter.unsqueeze(-1), factors, identity).float()
        order = uniforms[..., _ORDER].argsort(dim=-1)  # a uniformly random permutation per sample
        per_view = lambda p: torch.tensor(p, dtype=torch.float64).view(-1, 1)  # noqa: E731
        return ViewParams(
            boxes=boxes,
            flip=flip,
            jitter=jitter,
            jitter_factors=factors,
            jitter_order=order,
            grayscale=uniforms[..., _GRAY] < self.cfg.grayscale_p,
            blur=uniforms[..., _BLUR] < per_view(group.blur_p),
            blur_sigma=(self.cfg.blur_sigma[0] + (self.cfg.blur_sigma[1] - self.cfg.blur_sigma[0]) * uniforms[..., _SIGMA]).float(),
            solarize=uniforms[..., _SOLARIZE] < per_view(group.solarize_p),
        )

    # ---------------------------------------------------------------------------------- apply

    def _normalization(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Mean and 1/std as (1, 3, 1, 1) tensors on ``device``, made once per device (creating a
        CUDA tensor from Python numbers is a blocking copy)."""
        if device not in self._constants:
            mean = torch.tensor(self.mean).view(1, 3, 1, 1)
            inv_std = torch.tensor([1.0 / s for s in self.std]).view(1, 3, 1, 1)
            self._constants[device] = (mean.to(device), inv_std.to(device))
        return self._constants[device]

    def __call__(
        self, images: ImageBatch, draws: Optional[AugmentDraws] = None, generator: Optional[torch.Generator] = None
    ) -> list[Tensor]:
        count = len(images)
        if draws is None:
            draws = self.draw(count, generator if generator is not None else torch.default_generator)
        if draws.num_samples != count:
            raise ValueError(f"draws for {draws.num_samples} samples but {count} images")
        heights, widths = image_sizes(images)
        views: list[Tensor] = []
        for group, uniforms in zip(self.groups, draws.uniforms):
            params = self.resolve(group, uniforms, heights, widths)
            views.extend(self.apply(images, group, params).unbind(0))
        return views

    def apply(self, images: ImageBatch, group: ViewGroup, params: ViewParams) -> Tensor:
        """The views (views, N, 3, S, S) of one group with the given parameters.

        On a GPU the batch is processed in one piece. On the CPU it is cut into chunks whose working
        set fits in cache, processed by ``cpu_threads`` Python threads (default: torch's thread
        count) with torch's intra-op parallelism at 1 meanwhile: chunks need no synchronization,
        whereas splitting every small operation over OpenMP threads costs a fork/join per operation
        and collapses when the cores are shared with other processes. Every operation is per
        sample and single-threaded, so a sample's views are bitwise the same whatever the batch,
        the chunking or the number of threads (on a GPU: up to float rounding, as library kernels
        may pick different algorithms for different batch sizes)."""
        count = params.num_samples
        device = images.device if isinstance(images, Tensor) else images[0].device
        if device.type != "cpu":
            return self._apply_chunk(images, group, params)
        chunk = max(1, self.cpu_chunk_bytes // (group.views * 3 * group.size**2 * 4))
        out = torch.empty(group.views, count, 3, group.size, group.size, device=device)

        def run(start: int) -> None:
            stop = min(count, start + chunk)
            part = ViewParams(**{name: getattr(params, name)[:, start:stop] for name in _PARAM_FIELDS})
            out[:, start:stop] = self._apply_chunk(images[start:stop], group, part)

        starts = range(0, count, chunk)
        threads = min(len(starts), self.cpu_threads or torch.get_num_threads())
        intra_op = torch.get_num_threads()
        torch.set_num_threads(1)  # also for one chunk: a sample's values never depend on thread counts
        try:
            if threads <= 1:
                for start in starts:
                    run(start)
            else:
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    list(pool.map(run, starts))
        finally:
            torch.set_num_threads(intra_op)
        return out

    def _apply_chunk(self, images: ImageBatch, group: ViewGroup, params: ViewParams) -> Tensor:
        levels = self.uint8_levels
        x = resized_crops(images, params.boxes, params.flip, group.size, self.interpolation, levels=levels)
        views, count = x.shape[:2]
        x = x.view(views * count, 3, group.size, group.size)
        flat = lambda t: t.reshape(views * count, *t.shape[2:])  # noqa: E731
        device = x.device
        if bool(params.jitter.any()):
            x = color_jitter(x, flat(params.jitter_factors), flat(params.jitter_order), levels=levels)
        x = grayscale_subset(x, flat(params.grayscale), levels=levels)
        mask = flat(params.blur)
        if bool(mask.any()):
            index = mask.nonzero().squeeze(1)
            sigma = to_device(flat(params.blur_sigma)[index], device)
            index = to_device(index, device)
            blurred = gaussian_blur(x.index_select(0, index), sigma, blur_kernel_size(group.size))
            x.index_copy_(0, index, blurred.round_() if levels else blurred)  # torchvision rounds a uint8 blur
        x = solarize_subset(x, flat(params.solarize), levels=levels)
        mean, inv_std = self._normalization(device)
        if levels:
            x = x.mul_(1.0 / 255.0)
        x = x.sub_(mean).mul_(inv_std)
        return x.view(views, count, 3, group.size, group.size)


# ------------------------------------------------------------------------------------ functions


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Copy a small host tensor to ``device`` without synchronizing (pinned, non-blocking on CUDA)."""
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def image_sizes(images: ImageBatch) -> tuple[Tensor, Tensor]:
    """(heights, widths) of a batch as (N,) int64 host tensors (shapes are host metadata)."""
    if isinstance(images, Tensor):
        count, _, height, width = images.shape
        return torch.full((count,), height, dtype=torch.long), torch.full((count,), width, dtype=torch.long)
    return torch.tensor([int(im.shape[-2]) for im in images]), torch.tensor([int(im.shape[-1]) for im in images])


def crop_boxes(uniforms: Tensor, heights: Tensor, widths: Tensor, scale: Sequence[float], ratio: Sequence[float]) -> Tensor:
    """torchvision's ``RandomResizedCrop`` box, vectorized: (…, N, 4) int64 (top, left, height, width).

    Attempt k draws an area fraction uniform in ``scale`` and an aspect ratio log-uniform in ``ratio``;
    w = round(√(area·r)), h = round(√(area/r)); the first attempt that fits the image wins and its
    position is uniform over the valid offsets. When none of the 10 fits: the central crop of the
    largest box with the nearest allowed ratio."""
    height = heights.to(torch.float64).unsqueeze(-1)  # (N, 1), broadcasts over views and attempts
    width = widths.to(torch.float64).unsqueeze(-1)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * uniforms[..., _AREA])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * uniforms[..., _LOG_RATIO])
    w = torch.round(torch.sqrt(area * aspect))  # torch.round and Python's round both round half to even
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=-1, keepdim=True)  # index of the first fitting attempt
    found = fits.any(dim=-1)
    w = w.gather(-1, first).squeeze(-1)
    h = h.gather(-1, first).squeeze(-1)
    height, width = height.squeeze(-1), width.squeeze(-1)
    top = torch.floor(uniforms[..., _POSITION.start] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(uniforms[..., _POSITION.start + 1] * (width - w + 1)).clamp(max=width - w)

    low, high = min(ratio), max(ratio)
    in_ratio = width / height
    fallback_w = torch.where(in_ratio > high, torch.round(height * high), width)
    fallback_h = torch.where(in_ratio < low, torch.round(width / low), height)
    fallback_top = torch.floor((height - fallback_h) / 2)
    fallback_left = torch.floor((width - fallback_w) / 2)
    box = torch.stack(
        [
            torch.where(found, top, fallback_top.expand_as(top)),
            torch.where(found, left, fallback_left.expand_as(left)),
            torch.where(found, h, fallback_h.expand_as(h)),
            torch.where(found, w, fallback_w.expand_as(w)),
        ],
        dim=-1,
    )
    return box.long()


def _filter(x: Tensor, interpolation: str) -> Tensor:
    """The resampling kernels of PyTorch's antialiased interpolation (and Pillow's)."""
    x = x.abs()
    if interpolation == "bilinear":
        return (1.0 - x).clamp_(min=0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resize_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, interpolation: str) -> Tensor:
    """Interpolation matrices (M, out_size, in_size): row i resamples the window
    ``[start, start + length)`` of a line of ``in_size`` pixels at output pixel i, with the
    antialiased filter of ``F.interpolate(..., antialias=True)``: output pixel i is centred at
    ``scale·(i + ½)`` (scale = length/out_size) in window coordinates, the filter is stretched by
    ``max(scale, 1)``, pixels outside the window get no weight and each row sums to one."""
    start = start.to(torch.float32).view(-1, 1, 1)
    length = length.to(torch.float32).view(-1, 1, 1)
    scale = length / out_size
    stretch = scale.clamp(min=1.0)
    device = start.device
    centre = scale * (torch.arange(out_size, device=device, dtype=torch.float32).view(1, -1, 1) + 0.5)
    source = torch.arange(in_size, device=device, dtype=torch.float32).view(1, 1, -1) - start + 0.5
    weights = _filter((source - centre) / stretch, interpolation) * ((source > 0) & (source < length))
    return weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def resized_crops(images: ImageBatch, boxes: Tensor, flip: Tensor, size: int, interpolation: str, levels: bool = False) -> Tensor:
    """Crop every box of ``boxes`` (V, N, 4) from image n, resize it to ``size``² and mirror it where
    ``flip`` (V, N): float32 (V, N, 3, size, size) in [0, 1] on the images' device, or with ``levels``
    in uint8 levels [0, 255] rounded to integers, as torchvision's uint8 ``resized_crop``."""
    views, count = boxes.shape[:2]
    to_unit = 1.0 if levels else 1.0 / 255.0
    if isinstance(images, Tensor):
        device = images.device
        _, _, height, width = images.shape
        flat_boxes = to_device(boxes.reshape(-1, 4), device)
        rows = resize_weights(flat_boxes[:, 0], flat_boxes[:, 2], height, size, interpolation).mul_(to_unit)
        cols = resize_weights(flat_boxes[:, 1], flat_boxes[:, 3], width, size, interpolation)
        cols = torch.where(to_device(flip.reshape(-1, 1, 1), device), cols.flip(1), cols)
        # Columns first as one (3H × W)·(W × S) product per sample and view, then rows.
        source = images.to(torch.float32).reshape(1, count, 3 * height, width).expand(views, -1, -1, -1)
        x = torch.bmm(source.reshape(views * count, 3 * height, width), cols.transpose(1, 2))
        x = torch.matmul(rows.unsqueeze(1), x.view(views * count, 3, height, size))  # (V·N, 3, S, S)
        x = x.view(views, count, 3, size, size)
    else:  # images of different sizes: grouped by crop size, a few batched products per group
        from siamssl.data.crops import resized_crops_of_images

        x = resized_crops_of_images(list(images), boxes, flip, size, interpolation)
        if levels:
            x = x.mul_(255.0)
    # Cubic filters overshoot and normalized weights can sum to 1 + ε; torchvision's uint8 output
    # is in range too. Clamping here also keeps every later operation's input in range.
    if levels:
        return x.clamp_(0.0, 255.0).round_()
    return x.clamp_(0.0, 1.0)


def luma(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma of RGB images (M, 3, H, W) -> (M, 1, H, W), torchvision's grayscale."""
    r, g, b = x.unbind(dim=1)
    # separate multiplies and adds (no fused multiply-add): bitwise the same for any batch shape
    return (r * _LUMA[0]).add_(g * _LUMA[1]).add_(b * _LUMA[2]).unsqueeze(1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of images (M, 3, H, W) in [0, 1] by ``shift`` (M,) turns.

    With V = max, C = max − min and H' = 6·hue, every channel n of the result is
    V − C·clamp(min(k, 4 − k), 0, 1) with k = (n + H') mod 6 and n = 5, 3, 1 for R, G, B: the same
    RGB→HSV→RGB round trip as torchvision's ``adjust_hue`` (saturation C/V and value V unchanged),
    in fewer passes over the pixels."""
    r, g, b = x.unbind(dim=1)
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    red_max, green_max = value == r, value == g
    # Hue sector as torchvision breaks ties: red first, then green, then blue.
    numerator = torch.where(red_max, g - b, torch.where(green_max, b - r, r - g))
    sector = torch.where(red_max, 0.0, torch.where(green_max, 2.0, 4.0))
    hue6 = numerator.div_(torch.where(chroma > 0, chroma, 1.0)).add_(sector).add_(6.0 * shift.view(-1, 1, 1).to(x.dtype))
    offsets = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # 5, 3, 1 (a kernel, no copy)
    k = torch.remainder(hue6.unsqueeze(1) + offsets, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return ramp.mul_(-chroma.unsqueeze(1)).add_(value.unsqueeze(1))


def color_jitter(x: Tensor, factors: Tensor, order: Tensor, levels: bool = False) -> Tensor:
    """torchvision's ``ColorJitter`` with per-sample factors (M, 4) (brightness, contrast, saturation,
    hue shift) applied in a per-sample order (M, 4), to float images (M, 3, H, W) in [0, 1] (float
    kernels), or with ``levels`` to integer uint8 levels in [0, 255] with torchvision's uint8
    kernels' quantization: every blend truncated to an integer (``.to(uint8)``), contrast and
    saturation blending towards the floored grayscale, hue converted back as ``⌊x·255.999/255⌋``.

    Identity factors (1, 1, 1, 0) leave a sample unchanged (also with ``levels``: x is integral)."""
    device = x.device
    bound = 255.0 if levels else 1.0
    samples = torch.arange(order.shape[0])
    for slot in range(4):
        op = order[:, slot]
        factor = torch.where(op == HUE, torch.ones(()), factors[samples, op.clamp(max=SATURATION)])
        if bool((factor != 1.0).any()):
            weights = torch.stack([factor, (op == SATURATION).float(), (op == CONTRAST).float()], dim=1)
            weights = to_device(weights, device).view(-1, 3, 1, 1, 1)
            gray = luma(x)
            if levels:
                gray = gray.floor_()
            # target: 0 (brightness), the grayscale mean (contrast) or the grayscale image (saturation)
            target = gray * weights[:, 1] + gray.mean(dim=(-2, -1), keepdim=True) * weights[:, 2]
            # x·f + target·(1 − f) as torchvision's _blend, in separate IEEE operations: exactly x
            # where f = 1, and bitwise independent of how many samples share the call
            x = (x * weights[:, 0]).add_(target * (1.0 - weights[:, 0])).clamp_(0.0, bound)
            if levels:
                x = x.floor_()
        hue_here = (op == HUE) & (factors[:, HUE] != 0.0)
        if bool(hue_here.any()):
            index = hue_here.nonzero().squeeze(1)
            shift = to_device(factors[index, HUE], device)
            index = to_device(index, device)
            hued = adjust_hue(x.index_select(0, index), shift)  # scale-equivariant: levels in, levels out
            if levels:  # torchvision: to float [0, 1], HSV round trip, to uint8 by ⌊x·(255 + 1 − 0.001)⌋
                hued = hued.mul_(1.0 / 255.0).mul_(UINT8_FROM_FLOAT).floor_()
            x = x.index_copy(0, index, hued)
    return x


def grayscale_subset(x: Tensor, mask: Tensor, levels: bool = False) -> Tensor:
    """Replace the samples of ``mask`` (M,) by their 3-channel grayscale (with ``levels``: truncated
    to an integer level, as torchvision's uint8 ``rgb_to_grayscale``)."""
    if not bool(mask.any()):
        return x
    index = to_device(mask.nonzero().squeeze(1), x.device)
    gray = luma(x.index_select(0, index))
    if levels:
        gray = gray.floor_()
    return x.index_copy_(0, index, gray.expand(-1, 3, -1, -1))


def solarize_subset(x: Tensor, mask: Tensor, levels: bool = False) -> Tensor:
    """Invert the pixels ≥ 128/255 (with ``levels``: ≥ 128 of 255) of the samples of ``mask`` (M,)."""
    if not bool(mask.any()):
        return x
    threshold, bound = (128.0, 255.0) if levels else (SOLARIZE_THRESHOLD, 1.0)
    index = to_device(mask.nonzero().squeeze(1), x.device)
    chosen = x.index_select(0, index)
    return x.index_copy_(0, index, torch.where(chosen >= threshold, bound - chosen, chosen))


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalized 1-D Gaussian kernels (M, kernel_size), one per σ, as torchvision's ``gaussian_blur``."""
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    return torch.softmax(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1).float()) ** 2, dim=1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Blur images (M, C, H, W) with per-sample σ (M,): a separable depthwise convolution with
    reflect padding (torchvision's ``gaussian_blur`` with the same σ on both axes)."""
    count, channels, height, width = x.shape
    if count == 0:
        return x
    radius = kernel_size // 2
    kernels = gaussian_kernels(sigma, kernel_size).repeat_interleave(channels, dim=0)  # (M·C, k)
    flat = F.pad(x.reshape(1, count * channels, height, width), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernels.view(-1, 1, kernel_size, 1), groups=count * channels)
    flat = F.conv2d(flat, kernels.view(-1, 1, 1, kernel_size), groups=count * channels)
    return flat.view(count, channels, height, width)


