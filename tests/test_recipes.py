"""Recipes by name: ``--config simsiam`` is the shipped recipe, a path is a file, nested names work."""

from __future__ import annotations

from pathlib import Path

import pytest

import siamssl.config as config_module
from siamssl.config import find_recipe, list_recipes, load_raw, recipe_description
from siamssl.errors import ConfigError
from siamssl.train.__main__ import main as train_main

REPO = Path(__file__).resolve().parents[1]


def test_every_yaml_under_configs_is_a_recipe_by_name():
    expected = sorted(p.relative_to(REPO / "configs").with_suffix("").as_posix() for p in (REPO / "configs").rglob("*.yaml"))
    assert list_recipes() == expected
    for name in expected:
        assert load_raw(name) == load_raw(str(REPO / "configs" / f"{name}.yaml")), name


def test_a_name_a_yaml_name_and_a_clone_path_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    reference = load_raw(str(REPO / "configs" / "simsiam.yaml"))
    assert load_raw("simsiam") == load_raw("simsiam.yaml") == load_raw("configs/simsiam.yaml") == reference


def test_an_existing_file_wins_over_the_recipe_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "simsiam.yaml").write_text("seed: 7\n")
    assert load_raw("simsiam.yaml") == {"seed": 7}
    assert load_raw("simsiam")["method"]["name"] == "simsiam"


def test_nested_recipes_resolve_and_list(tmp_path, monkeypatch):
    root = tmp_path / "recipes"
    (root / "benchmarks" / "lightly_cifar10").mkdir(parents=True)
    (root / "benchmarks" / "lightly_cifar10" / "byol.yaml").write_text("# BYOL, lightly's benchmark. More.\nseed: 3\n")
    (root / "simsiam.yaml").write_text("seed: 1\n")
    (root / "notes.txt").write_text("not a recipe")
    monkeypatch.setattr(config_module, "recipes_root", lambda: root)
    monkeypatch.chdir(tmp_path)  # a clone's configs/ path must resolve through the recipes, not the working directory
    assert list_recipes() == ["benchmarks/lightly_cifar10/byol", "simsiam"]
    assert load_raw("benchmarks/lightly_cifar10/byol") == {"seed": 3}
    assert load_raw("configs/benchmarks/lightly_cifar10/byol.yaml") == {"seed": 3}
    assert find_recipe("benchmarks/lightly_cifar10") is None  # a folder is not a recipe
    assert find_recipe("benchmarks/../simsiam") is None
    with pytest.raises(ConfigError, match=r"did you mean 'benchmarks/lightly_cifar10/byol'\?"):
        load_raw("benchmarks/lightly_cifar10/byl")


def test_an_unknown_name_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_raw("simsam")
    assert str(error.value) == (
        "config 'simsam' is neither a file nor a shipped recipe (did you mean 'simsiam'?); "
        "list the recipes with siamssl-train --list-configs"
    )
    with pytest.raises(ConfigError, match="is a folder"):
        load_raw(str(tmp_path))


def test_description_is_the_first_sentence_of_the_header():
    assert recipe_description("# SimSiam, CIFAR-10 (Chen & He, App. D). Paper: 91.8%.\n# more\nmethod: {}\n") == (
        "SimSiam, CIFAR-10 (Chen & He, App. D)."
    )
    assert recipe_description("# Two lines of one\n# sentence. Then more.\n") == "Two lines of one sentence."
    assert recipe_description("method: {}\n") == ""
    assert len(recipe_description("# " + "word " * 60)) <= 100


def test_list_configs_prints_every_recipe_with_its_description(capsys):
    assert train_main(["--list-configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_recipes()
    quickstart = next(line for line in lines if line.startswith("quickstart "))
    assert "SimSiam on the built-in shapes dataset" in quickstart


def test_train_command_takes_a_recipe_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_main(["--config", "quickstart", "--print-config", "seed=5"]) == 0
    printed = capsys.readouterr().out
    assert "name: resnet_narrow" in printed and "seed: 5" in printed
    assert train_main(["--config", "quickstrat", "--print-config"]) == 2
    assert "did you mean 'quickstart'?" in capsys.readouterr().err
