"""The online probe and diagnostics monitors."""

import io

import pytest
import torch
from torch import nn

from siamssl.data.datasets import ImageSplit, LabeledImages
from siamssl.methods import Batch, SimSiam
from siamssl.methods.base import SSLMethod
from siamssl.checkpoint import load_checkpoint
from siamssl.eval.monitors import DiagnosticsMonitor, DiagnosticsOptions, MonitorContext, OnlineProbeMonitor, OnlineProbeOptions
from siamssl.eval.knn import KNNEvalOptions, evaluate_knn
from siamssl.eval.runs import load_run
from tests.conftest import tiny_method_names
from tests.eval.conftest import ALL_MONITORS, train_tiny


def test_online_probe_never_changes_the_ssl_gradients(tmp_path, monkeypatch):
    """The encoder's gradients at every step, the final weights and the run's random state are
    bitwise the same with and without the online probe (and diagnostics), while the probe learns."""
    recorded: list[dict[str, torch.Tensor]] = []

    def record(self, progress):
        recorded.append({n: p.grad.clone() for n, p in self.named_parameters() if p.grad is not None})

    monkeypatch.setattr(SimSiam, "on_before_optimizer_step", record)
    train_tiny(tmp_path / "plain", "eval.monitors=[knn]")
    plain, recorded[:] = list(recorded), []
    summary = train_tiny(tmp_path / "probed", ALL_MONITORS)
    probed = list(recorded)

    assert len(plain) == len(probed) == 8
    assert any(n.startswith("backbone.") for n in plain[0])
    for step, (a, b) in enumerate(zip(plain, probed)):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (step, name)
    state_a, state_b = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt") for d in ("plain", "probed"))
    for key, value in state_a["model"].items():
        assert torch.equal(value, state_b["model"][key]), key
    assert torch.equal(state_a["rng_cpu"], state_b["rng_cpu"])  # the monitors drew no global random numbers

    probe = state_b["monitors"]["online_probe"]["classifier"]
    initial = torch.randn(probe["linear.weight"].shape, generator=torch.Generator().manual_seed(0)) * 0.01
    assert not torch.allclose(probe["linear.weight"], initial)  # it was trained
    assert 0.0 <= summary["online_probe_train_top1"] <= 1.0 and 0.0 <= summary["online_probe_top1"] <= 1.0


