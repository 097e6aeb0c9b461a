from siamssl.methods import METHODS
from siamssl.config import config_from_dict
from tests.conftest import tiny_method_names, tiny_raw


def test_every_registered_method_has_a_tiny_test_config():
    """The distributed and smoke tests iterate over tests/tiny_configs; a new method must add one.
    (Methods that tests register for themselves are not part of the package.)"""
    shipped = {entry.name for entry in METHODS if entry.obj.__module__.startswith("siamssl.")}
    assert shipped <= set(tiny_method_names())


def test_tiny_configs_validate(tmp_path):
    for name in tiny_method_names():
        assert config_from_dict(tiny_raw(tmp_path, method=name)).method.name == name
