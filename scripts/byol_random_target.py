"""BYOL with a fixed, randomly initialized target against the random encoder (BYOL, Sec. 3.1).

Grill et al. (NeurIPS 2020) observe that predicting the projection of a *fixed random* target
network already teaches the online network a representation far above that random network's own:
18.8% against 1.4% linear top-1 on ImageNet. This script measures the same comparison at CPU scale
on CIFAR-10 (an ImageFolder tree: ``ROOT/train/<class>``, ``ROOT/test/<class>``):

  random_init    the online encoder at its initialization (no training)
  fixed_random   BYOL with ``method.target=fixed_random`` (target drawn independently, never updated)
  ema            BYOL as published (``method.target=ema``), for reference
  shallow        BYOL with ``method.target=shallow`` (only with ``--variants ...,shallow``)

Every run uses configs/byol.yaml (LARS, asymmetric augmentations) with one small backbone, step
budget and batch; then kNN (k=200, T=0.1) and the ``fast`` linear probe of the frozen backbone
features. Writes ``random_target.md``, ``random_target.json`` and ``random_target.png``.

    python scripts/byol_random_target.py --root PATH/cifar10            # or SIAMSSL_CIFAR10=PATH
    python scripts/byol_random_target.py --root PATH/cifar10 --steps 2000 --set trainer.device=cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from siamssl.errors import SiamSSLError  # noqa: E402
from siamssl.eval.knn import KNNEvalOptions, evaluate_knn  # noqa: E402
from siamssl.eval.linear import evaluate_linear, linear_options  # noqa: E402
from siamssl.config import apply_override, config_from_dict, load_raw  # noqa: E402
from siamssl.train.trainer import Trainer  # noqa: E402

VARIANTS = ("fixed_random", "ema", "shallow")


def run_overrides(args: argparse.Namespace, variant: str, output_dir: Path) -> list[str]:
    return [
        "data.dataset=imagefolder", f"data.root={args.root}", f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}", "backbone.name=resnet_narrow", "backbone.cifar_stem=true",
        "backbone.widths=[16, 32, 64, 128]", "method.proj_hidden_dim=512", "method.pred_hidden_dim=512",
        f"method.target={variant}", f"trainer.max_steps={args.steps}", "trainer.progress_bar=false",
        "trainer.overwrite=true", f"trainer.log_every_steps={max(1, args.steps // 10)}", "eval.every_n_epochs=0",
        "eval.monitors=[embedding_std]", f"seed={args.seed}", f"output_dir={output_dir}", *args.overrides,
    ]


def evaluate(run_dir: Path, args: argparse.Namespace, random_init: bool) -> dict[str, float]:
    suffix = "_random_init" if random_init else ""
    knn = evaluate_knn(run_dir, KNNEvalOptions(ks=[200], max_train_samples=args.eval_train, max_test_samples=args.eval_test,
                                               random_init=random_init, output=str(run_dir / f"knn{suffix}.json")), quiet=True)
    linear = evaluate_linear(run_dir, linear_options("fast", max_train_samples=args.eval_train, max_test_samples=args.eval_test,
                                                     random_init=random_init, output=str(run_dir / f"linear{suffix}.json")), quiet=True)
    return {"knn_top1": knn["top1"]["200"], "linear_top1": linear["top1"]}


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the figure")
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    width = 0.38
    x = range(len(rows))
    ax.bar([i - width / 2 for i in x], [100 * r["knn_top1"] for r in rows], width, label="kNN (k=200)")
    ax.bar([i + width / 2 for i in x], [100 * r["linear_top1"] for r in rows], width, label="linear probe")
    ax.axhline(10.0, color="gray", linewidth=0.8, linestyle=":")
    ax.set_xticks(list(x), [r["encoder"] for r in rows])
    ax.set_ylabel("CIFAR-10 top-1 (%)")
    ax.set_title("BYOL: a fixed random target vs the random encoder")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.environ.get("SIAMSSL_CIFAR10"), help="CIFAR-10 ImageFolder root (default: $SIAMSSL_CIFAR10)")
    parser.add_argument("--output-dir", default="runs/byol-random-target")
    parser.add_argument("--variants", default="fixed_random,ema", help=f"comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--eval-train", type=int, default=10000, help="training images in the kNN bank and the linear probe")
    parser.add_argument("--eval-test", type=int, default=5000, help="test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if not args.root:
        print("error: pass --root PATH (a CIFAR-10 ImageFolder tree) or set SIAMSSL_CIFAR10", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    rows: list[dict[str, Any]] = []
    try:
        for variant in variants:
            raw = load_raw(str(REPO / "configs" / "byol.yaml"))
            for override in run_overrides(args, variant, output_dir / variant):
                apply_override(raw, override)
            started = time.perf_counter()
            summary = Trainer(config_from_dict(raw)).fit()
            seconds = time.perf_counter() - started
            if not rows:  # the online encoder's init is the same in every variant (same seed, built first)
                rows.append({"encoder": "random_init", **evaluate(output_dir / variant, args, random_init=True), "z_std": None, "train_s": 0.0})
            rows.append({"encoder": variant, **evaluate(output_dir / variant, args, random_init=False),
                         "z_std": summary.get("z_std"), "train_s": round(seconds, 1)})
            print(f"{variant}: {seconds:.0f} s, kNN {100 * rows[-1]['knn_top1']:.1f}%, linear {100 * rows[-1]['linear_top1']:.1f}%")
    except SiamSSLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines = [
        f"BYOL, {args.steps} steps of batch {args.batch_size}, resnet_narrow (CIFAR stem; widths in each run's "
        f"config.yaml), CIFAR-10 ({' '.join(args.overrides) or 'no overrides'}); "
        f"kNN k=200 T=0.1 and the fast linear probe on {args.eval_train} train / {args.eval_test} test images.",
        "",
        "| encoder | kNN top-1 (%) | linear top-1 (%) | z_std | training (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        z = "—" if r["z_std"] is None else f"{r['z_std']:.4f}"
        lines.append(f"| {r['encoder']} | {100 * r['knn_top1']:.1f} | {100 * r['linear_top1']:.1f} | {z} | {r['train_s']} |")
    table = "\n".join(lines) + "\n"
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "random_target.md").write_text(table)
    (output_dir / "random_target.json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1))
    print()
    print(table)
    if plot(rows, output_dir / "random_target.png"):
        print(f"figure: {output_dir / 'random_target.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
