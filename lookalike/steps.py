"""The geometry of a val transform's PIL steps as torchvision computes it, for both re-doings of
them: on tensors (`lookalike.pixels`) and in PIL for the ONNX runtime, which has no torch."""

from __future__ import annotations

from collections.abc import Sequence


def resized_size(width: int, height: int, size: int | Sequence[int]) -> tuple[int, int]:
    """(width, height) after torchvision's Resize: an int takes the shorter side to it and the
    longer in proportion (truncated), a pair is (height, width)."""
    if not isinstance(size, int):
        return size[1], size[0]
    short, long = sorted((width, height))
    scaled = int(size * long / short)
    return (size, scaled) if width <= height else (scaled, size)


def crop_origin(width: int, height: int, crop_width: int, crop_height: int) -> tuple[int, int]:
    """(left, top) of torchvision's CenterCrop; negative where it pads a smaller image with zeros
    (half each side, the odd pixel right and bottom)."""
    left = -((crop_width - width) // 2) if crop_width > width else round((width - crop_width) / 2.0)
    top = -((crop_height - height) // 2) if crop_height > height else round((height - crop_height) / 2.0)
    return left, top
