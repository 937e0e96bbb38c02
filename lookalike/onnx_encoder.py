"""The image tower exported to ONNX, run by ONNX Runtime: an encoder with no torch in the process.

`python -m finetune.export` (`lookalike.onnx_export`) writes ``visual.fp32.onnx`` and
``visual.int8.onnx`` into a checkpoint's ``onnx/`` folder, or under ONNX_DIR for any other model.
Each file carries its metadata (`ExportInfo`: the model identity, the variant, the preprocessing
steps), so it needs nothing else to run. The preprocessing is the model's torchvision val
transform re-done in PIL + numpy, step by step; the export refuses a transform it cannot re-do
and checks the two agree pixel for pixel.

fp32 vectors are torch's to float rounding (cosine >= 0.9999, checked at export), so they share
torch's identity and one collection; int8 vectors get their own identity.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from lookalike.classifier import CategoryClassifier
from lookalike.cpu import cpu_model
from lookalike.errors import InvalidRequest, ModelLoadError
from lookalike.model_source import ModelSource
from lookalike.settings import Settings
from lookalike.steps import crop_origin, resized_size

log = logging.getLogger(__name__)

EXPORT_DIR = "onnx"  # inside a checkpoint folder
METADATA_KEY = "lookalike"
FORMAT_VERSION = 1
VARIANTS = ("fp32", "int8")
PIL_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def variant_file(directory: Path, variant: str) -> Path:
    return directory / f"visual.{variant}.onnx"


def export_directory(settings: Settings) -> Path:
    """A checkpoint's own ``onnx/`` folder (unless it has none and cannot get one: a read-only
    mount), else one folder per model under ONNX_DIR."""
    checkpoint = settings.model_checkpoint
    if checkpoint is not None and ((checkpoint / EXPORT_DIR).is_dir() or os.access(checkpoint, os.W_OK)):
        return checkpoint / EXPORT_DIR
    label = ModelSource.from_settings(settings).label
    return settings.onnx_dir / re.sub(r"[^A-Za-z0-9_.-]+", "-", label)


def variant_of(precision: str) -> str:
    """PRECISION -> the export variant: int8 when asked, fp32 otherwise (auto included: it is the
    one whose vectors are torch's, so choosing it never changes a collection's model)."""
    if precision == "bf16":
        raise ModelLoadError("PRECISION=bf16 needs ENCODER_RUNTIME=torch; the onnx runtime has fp32 and int8")
    return "int8" if precision == "int8" else "fp32"


@dataclass(frozen=True)
class ExportInfo:
    """What an exported file is: written into the file's metadata by the export."""

    identity: str
    variant: str
    label: str
    dim: int
    steps: list[dict[str, Any]]  # the PIL steps, as `PilPreprocess` runs them
    mean: list[float]
    std: list[float]
    random_weights: bool
    format: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_session(cls, session: ort.InferenceSession, path: Path) -> ExportInfo:
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        try:
            info = cls(**json.loads(raw or ""))
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"{path} has no lookalike export metadata ({e}): export it again") from None
        if info.format != FORMAT_VERSION:
            raise ModelLoadError(f"{path} is export format {info.format}, this version reads {FORMAT_VERSION}")
        return info


class PilPreprocess:
    """torchvision's Resize / CenterCrop / RGB steps on a PIL image, as uint8 (3, H, W): the same
    PIL calls with the same sizes, so the pixels are the transform's own."""

    def __init__(self, steps: Sequence[dict[str, Any]]) -> None:
        self.steps = list(steps)

    def __call__(self, image: Image.Image) -> np.ndarray:
        for step in self.steps:
            image = getattr(self, f"_{step['op']}")(image, step)
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()

    @staticmethod
    def _resize(image: Image.Image, step: dict[str, Any]) -> Image.Image:
        new = resized_size(*image.size, step["size"])
        if new == image.size:
            return image
        return image.resize(new, PIL_INTERPOLATION[step["interpolation"]])

    @staticmethod
    def _center_crop(image: Image.Image, step: dict[str, Any]) -> Image.Image:
        crop_height, crop_width = step["size"]
        left, top = crop_origin(*image.size, crop_width, crop_height)
        return image.crop((left, top, left + crop_width, top + crop_height))

    @staticmethod
    def _convert(image: Image.Image, step: dict[str, Any]) -> Image.Image:
        return image.convert(step["mode"])


@dataclass(frozen=True)
class CpuDevice:
    """The onnx runtime's device (torch's ``device.type`` / ``str(device)`` without torch)."""

    type: str = "cpu"

    def __str__(self) -> str:
        return self.type


