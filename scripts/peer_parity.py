#!/usr/bin/env python
"""siamssl side by side with lightly (1.6): the same backbone, data, protocol, batch and number of
steps, for SimSiam, BYOL, SimCLR, Barlow Twins and MoCo v2; the same kNN for both.

Protocol (lightly's CIFAR-10 benchmark, ``docs/source/getting_started/benchmarks/cifar10_benchmark.py``
in lightly-ai/lightly): SGD with learning rate 0.06 × batch/128 (SimSiam: 0.06, no scaling), momentum
0.9, weight decay 5e-4 on every parameter, a cosine schedule (here per step over the run's steps),
a constant EMA 0.99 for BYOL's target and MoCo's key encoder, lightly's head sizes and losses
(SimSiam 2048-2048 projector + 512 predictor; BYOL 1024→256 + 1024; SimCLR 512→128, T 0.5;
Barlow Twins 2048-2048, λ 5e-3; MoCo 512→128, T 0.1, 4096 negatives, symmetric loss), the SimCLR
augmentation at colour strength 0.5 without blur (jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2,
crop scale 0.08-1, flip) and ImageNet normalization for every method.

* **lightly**: lightly's own heads (``lightly.models.modules.heads``), losses (``lightly.loss``),
  transform (``lightly.transforms.SimCLRTransform``) and momentum utilities
  (``lightly.models.utils.update_momentum``), wired as its documentation examples do, fed by a plain
  ``torchvision.datasets.ImageFolder`` (PIL) + ``DataLoader`` in ``--workers`` worker processes,
  with a plain PyTorch loop (no Lightning).
* **siamssl**: siamssl's Trainer and methods with the same heads, from its Python API. siamssl's
  losses are the official codes' scales (BYOL sums ``2 − 2cos`` over both directions: 4× lightly's
  ``−cos`` average; SimCLR and MoCo sum both directions: 2×), so siamssl gets the learning rate ÷ k
  and the weight decay × k: for SGD with momentum that is the same sequence of updates.
  ``siamssl`` is the batched pipeline; ``siamssl-torchvision`` the per-sample torchvision one
  (``data.pipeline=torchvision``); ``siamssl-float`` the batched engine with float kernels (before
  issue 11, ``BatchedAugment.uint8_levels = False``).

Both use siamssl's ``resnet_narrow`` with the CIFAR stem (no zero-init of residual BNs, as lightly's
ResNet) built from the same configuration, plain BatchNorm (MoCo without Shuffle-BN on both sides:
on one device lightly's ``batch_shuffle`` is a no-op without its split BatchNorm). kNN: k = 200,
T = 0.1 (``siamssl.eval.knn``) on the backbone features of the training subset (bank) and of
``--test-subset`` test images, the same tensors for every run, after ``--steps`` steps and at
random initialization. images/s: training images (not views) per second of the training loop,
data loading included. Runs are seed-major and the frameworks alternate order from one seed to the
next, so a changing machine load affects them alike.

    pip install 'siamssl[peers]'
    python scripts/peer_parity.py --cifar PATH/cifar10 --steps 300 --batch-size 128 --seeds 3 \\
        --subset 10000 --out runs/peer-parity
    python scripts/peer_parity.py --dry-run --out /tmp/pp     # synthetic images, a few steps, 1 seed
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from siamssl.backbones import build_backbone  # noqa: E402
from siamssl.eval.knn import knn_accuracy  # noqa: E402

METHODS = ("simsiam", "byol", "simclr", "barlow_twins", "mocov2")
FRAMEWORKS = ("siamssl", "lightly", "siamssl-torchvision", "siamssl-float")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BASE_LR, MOMENTUM, WEIGHT_DECAY, EMA = 0.06, 0.9, 5e-4, 0.99
KNN_K, KNN_T = 200, 0.1

# siamssl's loss ÷ lightly's loss for the same embeddings (see the module docstring).
LOSS_SCALE = {"simsiam": 1.0, "byol": 4.0, "simclr": 2.0, "barlow_twins": 1.0, "mocov2": 2.0}

# siamssl's method name and options that give lightly's heads and losses.
SIAMSSL_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "simsiam": ("simsiam", {"proj_layers": 2, "proj_dim": 2048, "pred_hidden_dim": 512, "predictor_lr": "scheduled"}),
    "byol": ("byol", {"proj_hidden_dim": 1024, "proj_dim": 256, "pred_hidden_dim": 1024, "momentum": EMA,
                      "momentum_schedule": "constant"}),
    "simclr": ("simclr", {"proj_layers": 2, "proj_hidden_dim": 512, "proj_dim": 128, "temperature": 0.5}),
    "barlow_twins": ("barlow_twins", {"proj_layers": 2, "proj_dim": 2048, "lambd": 0.005, "bias_lr_scale": 1.0}),
    "mocov2": ("moco", {"head": "mlp", "head_hidden_dim": 512, "proj_dim": 128, "temperature": 0.1, "queue_size": 4096,
                        "momentum": EMA, "symmetric": True, "shuffle_bn": False, "bn_splits": 1}),
}


def learning_rate(method: str, batch_size: int) -> float:
    """lightly's rate: 0.06 × batch/128, except SimSiam's unscaled 0.06."""
    return BASE_LR if method == "simsiam" else BASE_LR * batch_size / 128


# ------------------------------------------------------------------------------------- data


def _class_files(split_dir: Path) -> list[tuple[str, Path]]:
    return sorted((c.name, f) for c in split_dir.iterdir() if c.is_dir() for f in c.iterdir() if f.is_file())


def make_subset_folder(source: Path, target: Path, train_count: int, test_count: int, seed: int = 0) -> Path:
    """An ImageFolder tree at ``target`` with symbolic links to a fixed random sample of
    ``train_count`` training and ``test_count`` test images of ``source``: the one subset both
    frameworks read."""
    for split, count, split_seed in (("train", train_count, seed), ("test", test_count, seed + 1)):
        files = _class_files(source / split)
        if not files:
            raise SystemExit(f"error: no images in {source / split}/<class>/")
        chosen = random.Random(split_seed).sample(files, min(count, len(files)))
        for label, path in chosen:
            link = target / split / label / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(path.resolve())
    return target


def make_synthetic_folder(target: Path, train_count: int = 64, test_count: int = 32, classes: int = 2, size: int = 32) -> Path:
    """A tiny ImageFolder of random colour-field PNGs (for ``--dry-run``)."""
    from torchvision.io import write_png

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", train_count), ("test", test_count)):
        for i in range(count):
            label = i % classes
            smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=generator), size=(size, size), mode="bilinear")
            image = (smooth[0] * (0.5 + 0.5 * label) * 255).clamp(0, 255).to(torch.uint8)
            folder = target / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            write_png(image, str(folder / f"{i:05d}.png"))
    return target


def load_split(split_dir: Path) -> tuple[Tensor, Tensor]:
    """uint8 images (N, 3, H, W) and labels of an ImageFolder split, in ImageFolder's order."""
    from siamssl.data.datasets import decode_image_file

    classes = sorted(c.name for c in split_dir.iterdir() if c.is_dir())
    files = [(classes.index(label), path) for label, path in _class_files(split_dir)]
    return torch.stack([decode_image_file(str(p)) for _, p in files]), torch.tensor([label for label, _ in files])


