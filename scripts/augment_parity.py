#!/usr/bin/env python
"""Op-by-op comparison of siamssl's batched augmentation engine with torchvision's v2 transforms
(``data.pipeline=torchvision``) on the same images with the SAME drawn parameters.

The batched engine draws the parameters of a batch (:meth:`BatchedAugment.draw`/``resolve``); the
reference replays exactly those parameters through torchvision's functional kernels on uint8
tensors, in the order and with the dtype handling of the v2 pipeline that
:func:`siamssl.data.augment.view_transforms` builds (``resized_crop`` → ``horizontal_flip`` →
``adjust_*`` in the drawn order → ``rgb_to_grayscale`` → ``gaussian_blur`` → ``solarize`` →
``to_dtype`` → ``normalize``). After every stage it prints the mean signed and absolute
difference of the two engines (in 1/255 units) and the shift of per-image photometric statistics
(mean, standard deviation, chroma), so a systematic difference shows at the operation that makes it.

    python scripts/augment_parity.py --cifar PATH/cifar10 --count 2000
    python scripts/augment_parity.py --synthetic            # no data: smooth random colour fields
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from siamssl.data.augment import blur_kernel_size  # noqa: E402
from siamssl.data.batched import (  # noqa: E402
    BatchedAugment, ViewParams, color_jitter, gaussian_blur, grayscale_subset, resized_crops, solarize_subset,
)
from siamssl.data.config import AugmentConfig  # noqa: E402

_INTERPOLATION = {"bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC}
_JITTER_KERNELS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
STAGES = ("crop+flip", "jitter", "grayscale", "blur", "solarize")


# ----------------------------------------------------------------------------------- images


def load_cifar_images(root: str, count: int, seed: int = 0) -> Tensor:
    """``count`` training images of an ImageFolder tree (``root/train/<class>/*``) or of a
    ``cifar10-jpg.tar.gz`` archive, a fixed random sample: uint8 (count, 3, H, W)."""
    from siamssl.data.datasets import decode_image_file

    path = Path(root)
    if path.is_file():
        return _images_from_archive(path, count, seed)
    files = sorted(str(p) for p in (path / "train").glob("*/*") if p.is_file())
    if not files:
        raise SystemExit(f"error: no images under {path / 'train'}/<class>/")
    chosen = random.Random(seed).sample(files, min(count, len(files)))
    return torch.stack([decode_image_file(f) for f in chosen])


def _images_from_archive(path: Path, count: int, seed: int) -> Tensor:
    import tarfile

    from torchvision.io import ImageReadMode, decode_image

    with tarfile.open(path) as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile() and "/train/" in "/" + m.name), key=lambda m: m.name)
        chosen = random.Random(seed).sample(members, min(count, len(members)))
        raw = [archive.extractfile(m).read() for m in sorted(chosen, key=lambda m: m.offset_data)]  # type: ignore[union-attr]
    return torch.stack([decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB) for data in raw])