@dataclass(frozen=True)
class RuntimePlacement:
    """Where and in what precision the exported model runs, described like torch's `Placement`."""

    precision: str
    threads: int | None  # None: ONNX Runtime's default, one per physical core
    device: CpuDevice = CpuDevice()

    def describe(self) -> str:
        threads = f"{self.threads} threads" if self.threads else "a thread per core"
        return f"cpu ({cpu_model()}, onnxruntime {ort.__version__}, {threads}), {self.precision}"


class OnnxEncoder:
    """The `ImageEncoder` interface over an exported file: ``embed_batch`` / ``embed_images``
    return L2-normalised float32 (N, dim)."""

    def __init__(self, path: Path, classifier: CategoryClassifier | None = None, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, one per physical core
        options.inter_op_num_threads = 1
        # No arena: it rounds the pre-packed weights up to powers of two and never gives back a
        # batch's activations. Measured (ViT-B-32 fp32, 2 cores of an AMD EPYC): session 549 -> 378 MiB, after a
        # batch of 32 717 -> 638 MiB, batch 1 and batch 32 as fast.
        options.enable_cpu_mem_arena = False
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own kinds for missing and damaged files
            raise ModelLoadError(f"could not load the exported encoder {path}: {e}") from None
        self.info = ExportInfo.from_session(self.session, path)
        self.identity, self.dim = self.info.identity, self.info.dim
        self.random_weights = self.info.random_weights
        self.classifier = classifier
        self.worker_preprocess = PilPreprocess(self.info.steps)
        self.placement = RuntimePlacement(self.info.variant, threads)
        self._input = self.session.get_inputs()[0].name
        self._mean = np.asarray(self.info.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(self.info.std, dtype=np.float32).reshape(1, 3, 1, 1)

    @classmethod
    def from_settings(cls, settings: Settings) -> OnnxEncoder:
        """The export for MODEL_CHECKPOINT or MODEL_NAME/MODEL_PRETRAINED in the PRECISION's variant,
        exported first (in a child process: this one stays torch-free) when it is not there yet."""
        if settings.device not in ("auto", "cpu"):
            raise ModelLoadError(
                f"ENCODER_RUNTIME=onnx runs on the CPU; DEVICE={settings.device} needs ENCODER_RUNTIME=torch"
            )
        path = variant_file(export_directory(settings), variant_of(settings.precision))
        if not path.is_file():
            export_in_child_process(settings, path.parent)
        classifier = CategoryClassifier.load(settings.model_checkpoint) if settings.model_checkpoint else None
        encoder = cls(path, classifier, settings.torch_threads)
        if encoder.random_weights:
            log.warning("encoder has RANDOM weights: results show the pipeline, not visual similarity")
        described = {"model": encoder.identity, "dim": encoder.dim, "device": encoder.placement.describe()}
        log.info("encoder ready", extra=described)
        return encoder

    def embed_batch(self, pixels: Any) -> np.ndarray:
        """Embed preprocessed pixels (N, 3, H, W): `worker_preprocess`'s uint8 (normalised here as
        ToTensor + Normalize do, in float32) or already-normalised floats (numpy or torch)."""
        pixels = np.asarray(pixels)
        if pixels.dtype == np.uint8:
            pixels = (pixels.astype(np.float32) / np.float32(255) - self._mean) / self._std
        features = self.session.run(None, {self._input: np.ascontiguousarray(pixels, dtype=np.float32)})[0]
        norms = np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        return (features / norms).astype(np.float32, copy=False)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_batch(np.stack([self.worker_preprocess(image) for image in images]))

    #: The export holds the image tower only.
    searches_text = False

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise InvalidRequest(
            "this service cannot search by text: the ONNX export holds the image tower only "
            "(ENCODER_RUNTIME=torch with a pretrained CLIP keeps the text tower)"
        )


def export_in_child_process(settings: Settings, directory: Path) -> None:
    """Run ``python -m finetune.export`` for this model into ``directory``, once: concurrent
    workers wait on a lock for the first one's export instead of exporting again."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(variant_file(directory, v).is_file() for v in VARIANTS):
            return
        command = [sys.executable, "-m", "finetune.export", "--out", str(directory)]
        if settings.model_checkpoint is not None:
            command += ["--checkpoint", str(settings.model_checkpoint)]
        else:
            command += ["--model", settings.model_name, "--pretrained", settings.pretrained]
        log.info("exporting the encoder to ONNX", extra={"directory": str(directory)})
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelLoadError(
                f"no ONNX export at {directory}, and exporting failed (needs torch and open_clip): "
                f"{done.stderr.strip()[-600:]}"
            )
