"""Layer-wise probes: kNN and linear accuracy of every backbone stage, trained against random init.

``python -m siamssl.eval.layers --checkpoint RUN/ [key=value ...] [data.KEY=VALUE ...]``

Answers "could a good representation already exist in the middle layer?": every stage of the
backbone (:func:`siamssl.backbones.forward_stages`: ``layer1``..``layer4`` of a ResNet, each block
of a ViT), global-average-pooled (ViT: the normalized [CLS] token), is probed with the weighted kNN
of :mod:`siamssl.eval.knn` and the linear probe of :mod:`siamssl.eval.linear` (its ``fast`` preset by
default), for the trained checkpoint and for the same run's random initialization (the run's seed,
built in the trainer's order). The encoder is frozen in eval mode. Writes ``RUN/layers.json``,
``RUN/layers.md`` and ``RUN/layers.png`` (the plot needs matplotlib).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from siamssl.backbones import forward_stages, stage_dims, stage_names
from siamssl.errors import ConfigError


@dataclass
class LayersOptions:
    """Options of ``python -m siamssl.eval.layers`` (``key=value``).

    k / temperature: the weighted kNN's neighbours and T. linear_preset: a preset of
    :data:`siamssl.eval.linear.LINEAR_PRESETS` (``fast``: L-BFGS on standardized features).
    max_train_samples / max_test_samples: fixed random subsets. batch_size: frozen forward passes.
    output: the JSON file (default RUN/layers.json; the .md and .png go next to it).
    """

    k: int = 20
    temperature: float = 0.1
    linear_preset: str = "fast"
    max_train_samples: Optional[int] = None
    max_test_samples: Optional[int] = None
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0
    output: Optional[str] = None

    def __post_init__(self) -> None:
        if self.k < 1 or self.temperature <= 0:
            raise ValueError("k must be >= 1 and temperature > 0")


@torch.no_grad()
def stage_features(run: Any, split: str, limit: Optional[int], batch_size: int) -> tuple[list[Tensor], Tensor]:
    """Pooled features of every stage of ``run``'s frozen backbone on a split: ([(N, C_s)], labels)."""
    from siamssl.data.loader import eval_batches

    backbone = run.method.backbone
    run.method.eval()
    per_stage: list[list[Tensor]] = []
    labels = []
    for images, batch_labels in eval_batches(run.split(split).subset(limit), batch_size, run.mean, run.std, run.device, run.crop_size):
        for i, features in enumerate(forward_stages(backbone, images)):
            if i == len(per_stage):
                per_stage.append([])
            per_stage[i].append(features.float())
        labels.append(batch_labels)
    return [torch.cat(parts) for parts in per_stage], torch.cat(labels)


def probe_stages(run: Any, options: LayersOptions) -> list[dict[str, Any]]:
    """kNN top-1 and linear top-1 of every stage of a loaded run."""
    from siamssl.eval.knn import knn_accuracy
    from siamssl.eval.linear import cached_batches, linear_options, train_linear_classifier

    train, train_labels = stage_features(run, "train", options.max_train_samples, options.batch_size)
    test, test_labels = stage_features(run, "test", options.max_test_samples, options.batch_size)
    num_classes = len(run.labeled_data().classes)
    linear = linear_options(options.linear_preset, seed=options.seed)
    rows = []
    for name, bank, query in zip(stage_names(run.method.backbone), train, test):
        knn = knn_accuracy(query, test_labels, bank, train_labels, num_classes, [options.k], options.temperature)[options.k]
        batches = cached_batches(bank, train_labels, linear.batch_size, linear.seed)
        _, result = train_linear_classifier(batches, bank.shape[1], num_classes, query, test_labels, linear)
        rows.append({"stage": name, "dim": int(bank.shape[1]), "knn_top1": knn, "linear_top1": result["top1"]})
    return rows


