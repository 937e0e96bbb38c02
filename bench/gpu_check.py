"""`make gpu-check`: the machine's figures for issue 13, on whatever device DEVICE resolves to.

Prints, one line each: PIL decode + resize rate over the catalogue (one process per core); the
milliseconds a photo of each step of an ingest worker, in one process; the forward throughput
of ViT-B/32 at 224 (fp32 -- TF32 on a GPU -- and bf16) and of the small preset's ResNet-18 at
its size (bf16); fine-tuning the large preset on the catalogue's split (seconds, where they
went, held-out P@4 and mAP@R, the protocol of finetune.evaluate); ingest with that checkpoint
into a fresh embedded store (the catalogue at two batch sizes, then four times over, then with
a forward pass that costs nothing: the pipeline alone, with and without the near-duplicate
check; then the decode workers alone, feeding a main process that does nothing else (and the
seconds to fork them and to their first chunk); then the store's writes alone, and how much of
their time another thread could run), against
the decode rate (goal: >= 0.8x, i.e. the forward pass is not the bottleneck); then the small
preset, data held on the device and from PIL workers (not with ``--no-small``). ``--quick``
shrinks everything so the script itself can be checked on a CPU in a minute. On a lent
accelerator: `make device-pack`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.common import FreeEncoder, unit_rows, validation_figures
from finetune.__main__ import PRESETS
from finetune.run import fine_tune
from ingest.decode import Batch, DecodeDataset, _groups, chunk_size, collate, decode_loader, iter_batches, merge
from ingest.pipeline import SYNC_EVERY_S, IngestOptions, ingest
from ingest.report import ErrorReport, IngestSummary
from lookalike.catalogue import Catalogue, CatalogueItem, read_catalogue
from lookalike.colour import colour_histogram
from lookalike.device import Placement, default_workers, describe_device, resolve_device
from lookalike.encoder import ImageEncoder, create_clip, load_visual
from lookalike.images import decode_image, read_bytes, sha256_hex
from lookalike.looks import Look
from lookalike.model_source import ModelSource
from lookalike.pixels import Preprocess, split_normalisation
from lookalike.points import StoredItem
from lookalike.queries import NearDuplicateRule
from lookalike.settings import Settings
from lookalike.store import VectorStore

RESULTS: list[dict] = []
OUTPUT: list[Path] = []  # the --output file, rewritten after every figure
#: Ingest's timed stages (`IngestSummary.stages`), as its summary prints them.
STAGES = ("lookup", "read", "embed", "near_duplicates", "upsert", "prune", "index")


def emit(figure: str, details: dict | None = None, **values) -> None:
    """Print a figure as one JSON line; ``details`` go only into the --output file, which is
    rewritten each time: a run stopped at the device's time limit keeps what it measured."""
    RESULTS.append({"figure": figure, **values, **(details or {})})
    print(json.dumps({"figure": figure, **values}), flush=True)
    for path in OUTPUT:
        path.write_text(json.dumps(RESULTS, indent=2))


def _decode_one(path: str) -> int:
    image = decode_image(read_bytes(Path(path)), 40_000_000)
    scale = 128 / min(image.size)
    image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return 1


def decode_rate(paths: list[str], processes: int) -> float:
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_decode_one, paths[: processes * 4])  # warm the pool and the page cache
        started = time.perf_counter()
        done = sum(pool.map(_decode_one, paths, chunksize=16))
    return done / (time.perf_counter() - started)


