"""timm backbones through the real trainer (SimSiam with a ResNet-18, DINO with a ViT and multi-crop),
then exported so that ``timm.create_model(name)`` loads the weights strictly, classifier aside."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from siamssl.checkpoint import load_checkpoint
from siamssl.config import config_from_dict
from siamssl.eval.runs import load_run
from siamssl.export import main as export_main
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw

VIT_KWARGS = {"img_size": 16, "patch_size": 8, "depth": 2, "dynamic_img_size": True}


def _train(run_dir, method: str, backbone: dict) -> dict:
    raw = tiny_raw(run_dir, "trainer.max_steps=2", "eval.monitors=[knn]", method=method)
    raw["backbone"] = backbone
    initial = Trainer(config_from_dict({**raw, "output_dir": str(run_dir.parent / "init")})).method.backbone.state_dict()
    summary = Trainer(config_from_dict(raw)).fit()
    trained = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    changed = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, trained[f"backbone.{k}"])]
    assert summary["steps"] == 2 and 0.0 <= summary["knn_top1"] <= 1.0
    assert changed, "two optimizer steps left the timm backbone unchanged"
    return summary


@pytest.fixture(scope="module")
def simsiam_timm_resnet(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("timm_resnet") / "run"
    _train(run_dir, "simsiam", {"name": "timm", "model": "resnet18", "cifar_stem": True})
    return run_dir


@pytest.fixture(scope="module")
def dino_timm_vit(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("timm_vit") / "run"
    _train(run_dir, "dino", {"name": "timm", "model": "vit_tiny_patch16_224", "kwargs": VIT_KWARGS})
    return run_dir


def _same_features(model: torch.nn.Module, run_dir, size: int = 16) -> None:
    method = load_run(run_dir, device="cpu").method
    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(images), method.embed(images), atol=1e-5)


def test_dino_vit_export_loads_into_timm_create_model(dino_timm_vit):
    # auto format: timm naming for a timm backbone; DINO evaluates (and exports) the teacher
    assert export_main(["--checkpoint", str(dino_timm_vit), "--prefix", "teacher_backbone"]) == 0
    exported = dino_timm_vit / "export" / "vit_tiny_patch16_224_timm"
    state = torch.load(exported.with_suffix(".pt"), weights_only=True)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **VIT_KWARGS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and sorted(missing) == ["head.bias", "head.weight"]
    model.reset_classifier(0)
    model.load_state_dict(state, strict=True)
    _same_features(model, dino_timm_vit)
    _same_features(model, dino_timm_vit, size=8)  # a small-crop size, through timm's dynamic_img_size
    meta = json.loads(exported.with_suffix(".json").read_text())
    assert meta["format"] == "timm" and meta["architecture"] == "vit_tiny_patch16_224" and meta["feature_dim"] == 192


def test_simsiam_resnet_export_with_classifier_and_cifar_stem(simsiam_timm_resnet, capsys):
    assert export_main(["--checkpoint", str(simsiam_timm_resnet), "--format", "timm", "--num-classes", "10"]) == 0
    assert "model.maxpool = torch.nn.Identity()" in capsys.readouterr().err
    state = torch.load(simsiam_timm_resnet / "export" / "resnet18_timm.pt", weights_only=True)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    model.load_state_dict(state, strict=True)
    assert torch.equal(state["fc.bias"], torch.zeros(10))
    model.reset_classifier(0)
    _same_features(model, simsiam_timm_resnet)


def test_timm_format_needs_a_timm_backbone(trained_run, capsys):
    assert export_main(["--checkpoint", str(trained_run), "--format", "timm"]) == 2
    assert "--format timm needs a backbone.name=timm run" in capsys.readouterr().err


def test_torchvision_backbone_trains_and_exports_in_torchvision_naming(tmp_path):
    import torchvision

    run_dir = tmp_path / "run"
    _train(run_dir, "simsiam", {"name": "torchvision", "model": "resnet18", "cifar_stem": True})
    assert export_main(["--checkpoint", str(run_dir), "--num-classes", "10"]) == 0
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    model.load_state_dict(torch.load(run_dir / "export" / "resnet18_torchvision.pt", weights_only=True), strict=True)
    model.fc = torch.nn.Identity()
    _same_features(model, run_dir)
