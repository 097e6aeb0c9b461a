"""What makes a representation good: five properties of several runs, side by side.

``python -m siamssl.eval.properties RUN [RUN ...] [key=value ...]``

For each run, on frozen backbone features (eval mode) of ``max_samples`` test images:

* **smoothness**: how far features move, relative to their spread, under (a) the augmentations
  (two views of SimSiam's CIFAR recipe at the run's crop size) and (b) small Gaussian noise added to
  the (normalized) input image: :func:`relative_movement` = E‖f(x') − f(x)‖ / √(E‖f(x) − E f‖²).
  0: the features do not move; about √2 when x' is an unrelated image. Lower is smoother.
* **linear separability**: linear-probe top-1 (the ``fast`` preset of :mod:`siamssl.eval.linear`)
  and weighted kNN top-1 (:mod:`siamssl.eval.knn`) on the train/test splits.
* **compactness**: the effective dimension of the feature covariance, as the participation ratio
  (Σλ)²/Σλ² (:func:`participation_ratio`, Gao et al. 2017; Recanatesi et al. 2019) and the
  entropy-based effective rank exp H(λ/Σλ) (:func:`effective_rank`, Roy & Vetterli 2007). Both are d
  for isotropic features and 1 for rank-one features; lower is more compact.
* **independence** of feature columns: the mean |off-diagonal Pearson correlation|
  (:func:`mean_abs_correlation`); ≈ 0 for independent columns, 1 when all columns are copies.
* **eigenvalue polarization**: how fast the covariance spectrum decays: the fraction of variance in
  the top ``k`` eigenvalues (:func:`top_variance_fraction`) and the power-law exponent α of
  λ_i ∝ i^−α fitted by least squares in log-log (:func:`powerlaw_exponent`; Agrawal et al.,
  "α-ReQ", NeurIPS 2022; Stringer et al., Nature 2019 report α ≈ 1 for visual cortex).

Writes ``properties.json``, ``properties.md`` (one column per run) and ``properties.png`` (the
scalars as bars and every run's normalized spectrum) into ``output_dir``. ``random_init=true`` adds
each run's random initialization (the run's seed) as a column.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from siamssl.errors import ConfigError


# ----------------------------------------------------------------------------------- pure functions


def covariance_eigenvalues(z: Tensor) -> Tensor:
    """Eigenvalues (descending, ≥ 0, float64) of the sample covariance of the rows of ``z`` (N, D),
    without normalizing the rows (:func:`siamssl.eval.diagnostics.covariance_spectrum` of the raw
    features)."""
    from siamssl.eval.diagnostics import covariance_spectrum

    return covariance_spectrum(z, normalize=False)


def participation_ratio(z: Tensor) -> float:
    """(Σλ)² / Σλ² of the covariance eigenvalues λ: d for isotropic features, 1 for rank one, 0 for
    constant features."""
    eigenvalues = covariance_eigenvalues(z)
    total = float(eigenvalues.sum())
    return 0.0 if total == 0.0 else total**2 / float(eigenvalues.pow(2).sum())


def effective_rank(z: Tensor) -> float:
    """exp(−Σ p_i log p_i), p = λ/Σλ over the covariance eigenvalues (Roy & Vetterli 2007): d for
    isotropic features, 1 for rank one, 0 for constant features."""
    eigenvalues = covariance_eigenvalues(z)
    total = float(eigenvalues.sum())
    if total == 0.0:
        return 0.0
    p = eigenvalues / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def mean_abs_correlation(z: Tensor, min_std: float = 1e-8) -> float:
    """Mean |Pearson correlation| over distinct pairs of feature columns of ``z`` (N, D). Columns
    with std ≤ ``min_std`` (dead units) are left out; NaN when fewer than two columns remain."""
    z = z.double()
    centered = z - z.mean(dim=0, keepdim=True)
    std = centered.pow(2).mean(dim=0).sqrt()
    alive = std > min_std
    if int(alive.sum()) < 2:
        return float("nan")
    standardized = centered[:, alive] / std[alive]
    correlation = standardized.t() @ standardized / z.shape[0]
    d = correlation.shape[0]
    off_diagonal = correlation.abs().sum() - correlation.diagonal().abs().sum()
    return float(off_diagonal / (d * (d - 1)))


def top_variance_fraction(z: Tensor, k: int) -> float:
    """Fraction of the total variance in the ``k`` largest covariance eigenvalues."""
    eigenvalues = covariance_eigenvalues(z)
    total = float(eigenvalues.sum())
    return float("nan") if total == 0.0 else float(eigenvalues[:k].sum()) / total


def powerlaw_exponent(z: Tensor, max_rank: Optional[int] = None, rtol: float = 1e-10) -> float:
    """α of the fit log λ_i = c − α log i (least squares) over ranks 1..``max_rank`` (default all)
    with λ_i > rtol·λ_1: 0 for a flat spectrum, larger for a faster-decaying one."""
    eigenvalues = covariance_eigenvalues(z)
    if max_rank is not None:
        eigenvalues = eigenvalues[:max_rank]
    if float(eigenvalues[0]) <= 0.0:
        return float("nan")
    kept = eigenvalues[eigenvalues > rtol * eigenvalues[0]]
    if kept.numel() < 2:
        return float("nan")
    log_rank = torch.arange(1, kept.numel() + 1, dtype=torch.float64).log()
    log_value = kept.log()
    x = log_rank - log_rank.mean()
    slope = float((x * (log_value - log_value.mean())).sum() / x.pow(2).sum())
    return -slope


def feature_scale(z: Tensor) -> float:
    """√(E‖z − E z‖²): the RMS distance of the features to their mean."""
    z = z.double()
    return float((z - z.mean(dim=0, keepdim=True)).pow(2).sum(dim=1).mean().sqrt())


def relative_movement(clean: Tensor, perturbed: Tensor, scale: Optional[float] = None) -> float:
    """E‖perturbed_i − clean_i‖ / scale, with ``scale`` = :func:`feature_scale` of ``clean`` by
    default: how far features move under a perturbation relative to how spread out they are."""
    scale = feature_scale(clean) if scale is None else scale
    if scale == 0.0:
        return float("nan")
    return float((perturbed.double() - clean.double()).norm(dim=1).mean()) / scale


def spectrum_properties(z: Tensor, top_k: int) -> dict[str, float]:
    """Compactness, independence and polarization of features ``z`` (N, D)."""
    return {
        "participation_ratio": participation_ratio(z),
        "effective_rank": effective_rank(z),
        "mean_abs_correlation": mean_abs_correlation(z),
        f"top{top_k}_variance": top_variance_fraction(z, top_k),
        "powerlaw_alpha": powerlaw_exponent(z),
    }


# ----------------------------------------------------------------------------------- runs


@dataclass
class PropertiesOptions:
    """Options of ``python -m siamssl.eval.properties`` (``key=value``).

    max_samples: test images for smoothness and the spectrum. max_train_samples: the probes' training
    set (None: all). noise_std: std of the Gaussian noise added to the normalized input image.
    top_k: eigenvalues in the top-k variance fraction. k: kNN neighbours. random_init: add each run's
    random init as a column. output_dir: where properties.{json,md,png} go.
    """

    max_samples: int = 2000
    max_train_samples: Optional[int] = None
    noise_std: float = 0.1
    top_k: int = 5
    k: int = 20
    random_init: bool = False
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0
    output_dir: str = "properties"

    def __post_init__(self) -> None:
        if self.noise_std < 0 or self.top_k < 1 or self.k < 1 or self.max_samples < 2:
            raise ValueError("noise_std must be >= 0, top_k and k >= 1, max_samples >= 2")


@torch.no_grad()
def measure_run(run: Any, options: PropertiesOptions) -> dict[str, Any]:
    """The five properties of a loaded run's frozen backbone features."""
    from siamssl.data.config import AugmentConfig
    from siamssl.data.loader import eval_batches
    from siamssl.eval.features import augmented_view_features
    from siamssl.eval.knn import knn_accuracy
    from siamssl.eval.linear import cached_batches, linear_options, train_linear_classifier
    from siamssl.eval.runs import frozen_features

    method = run.method
    method.eval()
    subset = run.split("test").subset(options.max_samples)
    generator = torch.Generator().manual_seed(options.seed)
    clean, noisy = [], []
    for images, _ in eval_batches(subset, options.batch_size, run.mean, run.std, run.device, run.crop_size):
        noise = torch.randn(images.shape, generator=generator).to(images.device) * options.noise_std
        clean.append(method.embed(images).float())
        noisy.append(method.embed(images + noise).float())
    features, noisy_features = torch.cat(clean), torch.cat(noisy)
    view_1, view_2 = augmented_view_features(method.embed, subset, AugmentConfig(crop_size=run.crop_size), run.mean, run.std,
                                             run.device, options.batch_size, options.seed)
    scale = feature_scale(features)
    bank, bank_labels = frozen_features(run, "train", limit=options.max_train_samples, batch_size=options.batch_size)
    query, query_labels = frozen_features(run, "test", batch_size=options.batch_size)
    num_classes = len(run.labeled_data().classes)
    linear = linear_options("fast", seed=options.seed)
    _, probe = train_linear_classifier(cached_batches(bank, bank_labels, linear.batch_size, linear.seed), bank.shape[1],
                                       num_classes, query, query_labels, linear)
    return {
        "dim": int(features.shape[1]),
        "augmentation_movement": relative_movement(view_1, view_2, scale),
        "noise_movement": relative_movement(features, noisy_features, scale),
        "linear_top1": probe["top1"],
        "knn_top1": knn_accuracy(query, query_labels, bank, bank_labels, num_classes, [options.k])[options.k],
        **spectrum_properties(features, options.top_k),
        "spectrum": covariance_eigenvalues(features).tolist(),
    }


