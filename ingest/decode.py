"""Ingest's read stage, in worker processes: every file is read once, hashed, and decoded only
when its bytes are not already stored for this model.

A worker's result is one `Decoded` per item: unchanged (hash only), pixels ready for the model
with the photo's colour, or the reason the image failed, which fails that item, not the batch.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import itertools
import math
import os
import signal
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lookalike.catalogue import CatalogueItem
from lookalike.colour import colour_histogram
from lookalike.errors import InvalidImage
from lookalike.images import decode_image, read_bytes, sha256_hex
from lookalike.pixels import Preprocess

PR_SET_PDEATHSIG = 1
#: Most images a worker decodes per task. A worker builds each task alone, so whole GPU batches as
#: tasks left workers idle: 2,607 photos at batch 256 were 11 tasks for 15 workers, and reading
#: took half of ingest (gpu-check, one H200). Batches are assembled from these chunks.
DECODE_CHUNK = 16


@dataclass(frozen=True)
class Decoded:
    """One item after the worker's pass."""

    item: CatalogueItem
    sha256: str | None
    pixels: torch.Tensor | None = None  # until collated into the batch's one tensor
    colour: np.ndarray | None = None
    error: InvalidImage | None = None
    decoded: bool = False  # False: unchanged (not decoded), or failed

    @property
    def unchanged(self) -> bool:
        return self.error is None and not self.decoded


@dataclass
class Batch:
    """Decoded items in catalogue order; ``pixels`` stacks those that were decoded, in order."""

    decoded: list[Decoded]
    pixels: torch.Tensor | None


class DecodeDataset(Dataset):
    """Reads, hashes and (unless ``stored`` holds the same bytes) decodes, preprocesses and
    colour-describes one item; errors are returned, not raised."""

    def __init__(
        self, items: Sequence[CatalogueItem], stored: Mapping[str, str], preprocess: Preprocess, max_pixels: int
    ) -> None:
        self.items, self.stored, self.preprocess, self.max_pixels = items, stored, preprocess, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Decoded:
        item = self.items[index]
        try:
            data = read_bytes(item.path)
            sha256 = sha256_hex(data)
            if self.stored.get(item.id) == sha256:
                return Decoded(item, sha256)
            image = decode_image(data, self.max_pixels)
            return Decoded(item, sha256, self.preprocess(image), colour_histogram(image), decoded=True)
        except InvalidImage as e:
            return Decoded(item, None, error=e)


def collate(decoded: list[Decoded]) -> Batch:
    """One tensor for the batch's pixels, none left on the items: every tensor a worker returns
    travels through a shared-memory file of its own, which cost more than the decoding."""
    with_pixels = [d.pixels for d in decoded if d.pixels is not None]
    items = [dataclasses.replace(d, pixels=None) if d.pixels is not None else d for d in decoded]
    return Batch(items, torch.stack([torch.as_tensor(p) for p in with_pixels]) if with_pixels else None)


def iter_batches(
    items: Sequence[CatalogueItem],
    stored: Mapping[str, str],
    preprocess: Preprocess,
    *,
    max_pixels: int,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Read and decode in ``workers`` processes, ahead of the model, in catalogue order.

    ``stored``: item id -> sha256 of the bytes already stored for this model (not decoded again).
    ``pin_memory``: page-locked pixels, which copy to a GPU asynchronously.
    """
    chunk = chunk_size(batch_size)
    loader = DataLoader(
        DecodeDataset(items, stored, preprocess, max_pixels),
        batch_size=chunk,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=4 if workers else None,
        worker_init_fn=functools.partial(die_with_parent, os.getpid()) if workers else None,
    )
    for chunks in _groups(loader, batch_size // chunk):
        yield merge(chunks, pin_memory)


def chunk_size(batch_size: int) -> int:
    """Images per worker task: the batch's largest power-of-two divisor up to `DECODE_CHUNK`
    (batches stay whole); the whole batch when that is below 4 (each task has its cost)."""
    common = math.gcd(batch_size, DECODE_CHUNK)
    return common if common >= 4 else batch_size


def merge(chunks: Sequence[Batch], pin_memory: bool = False) -> Batch:
    """Consecutive chunks as one batch, in order; page-locked for a GPU (one copy, straight there).

    The copy is numpy's, on this thread: torch's copies are parallel, and beside busy decode
    workers a parallel copy waits for cores (torch.cat took 14 ms a batch of 32 on 2 cores).
    """
    decoded = [d for chunk in chunks for d in chunk.decoded]
    pixels = [chunk.pixels for chunk in chunks if chunk.pixels is not None]
    if not pixels or (len(pixels) == 1 and not pin_memory):
        return Batch(decoded, pixels[0] if pixels else None)
    shape = (sum(len(p) for p in pixels), *pixels[0].shape[1:])
    stacked = torch.empty(shape, dtype=pixels[0].dtype, pin_memory=pin_memory)
    np.concatenate([p.numpy() for p in pixels], out=stacked.numpy())
    return Batch(decoded, stacked)


def _groups(chunks: Iterable[Batch], size: int) -> Iterator[list[Batch]]:
    chunks = iter(chunks)
    while group := list(itertools.islice(chunks, size)):
        yield group


def die_with_parent(parent_pid: int, worker_id: int = 0) -> None:
    """In a decode worker: have the kernel kill it the moment ingest dies, even by ``kill -9``.

    Without this a worker blocked on a full queue outlives a killed ingest for a while. Linux only
    (elsewhere torch's own watchdog ends the workers, later); the parent may have died before
    this ran, which the pid check catches.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)