def evaluate_layers(checkpoint: str | Path, options: LayersOptions, data_overrides: Sequence[str] = (), quiet: bool = False) -> dict[str, Any]:
    """Probe every stage of the trained run and of its random init; write JSON, markdown and PNG."""
    from siamssl.eval.runs import load_run, write_json

    trained = load_run(checkpoint, data_overrides, options.device)
    dims = stage_dims(trained.method.backbone)
    random = load_run(checkpoint, data_overrides, options.device, random_init=True)
    trained_rows = probe_stages(trained, options)
    random_rows = probe_stages(random, options)
    stages = []
    for mine, base in zip(trained_rows, random_rows):
        stages.append({
            "stage": mine["stage"], "dim": mine["dim"],
            "knn_top1": mine["knn_top1"], "linear_top1": mine["linear_top1"],
            "knn_top1_random_init": base["knn_top1"], "linear_top1_random_init": base["linear_top1"],
        })
    assert [s["dim"] for s in stages] == dims
    payload = {
        "checkpoint": str(trained.checkpoint),
        "method": trained.config.method.name,
        "backbone": trained.config.backbone.name,
        "num_classes": len(trained.labeled_data().classes),
        "stages": stages,
        "options": asdict(options),
    }
    output = Path(options.output) if options.output else trained.run_dir / "layers.json"
    write_json(output, payload)
    output.with_suffix(".md").write_text(markdown_table(payload))
    plotted = plot_layers(payload, output.with_suffix(".png"))
    if not quiet:
        print(markdown_table(payload), file=sys.stderr)
        print(f"siamssl: wrote {output}, {output.with_suffix('.md')}" + (f", {output.with_suffix('.png')}" if plotted else ""), file=sys.stderr)
    return payload


def markdown_table(payload: dict[str, Any]) -> str:
    k = payload["options"]["k"]
    lines = [
        f"Layer-wise probes of {payload['checkpoint']} ({payload['method']}, {payload['backbone']}); "
        f"kNN k={k}, T={payload['options']['temperature']}; linear preset {payload['options']['linear_preset']}; "
        f"chance {100 / payload['num_classes']:.1f}%.",
        "",
        "| stage | dim | kNN top-1 (%) | kNN, random init | linear top-1 (%) | linear, random init |",
        "|---|---|---|---|---|---|",
    ]
    for s in payload["stages"]:
        lines.append(f"| {s['stage']} | {s['dim']} | {100 * s['knn_top1']:.1f} | {100 * s['knn_top1_random_init']:.1f} "
                     f"| {100 * s['linear_top1']:.1f} | {100 * s['linear_top1_random_init']:.1f} |")
    return "\n".join(lines) + "\n"


def plot_layers(payload: dict[str, Any], path: Path) -> bool:
    """Accuracy per stage, trained vs random init; False (with a message) without matplotlib."""
    from siamssl.eval.report import pyplot_if_installed

    plt = pyplot_if_installed("the layers plot")
    if plt is None:
        return False
    stages = payload["stages"]
    x = list(range(len(stages)))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, label, color in (("knn_top1", "kNN", "C0"), ("linear_top1", "linear", "C1")):
        ax.plot(x, [100 * s[key] for s in stages], "-o", color=color, label=f"{label}, trained")
        ax.plot(x, [100 * s[key + "_random_init"] for s in stages], "--o", color=color, alpha=0.6, label=f"{label}, random init")
    ax.axhline(100 / payload["num_classes"], color="gray", linewidth=0.8, linestyle=":")
    ax.set_xticks(x, [s["stage"] for s in stages])
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{payload['method']}: probes of every stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Optional[list[str]] = None) -> int:
    from siamssl.eval.runs import evaluation_main

    return evaluation_main(
        argv,
        "python -m siamssl.eval.layers",
        "kNN and linear probes of every backbone stage (pooled), trained and at random init.",
        LayersOptions,
        evaluate_layers,
        epilog="example: python -m siamssl.eval.layers --checkpoint runs/quickstart k=20 max_train_samples=5000",
    )


if __name__ == "__main__":
    from siamssl.eval.layers import main as _main

    sys.exit(_main())
