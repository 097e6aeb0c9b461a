"""Image files of a training batch: read (and optionally decoded) in DataLoader workers, packed
into a few tensors, then decoded on the training device with a per-image fallback.

**Packing.** A tensor that a DataLoader worker returns crosses to the main process through its own
shared-memory segment, one file descriptor each, held until the tensor is freed. One tensor per
sample, as a per-sample dataset returns, needs hundreds of descriptors per batch (512 for a batch
of 512): past the soft limit (often 1024, or 256) the transfer fails and the loader hangs. A
:class:`PackedFiles` holds a whole batch in one flat byte buffer plus offsets, five tensors whatever
the batch size.

**Decoding.** JPEG bytes are decoded together by ``torchvision.io.decode_jpeg`` on the training
device (nvJPEG on a GPU). If the batched call fails, each image is retried alone on the device, then
on the CPU with every decoder torchvision and Pillow offer (CMYK or progressive files the GPU decoder
refuses), so one odd file costs one image, not the batch.

**Unreadable files** (truncated, not an image, vanished since the listing) follow the project's rule
for training data: a run never dies on one bad file. The sample is replaced by the next readable
sample of the same batch (its index and label too, so memory banks and the online probe stay
consistent), with a :class:`~siamssl.errors.CorruptImageWarning` naming the file; a batch with no
readable file at all is a :class:`~siamssl.errors.DataError`. (Datasets decoded once into memory
refuse a bad file at startup instead, before anything runs.)
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from siamssl.data.datasets import decode_image_file
from siamssl.distributed import host_to_device
from siamssl.errors import CorruptImageWarning, DataError

JPEG_BYTES, PIXELS, UNREADABLE = 0, 1, 2
_JPEG_SUFFIXES = (".jpg", ".jpeg")
_JPEG_START = b"\xff\xd8"  # the start-of-image marker


@dataclass
class PackedFiles:
    """One batch of files as five tensors (and the messages of unreadable files).

    ``index`` (N,) dataset indices; ``kinds`` (N,) :data:`JPEG_BYTES`, :data:`PIXELS` (uint8 RGB
    decoded in the worker) or :data:`UNREADABLE`; item i is ``data[offsets[i]:offsets[i + 1]]``, of
    shape ``shapes[i]`` = (3, H, W) when it holds pixels; ``errors`` maps an unreadable item's
    position to its message.
    """

    index: Tensor
    kinds: Tensor
    offsets: Tensor
    shapes: Tensor
    data: Tensor
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def item(self, i: int) -> Tensor:
        """Item ``i``'s bytes (a view of ``data``)."""
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.data[start:stop]


def read_batch(paths: Sequence[str], indices: Sequence[int], keep_jpeg_bytes: bool) -> PackedFiles:
    """Read the files of one batch: JPEG files as their bytes when ``keep_jpeg_bytes`` (to be decoded
    on the training device), every other file decoded here to uint8 RGB; unreadable ones marked."""
    chunks: list[bytes] = []
    kinds, shapes, sizes, errors = [], [], [], {}
    for position, index in enumerate(indices):
        path = paths[index]
        kind, shape, payload = UNREADABLE, (0, 0, 0), b""
        try:
            if keep_jpeg_bytes and path.lower().endswith(_JPEG_SUFFIXES):
                with open(path, "rb") as handle:
                    payload = handle.read()
                if payload[:2] == _JPEG_START:
                    kind = JPEG_BYTES
            if kind != JPEG_BYTES:
                image = decode_image_file(path)
                kind, shape, payload = PIXELS, tuple(image.shape), image.contiguous().numpy().tobytes()
        except (OSError, DataError) as error:
            kind, payload = UNREADABLE, b""
            errors[position] = str(error) if isinstance(error, DataError) else f"cannot read image '{path}': {error}"
        kinds.append(kind)
        shapes.append(shape)
        sizes.append(len(payload))
        chunks.append(payload)
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(sizes, dtype=torch.long).cumsum(0)
    flat = bytearray(b"".join(chunks))
    return PackedFiles(
        index=torch.tensor(list(indices), dtype=torch.long),
        kinds=torch.tensor(kinds, dtype=torch.uint8),
        offsets=offsets,
        shapes=torch.tensor(shapes, dtype=torch.long).view(-1, 3),
        data=torch.frombuffer(flat, dtype=torch.uint8) if flat else torch.zeros(0, dtype=torch.uint8),
        errors=errors,
    )