class KNNProbe:
    """The same kNN for every run: backbone features of fixed, normalized bank and test tensors."""

    def __init__(self, root: Path, batch_size: int = 512) -> None:
        bank, self.bank_labels = load_split(root / "train")
        test, self.test_labels = load_split(root / "test")
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.bank = (bank.float() / 255 - mean) / std
        self.test = (test.float() / 255 - mean) / std
        self.num_classes = int(max(self.bank_labels.max(), self.test_labels.max())) + 1
        self.batch_size = batch_size

    @torch.no_grad()
    def _features(self, backbone: nn.Module, images: Tensor) -> Tensor:
        return torch.cat([backbone(images[i : i + self.batch_size]).flatten(1).float() for i in range(0, len(images), self.batch_size)])

    def accuracy(self, backbone: nn.Module) -> float:
        was_training = backbone.training
        backbone.eval()
        try:
            bank, test = self._features(backbone, self.bank), self._features(backbone, self.test)
        finally:
            backbone.train(was_training)
        return knn_accuracy(test, self.test_labels, bank, self.bank_labels, self.num_classes, (KNN_K,), KNN_T)[KNN_K]


# ----------------------------------------------------------------------------------- models


def backbone_options(widths: Sequence[int]) -> dict[str, Any]:
    return {"cifar_stem": True, "zero_init_residual": False, "widths": list(widths)}


