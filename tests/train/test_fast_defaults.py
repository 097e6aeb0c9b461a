"""The fast defaults and the process-level switches, on the CPU: precision and channels_last
``auto``, TF32, the process-group timeout and lifetime, ``cuda:N`` under torchrun, the config
validation of the new keys, and which networks ``trainer.compile`` compiles (with static shapes,
one graph per resolution)."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from siamssl import runtime
from siamssl.backbones import build_backbone
from siamssl.config import config_from_dict
from siamssl.errors import ConfigError
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw

REPO = Path(__file__).resolve().parents[2]
CUDA = torch.device("cuda", 0)  # only passed to the resolution functions, never used for tensors


def test_precision_auto_is_bf16_on_bf16_gpus_and_fp32_elsewhere(monkeypatch):
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.resolve_precision("auto", CUDA) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.resolve_precision("auto", CUDA) == "fp32"  # fp16 would need loss scaling: not a silent default
    for pinned in ("fp32", "bf16", "fp16"):
        assert runtime.resolve_precision(pinned, CUDA) == pinned


def test_channels_last_auto_is_on_for_convolutional_backbones_on_gpus_only():
    resnet, _ = build_backbone("resnet_narrow", cifar_stem=True, widths=[8, 16, 16, 32])
    vit, _ = build_backbone("vit_tiny", image_size=16, patch_size=8)
    assert runtime.resolve_channels_last("auto", CUDA, resnet) is True
    assert runtime.resolve_channels_last("auto", CUDA, vit) is False  # one patch-embedding convolution
    assert runtime.resolve_channels_last("auto", torch.device("cpu"), resnet) is False
    assert runtime.resolve_channels_last(True, torch.device("cpu"), vit) is True
    assert runtime.resolve_channels_last(False, CUDA, resnet) is False


def test_tf32_is_set_on_gpus_with_a_switch_and_never_on_the_cpu():
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    try:
        runtime.configure_tf32(torch.device("cpu"), True)
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
        runtime.configure_tf32(CUDA, True)
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
        runtime.configure_tf32(CUDA, False)
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def test_the_cpu_run_resolves_to_fp32_without_channels_last(tmp_path):
    trainer = Trainer(config_from_dict(tiny_raw(tmp_path / "run", "trainer.device=cpu")))
    assert (trainer.precision, trainer.channels_last, trainer.autocast_dtype) == ("fp32", False, None)
    assert not trainer.scaler.is_enabled()


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.dist_timeout_minutes=0", "trainer.dist_timeout_minutes must be positive"),
        ("trainer.checkpoint_every_minutes=-1", "trainer.checkpoint_every_minutes must be positive or null"),
        ("trainer.checkpoint_every_epochs=0", "trainer.checkpoint_every_epochs must be at least 1"),
        ("trainer.channels_last=sometimes", "config key 'trainer.channels_last' must be a boolean or one of 'auto'"),
        ("trainer.precision=fp64", "config key 'trainer.precision' must be one of 'auto', 'fp32', 'bf16', 'fp16'"),
        ("trainer.tf32=maybe", "config key 'trainer.tf32' must be a boolean"),
    ],
)
def test_bad_values_of_the_new_keys_are_one_line_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as error:
        config_from_dict(tiny_raw(tmp_path / "run", override))
    assert "\n" not in str(error.value)


def test_defaults_of_the_new_keys():
    trainer = config_from_dict({}).trainer
    assert (trainer.precision, trainer.channels_last, trainer.tf32) == ("auto", "auto", True)
    assert (trainer.checkpoint_every_minutes, trainer.checkpoint_every_epochs, trainer.dist_timeout_minutes) == (10.0, None, 30.0)
    assert config_from_dict({"eval": {"knn": {}}}).monitor_options["knn"].bank_dtype == "auto"


# ------------------------------------------------------------------------- the process group


def test_cuda_index_under_torchrun_is_refused_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"trainer.device=cuda:1 cannot be used under torchrun: each process takes the GPU of its LOCAL_RANK"):
        runtime.init_distributed("cuda:1")
    runtime.check_device_setting("cuda")  # the index comes from LOCAL_RANK: fine
    monkeypatch.setenv("WORLD_SIZE", "1")
    runtime.check_device_setting("cuda:1")  # one process: any GPU
    # through the command line: one line, exit code 2, nothing written
    config = tmp_path / "c.yaml"
    config.write_text("data: {dataset: shapes}\n")
    env = {"PYTHONPATH": str(REPO), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "siamssl.train", "--config", str(config), "trainer.device=cuda:3", f"output_dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: trainer.device=cuda:3 cannot be used under torchrun") and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


class _OneProcessGroup:
    """Stands in for torchrun: ``init_process_group`` records its arguments and joins a real
    one-process gloo group (file rendezvous), so creation and destruction are observable."""

    def __init__(self, tmp_path: Path) -> None:
        self.calls: list[dict] = []
        self.init_file = tmp_path / "rendezvous"
        self.original = dist.init_process_group

    def __call__(self, backend: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.calls.append({"backend": backend, **kwargs})
        self.original(backend, init_method=f"file://{self.init_file}", rank=0, world_size=1, **kwargs)


def test_process_group_uses_the_configured_timeout_and_is_destroyed_after_success_and_failure(monkeypatch, tmp_path):
    fake = _OneProcessGroup(tmp_path)
    monkeypatch.setattr(dist, "init_process_group", fake)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not dist.is_initialized()
    with runtime.process_group("cpu", 7.5):
        assert dist.is_initialized()
    assert not dist.is_initialized()
    assert fake.calls == [{"backend": "gloo", "timeout": timedelta(minutes=7.5)}]
    with pytest.raises(RuntimeError, match="boom"):
        with runtime.process_group("cpu", 7.5):
            assert dist.is_initialized()
            raise RuntimeError("boom")
    assert not dist.is_initialized()


def test_train_destroys_the_group_it_created_when_the_trainer_fails(monkeypatch, tmp_path):
    from siamssl.train.trainer import train

    monkeypatch.setattr(dist, "init_process_group", _OneProcessGroup(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):  # raised after the group was joined
        train(config_from_dict(tiny_raw(tmp_path / "run", "trainer.precision=fp16", "trainer.dist_timeout_minutes=3")))
    assert not dist.is_initialized()


# ------------------------------------------------------------------------------------ compile


@pytest.mark.parametrize("method, expected", [("simsiam", ["backbone"]), ("byol", ["backbone", "target_backbone"]),
                                              ("dino", ["backbone", "teacher_backbone"]), ("moco", ["backbone", "key_backbone"])])
def test_compiled_modules_are_the_backbone_and_its_momentum_copies(tmp_path, method, expected):
    trainer = Trainer(config_from_dict(tiny_raw(tmp_path / "run", method=method)))
    names = {id(module): name for name, module in trainer.method.named_children()}
    assert [names[id(m)] for m in trainer.method.compiled_modules()] == expected


def test_compile_specializes_each_resolution_once_and_covers_the_teacher(tmp_path):
    """DINO with 2 global (16 px) and 2 small (8 px) crops: every graph has static shapes, both
    resolutions are compiled, the teacher is compiled too, and nothing compiles after step 1."""
    from torch._dynamo import lookup_backend, register_backend

    from siamssl.eval.monitors import MONITORS, Monitor

    graphs: list[list[tuple[int, ...]]] = []

    def recording_backend(graph_module, example_inputs):  # type: ignore[no-untyped-def]
        shapes = [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)]
        assert all(isinstance(d, int) for shape in shapes for d in shape), "a dynamic-shape graph"
        graphs.append(shapes)
        return lookup_backend("aot_eager")(graph_module, example_inputs)

    if "siamssl_test_static" not in torch._dynamo.list_backends(exclude_tags=()):
        register_backend(name="siamssl_test_static")(recording_backend)
    counts: list[int] = []

    class CountGraphs(Monitor):
        def on_step(self, batch, outputs):  # type: ignore[no-untyped-def]
            counts.append(len(graphs))

    if "count_graphs" not in MONITORS:
        MONITORS.register("count_graphs")(CountGraphs)
    torch._dynamo.reset()
    raw = tiny_raw(tmp_path / "run", "trainer.compile=true", "trainer.compile_backend=siamssl_test_static",
                   "trainer.max_steps=3", "eval.monitors=[count_graphs]", method="dino")
    trainer = Trainer(config_from_dict(raw))
    trainer.fit()
    assert all(m._compiled_call_impl is not None for m in (trainer.method.backbone, trainer.method.teacher_backbone))
    assert counts[0] > 0 and counts == [counts[0]] * 3, counts  # compiled in step 1 only
    images = [s for shapes in graphs for s in shapes if len(s) == 4 and s[1] == 3 and s[-1] > 3]  # not the 3x3 stem weight
    resolutions = {s[-1] for s in images}
    assert resolutions == {16, 8}
