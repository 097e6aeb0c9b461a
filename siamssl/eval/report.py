"""A run's report: PNG plots and a markdown summary, written into the run directory.

``python -m siamssl.eval.report RUN/ [key=value ...] [data.KEY=VALUE ...]``

* ``report/training.png``: loss and learning rate per logged step; kNN / online-probe accuracy, the
  std of the l2-normalized outputs, the effective rank (RankMe), alignment and uniformity per
  evaluation (whatever the run's monitors logged in ``metrics.jsonl``);
* ``report/spectrum.png``: eigenvalues of the covariance of the final model's backbone features and
  projector output on the test split (dimensional collapse shows as a cliff);
* ``report/embedding_2d.png``: a t-SNE (or PCA) of test-set features coloured by class;
* in the run's TensorBoard log too, when the run logged to TensorBoard (``trainer.loggers``);
* ``report.md``: the run, its results (``summary.json`` and any ``linear*.json``/``knn*.json``), the
  final diagnostics with what they say, and the pictures.

Needs matplotlib (``pip install matplotlib`` or ``pip install 'siamssl[plots]'``).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from torch import Tensor

from siamssl.errors import SiamSSLError
from siamssl.loggers import log_report_figures

MATPLOTLIB_MISSING = "the report needs matplotlib: pip install matplotlib (or pip install 'siamssl[plots]')"


@dataclass
class ReportOptions:
    """Options of ``python -m siamssl.eval.report`` (``key=value``).

    max_samples: test images for the final diagnostics and the spectrum. embedding: ``tsne`` or
    ``pca`` for the 2-D picture, of ``embedding_samples`` test images' ``features`` (``backbone``
    or ``projector``); perplexity: t-SNE's. alignment: include the alignment of augmented views in
    the final diagnostics. checkpoint: analyse the final checkpoint (spectrum, 2-D picture,
    diagnostics); false plots the logged curves only.
    """

    max_samples: Optional[int] = 2000
    embedding: Literal["tsne", "pca"] = "tsne"
    embedding_samples: int = 1000
    features: Literal["backbone", "projector"] = "backbone"
    perplexity: float = 30.0
    alignment: bool = True
    checkpoint: bool = True
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SiamSSLError(MATPLOTLIB_MISSING) from None
    return plt


def pyplot_if_installed(figure: str) -> Optional[Any]:
    """matplotlib's pyplot (Agg), or None after one line saying that ``figure`` is skipped: for
    commands whose figure is a complement to their table."""
    try:
        return pyplot()
    except SiamSSLError:
        print(f"siamssl: matplotlib is not installed; skipping {figure}", file=sys.stderr)
        return None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SiamSSLError(f"'{run_dir}' has no metrics.jsonl: is it a siamssl run directory?")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise SiamSSLError(f"{path}:{number} is not valid JSON") from None
    return records


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


# ----------------------------------------------------------------------------------------- plots

#: (title, x axis, [(metric, label)]) of the training-curve panels; a panel is drawn when any of its
#: metrics was logged.
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("training loss", "step", [("loss", "loss")]),
    ("learning rate", "step", [("lr", "lr")]),
    ("accuracy", "epoch", [("knn_top1", "kNN top-1"), ("online_probe_top1", "online probe top-1 (test)"),
                           ("online_probe_train_top1", "online probe top-1 (train batches)")]),
    ("std of l2-normalized outputs × √d  (1 uniform, 0 collapsed)", "epoch",
     [("feat_std_x_sqrt_d", "backbone"), ("emb_std_x_sqrt_d", "projector")]),
    ("std of l2-normalized projector output (train batches)", "epoch", [("z_std", "z_std")]),
    ("effective rank (RankMe)", "epoch", [("feat_rankme", "backbone"), ("emb_rankme", "projector")]),
    ("alignment (lower: positives closer)", "epoch", [("feat_alignment", "backbone"), ("emb_alignment", "projector")]),
    ("uniformity (lower: more uniform)", "epoch", [("feat_uniformity", "backbone"), ("emb_uniformity", "projector")]),
]


def plot_training(records: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> list[str]:
    """The training-curve panels that have data, in one PNG; returns the titles drawn."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    drawn = []
    for title, axis, series in PANELS:
        present = [(key, label) for key, label in series if any(key in r for r in records)]
        if present:
            drawn.append((title, axis, present))
    if not drawn:
        raise SiamSSLError(f"{path.parent.parent / 'metrics.jsonl'} holds no metric to plot")
    columns = min(3, len(drawn))
    rows = math.ceil(len(drawn) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(drawn):]:
        ax.axis("off")
    for ax, (title, axis, present) in zip(axes.flat, drawn):
        for key, label in present:
            points = [(r[axis], r[key]) for r in records if key in r and axis in r]
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=label)
            baseline = summary.get(f"{key}_random_init")
            if isinstance(baseline, (int, float)):
                ax.axhline(baseline, linestyle="--", linewidth=1, color=ax.lines[-1].get_color(), label=f"{label}, random init")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(axis)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        if len(ax.lines) > 1:
            ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [title for title, _, _ in drawn]


