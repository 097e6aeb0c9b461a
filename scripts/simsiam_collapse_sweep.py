"""How robust is SimSiam's Fig. 2? Baseline, no-stop-gradient and no-predictor over seeds, learning
rates and weight decays, at the CPU scale of ``scripts/reproduce_simsiam_ablations.py``.

Every run goes through the real trainer (one subprocess per run, ``--jobs`` at a time, in an order
that interleaves the variants so a shared machine's load hits them alike). At every evaluation it
logs kNN top-1 of the backbone features, ``z_std`` (per-channel std of the l2-normalized projector
output in training mode, the paper's Fig. 2 middle panel) and the RankMe effective rank of the
backbone features (eval mode, 500 test images). Writes ``sweep.md`` (one row per setting and
variant, seeds side by side), ``sweep.json`` (every curve) and ``sweep.png`` (kNN and z_std·√d
curves per setting, one line per run).

    python scripts/simsiam_collapse_sweep.py --output-dir runs/simsiam-sweep              # 2 lr x 2 wd x 3 seeds x 3 variants
    python scripts/simsiam_collapse_sweep.py --lrs 1.0 --wds 5e-4 --seeds 0 --jobs 3
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
VARIANTS = ("baseline", "no_stop_gradient", "no_predictor")
EXPECTED = {"baseline": "learns", "no_stop_gradient": "collapses", "no_predictor": "collapses"}


def run_config(variant: str, lr: float, wd: float, seed: int, epochs: int, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(SCRIPT.parent))
    from reproduce_simsiam_ablations import CPU_SCALE, VARIANTS as ABLATIONS  # noqa: E402

    from siamssl.config import apply_override

    raw = copy.deepcopy(CPU_SCALE)
    raw["method"].update(ABLATIONS[variant])
    raw["optim"]["base_lr"] = lr
    raw["optim"]["weight_decay"] = wd
    raw["seed"] = seed
    raw["trainer"]["epochs"] = epochs
    raw["trainer"]["overwrite"] = True
    raw["output_dir"] = str(run_dir)
    raw["eval"]["monitors"] = ["knn", "embedding_std", "diagnostics"]
    raw["eval"]["diagnostics"] = {"max_samples": 500, "alignment": False}
    for override in overrides:
        apply_override(raw, override)
    return raw


def train_one(config_path: Path, threads: int) -> None:
    """The child process: one training run from a resolved config file."""
    import torch

    sys.path.insert(0, str(REPO))
    from siamssl.config import config_from_dict
    from siamssl.train.trainer import Trainer

    torch.set_num_threads(threads)
    Trainer(config_from_dict(yaml.safe_load(config_path.read_text()))).fit()


def read_curves(run_dir: Path) -> dict[str, Any]:
    curves: dict[str, Any] = {"epoch": [], "knn_top1": [], "z_std": [], "feat_rankme": [], "loss": []}
    last_loss = math.nan
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            last_loss = record["loss"]
        if "knn_top1_random_init" in record:
            curves["knn_top1_random_init"] = record["knn_top1_random_init"]
        if "knn_top1" in record:
            curves["epoch"].append(record["epoch"])
            curves["loss"].append(last_loss)
            for key in ("knn_top1", "z_std", "feat_rankme"):
                curves[key].append(record.get(key, math.nan))
    summary = run_dir / "summary.json"  # the trainer records the random-init kNN in the summary
    if "knn_top1_random_init" not in curves and summary.is_file():
        curves["knn_top1_random_init"] = json.loads(summary.read_text()).get("knn_top1_random_init", math.nan)
    return curves


def outcome(final: dict[str, float], random_init_knn: float) -> str:
    """``collapses`` when kNN ends at least 2 points below the random-init encoder's (falling toward
    chance: the training destroyed information the random network had); ``learns`` when it ends at
    least 5 points above; otherwise ``neither``. The std of the projector output is reported but not
    used: with the projector's output BatchNorm it stays near 1/√d in training mode even when the
    backbone collapses to a few directions (the no-predictor runs), which the backbone features'
    RankMe shows."""
    if final["knn_top1"] <= random_init_knn - 0.02:
        return "collapses"
    if final["knn_top1"] >= random_init_knn + 0.05:
        return "learns"
    return "neither"


def summarize(results: list[dict[str, Any]], dim: int) -> str:
    lines = [
        "| base lr | wd | variant | z_std·√d (per seed) | backbone RankMe | kNN top-1 % (per seed) | random-init kNN % | outcome | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r["lr"], r["wd"], VARIANTS.index(r["variant"]))  # noqa: E731
    for (lr, wd, _), group in itertools.groupby(sorted(results, key=key), key=key):
        runs = sorted(group, key=lambda r: r["seed"])
        finals = [{k: r["curves"][k][-1] for k in ("z_std", "knn_top1", "feat_rankme")} for r in runs]
        outcomes = [outcome(f, r["curves"]["knn_top1_random_init"]) for f, r in zip(finals, runs)]
        expected = EXPECTED[runs[0]["variant"]]
        count = sum(o == expected for o in outcomes)
        z_std = " / ".join(f"{f['z_std'] * math.sqrt(dim):.2f}" for f in finals)
        rank = " / ".join(f"{f['feat_rankme']:.1f}" for f in finals)
        knn = " / ".join(f"{100 * f['knn_top1']:.1f}" for f in finals)
        random_init = " / ".join(f"{100 * r['curves']['knn_top1_random_init']:.1f}" for r in runs)
        lines.append(
            f"| {lr:g} | {wd:g} | {runs[0]['variant']} | {z_std} | {rank} | {knn} "
            f"| {random_init} "
            f"| {expected} in {count}/{len(runs)} ({', '.join(outcomes)}) | {expected} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], dim: int, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the figure")
        return False
    settings = sorted({(r["lr"], r["wd"]) for r in results})
    fig, axes = plt.subplots(3, len(settings), figsize=(4.2 * len(settings), 10), squeeze=False)
    colors = {"baseline": "C0", "no_stop_gradient": "C3", "no_predictor": "C1"}
    for column, (lr, wd) in enumerate(settings):
        knn_ax, std_ax, rank_ax = axes[0][column], axes[1][column], axes[2][column]
        for r in results:
            if (r["lr"], r["wd"]) != (lr, wd):
                continue
            c = r["curves"]
            label = r["variant"] if r["seed"] == min(x["seed"] for x in results) else None
            knn_ax.plot(c["epoch"], [100 * v for v in c["knn_top1"]], color=colors[r["variant"]], alpha=0.8, label=label)
            std_ax.plot(c["epoch"], [v * math.sqrt(dim) for v in c["z_std"]], color=colors[r["variant"]], alpha=0.8)
            rank_ax.plot(c["epoch"], c["feat_rankme"], color=colors[r["variant"]], alpha=0.8)
            knn_ax.axhline(100 * c["knn_top1_random_init"], color="gray", linewidth=0.8, linestyle=":")
        knn_ax.axhline(10.0, color="black", linewidth=0.6, linestyle="--")
        knn_ax.set_title(f"base lr {lr:g}, wd {wd:g}: kNN top-1 (%)", fontsize=9)
        std_ax.set_title("z_std·√d (1 healthy, 0 collapsed)", fontsize=9)
        std_ax.set_ylim(0, 1.1)
        rank_ax.set_title("RankMe of the backbone features", fontsize=9)
        rank_ax.set_xlabel("epoch")
        for ax in (knn_ax, std_ax, rank_ax):
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[0][0].text(0.02, 0.02, "dotted: random init; dashed: chance", transform=axes[0][0].transAxes, fontsize=7, color="gray")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/simsiam-sweep")
    parser.add_argument("--lrs", default="2.5,4.0", help="base learning rates (peak = base x 64/256); the documented sweep")
    parser.add_argument("--wds", default="5e-4,1e-3", help="weight decays")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--baseline-seeds", default=None, help="seeds of the baseline (default: --seeds); fewer saves time")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the ablation script's CPU scale)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--report-only", action="store_true", help="rebuild table and figure from finished runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        train_one(Path(args.child), 1)
        return 0

    sys.path.insert(0, str(SCRIPT.parent))
    from reproduce_simsiam_ablations import CPU_SCALE  # noqa: E402

    lrs = [float(v) for v in args.lrs.split(",")]
    wds = [float(v) for v in args.wds.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    epochs = args.epochs or CPU_SCALE["trainer"]["epochs"]
    dim = CPU_SCALE["method"]["proj_dim"]
    output_dir = Path(args.output_dir)
    # Seeds outermost, variants innermost: every variant of a setting runs at about the same time.
    baseline_seeds = [int(v) for v in args.baseline_seeds.split(",")] if args.baseline_seeds else seeds
    plan = [(seed, lr, wd, variant) for seed in seeds for lr in lrs for wd in wds for variant in variants
            if variant != "baseline" or seed in baseline_seeds]
    run_dirs = {p: output_dir / f"lr{p[1]:g}_wd{p[2]:g}" / f"{p[3]}_seed{p[0]}" for p in plan}
    started = time.perf_counter()
    if not args.report_only:
        pending = list(plan)
        running: list[tuple[subprocess.Popen, tuple, Any]] = []
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        while pending or running:
            while pending and len(running) < args.jobs:
                item = pending.pop(0)
                seed, lr, wd, variant = item
                run_dir = run_dirs[item]
                run_dir.mkdir(parents=True, exist_ok=True)
                config_path = run_dir.parent / f"{run_dir.name}.yaml"
                config_path.write_text(yaml.safe_dump(run_config(variant, lr, wd, seed, epochs, run_dir, args.overrides)))
                log = open(run_dir.parent / f"{run_dir.name}.log", "w")
                process = subprocess.Popen([sys.executable, str(SCRIPT), "--child", str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env)
                running.append((process, item, log))
                print(f"[{time.perf_counter() - started:6.0f} s] started {run_dir}", flush=True)
            time.sleep(2)
            for entry in list(running):
                process, item, log = entry
                if process.poll() is not None:
                    log.close()
                    running.remove(entry)
                    status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode}, see {run_dirs[item]}.log)"
                    print(f"[{time.perf_counter() - started:6.0f} s] {status}: {run_dirs[item]}", flush=True)
    results = []
    for item in plan:
        seed, lr, wd, variant = item
        if not (run_dirs[item] / "metrics.jsonl").is_file():
            print(f"missing: {run_dirs[item]}", file=sys.stderr)
            continue
        results.append({"seed": seed, "lr": lr, "wd": wd, "variant": variant, "curves": read_curves(run_dirs[item])})
    if not results:
        print(f"error: no finished run under {output_dir}", file=sys.stderr)
        return 2
    table = summarize(results, dim)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "sweep.md").write_text(table)
    (output_dir / "sweep.json").write_text(json.dumps({"dim": dim, "epochs": epochs, "results": results}, indent=1))
    print()
    print(table)
    if plot(results, dim, output_dir / "sweep.png"):
        print(f"figure: {output_dir / 'sweep.png'}")
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
