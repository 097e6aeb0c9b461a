"""``trainer.sync_bn``: null follows the method's paper (``SSLMethod.default_sync_bn``), a boolean
overrides it. (Its effect under 2 processes is tested in tests/distributed/.)"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from siamssl.methods import SimSiam, register_method
from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw



@register_method("per_process_bn_simsiam")
class _PerProcessBNSimSiam(SimSiam):
    default_sync_bn = False

    @dataclass
    class Config(SimSiam.Config):
        pass


@pytest.mark.parametrize(
    ("method", "setting", "expected"),
    [("simsiam", "null", True), ("simsiam", "false", False), ("per_process_bn_simsiam", "null", False), ("per_process_bn_simsiam", "true", True)],
)
def test_sync_bn_defaults_to_the_method_and_can_be_overridden(tmp_path, method, setting, expected):
    raw = tiny_raw(tmp_path / "run", f"method.name={method}", f"trainer.sync_bn={setting}", "eval.monitors=[]")
    assert Trainer(config_from_dict(raw)).sync_bn is expected


def test_simsiam_paper_uses_sync_bn():
    assert SimSiam.default_sync_bn is True


def test_memory_bank_methods_keep_per_gpu_batchnorm_like_their_official_code():
    from siamssl.methods import METHODS

    assert METHODS.get("instdisc").default_sync_bn is False and METHODS.get("cmc").default_sync_bn is False
