"""The image encoder: an open_clip vision tower plus the validation transform it was built with.

Built once per process with `ImageEncoder.from_settings`. The model's identity (what it is and a
fingerprint of its weights) travels with every embedding into the store, so embeddings of two
models are never mixed in one collection.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from lookalike.classifier import CategoryClassifier
from lookalike.cpu import has_native_bf16
from lookalike.device import FP32, Placement, fastest_precision, inference_placement
from lookalike.errors import InvalidRequest, ModelLoadError
from lookalike.model_source import ModelSource
from lookalike.pixels import Preprocess, split_normalisation
from lookalike.settings import Settings
from lookalike.text import TextTower, text_tower

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
#: Seed for random-init weights, so every process (ingest, each API worker) builds the same model.
RANDOM_INIT_SEED = 0


def register_model_configs() -> None:
    """Make this project's own architectures (the small presets) known to open_clip."""
    if "lookalike-small" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of every parameter and buffer: equal weights <=> equal fingerprint."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class ImageEncoder:
    """Image tower + val transform; `embed_batch` returns L2-normalised float32 (N, dim)."""

    def __init__(
        self,
        visual: torch.nn.Module,
        preprocess: Preprocess,
        label: str,
        classifier: CategoryClassifier | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.identity = f"{label}@{weights_fingerprint(visual)}"  # of the weights as loaded: any device
        self.placement = placement or Placement(torch.device("cpu"), FP32)
        on_gpu = self.placement.device.type == "cuda"
        memory_format = torch.channels_last if on_gpu else torch.contiguous_format  # measured: CPU fp32 NCHW
        #: bf16 on a CPU means bf16 *weights* (2.5x fp32 on an avx512_bf16 CPU, where autocast was
        #: 0.9x: it converts the weights again on every call); a GPU autocasts (tensor cores).
        self.weights_dtype = torch.bfloat16 if self.placement.bf16 and not on_gpu else torch.float32
        self.visual = visual.eval().to(self.placement.device, self.weights_dtype, memory_format=memory_format)
        self._autocast = self.placement.autocast if on_gpu else contextlib.nullcontext
        self.memory_format = memory_format
        self.preprocess = preprocess
        split = split_normalisation(preprocess)
        #: What every image goes through before `embed_batch`, in ingest's workers as in a request:
        #: uint8 when the transform allows it (`lookalike.pixels`), else the transform itself.
        self.worker_preprocess: Preprocess = split[0] if split else preprocess
        self._normalisation = split[1].to(self.placement.device) if split else None
        self.classifier = classifier
        self._fits: int | None = None  # the largest batch the device had memory for, once one had not
        self.dim = int(self._probe_dim())
        #: Untrained weights (no MODEL_PRETRAINED, no checkpoint): /readyz and the page say so.
        self.random_weights = False
        #: CLIP's text tower where the model keeps one (`lookalike.text`), else why not.
        self.text: TextTower | None = None
        self.no_text_reason = "this encoder was built without its text tower"

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageEncoder:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        if settings.precision == "int8":
            raise ModelLoadError("PRECISION=int8 needs ENCODER_RUNTIME=onnx (an int8 export); torch has fp32 and bf16")
        source = ModelSource.from_settings(settings)
        clip, _, preprocess = create_clip(source)
        visual = clip.visual
        classifier = CategoryClassifier.load(settings.model_checkpoint) if settings.model_checkpoint else None
        placement = inference_placement(settings.device, settings.precision)
        if settings.precision == "auto" and placement.device.type == "cpu" and has_native_bf16():
            placement = Placement(placement.device, measure_cpu_precision(visual, open_clip_image_size(preprocess)))
        encoder = cls(visual, preprocess, source.label, classifier, placement)
        encoder.random_weights = source.random_init
        encoder.text, encoder.no_text_reason = text_tower(clip, source, settings.text_search, placement.device)
        if placement.device.type == "cuda":
            encoder.warm_up(8)
        if source.random_init:
            log.warning(
                "encoder has RANDOM weights (MODEL_PRETRAINED is empty): results show the pipeline, "
                "not visual similarity. Set MODEL_PRETRAINED (e.g. laion2b_s34b_b79k) or MODEL_CHECKPOINT."
            )
        log.info("encoder ready", extra={"model": encoder.identity, "dim": encoder.dim, "device": placement.describe()})
        return encoder

    def embed_batch(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """Embed preprocessed pixels (N, 3, H, W) on the encoder's device and precision: the
        transform's floats, or `worker_preprocess`'s uint8 (normalised here, on the device).

        A batch the device has no memory for (a GPU shared with other work, a larger model than
        the batch size was chosen for) is embedded in halves, and later batches in parts of the
        size that fitted, instead of stopping an ingest run that would stop again when rerun.
        """
        pixels = torch.as_tensor(pixels)
        part, parts, start = min(len(pixels), self._fits or len(pixels)), [], 0
        while start < len(pixels):
            try:
                parts.append(self._embed_pixels(pixels[start : start + part]))
                start += part
                continue
            except torch.OutOfMemoryError:
                if part == 1:
                    raise
            part = self._fits = part // 2
            if self.placement.device.type == "cuda":  # out of the except block, its tensors are freed
                torch.cuda.empty_cache()
            log.warning("out of device memory: embedding in smaller batches", extra={"batch_size": part})
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    @torch.inference_mode()
    def _embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = pixels.to(self.placement.device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            if self._normalisation is None:
                raise TypeError("uint8 pixels need a transform ending in ToTensor + Normalize")
            pixels = self._normalisation(pixels)
        pixels = pixels.to(self.weights_dtype).contiguous(memory_format=self.memory_format)
        with self._autocast():
            features = self.visual(pixels)
        return F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)

    @property
    def searches_text(self) -> bool:
        return self.text is not None

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts into the image embeddings' space; `InvalidRequest` (400) saying why where there is no text tower."""
        if self.text is None:
            raise InvalidRequest(f"this service cannot search by text: {self.no_text_reason}")
        return self.text.embed(texts)

    def warm_up(self, batch_size: int) -> None:
        """One batch of this size through the model: on a GPU the first one pays for cuDNN's
        algorithm choice and lazy initialisation, which would otherwise land on the first request."""
        size = open_clip_image_size(self.preprocess)
        self.embed_batch(torch.zeros(batch_size, 3, size, size))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Preprocess as ingest's workers do (the same pixels, so the same vectors), then embed."""
        return self.embed_batch(self.pixels(images))

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The images as the model takes them, on its device, in float (normalised)."""
        pixels = torch.stack([self.worker_preprocess(image) for image in images]).to(self.placement.device)
        return self._normalisation(pixels) if pixels.dtype == torch.uint8 else pixels

    def _probe_dim(self) -> int:
        output_dim = getattr(self.visual, "output_dim", None)
        if output_dim:
            return output_dim
        size = open_clip_image_size(self.preprocess)
        return self.embed_batch(torch.zeros(1, 3, size, size)).shape[-1]


def measure_cpu_precision(visual: torch.nn.Module, size: int, batch: int = 8) -> str:
    """fp32 or bf16 weights, whichever embeds a batch faster on this CPU (bf16 must win by 10 %)."""
    pixels = torch.randn(batch, 3, size, size)
    trial = copy.deepcopy(visual).eval().to(torch.bfloat16)

    def run(bf16: bool) -> None:
        with torch.inference_mode():
            (trial if bf16 else visual.eval())(pixels.to(torch.bfloat16) if bf16 else pixels)

    return fastest_precision(run, "inference")


def create_clip(source: ModelSource, aug_cfg: Any = None) -> tuple[torch.nn.Module, Preprocess, Preprocess]:
    """open_clip's factory with one clear error: the whole model, its train and val transforms."""
    register_model_configs()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            name, pretrained = source.open_clip_arguments
            with warnings.catch_warnings():  # open_clip applies the colour jitter it says it leaves unused
                warnings.filterwarnings("ignore", message="Unused augmentation cfg items")
                return open_clip.create_model_and_transforms(name, pretrained=pretrained, aug_cfg=aug_cfg)
    except Exception as e:  # open_clip and the hub raise many kinds; one clear message for all
        raise ModelLoadError(
            f"could not load the encoder {source.label}: {e}. Check MODEL_NAME (one of "
            "open_clip.list_models()), MODEL_PRETRAINED (an open_clip tag, `hf-hub:org/repo`, a local "
            "weights file, or empty for random init) or MODEL_CHECKPOINT (a fine-tuned checkpoint "
            "directory). Without internet, use a local file or checkpoint."
        ) from e


def load_visual(source: ModelSource) -> tuple[torch.nn.Module, Preprocess]:
    """The image tower and its val transform; the text tower is never used at inference."""
    model, _, preprocess = create_clip(source)
    return model.visual, preprocess


def open_clip_image_size(preprocess: Preprocess) -> int:
    """The square input size of an open_clip transform (its first Resize/Crop)."""
    for step in getattr(preprocess, "transforms", []):
        size = getattr(step, "size", None)
        if size is not None:
            return size if isinstance(size, int) else size[0]
    return 224
