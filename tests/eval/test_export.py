"""Export: the backbone loads into torchvision's model with strict=True and computes the same features."""

import json

import pytest
import torch
import torchvision

from siamssl.eval.runs import load_run
from siamssl.export import main
from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw


def train_resnet18(run_dir, cifar_stem: bool):
    """One SimSiam step with torchvision's ResNet-18 on the tiny config."""
    raw = tiny_raw(run_dir, "trainer.max_steps=1", "eval.monitors=[]")
    raw["backbone"] = {"name": "resnet18", "cifar_stem": cifar_stem}
    Trainer(config_from_dict(raw)).fit()
    return run_dir


@pytest.fixture(scope="module")
def resnet18_run(tmp_path_factory):
    return train_resnet18(tmp_path_factory.mktemp("export") / "run", cifar_stem=False)


def _features_agree(model: torch.nn.Module, run_dir) -> None:
    method = load_run(run_dir, device="cpu").method
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(images), method.embed(images), atol=1e-5)


def test_torchvision_export_round_trips_with_strict_loading(resnet18_run, capsys):
    assert main(["--checkpoint", str(resnet18_run), "--format", "torchvision", "--num-classes", "10"]) == 0
    exported = resnet18_run / "export" / "resnet18_torchvision"
    state = torch.load(exported.with_suffix(".pt"), weights_only=True)
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(state, strict=True)
    assert torch.equal(state["fc.bias"], torch.zeros(10)) and state["fc.weight"].std() < 0.02
    model.fc = torch.nn.Identity()
    _features_agree(model, resnet18_run)
    meta = json.loads(exported.with_suffix(".json").read_text())
    assert meta["architecture"] == "resnet18" and meta["feature_dim"] == 512 and meta["method"] == "simsiam"


def test_export_without_fc_loads_once_fc_is_added_back(resnet18_run, tmp_path):
    assert main(["--checkpoint", str(resnet18_run / "checkpoints" / "last.pt"), "--output", str(tmp_path / "bb.pt")]) == 0
    state = torch.load(tmp_path / "bb.pt", weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    model = torchvision.models.resnet18()
    state.update({f"fc.{k}": v for k, v in model.fc.state_dict().items()})
    model.load_state_dict(state, strict=True)


def test_cifar_stem_export_says_how_to_adapt_torchvision(tmp_path, capsys):
    run_dir = train_resnet18(tmp_path / "run", cifar_stem=True)
    assert main(["--checkpoint", str(run_dir)]) == 0
    assert "model.maxpool = torch.nn.Identity()" in capsys.readouterr().err
    model = torchvision.models.resnet18()
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    model.fc = torch.nn.Identity()
    model.load_state_dict(torch.load(run_dir / "export" / "resnet18_torchvision.pt", weights_only=True), strict=True)
    _features_agree(model, run_dir)


def test_backbone_without_torchvision_model_fails_clearly(trained_run, capsys):
    assert main(["--checkpoint", str(trained_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: backbone 'resnet_narrow' has no torchvision model") and "--format backbone" in err
    assert main(["--checkpoint", str(trained_run), "--format", "backbone", "--output", str(trained_run / "bb")]) == 0
    method = load_run(trained_run, device="cpu").method
    method.backbone.load_state_dict(torch.load(trained_run / "bb.pt", weights_only=True), strict=True)


def test_unknown_prefix_lists_the_backbones(resnet18_run, capsys):
    assert main(["--checkpoint", str(resnet18_run), "--prefix", "teacher"]) == 2
    assert capsys.readouterr().err.strip() == "error: the checkpoint has no parameters under 'teacher'; modules in this checkpoint: backbone, predictor, projector"