def worker_photo_ms(items: list[CatalogueItem], preprocess: Preprocess) -> dict[str, float]:
    """Milliseconds a photo, in one process, of each step of an ingest worker (`DecodeDataset`)
    beside the plain decode + resize that `decode_rate` times: the ceiling of a CPU-decoding
    ingest is the decode rate over their ratio."""
    datas = [read_bytes(item.path) for item in items]
    images = [decode_image(data, 40_000_000) for data in datas]
    steps = {
        "plain_decode_resize_128": lambda i: _decode_one(str(items[i].path)),
        "read": lambda i: read_bytes(items[i].path),
        "sha256": lambda i: sha256_hex(datas[i]),
        "decode": lambda i: decode_image(datas[i], 40_000_000),
        "model_resize_crop": lambda i: preprocess(images[i]),
        "colour_histogram": lambda i: colour_histogram(images[i]),
    }
    timings = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a decode worker (DataLoader gives each one thread)
    try:
        for name, step in steps.items():
            started = time.perf_counter()
            for index in range(len(items)):
                step(index)
            timings[name] = round(1000 * (time.perf_counter() - started) / len(items), 3)
    finally:
        torch.set_num_threads(threads)
    return timings


def forward_rate(model: torch.nn.Module, size: int, batch: int, steps: int, placement: Placement) -> float:
    model = model.eval().to(placement.device, memory_format=torch.channels_last)
    pixels = torch.randn(batch, 3, size, size, device=placement.device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), placement.autocast():
        for _ in range(3):
            model(pixels)
        synchronize(placement.device)
        started = time.perf_counter()
        for _ in range(steps):
            model(pixels)
        synchronize(placement.device)
    return batch * steps / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("catalogue", nargs="?", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the script on a CPU")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--no-small", action="store_true", help="leave out the small preset's two runs")
    args = parser.parse_args()
    OUTPUT.extend([args.output] if args.output else [])
    settings = Settings()
    device = resolve_device(settings.device)
    cores = os.cpu_count() or 1
    catalogue = read_catalogue(args.catalogue or settings.catalogue_source())
    items = catalogue.items[:: max(1, len(catalogue.items) // 150)] if args.quick else catalogue.items
    emit("machine", device=describe_device(device), cores=cores, torch=torch.__version__, items=len(items))

    paths = [str(item.path) for item in items]
    decode = decode_rate(paths, cores)
    emit("pil_decode_resize_128", processes=cores, images_per_s=round(decode, 1))

    large_source = ModelSource.from_settings(Settings(model_name=PRESETS["large"][0], model_pretrained=""))
    worker_steps = split_normalisation(load_visual(large_source)[1])[0]
    costs = worker_photo_ms(items[:: max(1, len(items) // 400)], worker_steps)
    worker_ms = sum(ms for name, ms in costs.items() if not name.startswith("plain"))
    ratio = worker_ms / costs["plain_decode_resize_128"]
    emit("ingest_worker_photo_ms", process=1, **costs, worker_total=round(worker_ms, 3), vs_plain=round(ratio, 2))

    batch, steps = (8, 2) if args.quick else (256, 20)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    vit = create_clip(ModelSource.from_settings(Settings(model_name="ViT-B-32", model_pretrained="")))[0].visual
    for precision in ("fp32", "bf16"):
        rate = forward_rate(vit, 224, batch, steps, Placement(device, precision))
        emit("vit_b32_224_forward", precision=precision, batch=batch, images_per_s=round(rate, 1))
    small_settings = Settings(model_name="lookalike-small", model_pretrained="")
    resnet18 = load_visual(ModelSource.from_settings(small_settings))[0]
    side = resnet18.image_size[0]  # open_clip's timm tower keeps it as (h, w)
    rate = forward_rate(resnet18, side, batch, steps, Placement(device, "bf16"))
    emit(f"resnet18_{side}_forward", precision="bf16", batch=batch, images_per_s=round(rate, 1))

    with tempfile.TemporaryDirectory() as tmp:
        # Most telling first, in case the device's time runs out: the large preset and ingest with
        # it (the two goals), then the small preset with its data on the device and from PIL workers.
        large = finetune_figure("large", True, items, Path(tmp), device, settings, args.quick)
        # x4: the catalogue four times under new ids, so start-up costs weigh less than in 2,607 photos.
        # free: the forward pass replaced by random vectors, what the pipeline reaches without the model.
        # no_near_duplicates: without the writer thread's check, whose work (and, before it held
        # numpy to one BLAS thread, its BLAS threads) competed with the workers and the main thread.
        # synced: the store synced after every batch, as before ingest synced it every SYNC_EVERY_S.
        runs = (
            (64, 1, False, True, False),
            (256, 1, False, True, False),
            (256, 4, False, True, False),
            (256, 1, True, True, False),
            (256, 1, True, False, False),
            (256, 1, False, True, True),
        )
        for batch_size, copies, free, near, synced in runs:
            copied = Catalogue(catalogue.root, repeated(items, copies), [])
            summary = measure_ingest(
                settings, large, copied, Path(tmp), batch_size, free=free, near_duplicates=near, synced=synced
            )
            ingest_rate = summary.ingested / summary.seconds
            name = "ingest_whole_catalogue" if copies == 1 else f"ingest_catalogue_x{copies}"
            emit(
                name
                + ("_free_encoder" if free else "")
                + ("" if near else "_no_near_duplicates")
                + ("_synced_every_batch" if synced else ""),
                checkpoint="large",
                batch_size=batch_size,
                items=len(copied.items),
                images_per_s=round(ingest_rate, 1),
                vs_pil_decode=round(ingest_rate / decode, 3),
                goal=">=0.8",
                seconds=round(summary.seconds, 3),
                pil_decode_s=round(len(copied.items) / decode, 3),
                duplicates=summary.duplicates,  # x4: every copy is reported (a log line each)
                near_duplicates=summary.near_duplicates,
                stages_s={name: round(seconds, 3) for name, seconds in summary.stages.items()},
            )
        # `python -m ingest` itself, in a process of its own: the workers fork from a parent that
        # holds only the model, not gpu-check's (forking 15 took 0.6-0.8 s from this one).
        for batch_size in (256,):
            fresh = cli_ingest(Catalogue(catalogue.root, items, []), large, Path(tmp), batch_size)
            emit(
                "ingest_whole_catalogue_fresh_process", vs_pil_decode=round(fresh["images_per_s"] / decode, 3), **fresh
            )
        # A worker's tensor reaches the main process as a file descriptor handed over by a thread of
        # that worker (torch's default on Linux), one round trip per chunk, or as a named file in
        # /dev/shm: if the second is much faster, the hand-over is what holds the read stage.
        for sharing in ("file_descriptor", "file_system"):
            read = read_rate(settings, large, items, sharing=sharing)
            emit(
                "ingest_read_stage_alone",
                batch_size=256,
                sharing=sharing,
                vs_pil_decode=round(read["images_per_s"] / decode, 3),
                **read,
            )
        # Decoding in threads of the main process instead: no workers to fork, nothing handed over,
        # but every thread shares one GIL, which Edge's writes keep (alone, then beside the writes).
        for read_in, writes in (("threads", False), ("threads", True), ("processes", True)):
            read = read_beside_writes(settings, large, items, Path(tmp), read_in, writes, cores)
            emit(
                "ingest_read_stage_" + read_in + ("_beside_writes" if writes else ""),
                batch_size=256,
                vs_pil_decode=round(read["images_per_s"] / decode, 3),
                **read,
            )
        for sync_every_s in (SYNC_EVERY_S, 0.0):  # as ingest writes; as the API writes (a sync each)
            write = store_write_rate(settings, len(items), Path(tmp), sync_every_s=sync_every_s)
            rate = write["points_per_s"]
            emit(
                "ingest_store_write_alone",
                batch_size=256,
                sync_every_s=sync_every_s,
                vs_pil_decode=round(rate / decode, 3),
                **write,
            )
        for on_device in () if args.no_small else (True, False):  # the small preset both ways: the data paths
            finetune_figure("small", on_device, items, Path(tmp), device, settings, args.quick)


def finetune_figure(
    preset: str, on_device: bool, items: list, tmp: Path, device: torch.device, settings: Settings, quick: bool
) -> Path:
    """Fine-tune a preset on the catalogue's split (data held on the device, or decoded by PIL
    workers every epoch), emit its figure; returns the checkpoint."""
    model_name, config = PRESETS[preset]
    if quick:
        config = dataclasses.replace(config, epochs=2, batch_size=16, max_minutes=None)
    config = dataclasses.replace(config, progress=False, data_on_device=on_device)
    source = ModelSource.from_settings(Settings(model_name=model_name, model_pretrained=""))
    output = tmp / f"{preset}-{'device' if on_device else 'pil'}"
    result = fine_tune(items, source, output, config, settings.max_image_pixels, device)
    overall = result.metrics["overall"]
    history = json.loads((output / "training.json").read_text())["history"]
    emit(
        f"finetune_{preset}",
        model=model_name,
        data="device" if on_device else "pil-workers",
        seconds=result.seconds,
        epochs=result.epochs_run,
        epochs_planned=result.epochs_planned,
        best_epoch=result.best_epoch,
        stopped_by_budget=result.stopped_by_budget,
        placement=result.placement,
        heldout_p_at_4=round(overall["P@4"], 3),
        map_at_r=round(overall["mAP@R"], 3),
        **validation_figures(history, result.best_epoch),
        phases_s=result.phases_s,
        median_epoch_train_s=median_train_s(history),
        evaluations=sum("P@4" in entry for entry in history),
        details={"history": history},
    )
    return output


def repeated(items: list[CatalogueItem], copies: int) -> list[CatalogueItem]:
    """The items ``copies`` times, each copy under ids of its own (the same photos)."""
    return [dataclasses.replace(item, id=f"{item.id}+{n}") if n else item for n in range(copies) for item in items]


def median_train_s(history: list[dict]) -> float | None:
    """The median training time of an evaluated epoch after the first (the first carries the warm-up)."""
    times = sorted(entry["train_s"] for entry in history[1:] if "train_s" in entry)
    return round(times[len(times) // 2], 3) if times else None


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


def read_beside_writes(
    settings: Settings,
    checkpoint: Path,
    items: list[CatalogueItem],
    tmp: Path,
    read_in: str,
    writes: bool,
    threads: int,
) -> dict:
    """The read stage alone (``read_in`` "processes": ingest's decode workers; "threads": as many
    threads of this process), optionally while another thread writes as many random points into
    the embedded store as ingest's writer would: what the two reach sharing one process's GIL."""
    encoder = ImageEncoder.from_settings(settings.with_overrides(model_checkpoint=checkpoint))
    writer, written = None, {}
    if writes:
        write = functools.partial(
            store_write_rate, settings, len(items), tmp / f"beside-{read_in}", sync_every_s=SYNC_EVERY_S
        )
        writer = threading.Thread(target=lambda: written.update(write()), daemon=True)
        writer.start()
    if read_in == "threads":
        read = _timed_thread_read(settings, encoder, items, threads)
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
) -> IngestSummary:
    """Ingest as `python -m ingest` runs it (decode workers, batches, near-duplicate check), into
    a fresh embedded store; ``free``: with a forward pass that costs nothing (`FreeEncoder`);
    ``synced``: the store synced after every batch instead of every `SYNC_EVERY_S`."""
    run = f"{batch_size}-{len(catalogue.items)}{'-free' if free else ''}{'' if near_duplicates else '-no-near'}"
    run += "-synced" if synced else ""
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
            workers=default_workers(device),
            progress=False,
            near_duplicates=NearDuplicateRule.from_settings(run_settings) if near_duplicates else None,
            sync_every_s=0.0 if synced else SYNC_EVERY_S,
        )
        summary = ingest(catalogue, encoder, store, report, options)
    finally:
        report.close()
        store.close()
    return summary


if __name__ == "__main__":
    main()