def build_shared_backbone(widths: Sequence[int]) -> tuple[nn.Module, int]:
    return build_backbone("resnet_narrow", **backbone_options(widths))


# ------------------------------------------------------------------------------------ siamssl


def siamssl_config(method: str, variant: str, args: argparse.Namespace, root: Path, seed: int, output_dir: Path) -> dict[str, Any]:
    """The raw siamssl config of one run: lightly's protocol with lr ÷ k and weight decay × k."""
    name, options = SIAMSSL_METHODS[method]
    scale = LOSS_SCALE[method]
    return {
        "method": {"name": name, **options},
        "backbone": {"name": "resnet_narrow", **backbone_options(args.widths)},
        "data": {
            "dataset": "imagefolder", "root": str(root), "batch_size": args.batch_size, "num_workers": args.workers,
            "pipeline": "torchvision" if variant == "siamssl-torchvision" else "batched",
            "cache_dir": str(Path(args.out) / "cache"),
            "augment": {"crop_size": 32, "crop_scale": [0.08, 1.0], "jitter": [0.4, 0.4, 0.4, 0.1], "jitter_p": 0.8,
                        "grayscale_p": 0.2, "blur_p": 0.0, "flip_p": 0.5, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        },
        "optim": {"name": "sgd", "base_lr": learning_rate(method, args.batch_size) / scale, "lr_scaling": "none",
                  "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY * scale, "schedule": "cosine", "schedule_unit": "step",
                  "exclude_bias_and_norm": False},
        "trainer": {"max_steps": args.steps, "epochs": 10**6, "precision": "fp32", "progress_bar": False, "overwrite": True,
                    "log_every_steps": max(1, args.steps // 5), "checkpoint_every_epochs": 10**6},
        "eval": {"every_n_epochs": 0, "monitors": []},
        "seed": seed,
        "output_dir": str(output_dir),
    }


def run_siamssl(method: str, variant: str, args: argparse.Namespace, root: Path, seed: int, probe: KNNProbe) -> dict[str, Any]:
    from siamssl.data.batched import BatchedAugment
    from siamssl.config import config_from_dict
    from siamssl.train.trainer import Trainer

    output_dir = Path(args.out) / "runs" / f"{variant}-{method}-seed{seed}"
    cfg = config_from_dict(siamssl_config(method, variant, args, root, seed, output_dir))
    levels = BatchedAugment.uint8_levels
    BatchedAugment.uint8_levels = variant != "siamssl-float"
    try:
        trainer = Trainer(cfg)
        random_init = probe.accuracy(trainer.method.backbone)
        started = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - started
    finally:
        BatchedAugment.uint8_levels = levels
    return {"knn": probe.accuracy(trainer.method.backbone), "knn_random_init": random_init,
            "images_per_s": args.steps * args.batch_size / seconds, "train_seconds": seconds}


# ------------------------------------------------------------------------------------ lightly


class LightlyModel(nn.Module):
    """One method built from lightly's modules, as lightly's examples and CIFAR-10 benchmark wire
    them; ``loss(x0, x1)`` is the training loss of a batch of two views."""

    def __init__(self, method: str, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss
        from lightly.models.modules import heads
        from lightly.models.utils import deactivate_requires_grad

        self.method, self.backbone = method, backbone
        self.prediction_head: Optional[nn.Module] = None
        if method == "simsiam":
            self.projection_head = heads.ProjectionHead([
                (feature_dim, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)),
                (2048, 2048, nn.BatchNorm1d(2048), None),
            ])
            self.prediction_head = heads.SimSiamPredictionHead(2048, 512, 2048)
            self.criterion: nn.Module = NegativeCosineSimilarity()
        elif method == "byol":
            self.projection_head = heads.BYOLProjectionHead(feature_dim, 1024, 256)
            self.prediction_head = heads.BYOLPredictionHead(256, 1024, 256)
            self.criterion = NegativeCosineSimilarity()
        elif method == "simclr":
            self.projection_head = heads.SimCLRProjectionHead(feature_dim, 512, 128)
            self.criterion = NTXentLoss(temperature=0.5)
        elif method == "barlow_twins":
            self.projection_head = heads.ProjectionHead([
                (feature_dim, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)),
                (2048, 2048, None, None),
            ])
            self.criterion = BarlowTwinsLoss(lambda_param=5e-3)
        elif method == "mocov2":
            self.projection_head = heads.MoCoProjectionHead(feature_dim, 512, 128)
            self.criterion = NTXentLoss(temperature=0.1, memory_bank_size=(4096, 128))
        else:
            raise ValueError(f"unknown method {method!r}")
        self.momentum_encoders = method in ("byol", "mocov2")
        if self.momentum_encoders:
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

    def _project(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def _project_momentum(self, x: Tensor) -> Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def loss(self, x0: Tensor, x1: Tensor) -> Tensor:
        from lightly.models.utils import update_momentum

        if self.momentum_encoders:
            update_momentum(self.backbone, self.backbone_momentum, m=EMA)
            update_momentum(self.projection_head, self.projection_head_momentum, m=EMA)
        if self.method == "simsiam":
            z0, z1 = self._project(x0), self._project(x1)
            p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
            return 0.5 * (self.criterion(z0.detach(), p1) + self.criterion(z1.detach(), p0))
        if self.method == "byol":
            p0, p1 = self.prediction_head(self._project(x0)), self.prediction_head(self._project(x1))
            z0, z1 = self._project_momentum(x0), self._project_momentum(x1)
            return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        if self.method == "mocov2":  # symmetric loss; keys from the momentum encoder
            q0, q1 = self._project(x0), self._project(x1)
            k0, k1 = self._project_momentum(x0), self._project_momentum(x1)
            return 0.5 * (self.criterion(q0, k1) + self.criterion(q1, k0))
        return self.criterion(self._project(x0), self._project(x1))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def run_lightly(method: str, args: argparse.Namespace, root: Path, seed: int, probe: KNNProbe) -> dict[str, Any]:
    import torchvision
    from lightly.transforms import SimCLRTransform

    torch.manual_seed(seed)
    backbone, feature_dim = build_shared_backbone(args.widths)
    model = LightlyModel(method, backbone, feature_dim)
    random_init = probe.accuracy(model.backbone)
    # lightly's CIFAR-10 benchmark: the SimCLR transform at colour strength 0.5, no blur.
    transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
        generator=torch.Generator().manual_seed(seed), persistent_workers=args.workers > 0,
    )
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=learning_rate(method, args.batch_size), momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    model.train()
    step = 0
    started = time.perf_counter()
    while step < args.steps:
        for (x0, x1), _ in loader:
            loss = model.loss(x0, x1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step == args.steps:
                break
    seconds = time.perf_counter() - started
    if not torch.isfinite(loss):
        raise RuntimeError(f"lightly {method}: non-finite loss")
    return {"knn": probe.accuracy(model.backbone), "knn_random_init": random_init,
            "images_per_s": args.steps * args.batch_size / seconds, "train_seconds": seconds}


# ---------------------------------------------------------------------------------- report


def summarize(runs: list[dict[str, Any]], methods: Sequence[str], frameworks: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for method in methods:
        for framework in frameworks:
            mine = [r for r in runs if r["method"] == method and r["framework"] == framework and "knn" in r]
            if not mine:
                continue
            knn = [100 * r["knn"] for r in mine]
            rows.append({
                "method": method, "framework": framework, "seeds": len(mine),
                "knn_mean": statistics.fmean(knn), "knn_std": statistics.stdev(knn) if len(knn) > 1 else 0.0,
                "knn_random_init": statistics.fmean(100 * r["knn_random_init"] for r in mine),
                "images_per_s": statistics.fmean(r["images_per_s"] for r in mine),
                "knn_runs": knn,
            })
    for row in rows:
        peer = next((r for r in rows if r["method"] == row["method"] and r["framework"] == "lightly"), None)
        row["knn_minus_lightly"] = row["knn_mean"] - peer["knn_mean"] if peer else None
        row["speed_vs_lightly"] = row["images_per_s"] / peer["images_per_s"] if peer else None
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | framework | kNN top-1 (%) mean ± std | runs | random-init kNN (%) | Δ vs lightly | images/s | × lightly |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = f"{r['knn_minus_lightly']:+.1f}" if r["knn_minus_lightly"] is not None and r["framework"] != "lightly" else ""
        speed = f"{r['speed_vs_lightly']:.2f}" if r["speed_vs_lightly"] is not None else ""
        runs = " / ".join(f"{v:.1f}" for v in r["knn_runs"])
        lines.append(f"| {r['method']} | {r['framework']} | {r['knn_mean']:.1f} ± {r['knn_std']:.1f} | {runs} | "
                     f"{r['knn_random_init']:.1f} | {delta} | {r['images_per_s']:.0f} | {speed} |")
    return "\n".join(lines)


def _load_average() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", help="CIFAR-10 ImageFolder root (train/<class>/, test/<class>/); default $SIAMSSL_CIFAR10")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method and framework: first-seed … first-seed + N − 1")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (to add seeds to an earlier run)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--frameworks", default="siamssl,lightly", help=f"comma-separated subset of {', '.join(FRAMEWORKS)}")
    parser.add_argument("--subset", type=int, default=10000, help="training images (a fixed random sample; also the kNN bank)")
    parser.add_argument("--test-subset", type=int, default=2000, help="test images scored by kNN")
    parser.add_argument("--widths", default="32,64,128,256", help="resnet_narrow stage widths")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (lightly's PIL pipeline, siamssl-torchvision)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of the training process (default: torch's); 1 on a shared, loaded machine")
    parser.add_argument("--out", default="runs/peer-parity", help="folder for peer_parity.json, peer_parity.md and the runs")
    parser.add_argument("--dry-run", action="store_true", help="tiny synthetic images, 5 steps of 16 (across an epoch end), 1 seed, narrow widths")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for name, given, known in (("method", args.methods, METHODS), ("framework", args.frameworks, FRAMEWORKS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            parser.error(f"unknown {name}(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    args.widths = [int(w) for w in str(args.widths).split(",")]
    if args.dry_run:
        args.steps, args.batch_size, args.seeds, args.workers = 5, 16, 1, 0  # 4 steps per epoch: crosses one
        args.widths = [8, 8, 16, 16]
    else:
        args.cifar = args.cifar or os.environ.get("SIAMSSL_CIFAR10")
        if not args.cifar or not (Path(args.cifar) / "train").is_dir():
            parser.error("--cifar PATH (or $SIAMSSL_CIFAR10): a CIFAR-10 ImageFolder root with train/<class>/ and test/<class>/")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if any(f == "lightly" for f in args.frameworks):
        try:
            import lightly  # noqa: F401
        except ImportError:
            print("error: lightly is not installed: pip install 'siamssl[peers]'", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        root = make_synthetic_folder(out / "data")
    else:
        root = make_subset_folder(Path(args.cifar), out / "data", args.subset, args.test_subset)
    probe = KNNProbe(root)
    runners: dict[str, Callable[..., dict[str, Any]]] = {
        "lightly": lambda m, s: run_lightly(m, args, root, s, probe),
        **{f: (lambda m, s, f=f: run_siamssl(m, f, args, root, s, probe)) for f in FRAMEWORKS if f != "lightly"},
    }
    record: dict[str, Any] = {
        "command": "python scripts/peer_parity.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "args": {k: v for k, v in vars(args).items()}, "runs": [],
    }
    try:
        import lightly

        record["machine"]["lightly"] = lightly.__version__
    except ImportError:
        pass
    for seed in range(args.first_seed, args.first_seed + args.seeds):  # seed-major; frameworks alternate order between seeds
        for method in args.methods:
            order = args.frameworks if seed % 2 == 0 else list(reversed(args.frameworks))
            for framework in order:
                load = _load_average()
                print(f"== seed {seed} {method} {framework} (load {load})", flush=True)
                result = runners[framework](method, seed)
                result.update(method=method, framework=framework, seed=seed, load_before=load, load_after=_load_average())
                print(f"   kNN {100 * result['knn']:.2f} (random init {100 * result['knn_random_init']:.2f}), "
                      f"{result['images_per_s']:.0f} images/s", flush=True)
                record["runs"].append(result)
                record["summary"] = summarize(record["runs"], args.methods, args.frameworks)
                (out / "peer_parity.json").write_text(json.dumps(record, indent=1))
    record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    (out / "peer_parity.json").write_text(json.dumps(record, indent=1))
    table = markdown(record["summary"])
    (out / "peer_parity.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
