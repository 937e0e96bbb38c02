"""Ingest's figures for `make gpu-check`: the whole pipeline (batch sizes, four times over, a free
forward pass, without the near-duplicate check, synced every batch, `python -m ingest` in a process
of its own), then its read stage alone (decode workers or threads, beside the store's writes or
not) and the store's writes alone, each against the decode rate measured in the same run.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import FreeEncoder, unit_rows
from ingest.decode import Batch, DecodeDataset, _groups, chunk_size, collate, decode_loader, iter_batches, merge
from ingest.pipeline import SYNC_EVERY_S, IngestOptions, ingest
from ingest.report import ErrorReport, IngestSummary
from lookalike.catalogue import Catalogue, CatalogueItem
from lookalike.device import default_workers, resolve_device
from lookalike.encoder import ImageEncoder
from lookalike.looks import Look
from lookalike.points import StoredItem
from lookalike.queries import NearDuplicateRule
from lookalike.settings import Settings
from lookalike.store import VectorStore

#: Ingest's timed stages (`IngestSummary.stages`), as its summary prints them.
STAGES = ("lookup", "read", "embed", "near_duplicates", "upsert", "prune", "index")


@dataclass(frozen=True)
class FigureRun:
    """What every ingest figure of one gpu-check run shares."""

    emit: Callable[..., None]
    settings: Settings
    checkpoint: Path  # the large preset's, fine-tuned earlier in the run
    catalogue: Catalogue  # the photos measured
    decode: float  # PIL decode + resize rate measured in the same run, images a second
    tmp: Path
    cores: int

    def against_decode(self, rate: float) -> float:
        return round(rate / self.decode, 3)


def ingest_figures(run: FigureRun) -> None:
    """Emit ingest's figures: the whole pipeline, its read stage alone, the store's writes alone."""
    _pipeline_figures(run)
    _read_stage_figures(run)
    for sync_every_s in (SYNC_EVERY_S, 0.0):  # as ingest writes; as the API writes (a sync each)
        write = store_write_rate(run.settings, len(run.catalogue.items), run.tmp, sync_every_s=sync_every_s)
        run.emit(
            "ingest_store_write_alone",
            batch_size=256,
            sync_every_s=sync_every_s,
            vs_pil_decode=run.against_decode(write["points_per_s"]),
            **write,
        )


def _pipeline_figures(run: FigureRun) -> None:
    """The whole ingest, in this process in its variants, then as `python -m ingest` of its own."""
    # x4: the catalogue four times under new ids, so start-up costs weigh less than in 2,607 photos.
    # free: the forward pass replaced by random vectors, what the pipeline reaches without the model.
    # no_near_duplicates: without the writer thread's check, whose work (and, before it held
    # numpy to one BLAS thread, its BLAS threads) competed with the workers and the main thread.
    # synced: the store synced after every batch, as before ingest synced it every SYNC_EVERY_S.
    # workers: fewer decode workers than every core but one, leaving cores to the main process,
    # the writer thread and the store's own threads (writes ran at a third of their rate alone
    # beside 15 workers on 16 cores).
    usual = default_workers(resolve_device(run.settings.device))  # as `python -m ingest` sizes them
    fewer = sorted({max(1, run.cores // 2), max(1, run.cores // 4)} - {usual}, reverse=True)
    runs = [
        (64, 1, False, True, False, usual),
        (256, 1, False, True, False, usual),
        (256, 4, False, True, False, usual),
        (256, 1, True, True, False, usual),
        (256, 1, True, False, False, usual),
        (256, 1, False, True, True, usual),
        *((256, 1, False, True, False, workers) for workers in fewer),
    ]
    for batch_size, copies, free, near, synced, workers in runs:
        copied = Catalogue(run.catalogue.root, repeated(run.catalogue.items, copies), [])
        summary = measure_ingest(
            run.settings,
            run.checkpoint,
            copied,
            run.tmp,
            batch_size,
            free=free,
            near_duplicates=near,
            synced=synced,
            workers=workers,
        )
        ingest_rate = summary.ingested / summary.seconds
        name = "ingest_whole_catalogue" if copies == 1 else f"ingest_catalogue_x{copies}"
        run.emit(
            name
            + ("_free_encoder" if free else "")
            + ("" if near else "_no_near_duplicates")
            + ("_synced_every_batch" if synced else "")
            + ("" if workers == usual else f"_{workers}_workers"),
            checkpoint="large",
            batch_size=batch_size,
            workers=workers,
            items=len(copied.items),
            images_per_s=round(ingest_rate, 1),
            vs_pil_decode=run.against_decode(ingest_rate),
            goal=">=0.8",
            seconds=round(summary.seconds, 3),
            pil_decode_s=round(len(copied.items) / run.decode, 3),
            duplicates=summary.duplicates,  # x4: every copy is reported (a log line each)
            near_duplicates=summary.near_duplicates,
            stages_s={name: round(seconds, 3) for name, seconds in summary.stages.items()},
        )
    # `python -m ingest` itself, in a process of its own: the workers fork from a parent that
    # holds only the model, not gpu-check's (forking 15 took 0.6-0.8 s from this one).
    fresh = cli_ingest(run.catalogue, run.checkpoint, run.tmp, batch_size=256)
    run.emit("ingest_whole_catalogue_fresh_process", vs_pil_decode=run.against_decode(fresh["images_per_s"]), **fresh)


def _read_stage_figures(run: FigureRun) -> None:
    """The read stage alone: the decode workers under both sharing strategies, then threads."""
    # A worker's tensor reaches the main process as a file descriptor handed over by a thread of
    # that worker (torch's default on Linux), one round trip per chunk, or as a named file in
    # /dev/shm: if the second is much faster, the hand-over is what holds the read stage.
    for sharing in ("file_descriptor", "file_system"):
        read = read_rate(run.settings, run.checkpoint, run.catalogue.items, sharing=sharing)
        run.emit(
            "ingest_read_stage_alone",
            batch_size=256,
            sharing=sharing,
            vs_pil_decode=run.against_decode(read["images_per_s"]),
            **read,
        )
    # Decoding in threads of the main process instead: no workers to fork, nothing handed over,
    # but every thread shares one GIL, which Edge's writes keep (alone, then beside the writes).
    for read_in, writes in (("threads", False), ("threads", True), ("processes", True)):
        read = read_beside_writes(run, read_in, writes)
        run.emit(
            "ingest_read_stage_" + read_in + ("_beside_writes" if writes else ""),
            batch_size=256,
            vs_pil_decode=run.against_decode(read["images_per_s"]),
            **read,
        )


def repeated(items: list[CatalogueItem], copies: int) -> list[CatalogueItem]:
    """The items ``copies`` times, each copy under ids of its own (the same photos)."""
    return [dataclasses.replace(item, id=f"{item.id}+{n}") if n else item for n in range(copies) for item in items]


def read_rate(
    settings: Settings, checkpoint: Path, items: list[CatalogueItem], batch_size: int = 256, sharing: str = ""
) -> dict:
    """Images a second that ingest's decode workers deliver to a main process doing nothing else:
    the read stage's own ceiling (no model, no writer thread); the seconds to the first batch,
    which start-up dominates (forking 15 workers took 0.27-0.51 s on 2 cores, more from a larger
    parent); and the main process's CPU seconds, which bound the rate if they near the wall time
    (0.14 ms a photo on 2 cores of an AMD EPYC: scratch measurements, 2026-11-27)."""
    encoder = ImageEncoder.from_settings(settings.with_overrides(model_checkpoint=checkpoint))
    default_sharing = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy(sharing or default_sharing)
    try:
        return _timed_read(settings, encoder, items, batch_size)
    finally:
        torch.multiprocessing.set_sharing_strategy(default_sharing)


def _timed_read(settings: Settings, encoder: ImageEncoder, items: list[CatalogueItem], batch_size: int) -> dict:
    device = encoder.placement.device
    workers_start_s = _workers_start_s(settings, encoder, items, batch_size)
    started, cpu_started = time.perf_counter(), time.process_time()
    batches = iter_batches(
        items,
        {},
        encoder.worker_preprocess,
        max_pixels=settings.max_image_pixels,
        batch_size=batch_size,
        workers=default_workers(device),
        pin_memory=device.type == "cuda",
    )
    count = len(next(batches).decoded)
    first_batch_s = time.perf_counter() - started
    count += sum(len(batch.decoded) for batch in batches)
    seconds = time.perf_counter() - started
    return {
        "images_per_s": round(count / seconds, 1),
        "seconds": round(seconds, 3),
        "first_batch_s": round(first_batch_s, 3),
        "workers_start_s": workers_start_s,
        "main_process_cpu_s": round(time.process_time() - cpu_started, 3),
    }


def cli_ingest(catalogue: Catalogue, checkpoint: Path, tmp: Path, batch_size: int) -> dict:
    """`python -m ingest` of a copy of these photos (a catalogue folder: a manifest must lie beside
    its photos) into a fresh embedded store, as a user runs it: its own summary (images a second
    over its passes, stages) and the process's wall time (imports, the model's load and the
    collection's calibration included)."""
    folder = tmp / f"cli-{batch_size}"
    for item in catalogue.items:
        copy = folder / "catalogue" / item.path.relative_to(catalogue.root)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.path, copy)
    env = {
        **os.environ,
        "MODEL_CHECKPOINT": str(checkpoint),
        "QDRANT_PATH": str(folder / "qdrant"),
        "QDRANT_URL": "",
        "UPLOAD_DIR": str(folder / "uploads"),
        "INGEST_ERROR_REPORT": str(folder / "errors.jsonl"),
        "BATCH_SIZE": str(batch_size),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ingest", str(folder / "catalogue")], env=env, capture_output=True, text=True
    )
    wall_s = time.perf_counter() - started
    if done.returncode:
        return {"images_per_s": 0.0, "exit": done.returncode, "stderr_tail": done.stderr[-1500:]}
    fields = dict(re.findall(r"(\w+)=(\S+)", done.stdout))
    return {
        "batch_size": batch_size,
        "images_per_s": float(fields["images_per_s"]),
        "ingested": int(fields["ingested"]),
        "process_wall_s": round(wall_s, 2),
        "stages_s": {name: float(fields[name]) for name in STAGES if name in fields},
    }


