"""The batched augmentation engine against torchvision's per-sample transforms.

Two kinds of checks:
* sampled parameters and output statistics against torchvision on the same images (two-sample
  Kolmogorov-Smirnov tests at level 0.001, Bernoulli rates and means within 4 standard errors of the
  sample sizes used; all seeded, so the tests are deterministic);
* exact checks with forced parameters against torchvision's functional kernels: on float images the
  formulas agree to float rounding (1e-5); on uint8 images torchvision rounds or truncates after each
  operation, hence the stated quantization bounds.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from siamssl.data.augment import blur_kernel_size, view_transforms
from siamssl.data.batched import (
    SOLARIZE_THRESHOLD,
    BatchedAugment,
    ViewParams,
    adjust_hue,
    color_jitter,
    crop_boxes,
    gaussian_blur,
    resized_crops,
)
from siamssl.data.config import AugmentConfig

KS_C_001 = 1.949  # c(α) of the two-sample KS test at α = 0.001
IDENTITY_STATS = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
INTERP = {"bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC}


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, points, "right") / len(a) - np.searchsorted(b, points, "right") / len(b)).max())


def ks_critical(n: int, m: int) -> float:
    return KS_C_001 * math.sqrt((n + m) / (n * m))


def assert_rate(observed: torch.Tensor, p: float) -> None:
    n = observed.numel()
    rate = observed.double().mean().item()
    assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12, (rate, p)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """512 colourful 32×32 images: smooth random colour fields with a warm cast (so that hue and
    saturation changes show in colour statistics) and some pixel texture (so that blur and zoom
    show in gradient statistics)."""
    generator = torch.Generator().manual_seed(7)
    smooth = F.interpolate(torch.rand(512, 3, 4, 4, generator=generator), size=(32, 32), mode="bicubic", align_corners=False)
    texture = 0.15 * torch.rand(512, 3, 32, 32, generator=generator)
    cast = torch.tensor([0.9, 0.6, 0.3]).view(1, 3, 1, 1)
    return ((smooth * cast + texture) * 255).clamp(0, 255).round().to(torch.uint8)


def resolved(aug: BatchedAugment, count: int, height: int, width: int, seed: int = 0, group: int = 0) -> ViewParams:
    draws = aug.draw(count, torch.Generator().manual_seed(seed))
    sizes = torch.full((count,), height), torch.full((count,), width)
    return aug.resolve(aug.groups[group], draws.uniforms[group], *sizes)


def forced(count: int, height: int, width: int, views: int = 1, **fields) -> ViewParams:
    """Parameters that do nothing but a full-image crop, overridden by ``fields``."""
    shape = (views, count)
    params = dict(
        boxes=torch.tensor([0, 0, height, width]).expand(*shape, 4).clone(),
        flip=torch.zeros(shape, dtype=torch.bool),
        jitter=torch.zeros(shape, dtype=torch.bool),
        jitter_factors=torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(*shape, 4).clone(),
        jitter_order=torch.arange(4).expand(*shape, 4).clone(),
        grayscale=torch.zeros(shape, dtype=torch.bool),
        blur=torch.zeros(shape, dtype=torch.bool),
        blur_sigma=torch.ones(shape),
        solarize=torch.zeros(shape, dtype=torch.bool),
    )
    params.update(fields)
    return ViewParams(**params)


# ------------------------------------------------------------------------- sampled parameters


@pytest.mark.parametrize("height,width,scale,ratio", [(32, 32, (0.2, 1.0), (3 / 4, 4 / 3)), (24, 40, (0.08, 1.0), (3 / 4, 4 / 3))])
def test_crop_boxes_have_torchvision_distribution(height, width, scale, ratio):
    n = 3000
    aug = BatchedAugment(AugmentConfig(crop_scale=scale, crop_ratio=ratio), **IDENTITY_STATS)
    ours = resolved(aug, n, height, width).boxes[0].double()
    torch.manual_seed(0)
    transform = v2.RandomResizedCrop(32, scale=scale, ratio=ratio)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    theirs = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in (transform.make_params([image]) for _ in range(n))]).double()
    for boxes in (ours, theirs):  # every box lies inside the image
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= height).all() and (boxes[:, 1] + boxes[:, 3] <= width).all()

    def statistics(b):
        top, left, h, w = b.unbind(1)
        return {
            "area fraction": (h * w / (height * width)).numpy(),
            "log aspect ratio": torch.log(w / h).numpy(),
            "centre row": ((top + h / 2) / height).numpy(),
            "centre column": ((left + w / 2) / width).numpy(),
        }

    for name, (a, b) in {k: (v, statistics(theirs)[k]) for k, v in statistics(ours).items()}.items():
        assert ks_statistic(a, b) < ks_critical(n, n), name


@pytest.mark.parametrize("height,width,expected", [(32, 32, (8, 0, 16, 32)), (40, 20, (15, 0, 10, 20)), (20, 80, (0, 10, 20, 60))])
def test_crop_fallback_is_torchvision_central_crop(height, width, expected):
    """scale=(1, 1) with ratios (2, 3) never fits these images: all 10 attempts fail."""
    aug = BatchedAugment(AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0)), **IDENTITY_STATS)
    boxes = resolved(aug, 50, height, width).boxes[0]
    theirs = v2.RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(2.0, 3.0)).make_params([torch.zeros(3, height, width)])
    assert tuple(theirs.values()) == expected
    assert (boxes == torch.tensor(expected)).all()


def test_crop_first_fitting_attempt_wins():
    """Attempts are taken in order: the 3rd attempt is the first that fits, so it is used."""
    uniforms = torch.zeros(1, 1, 36, dtype=torch.float64)
    uniforms[0, 0, 0:10] = torch.tensor([1.0, 1.0, 0.25, 0.0, 0, 0, 0, 0, 0, 0])  # area fractions (scale (0, 1))
    uniforms[0, 0, 10:20] = torch.tensor([1.0, 0.0, 0.5] + [0.5] * 7)  # log-ratios in (log 1/4, log 4)
    uniforms[0, 0, 20:22] = 0.999
    box = crop_boxes(uniforms, torch.tensor([32]), torch.tensor([32]), (0.0, 1.0), (0.25, 4.0))
    assert box.tolist() == [[[16, 16, 16, 16]]]  # √(0.25·1024) = 16, placed at the last offset


def test_bernoulli_rates_match_configured_probabilities():
    cfg = AugmentConfig(blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2], small_crops=2, small_crop_size=16)
    aug = BatchedAugment(cfg, **IDENTITY_STATS)
    params = resolved(aug, 4000, 32, 32)
    assert_rate(params.flip, 0.5)
    assert_rate(params.jitter, 0.8)
    assert_rate(params.grayscale, 0.2)
    assert params.blur[0].all() and not params.solarize[0].any()
    assert_rate(params.blur[1], 0.1)
    assert_rate(params.solarize[1], 0.2)
    small = resolved(aug, 4000, 32, 32, group=1)
    assert_rate(small.blur, 0.5)
    assert not small.solarize.any()


def test_jitter_factors_order_and_blur_sigma_have_torchvision_distribution():
    n = 3000
    cfg = AugmentConfig(jitter=(1.2, 0.4, 0.2, 0.1), jitter_p=1.0, blur_p=1.0, blur_sigma=(0.1, 2.0))
    params = resolved(BatchedAugment(cfg, **IDENTITY_STATS), n, 32, 32)
    factors, order = params.jitter_factors[0].double(), params.jitter_order[0]
    torch.manual_seed(1)
    jitter = v2.ColorJitter(*cfg.jitter)
    blur = v2.GaussianBlur(3, sigma=cfg.blur_sigma)
    theirs = [jitter.make_params([torch.zeros(3, 8, 8)]) for _ in range(n)]
    their_factors = torch.tensor([[p[k] for k in ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")] for p in theirs])
    their_sigma = torch.tensor([blur.make_params([torch.zeros(3, 8, 8)])["sigma"][0] for _ in range(n)])
    ranges = [(0.0, 2.2), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]  # brightness' lower end clipped at 0
    for k, (low, high) in enumerate(ranges):
        assert low <= factors[:, k].min() and factors[:, k].max() <= high
        assert ks_statistic(factors[:, k].numpy(), their_factors[:, k].numpy()) < ks_critical(n, n), k
    assert ks_statistic(params.blur_sigma[0].numpy(), their_sigma.numpy()) < ks_critical(n, n)
    # order: a permutation per sample; each operation in each slot with probability 1/4, like randperm(4)
    assert (order.sort(dim=1).values == torch.arange(4)).all()
    their_order = torch.stack([p["fn_idx"] for p in theirs])
    for slot, op in itertools.product(range(4), range(4)):
        assert_rate(order[:, slot] == op, 0.25)
        assert_rate(their_order[:, slot] == op, 0.25)
    assert len({tuple(o) for o in order.tolist()}) == 24


def test_disabled_jitter_components_are_identity():
    cfg = AugmentConfig(jitter=(0.4, 0.0, 0.0, 0.0), jitter_p=0.5)
    params = resolved(BatchedAugment(cfg, **IDENTITY_STATS), 500, 32, 32)
    factors = params.jitter_factors[0]
    assert (factors[:, 1:3] == 1.0).all() and (factors[:, 3] == 0.0).all()
    assert (factors[~params.jitter[0]] == torch.tensor([1.0, 1.0, 1.0, 0.0])).all()


# ---------------------------------------------------------------------- exact operation checks


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("height,width,size", [(32, 32, 32), (64, 48, 24), (20, 30, 40)])
def test_crop_resize_flip_match_torchvision_resized_crop(interpolation, height, width, size):
    generator = torch.Generator().manual_seed(height)
    images = torch.randint(0, 256, (6, 3, height, width), dtype=torch.uint8, generator=generator)
    boxes = torch.tensor([[0, 0, height, width], [3, 4, height - 10, width - 20], [1, 2, 7, 9],
                          [height // 2, width // 3, height // 2, width // 3], [5, 0, height - 5, width], [0, 1, 2, 1]]).view(1, 6, 4)
    flip = torch.tensor([[False, True, False, True, False, True]])
    ours = resized_crops(images, boxes, flip, size, interpolation)[0]
    per_image_path = resized_crops(list(images), boxes, flip, size, interpolation)[0]
    assert (ours - per_image_path).abs().max() < 1e-5
    for n in range(6):
        top, left, h, w = boxes[0, n].tolist()
        ref = TF.resized_crop(images[n].float() / 255, top, left, h, w, [size, size], INTERP[interpolation], antialias=True)
        ref = TF.horizontal_flip(ref) if flip[0, n] else ref
        assert (ours[n] - ref.clamp(0, 1)).abs().max() < 1e-5, n
        if interpolation == "bilinear":  # torchvision's uint8 kernel: fixed-point weights, rounded output
            ref8 = TF.resized_crop(images[n], top, left, h, w, [size, size], INTERP[interpolation], antialias=True)
            ref8 = TF.horizontal_flip(ref8) if flip[0, n] else ref8
            assert (ours[n] * 255 - ref8.float()).abs().max() <= 1.0 + 1e-4, n


def test_flip_is_an_exact_mirror(images):
    aug = BatchedAugment(AugmentConfig(), **IDENTITY_STATS)
    params = resolved(aug, 64, 32, 32)
    flipped = ViewParams(**{**params.__dict__, "flip": ~params.flip})
    crops = resized_crops(images[:64], params.boxes, params.flip, 32, "bilinear")
    assert torch.equal(crops, resized_crops(images[:64], params.boxes, ~params.flip, 32, "bilinear").flip(-1))
    # later operations are per pixel, except sums over the image (contrast), which a mirror reorders
    a, b = aug.apply(images[:64], aug.groups[0], params), aug.apply(images[:64], aug.groups[0], flipped)
    assert (a - b.flip(-1)).abs().max() < 1e-5


@pytest.mark.parametrize("op,factor", [(0, 0.6), (0, 1.4), (1, 0.6), (1, 1.4), (2, 0.0), (2, 1.4), (3, -0.1), (3, 0.1), (3, 0.5)])
def test_each_jitter_operation_matches_torchvision(images, op, factor):
    kernel = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue][op]
    x = images[:16].float() / 255
    factors = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(16, 1)
    factors[:, op] = factor
    order = torch.tensor([op] + [o for o in range(4) if o != op]).repeat(16, 1)
    ours = color_jitter(x.clone(), factors, order)
    assert (ours - kernel(x, factor)).abs().max() < 1e-5
    # torchvision on uint8: truncation to uint8 (< 1/255); contrast and saturation also floor the
    # grayscale (< 1/255, scaled by |1 − f| ≤ 1); hue converts to float and back (< 1/255).
    bound = 1.0 if op in (0, 3) else 1.0 + abs(1.0 - factor)
    assert (ours * 255 - kernel(images[:16], factor).float()).abs().max() <= bound + 1e-3


def test_jitter_applies_each_samples_own_order_and_factors(images):
    permutations = torch.tensor(list(itertools.permutations(range(4))))  # all 24 orders, one per sample
    generator = torch.Generator().manual_seed(3)
    factors = torch.stack([0.6 + 0.8 * torch.rand(24, generator=generator) for _ in range(3)] + [0.2 * torch.rand(24, generator=generator) - 0.1], 1)
    x = images[:24].float() / 255
    ours = color_jitter(x.clone(), factors, permutations)
    kernels = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for n in range(24):
        ref = x[n]
        for op in permutations[n].tolist():
            ref = kernels[op](ref, float(factors[n, op]))
        assert (ours[n] - ref).abs().max() < 2e-5, n


def test_hue_of_gray_and_saturated_pixels():
    x = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.2, 0.2, 0.9]]).T.reshape(1, 3, 1, 5)
    for shift in (-0.5, -1 / 3, 0.0, 0.25, 1 / 3, 0.5):
        assert (adjust_hue(x, torch.tensor([shift])) - TF.adjust_hue(x[0], shift)).abs().max() < 1e-6


@pytest.mark.parametrize("kernel_size", [blur_kernel_size(32), blur_kernel_size(224)])
def test_blur_matches_torchvision_with_per_sample_sigma(images, kernel_size):
    sigma = torch.linspace(0.1, 2.0, 12)
    x = images[:12].float() / 255
    ours = gaussian_blur(x, sigma, kernel_size)
    for n in range(12):
        ref = TF.gaussian_blur(x[n], [kernel_size, kernel_size], [float(sigma[n])] * 2)
        assert (ours[n] - ref).abs().max() < 1e-5, n


@pytest.mark.parametrize("levels", [True, False])
def test_grayscale_and_solarize_match_torchvision(images, levels):
    """uint8 levels (the default): torchvision's uint8 kernels exactly; float kernels: its float ones."""
    aug = BatchedAugment(AugmentConfig(), **IDENTITY_STATS)
    aug.uint8_levels = levels
    mask = torch.arange(32).view(1, 32) % 3 == 0
    gray = aug.apply(images[:32], aug.groups[0], forced(32, 32, 32, grayscale=mask))[0]
    solar = aug.apply(images[:32], aug.groups[0], forced(32, 32, 32, solarize=mask))[0]
    for n in range(32):
        if levels:
            expected = TF.rgb_to_grayscale(images[n], 3) if mask[0, n] else images[n]
            assert torch.equal((gray[n] * 255).round().to(torch.uint8), expected), n
        else:
            x = images[n].float() / 255
            assert (gray[n] - (TF.rgb_to_grayscale(x, 3) if mask[0, n] else x)).abs().max() < 1e-6
        expected = TF.solarize(images[n], 128) if mask[0, n] else images[n]
        assert torch.equal((solar[n] * 255).round().to(torch.uint8), expected)


