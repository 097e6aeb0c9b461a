"""Method tests run tiny models: one intra-op thread is faster than two when the 2 CPU cores are
shared (thread hand-off dominates, see tests/losses/conftest.py)."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
