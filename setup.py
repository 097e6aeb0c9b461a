"""The recipes live in ``configs/`` at the top of the repository, where they are edited; the wheel
ships them inside the package as ``siamssl.recipes`` (read with ``importlib.resources``). A
setuptools ``package_dir`` entry maps one onto the other; the package list is computed here because
``[tool.setuptools.packages.find]`` cannot add a mapped package to the ones it finds. Everything
else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["siamssl", "siamssl.*"]) + ["siamssl.recipes"],
    package_dir={"siamssl.recipes": "configs"},
    package_data={"siamssl.recipes": ["*.yaml", "**/*.yaml"]},
)