def test_forced_parameters_reproduce_the_torchvision_composition(images):
    """Every operation at once, with per-sample parameters, against torchvision's float kernels
    (the engine's float mode; its uint8 levels against the uint8 kernels: tests/data/test_augment_parity.py)."""
    mean, std = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
    cfg = AugmentConfig(crop_size=24, interpolation="bicubic")
    aug = BatchedAugment(cfg, mean, std)
    aug.uint8_levels = False
    count = 24
    generator = torch.Generator().manual_seed(5)
    bit = lambda p: (torch.rand(1, count, generator=generator) < p)  # noqa: E731
    params = forced(
        count, 32, 32,
        boxes=torch.stack([torch.randint(0, 8, (count,), generator=generator), torch.randint(0, 8, (count,), generator=generator),
                           torch.randint(10, 25, (count,), generator=generator), torch.randint(10, 25, (count,), generator=generator)], 1).view(1, count, 4),
        flip=bit(0.5), jitter=bit(0.8), grayscale=bit(0.3), blur=bit(0.5), solarize=bit(0.3),
        jitter_factors=torch.cat([0.6 + 0.8 * torch.rand(1, count, 3, generator=generator), 0.2 * torch.rand(1, count, 1, generator=generator) - 0.1], 2),
        jitter_order=torch.rand(1, count, 4, generator=generator).argsort(-1),
        blur_sigma=0.1 + 1.9 * torch.rand(1, count, generator=generator),
    )
    params.jitter_factors[~params.jitter] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    ours = aug.apply(images[:count], aug.groups[0], params)[0]
    kernels = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for n in range(count):
        top, left, h, w = params.boxes[0, n].tolist()
        y = TF.resized_crop(images[n].float() / 255, top, left, h, w, [24, 24], INTERP["bicubic"], antialias=True).clamp(0, 1)
        y = TF.horizontal_flip(y) if params.flip[0, n] else y
        if params.jitter[0, n]:
            for op in params.jitter_order[0, n].tolist():
                y = kernels[op](y, float(params.jitter_factors[0, n, op]))
        y = TF.rgb_to_grayscale(y, 3) if params.grayscale[0, n] else y
        if params.blur[0, n]:
            y = TF.gaussian_blur(y, [blur_kernel_size(24)] * 2, [float(params.blur_sigma[0, n])] * 2)
        y = TF.solarize(y, SOLARIZE_THRESHOLD) if params.solarize[0, n] else y
        y = TF.normalize(y, list(mean), list(std))
        # solarize is discontinuous at the threshold: compare pixels not within float noise of it
        assert (ours[n] - y).abs().max() < 1e-4, n