def plot_spectrum(spectra: dict[str, Tensor], path: Path) -> None:
    """Eigenvalues of the covariance of the l2-normalized outputs, log scale, one curve per kind."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(6, 4))
    names = {"feat": "backbone features", "emb": "projector output"}
    for prefix, values in spectra.items():
        positive = values.clamp_min(1e-12)
        ax.semilogy(range(1, len(positive) + 1), positive.tolist(), label=f"{names.get(prefix, prefix)} (d={len(positive)})")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue of the covariance (l2-normalized)")
    ax.set_title("embedding covariance spectrum (test set)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_embedding(points: Tensor, labels: Tensor, classes: list[str], title: str, path: Path) -> None:
    """A 2-D scatter coloured by class (a legend up to 20 classes)."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 5.6))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "viridis")
    xy = points.cpu().numpy()
    for c, name in enumerate(classes):
        mask = (labels == c).cpu().numpy()
        if mask.any():
            colour = cmap(c if len(classes) <= 20 else c / max(1, len(classes) - 1))
            ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=colour, label=name if len(classes) <= 20 else None, alpha=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -------------------------------------------------------------------------------------- summary


def interpret(scalars: dict[str, float], dims: dict[str, int]) -> list[str]:
    """One line per representation: collapsed or not, how many effective dimensions, alignment."""
    names = {"feat": "Backbone features", "emb": "Projector output"}
    lines = []
    for prefix, dim in dims.items():
        spread = scalars[f"{prefix}_std_x_sqrt_d"]
        rank = scalars[f"{prefix}_rankme"]
        if spread < 0.05:
            verdict = "**collapsed** (every image maps to nearly the same direction)"
        elif rank < 0.1 * dim:
            verdict = "not collapsed, but **low-rank** (dimensional collapse: few directions carry the variance)"
        else:
            verdict = "not collapsed"
        text = (f"- {names.get(prefix, prefix)} ({dim}-d): {verdict}. std × √d = {spread:.3f} (1 ≈ uniform on the sphere, "
                f"0 = collapsed); effective rank (RankMe) {rank:.1f} of {dim} ({100 * rank / dim:.0f}%); "
                f"uniformity {scalars[f'{prefix}_uniformity']:.3f}")
        if f"{prefix}_alignment" in scalars:
            text += f"; alignment of two augmented views {scalars[f'{prefix}_alignment']:.3f} (0 = identical, 2 = orthogonal)"
        lines.append(text + ".")
    return lines