def _context(num_classes: int = 3) -> MonitorContext:
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    split = ImageSplit(labels=torch.zeros(4, dtype=torch.long), images=images)
    data = LabeledImages(split, None, [str(c) for c in range(num_classes)], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return MonitorContext(data, data.mean, data.std, torch.device("cpu"), batch_size=4, crop_size=8)


def _separable_stream(steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 8, generator=torch.Generator().manual_seed(99)) * 3
    for _ in range(steps):
        labels = torch.randint(0, 3, (32,), generator=g)
        features = centers[labels] + torch.randn(32, 8, generator=g)
        yield Batch(views=[], index=torch.arange(32), labels=labels), {"features": features}


def test_online_probe_learns_separable_features():
    monitor = OnlineProbeMonitor(OnlineProbeOptions(), _context())
    for batch, outputs in _separable_stream(100):
        monitor.on_step(batch, outputs)
    monitor.evaluate(None)  # resets the running accuracy (no test split here)
    for batch, outputs in _separable_stream(20, seed=1):
        monitor.on_step(batch, outputs)
    results = monitor.evaluate(None)
    assert results["online_probe_train_top1"] >= 0.97
    assert "online_probe_top1" not in results


def test_online_probe_resumes_exactly_from_its_state_dict():
    options = OnlineProbeOptions(lr=0.05, momentum=0.9, weight_decay=1e-4)
    stream = list(_separable_stream(20))
    straight = OnlineProbeMonitor(options, _context())
    for batch, outputs in stream:
        straight.on_step(batch, outputs)

    first = OnlineProbeMonitor(options, _context())
    for batch, outputs in stream[:9]:
        first.on_step(batch, outputs)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = OnlineProbeMonitor(options, _context())
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for batch, outputs in stream[9:]:
        resumed.on_step(batch, outputs)

    for key, value in straight.classifier.state_dict().items():
        assert torch.equal(value, resumed.classifier.state_dict()[key]), key
    assert straight.evaluate(None) == resumed.evaluate(None)


class _Constant(SSLMethod):
    """A collapsed encoder: every image maps to the same vector (optionally plus a random one)."""

    def __init__(self, noise: bool) -> None:
        super().__init__()
        self.backbone = nn.Identity()
        self.noise = noise
        self.direction = torch.randn(16, generator=torch.Generator().manual_seed(0))

    def embed(self, images):
        base = self.direction.expand(images.shape[0], -1)
        return base + torch.randn(images.shape[0], 16) * 10 if self.noise else 3.0 * base

    def project(self, images):
        return self.embed(images)


def test_diagnostics_monitor_sees_collapse():
    context = _context()
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = ImageSplit(labels=torch.zeros(64, dtype=torch.long), images=images)
    data = LabeledImages(split, split, ["a"], (0.5,) * 3, (0.25,) * 3)
    context = MonitorContext(data, data.mean, data.std, context.device, 16, 8)
    monitor = DiagnosticsMonitor(DiagnosticsOptions(max_samples=None, random_init=True), context)
    collapsed = monitor.evaluate(_Constant(noise=False))
    for prefix in ("feat", "emb"):
        assert collapsed[f"{prefix}_std"] == pytest.approx(0.0, abs=1e-6)
        assert collapsed[f"{prefix}_rankme"] == pytest.approx(1.0, abs=1e-3)
        assert collapsed[f"{prefix}_uniformity"] == pytest.approx(0.0, abs=1e-5)
        assert collapsed[f"{prefix}_alignment"] == pytest.approx(0.0, abs=1e-6)
    spread = monitor.evaluate(_Constant(noise=True))
    assert spread["feat_std_x_sqrt_d"] > 0.8 and spread["feat_rankme"] > 10 and spread["feat_uniformity"] < -2
    assert set(monitor.on_train_start(_Constant(noise=False))) == {f"{k}_random_init" for k in collapsed}


@pytest.mark.parametrize("method", tiny_method_names())
def test_every_method_runs_the_probe_and_diagnostics_and_reloads_for_evaluation(tmp_path, method):
    """Two steps of every registered method with the new monitors, then the checkpoint rebuilt for
    evaluation reproduces the monitor's kNN accuracy (memory banks and all)."""
    summary = train_tiny(
        tmp_path / "run", "trainer.max_steps=2", "eval.monitors=[knn, online_probe, diagnostics]",
        "eval.diagnostics.max_samples=16", "eval.diagnostics.alignment=false", method=method,
    )
    assert {"online_probe_train_top1", "feat_rankme", "feat_std"} <= set(summary)
    result = evaluate_knn(tmp_path / "run", KNNEvalOptions(ks=[10], device="cpu", cache=False), quiet=True)
    assert result["top1"]["10"] == summary["knn_top1"]


def test_a_memory_bank_run_can_be_evaluated_on_another_training_set(tmp_path):
    train_tiny(tmp_path / "run", "trainer.max_steps=1", "eval.monitors=[]", method="instdisc")
    run = load_run(tmp_path / "run", ["data.train_subset=40"], device="cpu")
    assert len(run.labeled_data().train) == 40
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    tensors = {k: v for k, v in run.method.state_dict().items() if isinstance(v, torch.Tensor)}
    assert any(v.shape[0] == 64 for k, v in tensors.items() if "bank" in k)  # the 64 rows it was trained with
    for key, value in tensors.items():
        assert torch.equal(value, saved[key]), key


class _LabelInProjectorOnly(SSLMethod):
    """Backbone features that are pure noise; a projector output that encodes the class (the mean
    colour of the image, which the test set draws per class)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Identity()
        self.noise = torch.Generator().manual_seed(0)

    def embed(self, images):
        return torch.randn(images.shape[0], 16, generator=self.noise)

    def project(self, images):
        return torch.nn.functional.one_hot(images.mean(dim=(1, 2, 3)).gt(0).long(), 2).float() + 0.01


def test_knn_monitor_votes_with_the_projector_output_when_asked():
    from siamssl.eval.monitors import KNNMonitor, KNNOptions

    labels = torch.arange(64) % 2
    images = torch.where(labels.view(-1, 1, 1, 1).bool(), 200, 50).expand(64, 3, 8, 8).to(torch.uint8).contiguous()
    split = ImageSplit(labels=labels, images=images)
    data = LabeledImages(split, split, ["dark", "bright"], (0.5,) * 3, (0.25,) * 3)
    context = MonitorContext(data, data.mean, data.std, torch.device("cpu"), 16, 8)
    method = _LabelInProjectorOnly()
    projector = KNNMonitor(KNNOptions(k=5, features="projector"), context).evaluate(method)["knn_top1"]
    backbone = KNNMonitor(KNNOptions(k=5), context).evaluate(method)["knn_top1"]
    assert projector == 1.0 and backbone < 0.8
