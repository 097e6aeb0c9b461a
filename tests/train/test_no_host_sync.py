"""No host synchronization in the training step, for every registered method.

On a GPU any read of a device value on the host (``.item()``, ``bool(t)``, a blocking copy) stalls the
launch queue until the GPU catches up. On the CPU the same code is checked by
:func:`siamssl.runtime.forbid_host_sync`, which makes every Tensor method that reads a value on the
host raise; ``torch.tensor``/``torch.as_tensor`` with an explicit device (a blocking host-to-device
copy on a GPU) are refused too. Each method runs its real training step (the trainer's: forward,
backward, optimizer step, ``on_after_optimizer_step``, monitors, logging accumulation) three times
inside the guard, the first step included.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from siamssl.config import config_from_dict
from siamssl.methods.registry import METHODS
from siamssl.runtime import HostSyncError, forbid_host_sync, record_host_syncs
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_method_names, tiny_raw


@contextmanager
def no_tensors_from_host_values():
    """Refuse ``torch.tensor(data, device=...)`` / ``torch.as_tensor(data, device=...)``: on a GPU
    they copy from pageable memory and wait for the copy."""
    originals = torch.tensor, torch.as_tensor

    def guarded(original):
        def make(data, *args, **kwargs):
            if kwargs.get("device") is not None:
                raise HostSyncError(f"{original.__name__}(..., device=...) inside the training step")
            return original(data, *args, **kwargs)

        return make

    torch.tensor, torch.as_tensor = guarded(originals[0]), guarded(originals[1])
    try:
        yield
    finally:
        torch.tensor, torch.as_tensor = originals


def test_every_registered_method_has_a_tiny_config():
    # Methods that tests register for themselves (tests/train/test_trainer.py's NaN method...) are not the library's.
    library = {name for name in METHODS.names() if METHODS.get(name).__module__.startswith("siamssl.")}
    assert library <= set(tiny_method_names())


def test_forbid_host_sync_catches_a_host_read():
    x = torch.ones(3)
    with pytest.raises(HostSyncError), forbid_host_sync(torch.device("cpu")):
        if x.sum() > 0:
            pass
    assert float(x.sum()) == 3.0  # restored afterwards


VARIANTS = [(name, ()) for name in tiny_method_names()] + [
    ("byol", ("method.predictor=directpred", "method.directpred.freq=2")),  # chooses its update steps on the host
    ("moco", ("method.symmetric=true",)),
]


@pytest.mark.parametrize("method, overrides", VARIANTS, ids=[f"{m}{'+' if o else ''}{'+'.join(o)}" for m, o in VARIANTS])
def test_training_step_reads_nothing_on_the_host(method, overrides, tmp_path):
    raw = tiny_raw(tmp_path / "run", "trainer.log_every_steps=1000", *overrides, method=method)
    trainer = Trainer(config_from_dict(raw))
    batches = list(zip(range(3), trainer.loader.batches(0)))
    before = {k: v.detach().clone() for k, v in trainer.method.state_dict().items() if isinstance(v, torch.Tensor)}
    with forbid_host_sync(trainer.device), no_tensors_from_host_values():
        for _, batch in batches:
            trainer._train_step(batch, 0)
    after = trainer.method.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the steps changed nothing"
    assert trainer._window_steps == 3


def test_record_host_syncs_lists_every_host_read_and_restores():
    x = torch.ones(3)
    with record_host_syncs(torch.device("cpu")) as found:
        (x * 2).sum().item()
        bool(x.any())
        (x + 1).mul(2)
    assert found == ["Tensor.item", "Tensor.__bool__"]
    assert float(x.sum()) == 3.0 and torch.Tensor.item.__name__ == "item"  # the methods are restored
