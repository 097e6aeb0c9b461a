"""Process-level setup: device choice, torch.distributed initialization, seeding, messages."""

from __future__ import annotations

import os
import random
import re
import sys
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from siamssl.distributed import is_distributed, is_main_process
from siamssl.errors import ConfigError


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_device_setting(setting: str) -> None:
    """Refuse ``cuda:N`` under torchrun: there ``LOCAL_RANK`` decides each process's GPU, and a fixed
    index would put every process on the same GPU."""
    if launched_by_torchrun() and re.fullmatch(r"cuda:\d+", setting):
        raise ConfigError(
            f"trainer.device={setting} cannot be used under torchrun: each process takes the GPU of its LOCAL_RANK; "
            "use trainer.device=cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs"
        )


def init_distributed(device_setting: str, timeout_minutes: Optional[float] = None) -> bool:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1): NCCL on GPUs, gloo on
    CPU, with collectives timing out after ``timeout_minutes`` (torch's default when None: 10 minutes
    for NCCL, 30 for gloo). Returns whether this call created the group (its owner destroys it)."""
    check_device_setting(device_setting)
    if not launched_by_torchrun() or dist.is_initialized():
        return False
    use_cuda = torch.cuda.is_available() and device_setting in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank())
    options = {} if timeout_minutes is None else {"timeout": timedelta(minutes=timeout_minutes)}
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", **options)
    return True


@contextmanager
def process_group(device_setting: str, timeout_minutes: Optional[float] = None) -> Iterator[None]:
    """Join the torchrun process group for the body and destroy it afterwards, also when the body
    raises (NCCL otherwise warns about leaked resources, or hangs at interpreter exit). A group
    that already existed is left to its creator."""
    created = init_distributed(device_setting, timeout_minutes)
    try:
        yield
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


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
    check_device_setting(setting)
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={setting} but CUDA is not available; use trainer.device=cpu")
        if setting == "cuda":
            return torch.device("cuda", local_rank())
    try:
        return torch.device(setting)
    except RuntimeError:
        raise ConfigError(f"trainer.device '{setting}' is not a device (use auto, cpu, cuda or cuda:N)") from None


def resolve_precision(setting: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on a CUDA GPU that supports it (Ampere and newer), fp32 elsewhere
    (the CPU, older GPUs, where fp16 would need loss scaling); any other setting as given."""
    if setting != "auto":
        return setting
    if device.type == "cuda" and _native_bf16():
        return "bf16"
    return "fp32"


def _native_bf16() -> bool:
    """bf16 in hardware (compute capability 8.0+), not the slow emulation torch also accepts."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older signature without the emulation flag
        return bool(torch.cuda.is_bf16_supported())


def resolve_channels_last(setting: "bool | str", device: torch.device, model: torch.nn.Module) -> bool:
    """``auto``: NHWC on CUDA for convolutional models (more than one 2-d convolution: a ViT's
    single patch embedding does not count); a boolean as given."""
    if setting != "auto":
        return bool(setting)
    convolutions = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return device.type == "cuda" and convolutions > 1


def configure_tf32(device: torch.device, enabled: bool) -> None:
    """On CUDA, let float32 matrix multiplications and convolutions use TensorFloat-32 (10-bit
    mantissa inputs, float32 accumulation: ``torch.set_float32_matmul_precision("high")``) or
    forbid it (``"highest"``). It speeds up what autocast leaves in float32 (and whole fp32 runs)
    on Ampere and newer GPUs; nothing changes on the CPU."""
    if device.type != "cuda":
        return
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def message(text: str) -> None:
    """A line for the user, from the main process only, that does not break the progress bar."""
    if is_main_process():
        tqdm.write(f"siamssl: {text}", file=sys.stderr)


class HostSyncError(RuntimeError):
    """A tensor's value was read on the host inside a region that must not synchronize."""


# Tensor methods that read device values on the host (on a GPU each one waits for the stream).
_HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


@contextmanager
def _host_reads_patched(on_read: Callable[[str], None]) -> Iterator[None]:
    """Call ``on_read(name)`` whenever a Tensor method of ``_HOST_READS`` runs in the body (the call
    proceeds if ``on_read`` returns)."""
    originals = {name: getattr(torch.Tensor, name) for name in _HOST_READS}

    def patched(name: str) -> Callable[..., object]:
        original = originals[name]

        def read(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            on_read(name)
            return original(self, *args, **kwargs)

        return read

    try:
        for name in _HOST_READS:
            setattr(torch.Tensor, name, patched(name))
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@contextmanager
def forbid_host_sync(device: torch.device) -> Iterator[None]:
    """Fail loudly if the body synchronizes the host with ``device``.

    On CUDA: ``torch.cuda.set_sync_debug_mode("error")`` for the body, so any synchronizing CUDA
    call (``.item()``, a blocking copy to or from the device, ``nonzero``, a solver's status check...)
    raises. Elsewhere (CPU tests of the same code): the Tensor methods that read a value on the host
    (``item``, ``tolist``, ``numpy``, ``cpu``, ``bool()``, ``int()``, ``float()``, ``__index__``)
    raise :class:`HostSyncError` for the body. Both are process-wide, not per thread: the loader
    thread of image-folder runs (which decodes with nvJPEG and reads host tensors) must be idle
    meanwhile: check steps fed by in-memory data.

    Usage (the training step of the trainer, after a warm-up step outside)::

        with forbid_host_sync(trainer.device):
            trainer._train_step(batch, epoch)
    """
    if device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        return

    def refuse(name: str) -> None:
        raise HostSyncError(f"Tensor.{name} read a tensor on the host inside forbid_host_sync()")

    with _host_reads_patched(refuse):
        yield


@contextmanager
def record_host_syncs(device: torch.device) -> Iterator[list[str]]:
    """Like :func:`forbid_host_sync`, but list the synchronizations of the body instead of failing
    at the first: on CUDA the first line of each warning of ``set_sync_debug_mode("warn")``, on the
    CPU ``"Tensor.<method>"`` for each host read. The list is complete when the block exits."""
    found: list[str] = []
    if device.type == "cuda":
        import warnings

        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield found
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        found.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message))
        return
    with _host_reads_patched(lambda name: found.append(f"Tensor.{name}")):
        yield found