def _summary_from_checkpoint(run_dir: Path) -> dict[str, Any]:
    """What ``summary.json`` would say, from the last checkpoint of a run that did not finish."""
    from siamssl.checkpoint import load_checkpoint

    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        return {}
    try:
        state = load_checkpoint(path)
    except SiamSSLError:
        return {}
    config = state["config"]
    return {
        "epochs": state["epoch"], "steps": state["global_step"] if state["global_step"] >= state["total_steps"]
        else f"{state['global_step']} of {state['total_steps']} (unfinished)",
        "global_batch_size": config["data"]["batch_size"], "train_seconds": round(float(state["train_seconds"]), 1),
        **state["initial_metrics"], **state["last_metrics"],
    }


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else str(value)


def _results_lines(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    lines = ["| measurement | value |", "|---|---|"]
    for key in ("knn_top1", "knn_top1_random_init", "online_probe_top1", "online_probe_train_top1"):
        if key in summary:
            lines.append(f"| {key} (monitor) | {_percent(summary[key])} |")
    for path in sorted(run_dir.glob("linear*.json")):
        result = _read_json(path)
        if result and "top1" in result:
            lines.append(f"| linear probe `{path.name}` ({result.get('preset')}, {result.get('features')}) | "
                         f"top-1 {_percent(result['top1'])}, top-5 {_percent(result.get('top5'))} |")
    for path in sorted(run_dir.glob("knn*.json")):
        result = _read_json(path)
        if result and isinstance(result.get("top1"), dict):
            shown = ", ".join(f"k={k}: {_percent(v)}" for k, v in result["top1"].items())
            lines.append(f"| kNN `{path.name}` ({result.get('features')}, T={result.get('temperature')}) | {shown} |")
    if len(lines) == 2:
        lines.append("| (no accuracy logged) | run `python -m siamssl.eval.linear` / `python -m siamssl.eval.knn` |")
    return lines


def write_markdown(run_dir: Path, summary: dict[str, Any], config: Optional[dict[str, Any]], panels: list[str],
                   scalars: Optional[dict[str, float]], dims: Optional[dict[str, int]], images: dict[str, str],
                   notes: list[str]) -> Path:
    lines = [f"# Run report: `{run_dir.name}`", ""]
    if config:
        method, backbone, data = config.get("method", {}), config.get("backbone", {}), config.get("data", {})
        lines += [
            f"- method **{method.get('name')}**, backbone **{backbone.get('name')}**, dataset **{data.get('dataset')}**"
            + (f" (`{data.get('root')}`)" if data.get("root") else ""),
        ]
    if summary:
        parts = [f"{summary.get('epochs')} epochs, {summary.get('steps')} steps, global batch {summary.get('global_batch_size')}"]
        if "world_size" in summary:
            parts.append(f" on {summary['world_size']} process(es), {summary.get('device')}")
        parts.append(f"; {summary.get('train_seconds')} s of training")
        if summary.get("images_per_s") is not None:
            parts.append(f", {summary['images_per_s']} images/s")
        lines.append("- " + "".join(parts))
    lines += ["", "## Results", ""] + _results_lines(run_dir, summary)
    if scalars is not None and dims is not None:
        lines += ["", "## Representation of the final model (test set)", ""] + interpret(scalars, dims)
    lines += ["", "## Pictures", ""]
    if "training" in images:
        lines += [f"Training curves ({', '.join(panels)}):", "", f"![training curves]({images['training']})", ""]
    if "spectrum" in images:
        lines += ["Covariance spectrum of the l2-normalized outputs (a cliff to ~0 = collapsed dimensions):", "",
                  f"![spectrum]({images['spectrum']})", ""]
    if "embedding_2d" in images:
        lines += ["2-D embedding of test-set features, coloured by class:", "", f"![2-D embedding]({images['embedding_2d']})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


# ------------------------------------------------------------------------------------------ main


def write_report(run: str | Path, options: ReportOptions, data_overrides: list[str] = (), quiet: bool = False) -> Path:  # type: ignore[assignment]
    """Write ``report/*.png`` and ``report.md`` into the run directory; returns the markdown's path."""
    from siamssl.eval.runs import resolve_checkpoint, run_directory

    pyplot()  # fail first, before any work, when matplotlib is missing
    given = Path(run).expanduser()
    run_dir = run_directory(given) if given.is_file() else given
    if not run_dir.is_dir():
        raise SiamSSLError(f"run directory '{run}' does not exist")
    records = read_metrics(run_dir)
    summary = _read_json(run_dir / "summary.json") or _summary_from_checkpoint(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    images = {"training": "report/training.png"}
    panels = plot_training(records, summary, run_dir / images["training"])
    notes: list[str] = []
    config = None
    scalars = dims = None
    if options.checkpoint:
        try:
            checkpoint = given if given.is_file() else resolve_checkpoint(run_dir)
            scalars, dims, config = _checkpoint_pictures(checkpoint, options, data_overrides, run_dir, images)
        except SiamSSLError as exc:
            notes.append(f"checkpoint analyses skipped: {exc}")
            if not quiet:
                print(f"siamssl: checkpoint analyses skipped: {exc}", file=sys.stderr)
    if config is None:
        try:
            import yaml

            config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else None
        except Exception:  # noqa: BLE001 — the header is optional
            config = None
    path = write_markdown(run_dir, summary, config, panels, scalars, dims, images, notes)
    logged = log_report_figures(run_dir, config, {name: run_dir / file for name, file in images.items()})
    if not quiet:
        print(f"siamssl: wrote {path} and {', '.join(images.values())}"
              + (" (figures also in the run's TensorBoard log)" if logged else ""), file=sys.stderr)
    return path


def _checkpoint_pictures(checkpoint: Path, options: ReportOptions, data_overrides: list[str], run_dir: Path,
                         images: dict[str, str]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
    from siamssl.eval.diagnostics import covariance_spectrum
    from siamssl.eval.embedding2d import pca_2d, tsne
    from siamssl.eval.features import measure_representation
    from siamssl.eval.runs import frozen_features, load_run

    loaded = load_run(checkpoint, data_overrides, options.device)
    data = loaded.labeled_data()
    split_name = "test" if data.test is not None else "train"
    scalars, features = measure_representation(
        loaded.method, loaded.split(split_name), loaded.mean, loaded.std, loaded.device, loaded.crop_size, options.batch_size,
        options.max_samples, options.alignment, 2.0, 2.0, options.seed, options.num_workers,
    )
    images["spectrum"] = "report/spectrum.png"
    plot_spectrum({prefix: covariance_spectrum(values) for prefix, values in features.items()}, run_dir / images["spectrum"])
    points, labels = frozen_features(loaded, split_name, options.features, options.embedding_samples, options.batch_size,
                                     num_workers=options.num_workers)
    points = points.cpu()
    planar = tsne(points, options.perplexity) if options.embedding == "tsne" else pca_2d(points)
    images["embedding_2d"] = "report/embedding_2d.png"
    title = f"{options.embedding.upper() if options.embedding == 'pca' else 't-SNE'} of {points.shape[0]} {split_name} images ({options.features} features)"
    plot_embedding(planar, labels.cpu(), data.classes, title, run_dir / images["embedding_2d"])
    dims = {prefix: int(values.shape[1]) for prefix, values in features.items()}
    return scalars, dims, loaded.config.to_dict()


def main(argv: Optional[list[str]] = None, prog: str = "python -m siamssl.eval.report") -> int:
    from siamssl.eval.runs import eval_parser, parse_overrides, run_cli

    parser = eval_parser(
        prog,
        "PNG plots (training curves, covariance spectrum, 2-D embedding) and report.md in a run directory.",
        ReportOptions,
        positional_run=True,
        epilog="example: python -m siamssl.eval.report runs/quickstart embedding=pca",
    )
    args = parser.parse_args(argv)

    def body() -> None:
        options, data_overrides = parse_overrides(args.overrides, ReportOptions)
        write_report(args.checkpoint, options, data_overrides)

    return run_cli(body)


if __name__ == "__main__":
    from siamssl.eval.report import main as _main

    sys.exit(_main())