# ----------------------------------------------------------------------------- output statistics


IMAGE_STATISTICS = {
    "channel means": lambda v: v.mean(dim=(2, 3)),
    "channel stds": lambda v: v.std(dim=(2, 3)),
    "colourfulness": lambda v: v.std(dim=1).mean(dim=(1, 2)).unsqueeze(1),
    "gradient": lambda v: (v[..., 1:] - v[..., :-1]).abs().mean(dim=(1, 2, 3)).unsqueeze(1),
    "opponent colours": lambda v: torch.stack([(v[:, 0] - v[:, 1]).mean(dim=(1, 2)), (v[:, 1] - v[:, 2]).mean(dim=(1, 2))], 1),
}


def test_output_statistics_match_the_torchvision_pipeline(images):
    """Per view, the distributions over 512 images of per-image statistics of the augmented views
    (channel means and stds, colourfulness, mean gradient, opponent colours) agree with torchvision's
    per-sample pipeline on the same images (two-sample KS, α = 0.001 each). Checked to fail when
    the recipe is changed: grayscale p 0.2→0.4, brightness or contrast 0.4→0.8, saturation 0.2→0.6,
    hue 0.1→0.3 or 0, no solarize, no blur, blur σ range halved, crop scale 0.2→0.08."""
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    cfg = AugmentConfig(jitter=(0.4, 0.4, 0.2, 0.1), blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])
    ours = BatchedAugment(cfg, mean, std)(images, generator=torch.Generator().manual_seed(11))
    transforms = view_transforms(cfg, mean, std)
    torch.manual_seed(12)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker (tiny per-image ops; much faster on shared cores)
    try:
        theirs = [torch.stack([t(image) for image in images]) for t in transforms]
    finally:
        torch.set_num_threads(threads)
    critical = ks_critical(len(images), len(images))
    for view in range(2):
        for name, statistic in IMAGE_STATISTICS.items():
            a, b = statistic(ours[view]).numpy(), statistic(theirs[view]).numpy()
            for column in range(a.shape[1]):
                assert ks_statistic(a[:, column], b[:, column]) < critical, (view, name, column)


