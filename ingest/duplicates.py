"""Duplicates: the same bytes under two ids (by hash, before decoding), and photos that look the
same (by vector similarity, after embedding): a re-upload, a re-encoded or resized copy.

Both are reported (codes ``duplicate`` and ``near_duplicate``) naming the item they copy; whether
they are still indexed is the caller's choice (``--skip-duplicates``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from ingest.report import ErrorReport, IngestSummary
from lookalike.catalogue import CatalogueItem
from lookalike.looks import Look
from lookalike.queries import NearDuplicateRule
from lookalike.store import VectorStore


class ExactDuplicates:
    """Items whose image bytes equal an earlier item's, seen in catalogue order: reported and counted."""

    def __init__(self, report: ErrorReport, summary: IngestSummary) -> None:
        self.report, self.summary = report, summary
        self._first_with: dict[str, str] = {}  # sha256 -> the first item id with those bytes

    def seen(self, item: CatalogueItem, sha256: str) -> bool:
        """True (and reported) when an earlier item had these bytes."""
        original = self._first_with.setdefault(sha256, item.id)
        if original == item.id:
            return False
        self.report.duplicate(item, original)
        self.summary.duplicates += 1
        return True


#: Vectors of this run kept in memory for the near-duplicate check; past it, the store answers.
RUN_INDEX_BYTES = 256 * 2**20
#: The BLAS libraries numpy loaded (OpenBLAS): their thread count, found once.
BLAS = ThreadpoolController()


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's matrix products on the calling thread alone. Ingest's writer runs them beside the
    decode workers and the model, which already hold every core, and BLAS's own threads fought
    them for the cores: on 2 cores (AMD EPYC, the whole catalogue, small preset) the check took
    1.7-2.0 s with OpenBLAS's 2 threads, 0.3-0.4 s with one."""
    with BLAS.limit(limits=1, user_api="blas"):
        yield


