"""Export an encoder's image tower to ONNX (fp32 and int8) for `lookalike.onnx_encoder`.

Needs torch, open_clip and onnx, so it runs where training and ingest run (``python -m
finetune.export``, the end of a fine-tuning run, or a child process of a service that found no
export). Every export is checked before it is kept: the PIL + numpy preprocessing against the
torchvision transform (pixel for pixel) and the fp32 vectors against torch's (cosine >= 0.9999);
the int8 variant's agreement is measured and reported.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from PIL import Image
from torchvision import transforms

from lookalike.encoder import ImageEncoder, load_visual, open_clip_image_size
from lookalike.errors import ModelLoadError
from lookalike.model_source import ModelSource
from lookalike.onnx_encoder import METADATA_KEY, VARIANTS, ExportInfo, OnnxEncoder, PilPreprocess, variant_file
from lookalike.pixels import TO_TENSOR, Uint8Preprocess, describe_steps

log = logging.getLogger(__name__)

OPSET = 17
#: fp32 vectors must be torch's to float rounding to share its identity (and its collections).
FP32_MIN_COSINE = 0.9999
#: Dynamic int8 quantisation of matrix products only: ONNX Runtime's int8 convolution
#: (ConvInteger) measured 6x slower than fp32 on a ResNet-18, its int8 MatMul 2x faster on ViT-B/32.
QUANTISED_OPS = ["MatMul", "Gemm"]


@dataclass(frozen=True)
class ExportReport:
    directory: Path
    identity: str
    seconds: float
    fp32_min_cosine: float
    int8_min_cosine: float

    def line(self) -> str:
        return (
            f"exported {self.identity} to {self.directory} in {self.seconds:.1f} s: fp32 and int8 variants; "
            f"cosine to torch's vectors >= {self.fp32_min_cosine:.6f} (fp32), >= {self.int8_min_cosine:.4f} (int8)"
        )


def describe_transform(preprocess: Any) -> tuple[list[dict[str, Any]], list[float], list[float]]:
    """(PIL steps, mean, std) of a val transform ``[Resize] [CenterCrop] [RGB] ToTensor Normalize``;
    a `ModelLoadError` naming any step `PilPreprocess` cannot re-do."""
    composed = list(getattr(preprocess, "transforms", []))
    ends_in_tensor = len(composed) >= 2 and type(composed[-2]).__name__ in TO_TENSOR
    if not ends_in_tensor or not isinstance(composed[-1], transforms.Normalize):
        raise ModelLoadError("cannot export: the model's transform does not end in ToTensor + Normalize")
    try:
        steps = describe_steps(composed[:-2])
    except ValueError as e:
        raise ModelLoadError(f"cannot export: {e}") from e
    normalize = composed[-1]
    return steps, [float(m) for m in normalize.mean], [float(s) for s in normalize.std]


def sample_images(count: int = 6, seed: int = 0) -> list[Image.Image]:
    """Photos-like test images of several shapes (portrait, landscape, small, odd sizes)."""
    rng = np.random.default_rng(seed)
    shapes = [(300, 200), (200, 300), (57, 91), (640, 480), (123, 123), (31, 45)]
    images = []
    for width, height in (shapes * (count // len(shapes) + 1))[:count]:
        base = rng.integers(0, 256, size=(1, 1, 3)) * np.ones((height, width, 3))
        noise = rng.normal(0, 40, size=(height, width, 3))
        images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB"))
    return images


def export_encoder(source: ModelSource, directory: Path, images: Sequence[Image.Image] | None = None) -> ExportReport:
    """Write ``visual.fp32.onnx`` and ``visual.int8.onnx`` for ``source`` into ``directory``.

    Checked in a temporary folder first, then moved in (fp32 last), so a reader never sees a
    half-written file and a failed check leaves what was there."""
    started = time.perf_counter()
    visual, preprocess = load_visual(source)
    encoder = ImageEncoder(visual, preprocess, source.label)  # fp32 on the CPU: the reference vectors
    steps, mean, std = describe_transform(preprocess)
    images = list(images or sample_images())
    _check_preprocessing(preprocess, PilPreprocess(steps), images)
    reference = encoder.embed_images(images)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as scratch:
        fp32, int8 = variant_file(Path(scratch), "fp32"), variant_file(Path(scratch), "int8")
        _export_graph(encoder.visual, open_clip_image_size(preprocess), fp32)
        _quantise(fp32, int8)
        base = {"label": source.label, "dim": encoder.dim, "steps": steps, "mean": mean, "std": std}
        base |= {"random_weights": source.random_init}
        infos = {
            "fp32": ExportInfo(identity=encoder.identity, variant="fp32", **base),
            "int8": ExportInfo(identity=f"{encoder.identity}+int8", variant="int8", **base),
        }
        cosines = {}
        for variant in VARIANTS:
            path = variant_file(Path(scratch), variant)
            _write_metadata(path, infos[variant])
            cosines[variant] = float((OnnxEncoder(path).embed_images(images) * reference).sum(axis=1).min())
        if cosines["fp32"] < FP32_MIN_COSINE:
            cosine = cosines["fp32"]
            raise ModelLoadError(f"export of {source.label} disagrees with torch (cosine {cosine:.6f}): not kept")
        for variant in ("int8", "fp32"):
            os.replace(variant_file(Path(scratch), variant), variant_file(directory, variant))
    report = ExportReport(directory, encoder.identity, time.perf_counter() - started, cosines["fp32"], cosines["int8"])
    log.info("encoder exported", extra={"directory": str(directory), "model": encoder.identity, **cosines})
    return report


def _check_preprocessing(preprocess: Any, pil: PilPreprocess, images: Sequence[Image.Image]) -> None:
    """PIL + numpy against the transform's own PIL steps (torch's runtime resizes on tensors,
    within 2 of 255 of them: the fp32 check below measures that on the vectors)."""
    transform = Uint8Preprocess(transforms.Compose(list(preprocess.transforms)[:-2]))
    for image in images:
        if not np.array_equal(pil(image), transform(image).numpy()):
            raise ModelLoadError(f"cannot export: PIL + numpy preprocessing differs from the transform on {image.size}")


def _export_graph(visual: torch.nn.Module, size: int, path: Path) -> None:
    """The TorchScript-based exporter: it needs no onnxscript and handles open_clip's towers."""
    example = torch.zeros(1, 3, size, size)
    # grad enabled: under no_grad, torch.nn.MultiheadAttention takes a fused fast path ONNX has no op for
    with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes, deprecation notes
        torch.onnx.export(
            visual.float().eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
        )


def _quantise(fp32: Path, int8: Path) -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs advice through the root logger
    try:
        quantize_dynamic(fp32, int8, op_types_to_quantize=QUANTISED_OPS, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def _write_metadata(path: Path, info: ExportInfo) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: info.to_json()})
    onnx.save(model, str(path))
