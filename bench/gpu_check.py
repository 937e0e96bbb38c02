"""`make gpu-check`: the machine's figures for issue 13, on whatever device DEVICE resolves to.

Prints, one line each: PIL decode + resize rate over the catalogue (one process per core), and
the same with torchvision's decoder on the device (nvjpeg on a GPU); the milliseconds a photo of
each step of an ingest worker, in one process; the forward throughput of ViT-B/32 at 224 (fp32
-- TF32 on a GPU -- and bf16) and of the small preset's ResNet-18 at its size (bf16);
fine-tuning the large preset on the catalogue's split (seconds, where they went, held-out P@4
and mAP@R, the protocol of finetune.evaluate); ingest with that checkpoint against the decode
rate (goal: >= 0.8x, i.e. the forward pass is not the bottleneck; its rows:
`bench.ingest_rates`); then the small preset, data held on the device and from PIL workers (not
with ``--no-small``). ``--checkpoint`` measures only the decode rate and ingest, with a
checkpoint trained earlier. ``--quick`` shrinks everything so the script itself can be checked
on a CPU in a minute or two. On a lent accelerator: `make device-pack`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.common import validation_figures
from bench.ingest_rates import FigureRun, ingest_figures
from finetune.__main__ import PRESETS
from finetune.run import fine_tune
from lookalike.catalogue import Catalogue, CatalogueItem, read_catalogue
from lookalike.colour import colour_histogram
from lookalike.device import Placement, describe_device, resolve_device
from lookalike.encoder import create_clip, load_visual
from lookalike.images import decode_image, read_bytes, sha256_hex
from lookalike.model_source import ModelSource
from lookalike.pixels import Preprocess, split_normalisation
from lookalike.settings import Settings

RESULTS: list[dict] = []
OUTPUT: list[Path] = []  # the --output file, rewritten after every figure


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


def device_decode_rate(paths: list[str], device: torch.device, batch: int = 64) -> dict:
    """torchvision's ``decode_jpeg`` on ``device`` (nvjpeg on a GPU), a batch of files at a time,
    then each photo resized (antialiased bilinear) to 128 px on its short side there: what decoding
    on the GPU would give the read stage, against `decode_rate` (issue 13: "GPU decoding only where
    it measures faster"). JPEG files only; reading them is timed too, as in `decode_rate`."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    jpegs = [path for path in paths if path.lower().endswith((".jpg", ".jpeg"))]

    def run(chunk: list[str]) -> None:
        datas = [read_file(path) for path in chunk]
        for image in decode_jpeg(datas, mode=ImageReadMode.RGB, device=device):
            scale = 128 / min(image.shape[-2:])
            size = [max(1, round(side * scale)) for side in image.shape[-2:]]
            torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)

    run(jpegs[:batch])  # warm-up: the decoder's and the kernels' start
    synchronize(device)
    started = time.perf_counter()
    for start in range(0, len(jpegs), batch):
        run(jpegs[start : start + batch])
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"images_per_s": round(len(jpegs) / seconds, 1), "jpegs": len(jpegs), "of_files": len(paths)}


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
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="only the decode rate and ingest's rows, with this checkpoint (e.g. one `bench.recipe_sweep --keep` "
        "trained in an earlier call) instead of training the large preset",
    )
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
    try:  # a photo nvjpeg cannot decode (CMYK, say) must not cost the figures after it
        on_device = device_decode_rate(paths, device)
        vs_pil = round(on_device["images_per_s"] / decode, 3)
        emit("device_decode_resize_128", device=str(device), vs_pil_decode=vs_pil, **on_device)
    except RuntimeError as e:
        emit("device_decode_resize_128", device=str(device), error=str(e)[:300])
    measured = Catalogue(catalogue.root, items, [])
    if args.checkpoint:
        with tempfile.TemporaryDirectory() as tmp:
            ingest_figures(FigureRun(emit, settings, args.checkpoint, measured, decode, Path(tmp), cores))
        return

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
        ingest_figures(FigureRun(emit, settings, large, measured, decode, Path(tmp), cores))
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
    info = json.loads((output / "training.json").read_text())
    history = info["history"]
    emit(
        f"finetune_{preset}",
        model=model_name,
        data="device" if on_device else "pil-workers",
        seconds=result.seconds,
        epochs=result.epochs_run,
        epochs_planned=result.epochs_planned,
        best_epoch=result.best_epoch,
        stopped_by=info["stopped_by"],  # epochs, budget or patience
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


def median_train_s(history: list[dict]) -> float | None:
    """The median training time of an evaluated epoch after the first (the first carries the warm-up)."""
    times = sorted(entry["train_s"] for entry in history[1:] if "train_s" in entry)
    return round(times[len(times) // 2], 3) if times else None


if __name__ == "__main__":
    main()
