"""Reproduce the SimSiam ablations (Chen & He, CVPR 2021, Fig. 2 and Tables 1 and 5) at a chosen scale.

One pretraining run per variant through the real trainer, then a markdown table and the paper's
three-panel figure (training loss, per-channel std of the l2-normalized output, kNN accuracy):

  baseline                learned predictor, fixed predictor lr, stop-gradient, symmetric loss
  no_stop_gradient        stop-gradient removed                         paper: collapses (Fig. 2)
  no_predictor            p = z                                         paper: collapses (Table 1a, 0.1%)
  fixed_random_predictor  predictor frozen at its random init          paper: fails, loss stays high (Table 1b, 1.5%)
  predictor_lr_decayed    predictor lr follows the cosine schedule     paper: works (Table 1c, 67.7 vs 68.1)
  asymmetric              D(p1, z2) only                               paper: works (Table 5, 64.8 vs 68.1)
  directpred              DirectPred's linear predictor set from F     Tian et al. 2021: works (not in SimSiam)

Default: the built-in shapes dataset and a small ResNet on the CPU (about 5-7 minutes for all
variants on 2 free cores). ``--root PATH`` switches to CIFAR-10 as an ImageFolder tree
(``PATH/train/<class>``, ``PATH/test/<class>``) with the paper's CIFAR recipe (ResNet-18, 2048-d
heads); pass ``--epochs`` to choose its length. Any config key can be overridden with
``--set key=value`` (applied to every variant).

    python scripts/reproduce_simsiam_ablations.py --output-dir runs/simsiam-ablations
    python scripts/reproduce_simsiam_ablations.py --root /data/cifar10 --epochs 100 --set trainer.device=cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from siamssl.errors import SiamSSLError  # noqa: E402
from siamssl.config import apply_override, config_from_dict  # noqa: E402
from siamssl.train.trainer import Trainer  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "no_stop_gradient": {"stop_gradient": False},
    "no_predictor": {"predictor": "none"},
    "fixed_random_predictor": {"predictor": "fixed_random"},
    "predictor_lr_decayed": {"predictor_lr": "scheduled"},
    "asymmetric": {"symmetric": False},
    "directpred": {"predictor": "directpred"},
}
# Outcomes: "collapses" (the std of the l2-normalized output falls to ~0), "no convergence" (the
# loss stays high; the paper: "this failure is not about collapsing") or "works".
PAPER_OUTCOMES = {
    "baseline": "works",
    "no_stop_gradient": "collapses",
    "no_predictor": "collapses",
    "fixed_random_predictor": "no convergence",
    "predictor_lr_decayed": "works",
    "asymmetric": "works",
    "directpred": "works",
}
PAPER_NOTES = {
    "baseline": "works (68.1)",
    "no_stop_gradient": "collapses (0.1)",
    "no_predictor": "collapses (0.1)",
    "fixed_random_predictor": "loss stays high, no collapse (1.5)",
    "predictor_lr_decayed": "works (67.7)",
    "asymmetric": "works (64.8)",
    "directpred": "works (Tian et al. 2021)",
}

# A CPU scale at which SimSiam learns and the collapse dynamics play out within minutes (found by the
# sweep of docs/why_siamese.md, scripts/simsiam_collapse_sweep.py): a small ResNet at 16 px, SGD at a
# high learning rate (base 2.5, peak 0.625 at batch 64, cosine), weight decay 1e-3, and SimSiam's
# colour augmentations (the demo's hue-heavy jitter p=0.8, grayscale 0.2, crops 0.2-1). Without
# the colour jitter and grayscale the baseline learns nothing here (kNN stays at the random
# encoder's): brightness and crops alone leave colour as a shortcut the views share.
CPU_SCALE: dict[str, Any] = {
    "method": {"name": "simsiam", "proj_dim": 64, "proj_layers": 2, "pred_hidden_dim": 16},
    "backbone": {"name": "resnet_narrow", "cifar_stem": True, "widths": [8, 16, 16, 32]},
    "data": {
        "dataset": "shapes",
        "batch_size": 64,
        "num_workers": 0,
        "shapes": {"num_train": 2048, "num_test": 1000, "image_size": 16, "layout": "single"},
        "augment": {
            "crop_size": 16,
            "crop_scale": [0.2, 1.0],
            "jitter": [0.4, 0.4, 0.4, 0.5],
            "jitter_p": 0.8,
            "grayscale_p": 0.2,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
    },
    "optim": {"name": "sgd", "base_lr": 2.5, "weight_decay": 1.0e-3},
    "trainer": {"epochs": 8, "progress_bar": False, "log_every_steps": 8, "checkpoint_every_epochs": 1000},
    "eval": {
        "every_n_epochs": 2,
        "monitors": ["knn", "embedding_std", "diagnostics"],
        "knn": {"k": 20, "random_init": True},
        "diagnostics": {"max_samples": 500, "alignment": False},
    },
}

# The paper's CIFAR-10 recipe (App. D; configs/simsiam.yaml) on a JPEG ImageFolder copy.
CIFAR_SCALE: dict[str, Any] = {
    "method": {"name": "simsiam", "proj_dim": 2048, "proj_layers": 2, "pred_hidden_dim": 512},
    "backbone": {"name": "resnet18", "cifar_stem": True, "zero_init_residual": True},
    "data": {"dataset": "imagefolder", "batch_size": 512, "num_workers": 4, "augment": {"crop_size": 32}},
    "optim": {"name": "sgd", "base_lr": 0.03, "weight_decay": 5.0e-4, "schedule_unit": "epoch"},
    "trainer": {"epochs": 100, "progress_bar": True, "checkpoint_every_epochs": 10},
    "eval": {"every_n_epochs": 5, "monitors": ["knn", "embedding_std"], "knn": {"k": 200}},
}


def variant_config(base: dict[str, Any], variant: str, output_dir: Path, overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    raw["method"].update(VARIANTS[variant])
    raw["output_dir"] = str(output_dir / variant)
    raw["trainer"]["overwrite"] = True
    for override in overrides:
        apply_override(raw, override)
    return raw


def read_history(run_dir: Path) -> dict[str, list[float]]:
    """Per-evaluation series from ``metrics.jsonl``: the mean training loss since the previous
    evaluation, ``z_std`` and ``knn_top1``."""
    losses: dict[int, list[float]] = {}  # 0-based epoch being trained -> logged window means
    history: dict[str, list[float]] = {"epoch": [], "loss": [], "z_std": [], "knn_top1": []}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses.setdefault(record["epoch"], []).append(record["loss"])
        if "knn_top1" in record:  # evaluation records count completed epochs
            epoch = record["epoch"]
            window = [value for e in sorted(losses) if e < epoch for value in losses.pop(e)]
            history["epoch"].append(epoch)
            history["loss"].append(sum(window) / len(window) if window else math.nan)
            history["z_std"].append(record.get("z_std", math.nan))
            history["knn_top1"].append(record["knn_top1"])
    return history


def outcome(history: dict[str, list[float]], dim: int, baseline_loss: float, random_init_knn: Optional[float] = None) -> str:
    """"collapses" when the per-channel std of the l2-normalized output ends below half its healthy
    1/√d, or when kNN ends at least 2 points below the random-init encoder's (the projector's output
    BatchNorm keeps that std near 1/√d in training mode even when the backbone collapses, as it does
    without the predictor); "no convergence" when the final loss is not even half-way (in cosine) to
    the baseline's; otherwise "works"."""
    if history["z_std"][-1] * math.sqrt(dim) < 0.5:
        return "collapses"
    if random_init_knn is not None and history["knn_top1"][-1] <= random_init_knn - 0.02:
        return "collapses"
    if history["loss"][-1] > 0.5 * baseline_loss:
        return "no convergence"
    return "works"


