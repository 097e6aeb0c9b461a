"""The installed package, not the checkout: build the wheel, install it into a fresh virtual
environment and run the console commands from a folder outside the repository.

The build is offline (``--no-build-isolation``: the running interpreter's setuptools) and works on
a copy of the sources, so it leaves no ``build/`` or ``*.egg-info`` in the checkout. The fresh
environment reuses the running interpreter's packages (torch, torchvision, ...) through a ``.pth``
file instead of reinstalling them; the siamssl it imports is the wheel's, which is checked.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "siamssl", "configs")


def _run(command: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"  # tiny tensors: threads only add hand-off cost on a shared machine
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "--quiet", "--wheel-dir", str(dist), str(source)], cwd=source)
    (built,) = dist.glob("siamssl-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root)
    python = root / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip())
    outer = [p for p in dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"]]) if Path(p).is_dir()]
    (purelib / "outer_environment.pth").write_text("\n".join(outer) + "\n")
    # --ignore-installed: never touch a siamssl installed in the outer environment (e.g. an editable one).
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--quiet",
          "--disable-pip-version-check", str(wheel)], cwd=root)
    return python.parent


def test_the_wheel_ships_every_module_and_every_recipe(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "siamssl").rglob("*.py")}
    recipes = {"siamssl/recipes/" + p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert "siamssl/recipes/quickstart.yaml" in recipes
    assert modules <= names, sorted(modules - names)
    assert recipes <= names, sorted(recipes - names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = configparser.ConfigParser()
    scripts.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    assert dict(scripts["console_scripts"]) == {
        "siamssl-train": "siamssl.train.__main__:main",
        "siamssl-eval": "siamssl.eval.__main__:main",
        "siamssl-export": "siamssl.export:main",
    }


@pytest.mark.slow
def test_the_installed_commands_train_the_quickstart_recipe_by_name_outside_the_repository(venv: Path, tmp_path: Path):
    where = _run([str(venv / "python"), "-c", "import siamssl; print(siamssl.__file__)"], cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv.parent), f"imported {where}, not the installed wheel"
    for command in ("siamssl-train", "siamssl-eval", "siamssl-export"):
        assert (venv / command).is_file(), command

    # The quickstart recipe by name, shrunk to two steps on 64 images of 16 px.
    _run([str(venv / "siamssl-train"), "--config", "quickstart", "output_dir=run", "trainer.max_steps=2",
          "data.shapes.num_train=64", "data.shapes.num_test=32", "data.shapes.image_size=16", "data.augment.crop_size=16",
          "data.batch_size=16", "data.num_workers=0", "trainer.progress_bar=false", "eval.knn.random_init=false"], cwd=tmp_path)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "simsiam" and summary["steps"] == 2 and 0.0 <= summary["knn_top1"] <= 1.0
    assert yaml.safe_load((run / "config.yaml").read_text())["backbone"]["widths"] == [16, 32, 64, 128]  # the recipe's


def test_the_test_extra_installs_every_optional_package():
    # `make install` installs .[dev]; with every optional package there, no test skips for a missing one.
    import re
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}

    optional = set().union(*(names(reqs) for extra, reqs in extras.items() if extra != "dev"))
    assert {"lightning", "safetensors", "matplotlib"} <= optional
    assert optional <= names(extras["dev"]), sorted(optional - names(extras["dev"]))
