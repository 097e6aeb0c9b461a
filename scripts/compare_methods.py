"""Pretrain every method for the same short budget and compare their kNN accuracy.

Each method runs its own recipe (``configs/<method>.yaml``: heads, loss, optimizer, augmentations)
through the real trainer, with the **same** backbone, number of optimizer steps and global batch
for all, on an ImageFolder tree (``ROOT/train/<class>``, ``ROOT/test/<class>``, e.g. CIFAR-10 as
JPEGs). The kNN monitor scores each encoder after training and, as a reference, at its random
initialization. Prints a markdown table and writes ``comparison.json`` and ``comparison.md``.

    python scripts/compare_methods.py --root /data/cifar10 --steps 200 --batch-size 128
    python scripts/compare_methods.py --root /data/cifar10 --methods simsiam,byol --set trainer.device=cuda

A CPU-sized budget (the defaults) says whether each method starts learning, not how well it ends:
use a GPU and ``--steps`` in the tens of thousands for numbers comparable with papers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from siamssl.errors import SiamSSLError  # noqa: E402
from siamssl.config import apply_override, config_from_dict, load_raw  # noqa: E402
from siamssl.train.trainer import Trainer  # noqa: E402

# One CIFAR-10 recipe per method (MoCo v1's and v2's CIFAR recipes differ only in head and
# temperature; both are listed).
METHODS = (
    "simsiam", "byol", "mocov1", "mocov2", "mocov3", "simclr", "barlow_twins", "vicreg", "swav", "dino",
    "instdisc", "cmc", "unigrad", "invaspread", "cpc",
)


def run_overrides(args: argparse.Namespace, output_dir: Path) -> list[str]:
    """What every method shares: data, backbone, budget and evaluation."""
    return [
        "data.dataset=imagefolder", f"data.root={args.root}", f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}", f"backbone.name={args.backbone}", "backbone.cifar_stem=true",
        f"trainer.max_steps={args.steps}", "trainer.progress_bar=false", "trainer.overwrite=true",
        f"trainer.log_every_steps={max(1, args.steps // 10)}", "eval.every_n_epochs=0",
        "eval.monitors=[knn, embedding_std]", "eval.knn.random_init=true",
        f"eval.knn.max_train_samples={args.knn_train}", f"eval.knn.max_test_samples={args.knn_test}",
        f"output_dir={output_dir}", *args.overrides,
    ]


def train_one(method: str, args: argparse.Namespace) -> dict[str, Any]:
    raw = load_raw(str(REPO / "configs" / f"{method}.yaml"))
    for override in run_overrides(args, Path(args.output_dir) / method):
        apply_override(raw, override)
    started = time.perf_counter()
    trainer = Trainer(config_from_dict(raw))
    summary = trainer.fit()
    return {
        "method": method,
        "knn_top1": summary.get("knn_top1"),
        "knn_top1_random_init": summary.get("knn_top1_random_init"),
        "z_std": summary.get("z_std"),
        "images_per_s": summary.get("images_per_s"),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "n/a"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | kNN top-1 (%) | random-init kNN (%) | gain | z_std | images/s | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        knn, base = r.get("knn_top1"), r.get("knn_top1_random_init")
        gain = f"{100 * (knn - base):+.1f}" if isinstance(knn, float) and isinstance(base, float) else "n/a"
        z_std = f"{r['z_std']:.4f}" if isinstance(r.get("z_std"), float) else "n/a"
        speed = f"{r['images_per_s']:.0f}" if isinstance(r.get("images_per_s"), (int, float)) else "n/a"
        status = r.get("error", "")
        lines.append(f"| {r['method']} | {_percent(knn)} | {_percent(base)} | {gain} | {z_std} | {speed} | {r.get('wall_s', 'n/a')} {status}|")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="ImageFolder root with train/ and test/ (e.g. CIFAR-10 as JPEGs)")
    parser.add_argument("--output-dir", default="runs/compare-methods", help="one run folder per method, plus the table")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of: {', '.join(METHODS)}")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per method")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch per step")
    parser.add_argument("--backbone", default="resnet18", help="backbone for every method (resnet_narrow on a CPU)")
    parser.add_argument("--knn-train", type=int, default=50000, help="kNN memory bank size (training images)")
    parser.add_argument("--knn-test", type=int, default=10000, help="test images scored by kNN")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every method")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(METHODS)}")
    if not (Path(args.root) / "train").is_dir():
        parser.error(f"--root {args.root}: no train/ folder there (expected ROOT/train/<class>/*.jpg)")

    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in methods:
        print(f"== {method}", flush=True)
        try:
            rows.append(train_one(method, args))
        except SiamSSLError as error:  # a failing recipe is reported, the others still run
            rows.append({"method": method, "error": f"error: {error}"})
        (output / "comparison.json").write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))
    table = markdown_table(rows)
    (output / "comparison.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
