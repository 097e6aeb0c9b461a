"""Method tests run tiny networks: intra-op parallelism only adds thread hand-off cost, which becomes
dramatic when the 2 CPU cores are shared with other jobs (see tests/losses/conftest.py). Run them
single-threaded and restore the session's setting afterwards."""

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
