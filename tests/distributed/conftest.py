"""The in-process single-process references share the 2 CPU cores with the torchrun jobs they are
compared with: run them on one intra-op thread (a second one only adds hand-off cost)."""

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
