"""From a PIL image to the model's input: a val transform's steps, as uint8 wherever possible.

open_clip's val transform is PIL's resize and centre crop, then ToTensor and Normalize. Split
there (`split_normalisation`), the PIL half runs where images are decoded (ingest's workers, a
request thread) and sends uint8, a quarter of the bytes; the encoder normalises on its device.

The PIL half is re-done on tensors (`TensorPreprocess`) when its steps are a resize, a centre crop
and RGB: torch's antialiased resize uses PIL's filters (same support and weights; 0.3 % of the
values differ by 1, none by more than 2, on the shared catalogue) at a third of the cost, 0.33
against 1.19 ms a photo to 160 px on one core of a 2-core AMD EPYC: the dearest step of a decode
worker and of every query. Every torch path (ingest, the service, evaluation) goes through it, so
the vectors of one photo are the same everywhere; the ONNX runtime, which has no torch, re-does
the PIL steps themselves (`lookalike.onnx_encoder.PilPreprocess`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from lookalike.steps import crop_origin, resized_size

Preprocess = Callable[[Image.Image], torch.Tensor]
#: Names of torchvision's / open_clip's "PIL image -> float tensor in [0, 1]" step.
TO_TENSOR = ("ToTensor", "MaybeToTensor")
#: The resize filters torch computes as PIL does (antialiased).
TENSOR_INTERPOLATIONS = ("bilinear", "bicubic")


def describe_steps(steps: Sequence[Any]) -> list[dict[str, Any]]:
    """The PIL steps of a val transform (``[Resize] [CenterCrop] [RGB]``) as plain data, which
    `TensorPreprocess` and the ONNX export's `PilPreprocess` run; ValueError naming any other step."""
    described: list[dict[str, Any]] = []
    for step in steps:
        if isinstance(step, transforms.Resize) and step.max_size is None:
            size = step.size if isinstance(step.size, int) else list(step.size)
            if isinstance(size, list) and len(size) == 1:
                size = size[0]
            described.append({"op": "resize", "size": size, "interpolation": step.interpolation.value})
        elif isinstance(step, transforms.CenterCrop):
            described.append({"op": "center_crop", "size": list(step.size)})
        elif type(step).__name__ == "MaybeConvertMode" or getattr(step, "__name__", "") == "_convert_to_rgb":
            described.append({"op": "convert", "mode": getattr(step, "mode", "RGB")})
        else:
            raise ValueError(f"the transform step {step!r} has no equivalent here")
    return described


class TensorPreprocess:
    """The described PIL steps on a uint8 tensor, returning uint8 (3, H, W) (see the module)."""

    def __init__(self, steps: Sequence[dict[str, Any]]) -> None:
        for step in steps:
            if step["op"] == "resize" and step["interpolation"] not in TENSOR_INTERPOLATIONS:
                raise ValueError(f"torch does not resize as PIL does with {step['interpolation']!r}")
            if step["op"] == "convert" and step["mode"] != "RGB":
                raise ValueError(f"a conversion to {step['mode']!r} is PIL's alone")
        self.steps = [step for step in steps if step["op"] != "convert"]  # RGB first, below

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image if image.mode == "RGB" else image.convert("RGB")
        array = np.frombuffer(image.tobytes(), np.uint8).reshape(image.height, image.width, 3)
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1)  # channels last in memory: torch's fast path
        for step in self.steps:
            pixels = _resize(pixels, step) if step["op"] == "resize" else _center_crop(pixels, step)
        return pixels.contiguous()


def _resize(pixels: torch.Tensor, step: dict[str, Any]) -> torch.Tensor:
    height, width = pixels.shape[1:]
    new_width, new_height = resized_size(width, height, step["size"])
    if (new_width, new_height) == (width, height):
        return pixels
    mode = step["interpolation"]
    return F.interpolate(pixels[None], size=(new_height, new_width), mode=mode, antialias=True)[0]


def _center_crop(pixels: torch.Tensor, step: dict[str, Any]) -> torch.Tensor:
    crop_height, crop_width = step["size"]
    height, width = pixels.shape[1:]
    left, top = crop_origin(width, height, crop_width, crop_height)
    if left < 0 or top < 0:  # torchvision pads a smaller image with zeros: -left before, the rest after
        before_x, before_y = max(0, -left), max(0, -top)
        after_x, after_y = max(0, crop_width - width) - before_x, max(0, crop_height - height) - before_y
        pixels = F.pad(pixels, (before_x, after_x, before_y, after_y))
        left, top = max(0, left), max(0, top)
    return pixels[:, top : top + crop_height, left : left + crop_width]


class Uint8Preprocess:
    """The PIL steps of a transform `TensorPreprocess` cannot re-do, returning uint8 (3, H, W)."""

    def __init__(self, pil_steps: Preprocess) -> None:
        self.pil_steps = pil_steps

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(self.pil_steps(image).convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class Normalisation:
    """ToTensor's division and Normalize, on uint8 pixels (N, 3, H, W) wherever they are: the
    same arithmetic as the transform, so the floats are bitwise its own."""

    mean: torch.Tensor  # (1, 3, 1, 1) float32
    std: torch.Tensor

    @classmethod
    def of(cls, mean: Sequence[float], std: Sequence[float]) -> Normalisation:
        return cls(torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1))

    def to(self, device: torch.device) -> Normalisation:
        return Normalisation(self.mean.to(device), self.std.to(device))

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() / 255 - self.mean.to(pixels.device)) / self.std.to(pixels.device)


def split_normalisation(
    preprocess: Preprocess,
) -> tuple[TensorPreprocess | Uint8Preprocess, Normalisation] | None:
    """(the uint8 steps, the rest) of a transform ending in ToTensor + Normalize, else None."""
    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 2 or type(steps[-2]).__name__ not in TO_TENSOR or not isinstance(steps[-1], transforms.Normalize):
        return None
    normalisation = Normalisation.of(steps[-1].mean, steps[-1].std)
    try:
        return TensorPreprocess(describe_steps(steps[:-2])), normalisation
    except ValueError:
        return Uint8Preprocess(transforms.Compose(steps[:-2])), normalisation
