"""Imports run one way: building blocks <- methods <- data, eval <- config <- train <- commands.

Every ``import siamssl.x`` in the package, at module level or inside a function, is checked against
the layer of the importing module, so a circle like train/config -> train/monitors -> eval -> train
cannot come back unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "siamssl"

# Layer of each top-level part of the package; a module may import only from its own layer or below.
LAYERS: dict[str, int] = {
    "errors": 0, "registry": 0, "schema": 0, "distributed": 0,
    "losses": 1, "heads": 1, "backbones": 1,
    "methods": 2, "analysis": 2,
    "data": 3, "optim": 3, "checkpoint": 3, "runtime": 3, "loggers": 3,
    "eval": 4,
    "config": 5, "build": 5,
    "train": 6, "integrations": 6,
    "export": 7,
}
# The command side of evaluation (open a run: its config and checkpoint) sits above the config.
# Evaluation modules reach it only from inside the functions that take a run (``evaluate_knn(checkpoint)``,
# ``main``), so their pure functions import without the config; evaluation never imports training.
COMMAND_MODULES = {"eval.runs": 5}


def _part(module: str) -> str:
    return module.split(".")[0]


def _layer(module: str) -> int:
    for prefix, layer in COMMAND_MODULES.items():
        if module == prefix:
            return layer
    return LAYERS[_part(module)]


def _package_modules() -> list[str]:
    modules = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules.append(".".join(parts))
    return sorted(modules)


def _imports(module: str, *, lazy: bool = True) -> set[str]:
    """The siamssl modules ``module`` imports; with ``lazy=False`` only those imported at module level
    (not inside a function)."""
    path = PACKAGE.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    inside_functions = {
        id(inner)
        for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if not lazy and id(node) in inside_functions:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("siamssl."):
            found.add(node.module.removeprefix("siamssl."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("siamssl.") for a in node.names if a.name.startswith("siamssl."))
    return found


def test_every_part_of_the_package_has_a_layer():
    unknown = {_part(m) for m in _package_modules()} - set(LAYERS) - {"__main__"}
    assert not unknown, f"give these parts of siamssl a layer in tests/test_layering.py: {sorted(unknown)}"


@pytest.mark.parametrize("module", [m for m in _package_modules() if _part(m) in LAYERS])
def test_imports_point_down(module):
    upward = []
    lazy_commands = {i for i in _imports(module) - _imports(module, lazy=False) if i in COMMAND_MODULES}
    for imported in _imports(module) - lazy_commands:
        if _part(imported) == _part(module) and module not in COMMAND_MODULES and imported not in COMMAND_MODULES:
            continue  # inside one part, anything goes
        if _layer(imported) > _layer(module):
            upward.append(imported)
    assert not upward, f"siamssl.{module} imports higher layers: {sorted(upward)}"


def test_evaluation_never_imports_training():
    offenders = [m for m in _package_modules() if _part(m) == "eval" and any(_part(i) == "train" for i in _imports(m))]
    assert not offenders, offenders


def test_the_config_and_the_runs_loader_import_without_training():
    import subprocess
    import sys

    code = "import sys, siamssl.eval.runs, siamssl.config; print(any(m.startswith('siamssl.train') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_the_checker_sees_function_level_imports():
    # Negative control: a lazy import is still an import; only eval.runs may be reached lazily.
    assert "eval.runs" in _imports("eval.knn") and "eval.runs" not in _imports("eval.knn", lazy=False)
    assert _layer("eval.knn") < _layer("config") < _layer("train.trainer")