def markdown_table(results: dict[str, dict[str, Any]], dim: int, random_init_knn: Optional[float] = None) -> str:
    baseline_loss = results["baseline"]["history"]["loss"][-1] if "baseline" in results else -1.0
    lines = [
        "| variant | final loss | z_std·√d | kNN top-1 (%) | outcome here | paper (ImageNet linear %) |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        history = result["history"]
        lines.append(
            f"| {name} | {history['loss'][-1]:.3f} | {history['z_std'][-1] * math.sqrt(dim):.2f} "
            f"| {100 * history['knn_top1'][-1]:.1f} | {outcome(history, dim, baseline_loss, random_init_knn)} | {PAPER_NOTES[name]} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[str, Any]], dim: int, path: Path, random_init_knn: Optional[float] = None) -> bool:
    """The three panels of SimSiam's Fig. 2; returns False (with a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the figure (pip install matplotlib, or pip install 'siamssl[plots]')")
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, result in results.items():
        history = result["history"]
        style = "-" if PAPER_OUTCOMES[name] == "works" else "--"
        axes[0].plot(history["epoch"], history["loss"], style, label=name)
        axes[1].plot(history["epoch"], history["z_std"], style, label=name)
        axes[2].plot(history["epoch"], [100 * a for a in history["knn_top1"]], style, label=name)
    axes[1].set_ylim(bottom=0)
    axes[1].axhline(1 / math.sqrt(dim), color="gray", linewidth=0.8, linestyle=":")
    if random_init_knn is not None:
        axes[2].axhline(100 * random_init_knn, color="gray", linewidth=0.8, linestyle=":")
        axes[2].text(0.02, 100 * random_init_knn, "random init", color="gray", va="bottom", transform=axes[2].get_yaxis_transform())
    axes[1].text(0.02, 1 / math.sqrt(dim), "1/√d", color="gray", va="bottom", transform=axes[1].get_yaxis_transform())
    for ax, title in zip(axes, ("training loss", "std of l2-normalized output", "kNN accuracy (%)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/simsiam-ablations", help="one run folder per variant, plus the table and figure")
    parser.add_argument("--root", help="CIFAR-10 ImageFolder root (train/ and test/); default: the built-in shapes dataset on the CPU")
    parser.add_argument("--epochs", type=int, help="training epochs per variant (default: 20 on shapes, 100 on CIFAR-10)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every variant")
    args = parser.parse_args(argv)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    base = copy.deepcopy(CIFAR_SCALE if args.root else CPU_SCALE)
    if args.root:
        base["data"]["root"] = args.root
    if args.epochs:
        base["trainer"]["epochs"] = args.epochs
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, Any]] = {}
    dim = 0
    for variant in variants:
        try:
            cfg = config_from_dict(variant_config(base, variant, output_dir, args.overrides))
            dim = cfg.method.proj_dim
            started = time.perf_counter()
            summary = Trainer(cfg).fit()
        except SiamSSLError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        results[variant] = {"summary": summary, "history": read_history(Path(cfg.output_dir)), "seconds": time.perf_counter() - started}
        print(f"{variant}: {time.perf_counter() - started:.0f} s, z_std·√d={summary['z_std'] * math.sqrt(dim):.2f}, knn_top1={summary['knn_top1']:.3f}")

    random_init = next((r["summary"]["knn_top1_random_init"] for r in results.values() if "knn_top1_random_init" in r["summary"]), None)
    table = markdown_table(results, dim, random_init)
    (output_dir / "ablations.md").write_text(table)
    (output_dir / "ablations.json").write_text(json.dumps({k: {"history": v["history"], "seconds": v["seconds"]} for k, v in results.items()}, indent=1))
    print()
    print(table)
    if plot(results, dim, output_dir / "ablations.png", random_init):
        print(f"figure: {output_dir / 'ablations.png'}")
    baseline_loss = results["baseline"]["history"]["loss"][-1] if "baseline" in results else -1.0
    disagreements = [v for v, r in results.items() if outcome(r["history"], dim, baseline_loss, random_init) != PAPER_OUTCOMES[v]]
    if disagreements:
        print(f"differs from the paper at this scale: {', '.join(disagreements)}")
    else:
        print("every variant behaves as the paper reports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
