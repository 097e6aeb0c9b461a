"""Process-level setup: device choice, torch.distributed initialization, seeding, messages."""

from __future__ import annotations

import os
import random
import sys
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from siamssl.distributed import is_distributed, is_main_process
from siamssl.errors import ConfigError


def init_distributed(device_setting: str) -> None:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1): NCCL on GPUs, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    use_cuda = torch.cuda.is_available() and device_setting in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def local_main_first() -> Iterator[None]:
    """Run the body on each machine's first process, then on the others (downloads, caches)."""
    if is_distributed() and local_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if is_distributed() and local_rank() == 0:
            dist.barrier()


def resolve_device(setting: str) -> torch.device:
    """``auto``: this process's GPU when CUDA is available, else the CPU."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={setting} but CUDA is not available; use trainer.device=cpu")
        if setting == "cuda":
            return torch.device("cuda", local_rank())
    try:
        return torch.device(setting)
    except RuntimeError:
        raise ConfigError(f"trainer.device '{setting}' is not a device (use auto, cpu, cuda or cuda:N)") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def message(text: str) -> None:
    """A line for the user, from the main process only, that does not break the progress bar."""
    if is_main_process():
        tqdm.write(f"siamssl: {text}", file=sys.stderr)
