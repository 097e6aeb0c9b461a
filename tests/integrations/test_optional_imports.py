"""Lightning stays optional: only siamssl.integrations imports it, and without it the adapter says
which extra to install."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "siamssl"
OPTIONAL = {"lightning", "pytorch_lightning"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_the_integrations_import_lightning():
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if _imported_roots(p) & OPTIONAL}
    assert users == {"integrations/lightning.py"}  # the checker sees the adapter itself


def test_without_lightning_the_adapter_names_the_extra(monkeypatch):
    for name in ("lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)  # import lightning.pytorch -> ImportError
    monkeypatch.delitem(sys.modules, "siamssl.integrations.lightning", raising=False)
    with pytest.raises(ImportError, match=r'pip install "siamssl\[lightning\]"'):
        importlib.import_module("siamssl.integrations.lightning")
    monkeypatch.delitem(sys.modules, "siamssl.integrations.lightning", raising=False)