class FileBatches(Dataset):
    """Item ``b``: the :class:`PackedFiles` of the dataset indices ``batches[b]`` (a DataLoader with
    ``batch_size=None`` hands whole batches to the workers)."""

    def __init__(self, paths: Sequence[str], batches: Tensor, keep_jpeg_bytes: bool) -> None:
        self.paths, self.batches, self.keep_jpeg_bytes = paths, batches, keep_jpeg_bytes

    def __len__(self) -> int:
        return int(self.batches.shape[0])

    def __getitem__(self, b: int) -> PackedFiles:
        return read_batch(self.paths, self.batches[b].tolist(), self.keep_jpeg_bytes)


def decode_batch(packed: PackedFiles, device: torch.device, paths: Optional[Sequence[str]] = None) -> tuple[list[Tensor], Tensor]:
    """The images of a batch as uint8 (3, Hᵢ, Wᵢ) tensors on ``device`` and their dataset indices,
    unreadable samples replaced by the next readable one (see the module docstring). ``paths``
    (the split's file list) names the files in warnings."""
    kinds = packed.kinds.tolist()
    images: list[Optional[Tensor]] = [None] * len(kinds)
    pixels = [i for i, kind in enumerate(kinds) if kind == PIXELS]
    if pixels:  # one copy of the whole buffer, then views
        data = host_to_device(packed.data, device)
        offsets = packed.offsets.tolist()
        for i in pixels:
            images[i] = data[offsets[i] : offsets[i + 1]].view(*packed.shapes[i].tolist())
    jpegs = [i for i, kind in enumerate(kinds) if kind == JPEG_BYTES]
    errors = dict(packed.errors)
    for i, image in zip(jpegs, decode_jpegs([packed.item(i) for i in jpegs], device)):
        if isinstance(image, str):
            name = f"'{paths[int(packed.index[i])]}'" if paths is not None else f"of dataset index {int(packed.index[i])}"
            errors[i] = f"cannot decode image {name}: {image}"
        else:
            images[i] = image
    index = packed.index.clone()
    if errors:
        readable = [i for i, image in enumerate(images) if image is not None]
        if not readable:
            raise DataError(f"no readable image in a batch of {len(images)}; the first: {errors[min(errors)]}")
        for i in sorted(errors):
            warnings.warn(f"{errors[i]}; replaced by another image of the batch", CorruptImageWarning, stacklevel=2)
            substitute = next((j for j in readable if j > i), readable[0])
            images[i], index[i] = images[substitute], index[substitute]
    return images, index  # type: ignore[return-value]


def decode_jpegs(encoded: list[Tensor], device: torch.device) -> list:
    """Decode JPEG bytes to uint8 RGB on ``device``: all at once, else one by one on the device, else
    on the CPU (torchvision, then Pillow). Returns an image, or a message for a file nothing decodes."""
    if not encoded:
        return []
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    decoded: list = []
    for data in encoded:
        try:
            decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            image = decode_on_cpu(data)
            decoded.append(image if isinstance(image, str) else host_to_device(image, device))
    return decoded


def decode_on_cpu(data: Tensor):
    """uint8 RGB (3, H, W) from encoded bytes with torchvision or Pillow; a message when neither can."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as first_error:
        try:
            import numpy as np
            from PIL import Image

            with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
                array = np.asarray(img.convert("RGB"))
            return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
        except Exception:  # noqa: BLE001 — any Pillow failure means: not an image we can read
            return str(first_error)