class NearDuplicates:
    """Finds the items of each batch that look the same as an item stored before this run, one
    ingested earlier in this run, or an earlier item of the batch.

    This run's items are compared in memory (one matrix product a batch): asking the store for
    them cost a query per item against a segment that is not indexed yet, the largest stage of
    a GPU ingest. The store is asked only when it held items before the run, or other workers
    write beside this one (``ask_store``), or this run outgrows `RUN_INDEX_BYTES`.
    """

    def __init__(
        self,
        store: VectorStore,
        rule: NearDuplicateRule,
        report: ErrorReport,
        summary: IngestSummary,
        *,
        ask_store: bool,
        capacity_bytes: int | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.store, self.rule, self.report, self.summary = store, rule, report, summary
        self.ask_store = ask_store
        self.capacity_bytes = RUN_INDEX_BYTES if capacity_bytes is None else capacity_bytes
        self._ids: list[str] = []
        self._embeddings, self._colours = _Rows(device), _Rows(None)  # colours: only read pair by pair

    def check(self, items: Sequence[CatalogueItem], looks: Sequence[Look], exact_duplicates: set[str]) -> set[str]:
        """Report this batch's near-duplicates (not those in ``exact_duplicates``); their ids."""
        stored = self.store.look_alikes(looks, [i.id for i in items], self.rule) if self.ask_store else None
        embeddings = np.stack([look.embedding for look in looks]).astype(np.float32, copy=False)
        colours = np.stack([look.colour for look in looks]).astype(np.float32, copy=False)
        earlier: dict[int, tuple[int, float]] = {}  # row -> the earlier item of the best colour
        for row, column, colour in self._alike(embeddings, colours, self._embeddings.kept, self._colours.kept):
            if row not in earlier or colour > earlier[row][1]:
                earlier[row] = (column, colour)
        in_batch: dict[int, tuple[int, float]] = {}  # row -> the first item before it in the batch
        for row, column, colour in self._alike(embeddings, colours, embeddings, colours):
            if column < row:
                in_batch.setdefault(row, (column, colour))
        found: set[str] = set()
        for index, item in enumerate(items):
            if item.id in exact_duplicates:
                continue
            match = stored[index] if stored is not None else None
            if match is not None:
                self.report.near_duplicate(item, match.item.id, match.score)
            elif index in earlier:
                self.report.near_duplicate(item, self._ids[earlier[index][0]], earlier[index][1])
            elif index in in_batch:
                self.report.near_duplicate(item, items[in_batch[index][0]].id, in_batch[index][1])
            else:
                continue
            found.add(item.id)
        self.summary.near_duplicates += len(found)
        if not self.ask_store:
            self._remember(items, embeddings, colours)
        return found

    def _alike(
        self,
        embeddings: np.ndarray,
        colours: np.ndarray,
        other_embeddings: np.ndarray | torch.Tensor,
        other_colours: np.ndarray,
    ) -> list[tuple[int, int, float]]:
        """(row, column, colour similarity) of the pairs that pass both thresholds, by row, then
        column. Colours are compared only for the few pairs whose embeddings pass (0.995 by
        default): the product of all colours cost as much as the embeddings', and it grows with
        the square of the run."""
        if not len(other_embeddings):
            return []
        rows, columns = _above(embeddings, other_embeddings, self.rule.min_similarity)
        colour = np.einsum("ij,ij->i", colours[rows], other_colours[columns])
        passed = colour >= self.rule.min_colour_similarity
        return list(zip(rows[passed].tolist(), columns[passed].tolist(), colour[passed].tolist(), strict=True))

    def _remember(self, items: Sequence[CatalogueItem], embeddings: np.ndarray, colours: np.ndarray) -> None:
        """Keep the batch in memory; when it would outgrow the capacity, the store answers from now
        on (it holds everything upserted so far)."""
        if (len(self._ids) + len(items)) * 4 * (embeddings.shape[1] + colours.shape[1]) > self.capacity_bytes:
            self.ask_store = True
            return
        self._embeddings.append(embeddings)
        self._colours.append(colours)
        self._ids += [item.id for item in items]


def _above(queries: np.ndarray, rows: np.ndarray | torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(query, row) indices of the products >= ``threshold``: numpy's on one BLAS thread, or on
    the device that holds ``rows`` (float64 there, so no TF32 setting blurs a 0.995 threshold)."""
    if isinstance(rows, torch.Tensor):
        products = torch.from_numpy(queries).to(rows.device, rows.dtype) @ rows.T
        found = torch.nonzero(products >= threshold).cpu().numpy()
        return found[:, 0], found[:, 1]
    with one_blas_thread():
        return np.nonzero(queries @ rows.T >= threshold)


class _Rows:
    """A matrix that grows by a batch of rows at a time (its storage by doubling): in numpy, or
    as float64 on ``device``, where the product with each batch costs the writer thread's CPU
    nothing (on a GPU; it grows with the square of the run: 1.98 s of 10,428 photos on one H200)."""

    def __init__(self, device: torch.device | None) -> None:
        self.device, self.used = device, 0
        self._storage: np.ndarray | torch.Tensor = np.zeros((0, 0), np.float32)

    @property
    def kept(self) -> np.ndarray | torch.Tensor:
        return self._storage[: self.used]

    def append(self, rows: np.ndarray) -> None:
        needed = self.used + len(rows)
        if needed > len(self._storage):
            self._storage = self._grown(max(needed, 2 * len(self._storage), 256), rows.shape[1])
        new = rows if self.device is None else torch.from_numpy(rows).to(self.device, torch.float64)
        self._storage[self.used : needed] = new
        self.used = needed

    def _grown(self, capacity: int, width: int) -> np.ndarray | torch.Tensor:
        if self.device is None:
            grown: np.ndarray | torch.Tensor = np.zeros((capacity, width), np.float32)
        else:
            grown = torch.zeros((capacity, width), dtype=torch.float64, device=self.device)
        if self.used:
            grown[: self.used] = self.kept
        return grown
