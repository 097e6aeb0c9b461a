from pathlib import Path

import pytest
import yaml

from siamssl.errors import ConfigError
from siamssl.methods import SimSiam
from siamssl.config import all_keys, apply_override, config_from_dict, load_config
from tests.conftest import tiny_raw

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
assert CONFIGS, f"no recipes under {CONFIG_DIR}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(CONFIG_DIR).as_posix() for p in CONFIGS])
def test_every_shipped_config_validates(path):
    """Every recipe, those in subfolders (configs/benchmarks/...) included, loads and names its source."""
    cfg = load_config(str(path))
    assert cfg.to_dict()["method"]["name"] == cfg.method.name
    header = path.read_text().split("\n", 1)[0]
    assert header.startswith("# "), f"{path.name} does not start with its source comment"


def test_benchmark_configs_are_found_in_their_subfolder():
    lightly = {p.stem for p in CONFIGS if p.parent.name == "lightly_cifar10"}
    assert lightly == {"simsiam", "byol", "moco", "simclr", "barlow_twins", "swav", "dino"}


def test_required_keys_exist():
    keys = set(all_keys({}))
    for key in ("trainer.epochs", "trainer.max_steps", "data.batch_size", "data.root", "method.stop_gradient", "output_dir"):
        assert key in keys


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.max_step=3", "unknown config key 'trainer.max_step'; did you mean 'trainer.max_steps'?"),
        ("data.batchsize=3", "did you mean 'data.batch_size'?"),
        ("stop_gradient=false", "did you mean 'method.stop_gradient'?"),
        ("method.stop_gradiant=false", "did you mean 'method.stop_gradient'?"),
        ("eval.knn.kk=3", "did you mean 'eval.knn.k'?"),
    ],
)
def test_unknown_key_names_closest(tmp_path, override, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict(tiny_raw(tmp_path, override))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.epochs=ten", "'trainer.epochs' must be an integer, got 'ten'"),
        ("method.stop_gradient=maybe", "'method.stop_gradient' must be a boolean"),
        ("optim.name=adagrad", "'optim.name' must be one of 'sgd', 'lars', 'adamw', 'adam'"),
        ("data.augment.crop_scale=[0.2]", "'data.augment.crop_scale' must be a list of 2"),
        ("method.predictor=linear", "'method.predictor' must be one of 'learned', 'none', 'fixed_random'"),
    ],
)
def test_wrong_type_names_key_and_type(tmp_path, override, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict(tiny_raw(tmp_path, override))
    assert expected in str(info.value)


def test_unknown_method_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'simsiam'"):
        config_from_dict(tiny_raw(tmp_path, "method.name=simsaim"))


def test_yaml_scientific_notation_strings_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads 5e-4 as a string; the schema accepts it for a float key.
    cfg = config_from_dict(tiny_raw(tmp_path, "optim.weight_decay=5e-4", "trainer.epochs=1e2"))
    assert cfg.optim.weight_decay == pytest.approx(5e-4)
    assert cfg.trainer.epochs == 100


def test_overrides_and_defaults(tmp_path):
    cfg = config_from_dict(tiny_raw(tmp_path, "method.stop_gradient=false", "trainer.max_steps=7", "data.augment.blur_p=[1.0, 0.1]"))
    assert isinstance(cfg.method.options, SimSiam.Config)
    assert cfg.method.stop_gradient is False
    assert cfg.trainer.max_steps == 7
    assert cfg.data.augment.view_probability("blur_p", 1) == pytest.approx(0.1)
    assert cfg.method.symmetric is True  # default from SimSiam.Config


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = config_from_dict(tiny_raw(tmp_path))
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        apply_override({}, "trainer.epochs")
    raw = {"trainer": 3}
    with pytest.raises(ConfigError, match="not a section"):
        apply_override(raw, "trainer.epochs.x=1")


def test_replacing_the_recipe_backbone_drops_only_the_options_it_does_not_take(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"backbone": {"name": "resnet_narrow", "cifar_stem": True, "widths": [8, 8, 8, 8]}}))
    cfg = load_config(str(recipe), ["backbone.name=resnet18"])
    assert cfg.backbone.name == "resnet18" and cfg.backbone.cifar_stem is True  # shared option kept
    assert "its options widths do not apply to it and were dropped" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown config key 'backbone.widths'"):  # given on the command line: checked
        load_config(str(recipe), ["backbone.name=resnet18", "backbone.widths=[8, 8, 8, 8]"])
    kept = load_config(str(recipe), ["backbone.widths=[4, 4, 4, 4]"])  # same backbone: nothing dropped
    assert kept.backbone.widths == (4, 4, 4, 4)
