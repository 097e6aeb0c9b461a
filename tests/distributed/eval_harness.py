"""One 2-process gloo job for the evaluation-under-torchrun and process-group tests
(``tests/distributed/test_sharded_eval.py``).

``test_sharded_eval.py`` launches

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.distributed.eval_harness SPEC.json

and computes the one-process references with the same functions meanwhile. Each rank writes
``rank<r>.pt`` under the spec's folder:

* ``train``: a whole tiny run through :func:`siamssl.train.trainer.train` with every monitor;
* ``monitors``: the monitors of a fixed small convolutional model on uneven splits (41 train, 23
  test images: slices of 21/20 and 12/11 rows), with the number of images each rank embedded and
  the number of collectives each hook made;
* ``probe``: the online probe trained on a fixed stream of features, each rank seeing its half of
  every global batch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from siamssl import distributed as sd
from siamssl.data.datasets import ImageSplit, LabeledImages
from siamssl.eval import monitors as monitor_module
from siamssl.eval.monitors import (
    DiagnosticsMonitor,
    DiagnosticsOptions,
    EmbeddingStdMonitor,
    KNNMonitor,
    KNNOptions,
    MonitorContext,
    OnlineProbeMonitor,
    OnlineProbeOptions,
)
from siamssl.methods import Batch
from siamssl.methods.base import SSLMethod
from tests.conftest import tiny_raw

WORLD = 2
NOISE = 300.0  # classes overlap: kNN is neither perfect nor at chance
MONITORS_IN_RUN = "eval.monitors=[knn, embedding_std, online_probe, diagnostics]"
# The probe without BatchNorm is exactly equivalent across process counts (with it, each process
# standardizes by its own batch); sync_bn on, so the SSL training itself is equivalent.
RUN_OVERRIDES = (MONITORS_IN_RUN, "eval.online_probe.batch_norm=false", "trainer.sync_bn=true", "eval.diagnostics.max_samples=20")
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "barrier", "reduce_scatter_tensor", "all_to_all")


def run_config(out: Path) -> dict[str, Any]:
    return tiny_raw(out, *RUN_OVERRIDES)


# ------------------------------------------------------------------------------ monitors


class TinyConvMethod(SSLMethod):
    """A fixed (seeded) convolutional encoder and projector, for the monitors."""

    def __init__(self) -> None:
        super().__init__()
        generator_state = torch.get_rng_state()
        torch.manual_seed(7)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projector = nn.Linear(8, 6)
        torch.set_rng_state(generator_state)
        self.feature_dim = 8


def monitor_data() -> LabeledImages:
    g = torch.Generator().manual_seed(3)
    centers = torch.randint(0, 256, (3, 3, 1, 1), generator=g).float()

    def split(n: int) -> ImageSplit:
        labels = torch.randint(0, 3, (n,), generator=g)
        images = (centers[labels] + NOISE * torch.randn(n, 3, 10, 10, generator=g)).clamp(0, 255).to(torch.uint8)
        return ImageSplit(labels=labels, images=images)

    return LabeledImages(split(41), split(23), ["a", "b", "c"], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def monitor_context(**overrides: Any) -> MonitorContext:
    data = monitor_data()
    return MonitorContext(data, data.mean, data.std, torch.device("cpu"), batch_size=8, crop_size=10, **overrides)


class CollectiveCounter:
    """Counts calls of torch.distributed collectives while active (patched module attributes)."""

    def __init__(self) -> None:
        self.count = 0
        self._originals: dict[str, Callable] = {}

    def __enter__(self) -> "CollectiveCounter":
        for name in COLLECTIVES:
            if hasattr(dist, name):
                original = getattr(dist, name)
                self._originals[name] = original

                def counted(*args: Any, _original: Callable = original, **kwargs: Any) -> Any:
                    self.count += 1
                    return _original(*args, **kwargs)

                setattr(dist, name, counted)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)


def _stream(step: int, rows: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Global-batch features, labels and embeddings of step ``step`` (the same on every rank)."""
    g = torch.Generator().manual_seed(100 + step)
    labels = torch.randint(0, 3, (rows,), generator=g)
    features = torch.randn(rows, 8, generator=g) + 2.0 * nn.functional.one_hot(labels, 8).float()
    embedding = torch.randn(rows, 6, generator=g)
    return features, labels, embedding