def test_views_depend_only_on_draws_not_on_chunking(images):
    cfg = AugmentConfig(blur_p=0.5, solarize_p=0.2, small_crops=2, small_crop_size=16)
    aug = BatchedAugment(cfg, (0.5,) * 3, (0.25,) * 3)
    draws = aug.draw(96, torch.Generator().manual_seed(0))
    whole = aug(images[:96], draws)
    threads = torch.get_num_threads()
    aug.cpu_chunk_bytes, aug.cpu_threads = 1, 2  # one sample per chunk, two threads
    chunked = aug(images[:96], draws)
    assert torch.get_num_threads() == threads  # torch's thread count is restored after the chunks
    halves = [aug(images[:48], draws.slice(0, 48)), aug(images[48:96], draws.slice(48, 96))]
    assert len(whole) == 4 and [v.shape[-1] for v in whole] == [32, 32, 16, 16]
    for v in range(4):
        assert torch.equal(whole[v], chunked[v])
        assert torch.equal(whole[v], torch.cat([halves[0][v], halves[1][v]]))


def test_draws_must_match_the_batch():
    aug = BatchedAugment(AugmentConfig(), **IDENTITY_STATS)
    with pytest.raises(ValueError, match="draws for 4 samples but 3 images"):
        aug(torch.zeros(3, 3, 32, 32, dtype=torch.uint8), aug.draw(4, torch.Generator()))