def read_beside_writes(run: FigureRun, read_in: str, writes: bool) -> dict:
    """The read stage alone (``read_in`` "processes": ingest's decode workers; "threads": one a
    core, threads of this process), optionally while another thread writes as many random points into
    the embedded store as ingest's writer would: what the two reach sharing one process's GIL."""
    settings, items = run.settings, run.catalogue.items
    encoder = ImageEncoder.from_settings(settings.with_overrides(model_checkpoint=run.checkpoint))
    writer, written = None, {}
    if writes:
        write = functools.partial(
            store_write_rate, settings, len(items), run.tmp / f"beside-{read_in}", sync_every_s=SYNC_EVERY_S
        )
        writer = threading.Thread(target=lambda: written.update(write()), daemon=True)
        writer.start()
    if read_in == "threads":
        read = _timed_thread_read(settings, encoder, items, run.cores)
    else:
        read = _timed_read(settings, encoder, items, 256)
    if writer is not None:
        writer.join()
        read["writes_beside"] = written
    return read


def _timed_thread_read(settings: Settings, encoder: ImageEncoder, items: list[CatalogueItem], threads: int) -> dict:
    """`_timed_read` with the chunks decoded by ``threads`` threads (torch held to one thread each)."""
    dataset = DecodeDataset(items, {}, encoder.worker_preprocess, settings.max_image_pixels)
    chunk, batch_size = chunk_size(256), 256

    def decode_chunk(start: int) -> Batch:
        stop = min(start + chunk, len(items))
        return collate([dataset[i] for i in range(start, stop)]).batch(items[start:stop])

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started, cpu_started = time.perf_counter(), time.process_time()
    count, first_batch_s = 0, None
    try:
        with ThreadPoolExecutor(threads) as pool:
            chunks = pool.map(decode_chunk, range(0, len(items), chunk))
            for group in _groups(chunks, batch_size // chunk):
                count += len(merge(group, encoder.placement.device.type == "cuda").decoded)
                first_batch_s = first_batch_s or time.perf_counter() - started
    finally:
        torch.set_num_threads(torch_threads)
    seconds = time.perf_counter() - started
    return {
        "images_per_s": round(count / seconds, 1),
        "seconds": round(seconds, 3),
        "first_batch_s": round(first_batch_s or 0.0, 3),
        "threads": threads,
        "main_process_cpu_s": round(time.process_time() - cpu_started, 3),
    }


def _workers_start_s(settings: Settings, encoder: ImageEncoder, items: list[CatalogueItem], batch_size: int) -> dict:
    """Seconds until the decode workers are forked (torch forks them one after another, and deals
    the first tasks out only then), and until their first chunk is back: what of the read stage's
    first batch is starting the workers, forked from this process as ingest forks them."""
    dataset = DecodeDataset(items, {}, encoder.worker_preprocess, settings.max_image_pixels)
    loader = decode_loader(dataset, chunk_size(batch_size), default_workers(encoder.placement.device))
    started = time.perf_counter()
    chunks = iter(loader)
    forked = time.perf_counter() - started
    next(chunks)
    first_chunk = time.perf_counter() - started
    del chunks  # the workers stop
    return {"forked": round(forked, 3), "first_chunk": round(first_chunk, 3)}


def store_write_rate(
    settings: Settings, count: int, tmp: Path, dim: int = 512, batch_size: int = 256, sync_every_s: float = 0.0
) -> dict:
    """Points a second that the embedded store takes as ingest's writer thread gives them (random
    looks, catalogue-like payloads, batches of ``batch_size``, synced to disk every
    ``sync_every_s`` and at the end, as `writing_behind`): the write stage's own ceiling. And
    how late a thread that wakes every millisecond (as ingest's main thread waits for the
    workers' chunks) gets the GIL back meanwhile: Qdrant Edge keeps the GIL through most of a
    call, so the writer's calls delay the main thread by up to their length."""
    rng = np.random.default_rng(0)
    items = [StoredItem(f"item-{i}", f"c{i % 30}", f"c{i % 30}/{i}.jpg", f"{i:064x}", "bench") for i in range(count)]
    embeddings, colours = unit_rows(rng, count, dim), unit_rows(rng, count, 512, colour=True)
    looks = [Look(embedding, colour) for embedding, colour in zip(embeddings, colours, strict=True)]
    folder = tmp / f"write-alone-{sync_every_s}"
    store = VectorStore.from_settings(settings.with_overrides(qdrant_path=folder, qdrant_url=None))
    store.ensure_collection(dim, "bench")
    lags_s: list[float] = []
    writing = threading.Event()

    def wake_every_ms() -> None:
        while writing.is_set():
            asleep = time.perf_counter()
            time.sleep(0.001)
            lags_s.append(time.perf_counter() - asleep - 0.001)

    writing.set()
    waker = threading.Thread(target=wake_every_ms, daemon=True)
    waker.start()
    try:
        started = time.perf_counter()
        with store.writing_behind(sync_every_s) as writes:
            for start in range(0, count, batch_size):
                writes.upsert(items[start : start + batch_size], looks[start : start + batch_size])
        seconds = time.perf_counter() - started
    finally:
        writing.clear()
        waker.join()
        store.close()
    return {
        "points_per_s": round(count / seconds, 1),
        "seconds": round(seconds, 3),
        "wake_lag_ms": {"mean": round(1000 * float(np.mean(lags_s)), 2), "max": round(1000 * max(lags_s), 2)},
    }


def measure_ingest(
    settings: Settings,
    checkpoint: Path,
    catalogue: Catalogue,
    tmp: Path,
    batch_size: int,
    *,
    free: bool = False,
    near_duplicates: bool = True,
    synced: bool = False,
    workers: int | None = None,
) -> IngestSummary:
    """Ingest as `python -m ingest` runs it (decode workers, batches, near-duplicate check), into
    a fresh embedded store; ``free``: with a forward pass that costs nothing (`FreeEncoder`);
    ``synced``: the store synced after every batch instead of every `SYNC_EVERY_S`; ``workers``:
    decode processes (default: `default_workers` of the device)."""
    run = f"{batch_size}-{len(catalogue.items)}{'-free' if free else ''}{'' if near_duplicates else '-no-near'}"
    run += ("-synced" if synced else "") + (f"-w{workers}" if workers is not None else "")
    store_path = tmp / f"qdrant-{run}"
    run_settings = settings.with_overrides(model_checkpoint=checkpoint, qdrant_path=store_path, qdrant_url=None)
    encoder = ImageEncoder.from_settings(run_settings)
    encoder = FreeEncoder(encoder) if free else encoder
    store = VectorStore.from_settings(run_settings)
    store.ensure_collection(encoder.dim, encoder.identity)
    report = ErrorReport.open(tmp / f"errors-{run}.jsonl")
    device = encoder.placement.device
    try:
        options = IngestOptions(
            batch_size=batch_size,
            workers=default_workers(device) if workers is None else workers,
            progress=False,
            near_duplicates=NearDuplicateRule.from_settings(run_settings) if near_duplicates else None,
            sync_every_s=0.0 if synced else SYNC_EVERY_S,
        )
        summary = ingest(catalogue, encoder, store, report, options)
    finally:
        report.close()
        store.close()
    return summary