def synthetic_natural_images(count: int, size: int = 32, seed: int = 0) -> Tensor:
    """Natural-image-like uint8 images: a 1/f² (pink-noise) luminance field, smooth correlated
    colour with a random cast, a few darker and brighter objects, JPEG-like quantization. Their
    statistics (mean ≈ 0.47, per-image std ≈ 0.2, moderate chroma, dark and bright tails) are close
    enough to CIFAR's that photometric differences between engines show as they do on CIFAR."""
    generator = torch.Generator().manual_seed(seed)
    freq_y = torch.fft.fftfreq(size).view(-1, 1)
    freq_x = torch.fft.rfftfreq(size).view(1, -1)
    amplitude = 1.0 / (freq_y**2 + freq_x**2).sqrt().clamp(min=1.0 / size)
    noise = torch.randn(count, 3, size, size // 2 + 1, dtype=torch.complex64, generator=generator) * amplitude
    field = torch.fft.irfft2(noise, s=(size, size))
    # correlated channels: a shared luminance plus weaker chroma components
    luminance, chroma = field[:, :1], field[:, 1:] * 0.35
    field = torch.cat([luminance + chroma[:, :1], luminance - 0.5 * chroma[:, :1] + 0.5 * chroma[:, 1:], luminance - chroma[:, 1:]], 1)
    field = field / field.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    contrast = 0.08 + 0.17 * torch.rand(count, 1, 1, 1, generator=generator)
    brightness = 0.25 + 0.45 * torch.rand(count, 1, 1, 1, generator=generator)
    cast = 1.0 + 0.25 * (torch.rand(count, 3, 1, 1, generator=generator) - 0.5)
    images = (brightness + contrast * field) * cast
    return (images * 255).round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------ torchvision


def torchvision_view(image: Tensor, params: ViewParams, view: int, n: int, size: int, interpolation: str, stop: str = "solarize") -> Tensor:
    """One view by torchvision's functional kernels on the uint8 image with the given parameters
    (the v2 pipeline of :mod:`siamssl.data.augment` replayed), up to and including stage ``stop``;
    float in [0, 1] (not normalized)."""
    top, left, height, width = (int(b) for b in params.boxes[view, n])
    x = TF.resized_crop(image, top, left, height, width, [size, size], _INTERPOLATION[interpolation], antialias=True)
    if params.flip[view, n]:
        x = TF.horizontal_flip(x)
    for stage in STAGES[1:]:
        if STAGES.index(stage) > STAGES.index(stop):
            break
        if stage == "jitter" and params.jitter[view, n]:
            for op in params.jitter_order[view, n].tolist():
                x = _JITTER_KERNELS[op](x, float(params.jitter_factors[view, n, op]))
        elif stage == "grayscale" and params.grayscale[view, n]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        elif stage == "blur" and params.blur[view, n]:
            sigma = float(params.blur_sigma[view, n])
            x = TF.gaussian_blur(x, [blur_kernel_size(size)] * 2, [sigma, sigma])
        elif stage == "solarize" and params.solarize[view, n]:
            x = TF.solarize(x, 128)
    return TF.to_dtype(x, torch.float32, scale=True)


def batched_view_stages(images: Tensor, params: ViewParams, size: int, interpolation: str, stop: str, levels: bool) -> Tensor:
    """The batched engine's views (views, N, 3, S, S) in [0, 1] up to and including ``stop``, from the
    engine's own functions in the order of :meth:`BatchedAugment._apply_chunk`; ``levels``: its
    uint8-level mode (the default since issue 11), else its float kernels (the engine before)."""
    x = resized_crops(images, params.boxes, params.flip, size, interpolation, levels=levels)
    views, count = x.shape[:2]
    x = x.reshape(views * count, 3, size, size)
    flat = lambda t: t.reshape(views * count, *t.shape[2:])  # noqa: E731
    if STAGES.index(stop) >= 1 and bool(params.jitter.any()):
        x = color_jitter(x, flat(params.jitter_factors), flat(params.jitter_order), levels=levels)
    if STAGES.index(stop) >= 2:
        x = grayscale_subset(x, flat(params.grayscale), levels=levels)
    if STAGES.index(stop) >= 3 and bool(params.blur.any()):
        index = flat(params.blur).nonzero().squeeze(1)
        blurred = gaussian_blur(x.index_select(0, index), flat(params.blur_sigma)[index], blur_kernel_size(size))
        x.index_copy_(0, index, blurred.round_() if levels else blurred)
    if STAGES.index(stop) >= 4:
        x = solarize_subset(x, flat(params.solarize), levels=levels)
    x = x.view(views, count, 3, size, size)
    return x / 255.0 if levels else x


# ------------------------------------------------------------------------------- statistics


def per_image_statistics(views: Tensor) -> dict[str, Tensor]:
    """Per-image photometric statistics of views (M, 3, S, S) in [0, 1]."""
    return {
        "mean": views.mean(dim=(1, 2, 3)),
        "std": views.std(dim=(1, 2, 3)),
        "chroma": (views.amax(dim=1) - views.amin(dim=1)).mean(dim=(1, 2)),
        "dark fraction": (views.amax(dim=1) < 0.05).float().mean(dim=(1, 2)),
        "bright fraction": (views.amin(dim=1) > 0.95).float().mean(dim=(1, 2)),
    }


def compare(ours: Tensor, theirs: Tensor, selected: Optional[Tensor] = None) -> dict[str, float]:
    """Differences of views (M, 3, S, S), ours − theirs: per-pixel in 1/255 units and per-image
    statistics (means over images), optionally only over the images of ``selected`` (M,)."""
    if selected is not None:
        ours, theirs = ours[selected], theirs[selected]
    difference = (ours - theirs) * 255
    row = {"images": int(ours.shape[0]), "signed /255": difference.mean().item(), "abs /255": difference.abs().mean().item(),
           "pixels off > 1/255": (difference.abs() > 1.01).float().mean().item()}
    stats_ours, stats_theirs = per_image_statistics(ours), per_image_statistics(theirs)
    for name in stats_ours:
        row[f"Δ {name}"] = (stats_ours[name] - stats_theirs[name]).mean().item()
    row["Δ chroma %"] = 100 * row["Δ chroma"] / max(stats_theirs["chroma"].mean().item(), 1e-12)
    return row


def run(images: Tensor, cfg: AugmentConfig, seed: int) -> list[dict]:
    """Rows of :func:`compare` per stage, for the engine's float kernels (before issue 11) and its
    uint8-level mode, against torchvision on the same images with the same drawn parameters."""
    augment = BatchedAugment(cfg, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    group = augment.groups[0]
    count, _, height, width = images.shape
    draws = augment.draw(count, torch.Generator().manual_seed(seed))
    params = augment.resolve(group, draws.uniforms[0], torch.full((count,), height), torch.full((count,), width))
    flat = lambda t: t.reshape(-1, *t.shape[2:])  # noqa: E731
    threads = torch.get_num_threads()
    rows = []
    for stop in STAGES:
        torch.set_num_threads(1)  # per-image kernels, as in a DataLoader worker
        try:
            theirs = torch.stack([torch.stack([torchvision_view(images[n], params, v, n, group.size, cfg.interpolation, stop) for n in range(count)])
                                  for v in range(group.views)])
        finally:
            torch.set_num_threads(threads)
        for engine, levels in (("float (before)", False), ("uint8 levels", True)):
            ours = batched_view_stages(images, params, group.size, cfg.interpolation, stop, levels)
            rows.append({"stage": stop, "engine": engine, **compare(flat(ours), flat(theirs))})
            if stop == "jitter":  # by the operation in the first slot
                first = flat(params.jitter_order)[:, 0]
                for op, name in enumerate(("brightness", "contrast", "saturation", "hue")):
                    selected = flat(params.jitter) & (first == op)
                    rows.append({"stage": f"  jitter, {name} first", "engine": engine, **compare(flat(ours), flat(theirs), selected)})
    # the engine's public path (chunks, threads, normalization) gives the stage-by-stage result
    mean, std = torch.tensor(augment.mean).view(1, 1, 3, 1, 1), torch.tensor(augment.std).view(1, 1, 3, 1, 1)
    public = augment.apply(images, group, params) * std + mean
    staged = batched_view_stages(images, params, group.size, cfg.interpolation, STAGES[-1], augment.uint8_levels)
    assert (public - staged).abs().max() < 1e-5, "BatchedAugment.apply differs from its stages"
    return rows


def paired_timing(repeats: int = 10, batches: int = 5, batch_size: int = 128, seed: int = 0) -> list[dict]:
    """images/s of the engine with float kernels and with uint8 levels, interleaved (A B, B A, ...)
    so that a changing machine load affects both alike; the ratio is the median of paired ratios."""
    import statistics
    import time

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    recipes = {"simclr": AugmentConfig(crop_scale=(0.08, 1.0)),
               "byol": AugmentConfig(crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])}
    rows = []
    for name, cfg in recipes.items():
        augment = BatchedAugment(cfg, (0.5,) * 3, (0.25,) * 3)
        speeds: dict[bool, list[float]] = {False: [], True: []}
        ratios = []
        for repeat in range(repeats):
            seconds = {}
            for levels in ((False, True) if repeat % 2 == 0 else (True, False)):
                augment.uint8_levels = levels
                started = time.perf_counter()
                for _ in range(batches):
                    augment(images, generator=generator)
                seconds[levels] = time.perf_counter() - started
                speeds[levels].append(batches * batch_size / seconds[levels])
            ratios.append(seconds[False] / seconds[True])
        rows.append({"recipe": name, "float images/s": statistics.median(speeds[False]),
                     "uint8 levels images/s": statistics.median(speeds[True]), "speed ratio levels/float": statistics.median(ratios)})
    return rows


def print_table(rows: Sequence[dict]) -> None:
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{v:+.4f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar", help="CIFAR-10 ImageFolder root or cifar10-jpg.tar.gz (default: $SIAMSSL_CIFAR10)")
    parser.add_argument("--synthetic", action="store_true", help="natural-image-like synthetic images instead of CIFAR")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interpolation", default="bilinear", choices=sorted(_INTERPOLATION))
    parser.add_argument("--recipe", default="simclr", choices=("simclr", "simsiam", "byol"),
                        help="simclr/simsiam: jitter 0.4/0.4/0.4/0.1 p 0.8, gray 0.2 (scale 0.08 / 0.2); byol: blur and solarize too")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--timing", action="store_true", help="only time the engine: float kernels against uint8 levels, paired")
    args = parser.parse_args(argv)
    if args.timing:
        print_table(paired_timing())
        return 0
    import os

    root = args.cifar or os.environ.get("SIAMSSL_CIFAR10")
    if args.synthetic or not root:
        images = synthetic_natural_images(args.count, seed=args.seed)
        source = "synthetic natural-image-like"
    else:
        images = load_cifar_images(root, args.count, args.seed)
        source = f"CIFAR-10 training images from {root}"
    if args.recipe == "byol":
        cfg = AugmentConfig(crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])
    else:
        cfg = AugmentConfig(crop_scale=(0.08, 1.0) if args.recipe == "simclr" else (0.2, 1.0))
    cfg.interpolation = args.interpolation
    print(f"{len(images)} {source}; recipe {args.recipe}; ours − torchvision(uint8), same parameters")
    rows = run(images, cfg, args.seed)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