ROWS = (
    ("augmentation_movement", "smoothness: movement under augmentation (÷ feature scale, lower = smoother)", "{:.3f}"),
    ("noise_movement", "smoothness: movement under input noise (÷ feature scale)", "{:.3f}"),
    ("linear_top1", "separability: linear probe top-1 (%)", "pct"),
    ("knn_top1", "separability: kNN top-1 (%)", "pct"),
    ("participation_ratio", "compactness: participation ratio (effective dim)", "{:.1f}"),
    ("effective_rank", "compactness: entropy effective rank", "{:.1f}"),
    ("mean_abs_correlation", "independence: mean |off-diagonal correlation|", "{:.3f}"),
    ("top_variance", "polarization: variance in the top-k eigenvalues", "{:.3f}"),
    ("powerlaw_alpha", "polarization: power-law exponent α of the spectrum", "{:.2f}"),
)


def _cell(value: float, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}" if fmt == "pct" else fmt.format(value)


def markdown_table(payload: dict[str, Any]) -> str:
    columns = payload["columns"]
    top_k = payload["options"]["top_k"]
    lines = [
        f"Properties of frozen backbone features ({payload['options']['max_samples']} test images; input noise std "
        f"{payload['options']['noise_std']}; kNN k={payload['options']['k']}).",
        "",
        "| property | " + " | ".join(c["name"] for c in columns) + " |",
        "|---|" + "---|" * len(columns),
        "| feature dim | " + " | ".join(str(c["dim"]) for c in columns) + " |",
    ]
    for key, label, fmt in ROWS:
        name = f"top{top_k}_variance" if key == "top_variance" else key
        label = label.replace("top-k", f"top-{top_k}")
        lines.append(f"| {label} | " + " | ".join(_cell(c[name], fmt) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def plot_properties(payload: dict[str, Any], path: Path) -> bool:
    """Bars of each property per run and the normalized spectra; False without matplotlib."""
    from siamssl.eval.report import pyplot_if_installed

    plt = pyplot_if_installed("the properties figure")
    if plt is None:
        return False
    columns = payload["columns"]
    top_k = payload["options"]["top_k"]
    panels = [
        ("augmentation_movement", "movement under augmentation"),
        ("noise_movement", "movement under input noise"),
        ("linear_top1", "linear probe top-1"),
        ("participation_ratio", "participation ratio / dim"),
        ("mean_abs_correlation", "mean |correlation|"),
        (f"top{top_k}_variance", f"variance in top {top_k}"),
        ("powerlaw_alpha", "power-law α"),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    names = [c["name"] for c in columns]
    colors = [f"C{i % 10}" for i in range(len(columns))]
    for ax, (key, title) in zip(axes.flat, panels):
        values = [c[key] / c["dim"] if key == "participation_ratio" else c[key] for c in columns]
        ax.bar(range(len(columns)), [0.0 if v is None or math.isnan(v) else v for v in values], color=colors)
        ax.set_xticks(range(len(columns)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    spectrum_ax = axes.flat[-1]
    for column, color in zip(columns, colors):
        spectrum = torch.tensor(column["spectrum"], dtype=torch.float64)
        spectrum = spectrum / spectrum.sum().clamp_min(1e-300)
        spectrum_ax.loglog(range(1, spectrum.numel() + 1), spectrum.clamp_min(1e-12).tolist(), color=color, label=column["name"])
    spectrum_ax.set_title("covariance spectrum (λ_i / Σλ)", fontsize=9)
    spectrum_ax.set_xlabel("rank i")
    spectrum_ax.legend(fontsize=6)
    spectrum_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def column_names(run_dirs: Sequence[Path]) -> list[str]:
    """Short unique names: each run directory's name, prefixed by its parent when names repeat."""
    names = [p.name for p in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in run_dirs]
    return names


def evaluate_properties(checkpoints: Sequence[str | Path], options: PropertiesOptions, data_overrides: Sequence[str] = (),
                        quiet: bool = False) -> dict[str, Any]:
    """Measure every run (and its random init with ``options.random_init``); write the table, JSON and figure."""
    from siamssl.eval.runs import load_run, resolve_checkpoint, run_directory, write_json

    if not checkpoints:
        raise ConfigError("give at least one run directory")
    paths = [resolve_checkpoint(c) for c in checkpoints]
    names = column_names([run_directory(p) for p in paths])
    columns = []
    for path, name in zip(paths, names):
        for random_init in (False, True) if options.random_init else (False,):
            run = load_run(path, data_overrides, options.device, random_init=random_init)
            measured = measure_run(run, options)
            columns.append({"name": name + (" (random init)" if random_init else ""), "checkpoint": str(path),
                            "random_init": random_init, "method": run.config.method.name, **measured})
            if not quiet:
                print(f"siamssl: measured {columns[-1]['name']}", file=sys.stderr)
    payload = {"columns": columns, "options": asdict(options)}
    output_dir = Path(options.output_dir)
    write_json(output_dir / "properties.json", payload)
    table = markdown_table(payload)
    (output_dir / "properties.md").write_text(table)
    plotted = plot_properties(payload, output_dir / "properties.png")
    if not quiet:
        print(table, file=sys.stderr)
        print(f"siamssl: wrote {output_dir}/properties.json, properties.md" + (", properties.png" if plotted else ""), file=sys.stderr)
    return payload


def main(argv: Optional[list[str]] = None) -> int:
    from siamssl.eval.runs import options_help, parse_overrides, run_cli

    parser = argparse.ArgumentParser(
        prog="python -m siamssl.eval.properties",
        description="Smoothness, separability, compactness, independence and spectrum polarization of several runs, side by side.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="options (key=value):\n" + options_help(PropertiesOptions)
        + "\n  data.KEY=VALUE  (override the runs' data config)\n\nexample: python -m siamssl.eval.properties runs/simsiam runs/byol random_init=true",
    )
    parser.add_argument("items", nargs="+", metavar="RUN_OR_KEY=VALUE", help="run directories (or checkpoints), then key=value options")
    args = parser.parse_args(argv)
    runs = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]

    def body() -> None:
        options, data_overrides = parse_overrides(overrides, PropertiesOptions)
        evaluate_properties(runs, options, data_overrides)

    return run_cli(body)


if __name__ == "__main__":
    from siamssl.eval.properties import main as _main

    sys.exit(_main())
