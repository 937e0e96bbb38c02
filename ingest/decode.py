"""Ingest's read stage, in worker processes: every file is read once, hashed, and decoded only
when its bytes are not already stored for this model.

A worker's result is one `Decoded` per item: unchanged (hash only), pixels ready for the model
with the photo's colour, or the reason the image failed, which fails that item, not the batch.
"""

from __future__ import annotations

import ctypes
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


@dataclass
class Chunk:
    """What a worker sends back for consecutive items: one tensor of the decoded ones' pixels (each
    tensor travels through a shared-memory file of its own, which cost more than the decoding), one
    array of their colours, and no items: the main process has them, and unpickling each item's
    path was its dearest step (0.29 of 0.70 CPU s for the catalogue's 2,607, cProfile)."""

    sha256: list[str | None]
    errors: list[InvalidImage | None]
    decoded: list[bool]
    pixels: torch.Tensor | None
    colours: np.ndarray | None

    def batch(self, items: Sequence[CatalogueItem]) -> Batch:
        """The chunk as a `Batch` of these ``items`` (the ones it was decoded from, in order)."""
        colours = iter(self.colours if self.colours is not None else ())
        decoded = [
            Decoded(item, sha256, colour=next(colours) if was_decoded else None, error=error, decoded=was_decoded)
            for item, sha256, error, was_decoded in zip(items, self.sha256, self.errors, self.decoded, strict=True)
        ]
        return Batch(decoded, self.pixels)


def collate(decoded: list[Decoded]) -> Chunk:
    """In a worker: the items' results as one `Chunk`."""
    done = [d for d in decoded if d.decoded]
    return Chunk(
        [d.sha256 for d in decoded],
        [d.error for d in decoded],
        [d.decoded for d in decoded],
        torch.stack([torch.as_tensor(d.pixels) for d in done]) if done else None,
        np.stack([d.colour for d in done]) if done else None,
    )


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
    loader = decode_loader(DecodeDataset(items, stored, preprocess, max_pixels), chunk, workers)
    chunks = (sent.batch(items[n * chunk : (n + 1) * chunk]) for n, sent in enumerate(loader))
    for group in _groups(chunks, batch_size // chunk):
        yield merge(group, pin_memory)


def decode_loader(dataset: DecodeDataset, chunk: int, workers: int) -> DataLoader:
    """``workers`` processes (none: this one) answering `Chunk`s of ``chunk`` items, in order."""
    return DataLoader(
        dataset,
        batch_size=chunk,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=4 if workers else None,
        worker_init_fn=functools.partial(die_with_parent, os.getpid()) if workers else None,
    )


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