def _local(x: Tensor) -> Tensor:
    rows = x.shape[0] // sd.world_size()
    return x[sd.rank() * rows : (sd.rank() + 1) * rows]


def monitor_results(steps: int = 4) -> dict[str, Any]:
    """Every monitor of the fixed model: its results, images embedded per call, and collectives made
    by ``on_step`` (per monitor, over ``steps`` steps) and by ``evaluate``."""
    method = TinyConvMethod()
    embedded: list[int] = []
    original_extract = monitor_module.extract_features

    def counting_extract(embed, batches, *args, **kwargs):  # type: ignore[no-untyped-def]
        batches = list(batches)
        embedded.append(sum(int(images.shape[0]) for images, _ in batches))
        return original_extract(embed, batches, *args, **kwargs)

    monitor_module.extract_features = counting_extract
    try:
        results: dict[str, Any] = {"on_step_collectives": {}, "evaluate_collectives": {}, "values": {}, "embedded": {}}
        monitors = {
            "knn": KNNMonitor(KNNOptions(k=5), monitor_context()),
            "knn_fp16": KNNMonitor(KNNOptions(k=5, bank_dtype="fp16"), monitor_context()),
            "embedding_std": EmbeddingStdMonitor(None, monitor_context()),
            "online_probe": OnlineProbeMonitor(OnlineProbeOptions(batch_norm=False, lr=0.5), monitor_context()),
            "diagnostics": DiagnosticsMonitor(DiagnosticsOptions(max_samples=None), monitor_context()),
        }
        for name, monitor in monitors.items():
            with CollectiveCounter() as counter:
                for step in range(steps):
                    features, labels, embedding = _stream(step)
                    batch = Batch(views=[], index=torch.arange(_local(labels).shape[0]), labels=_local(labels))
                    monitor.on_step(batch, {"features": _local(features), "embedding": _local(embedding)})
            results["on_step_collectives"][name] = counter.count
            embedded.clear()
            with CollectiveCounter() as counter:
                results["values"][name] = monitor.evaluate(method)
            results["evaluate_collectives"][name] = counter.count
            results["embedded"][name] = list(embedded)
        return results
    finally:
        monitor_module.extract_features = original_extract


def probe_results(steps: int = 5) -> dict[str, Tensor]:
    """The online probe (no BatchNorm) after ``steps`` steps on its share of a fixed stream."""
    probe = OnlineProbeMonitor(OnlineProbeOptions(batch_norm=False, lr=0.5, momentum=0.9, weight_decay=1e-3), monitor_context())
    for step in range(steps):
        features, labels, _ = _stream(step)
        probe.on_step(Batch(views=[], index=torch.arange(4), labels=_local(labels)), {"features": _local(features)})
    assert probe.classifier is not None
    return {k: v.detach().clone() for k, v in probe.classifier.state_dict().items()}


# ------------------------------------------------------------------------------ whole runs


def train_results(out: Path) -> dict[str, Any]:
    """A tiny run through ``train()`` inside the existing process group (which it must leave alone:
    a process joins a torchrun group only once, the rendezvous keys cannot be reused)."""
    from siamssl.config import config_from_dict
    from siamssl.train.trainer import train

    summary = train(config_from_dict(run_config(out / "run")))
    return {"summary": summary, "group_kept": dist.is_initialized()}


def main(spec_path: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    dist.init_process_group("gloo")
    try:
        results = {"monitors": monitor_results(), "probe": probe_results(), "train": train_results(out)}
        torch.save(results, out / f"rank{sd.rank()}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1])
