"""A background thread that prepares training batches ahead of the training step.

On a GPU the thread works on its own CUDA stream: decoding, cropping and augmenting batch k + 1
overlap the training step of batch k on the default stream, and a blocking call in the data path
(nvJPEG waits for its own work) stalls only the thread. Each finished batch carries a CUDA event;
the consumer's stream waits for it (on the device, the host does not wait) and the batch's tensors
are marked as used by the consumer's stream, so the caching allocator never hands their memory back
to the thread's stream too early. On the CPU the same code runs without streams.

**Never hang.** The consumer waits at most ``timeout_s`` for a batch: a stalled file system or a
dead worker ends the run with one :class:`~siamssl.errors.DataError` line instead of waiting
forever. Errors raised in the thread are re-raised in the consumer.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import fields, is_dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

import torch
from torch import Tensor

from siamssl.errors import DataError

Item = TypeVar("Item")
Out = TypeVar("Out")

_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class LoaderStalled(DataError):
    """No batch arrived within the loader timeout."""


def _tensors(value: Any) -> Iterator[Tensor]:
    """Every tensor inside ``value`` (tensors, lists, tuples, dicts, dataclasses)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            yield from _tensors(getattr(value, f.name))


class Prefetcher(Generic[Item, Out]):
    """Iterate ``produce(item)`` over ``source``, computed by a background thread up to ``depth``
    results ahead.

    Args:
        source: the items (a DataLoader iterator, say), consumed only by the thread.
        produce: turns an item into a result (tensors on ``device``), run in the thread, on its
            own CUDA stream when ``device`` is a GPU.
        depth: results computed ahead of the consumer (≥ 1).
        device: the consumer's device.
        timeout_s: longest wait for one result before :class:`LoaderStalled` (≤ 0: no limit).
        source_error: maps an exception of the source to the one the consumer sees (DataLoader's
            worker crashes and timeouts to a one-line DataError, say); errors of ``produce`` pass
            through unchanged.
    """

    def __init__(
        self,
        source: Iterable[Item],
        produce: Callable[[Item], Out],
        depth: int,
        device: torch.device,
        timeout_s: float,
        source_error: Callable[[BaseException], BaseException] = lambda error: error,
    ) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.source, self.produce, self.device = iter(source), produce, device
        self.timeout_s, self.source_error = timeout_s, source_error
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._in_source = False
        self._thread = threading.Thread(target=self._run, name="siamssl-prefetch", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------------------- producer

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        cuda = self.device.type == "cuda"
        try:
            if cuda and self.device.index is not None:
                torch.cuda.set_device(self.device)  # a new thread starts on device 0
            stream = torch.cuda.Stream(self.device) if cuda else None
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                while not self._stop.is_set():
                    self._in_source = True
                    try:
                        item = next(self.source)
                    except StopIteration:
                        break
                    except Exception as error:  # noqa: BLE001 — handed to the consumer
                        self._put(_Failure(self.source_error(error)))
                        return
                    finally:
                        self._in_source = False
                    result = self.produce(item)
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not self._put((result, event)):
                        return
            self._put(_END)
        except BaseException as error:  # noqa: BLE001 — handed to the consumer
            self._put(_Failure(error))

    # -------------------------------------------------------------------------------- consumer

    def __iter__(self) -> Iterator[Out]:
        try:
            while True:
                try:
                    value = self._queue.get(timeout=self.timeout_s if self.timeout_s > 0 else None)
                except queue.Empty:
                    raise LoaderStalled(
                        f"no training batch for {self.timeout_s:g} s: the data loader stalled (a hung file system or "
                        "a stuck worker?); data.loader_timeout_s sets this limit"
                    ) from None
                if value is _END:
                    return
                if isinstance(value, _Failure):
                    raise value.error
                result, event = value
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for tensor in _tensors(result):
                        if tensor.device.type == "cuda":
                            tensor.record_stream(current)
                yield result
        finally:
            self.close()

    def close(self) -> None:
        """Stop the thread and drop what it prepared. Waits for the result it is computing (a thread
        left inside torch kernels at interpreter exit aborts the process), but at most a second for
        one it is still waiting to read: a stalled read must not hang the caller."""
        self._stop.set()
        if self._thread is threading.current_thread():
            return
        patience = time.monotonic() + 1.0
        while self._thread.is_alive():
            self._drain()
            self._thread.join(timeout=0.05)
            if self._in_source and time.monotonic() > patience:
                break
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
