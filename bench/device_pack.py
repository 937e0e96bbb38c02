"""`make device-pack`: what `make gpu-check` needs on a lent accelerator, in one folder to carry.

The device machine has torch, timm, Pillow, numpy, httpx and grpcio but none of this project's
other packages, reaches no registry, and takes at most 64 MiB along with the working tree. So this
downloads wheels of exactly the packages it lacks (the versions installed here, built for its
Python) and re-encodes the catalogue smaller (longest side 256 px: the presets train at 128 and
160 px), all under ``.device/`` (git-ignored), then prints the one command to run there.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from lookalike.settings import Settings

PACK = Path(".device")
#: This project's imports (gpu_check: ingest, fine-tuning, both embedded engines) that the device
#: image does not hold (its package list: /work/.library/device/KINDS.md).
DEVICE_LACKS = (
    "open_clip_torch",
    "ftfy",
    "wcwidth",
    "pydantic",
    "pydantic_core",
    "pydantic-settings",
    "annotated-types",
    "typing-inspection",
    "python-dotenv",
    "python-json-logger",
    "qdrant-client",
    "qdrant-edge-py",
    "h2",
    "hpack",
    "hyperframe",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
LIMIT_BYTES = 64 * 2**20
#: The command run there, from the repository root (PYTHONPATH: the wheels, then this checkout).
DEVICE_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "
    "{pack}/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MODEL_PRETRAINED= || exit; "
    "nvidia-smi -L; set -o pipefail; python3 -m bench.gpu_check {pack}/catalogue --output $OUT/gpu_check.json "
    "2>&1 | tee $OUT/gpu_check.log"
)


def pinned(names: tuple[str, ...] = DEVICE_LACKS) -> list[str]:
    """``name==version`` of each package as installed here (the versions the tests ran with)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def download_wheels(requirements: list[str], dest: Path, python_version: str) -> None:
    """Binary wheels of exactly these pins, none of their dependencies, for that Python on x86-64."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(dest)]
    subprocess.run([*command, *requirements], check=True)


def reencode_catalogue(source: Path, dest: Path, longest_side: int = 256, quality: int = 85) -> int:
    """Every JPEG/PNG under ``source`` as a JPEG of at most ``longest_side`` px, same relative path
    (same category folders, same file names: the items keep their ids). Returns the file count."""
    count = 0
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() not in {".jpg", ".jpeg", ".png"}:
            continue
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
                image.save(target, "JPEG", quality=quality)
        except OSError:  # unreadable here: travels as it is, to fail there as it fails here
            shutil.copyfile(path, target)
        count += 1
    return count


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("catalogue", nargs="?", type=Path, help="default: CATALOGUE_DIR")
    parser.add_argument("--python-version", default="3.12", help="the device's Python (3.12 in its image)")
    parser.add_argument("--output", type=Path, default=PACK)
    args = parser.parse_args(argv)
    catalogue = args.catalogue or Settings().catalogue_source()
    if not catalogue.is_dir():
        sys.exit(f"{catalogue}: give a catalogue folder (category sub-folders), not a manifest")
    shutil.rmtree(args.output, ignore_errors=True)
    download_wheels(pinned(), args.output / "whl", args.python_version)
    images = reencode_catalogue(catalogue, args.output / "catalogue")
    size = folder_bytes(args.output)
    print(f"{args.output}: {len(DEVICE_LACKS)} wheels, {images} images, {size / 2**20:.1f} MiB")
    if size > LIMIT_BYTES:
        sys.exit(f"{args.output} is over the device's 64 MiB: lower the longest side or the JPEG quality")
    print(f'device run: carry ["{args.output}"], timeout_s 570, command:\n{DEVICE_COMMAND.format(pack=args.output)}')


if __name__ == "__main__":
    main()
