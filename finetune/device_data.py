"""Training data held on the device: the gallery decoded once into one uint8 tensor, augmented there.

The default on a GPU (`TrainingConfig.data_on_device`): PIL workers restart their prefetch at
every epoch and cost a CPU core per few hundred images a second, while a GPU runs an epoch of
this catalogue in a fraction of a second. Every photo is kept whole on a square canvas
(longer side = the canvas, centred; 2,076 images at 220 px: 300 MB) with its extent, and each
batch is augmented there in one go, as the PIL recipe (`finetune.run.AUGMENTATION`) does it:
a random resized crop of the *photo* (area and aspect as torchvision's RandomResizedCrop) and a
horizontal flip as one `affine_grid` + `grid_sample`, then, with probability 0.8, brightness,
contrast and saturation factors that leave hue alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from finetune.data import ImageCache

#: torchvision's ColorJitter(0.2, 0.2, 0.2, hue=0) applied with this probability (open_clip's cfg).
JITTER = 0.2
JITTER_PROBABILITY = 0.8
ASPECT = (3 / 4, 4 / 3)
#: Rec. 601 luma, as torchvision's grayscale.
LUMA = (0.299, 0.587, 0.114)


def on_canvas(image: Image.Image, side: int) -> tuple[torch.Tensor, float, float]:
    """The whole photo, longer side ``side``, centred on a black (3, side, side) canvas; and the
    photo's half-extent in grid coordinates ([-1, 1] spans the canvas) along x and y."""
    scale = side / max(image.size)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = Image.new("RGB", (side, side))
    canvas.paste(image.resize((width, height), Image.Resampling.BICUBIC), ((side - width) // 2, (side - height) // 2))
    pixels = torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels, width / side, height / side


class DeviceBatches:
    """One epoch per iteration: shuffled, augmented batches (pixels, labels), the last partial one dropped."""

    def __init__(
        self,
        cache: ImageCache,
        labels: Sequence[int],
        side: int,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        scale: tuple[float, float],
        device: torch.device,
        seed: int = 0,
    ) -> None:
        canvases = [on_canvas(image, side) for image in cache.images]
        self.pixels = torch.stack([pixels for pixels, _, _ in canvases]).to(device)
        self.extent = torch.tensor([(x, y) for _, x, y in canvases], device=device)  # (N, 2) half-extents
        self.labels = torch.as_tensor(list(labels), device=device)
        self.size, self.batch_size, self.scale = size, batch_size, scale
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.luma = torch.tensor(LUMA, device=device).view(1, 3, 1, 1)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.labels), device=self.labels.device, generator=self.generator)
        for batch in range(len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield self.augment(self.pixels[index], self.extent[index]), self.labels[index]

    def _uniform(self, count: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, device=self.labels.device, generator=self.generator)

    def augment(self, pixels: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) canvases -> normalised float (B, 3, size, size), each cropped differently."""
        crops = F.grid_sample(
            pixels.float() / 255, self._crop_grid(extent), mode="bilinear", padding_mode="zeros", align_corners=False
        )
        crops = self._jitter_colour(crops)
        return ((crops - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def _crop_grid(self, extent: torch.Tensor) -> torch.Tensor:
        """RandomResizedCrop + horizontal flip as sampling grids: area a fraction of the photo's,
        aspect log-uniform in ASPECT (in pixels), position uniform within the photo."""
        count = len(extent)
        half_x, half_y = extent[:, 0], extent[:, 1]
        area = self._uniform(count, *self.scale)
        aspect = torch.exp(self._uniform(count, math.log(ASPECT[0]), math.log(ASPECT[1])))
        photo_aspect = half_x / half_y  # width / height of the photo
        width = torch.sqrt(area * aspect / photo_aspect).clamp(max=1.0)  # fractions of the photo's sides
        height = torch.sqrt(area / aspect * photo_aspect).clamp(max=1.0)
        centre_x = half_x * (1 - width) * self._uniform(count, -1.0, 1.0)
        centre_y = half_y * (1 - height) * self._uniform(count, -1.0, 1.0)
        flip = torch.where(self._uniform(count, 0.0, 1.0) < 0.5, -1.0, 1.0)
        theta = torch.zeros(count, 2, 3, device=extent.device)
        theta[:, 0, 0], theta[:, 0, 2] = half_x * width * flip, centre_x
        theta[:, 1, 1], theta[:, 1, 2] = half_y * height, centre_y
        return F.affine_grid(theta, [count, 3, self.size, self.size], align_corners=False)

    def _jitter_colour(self, rgb: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation (hue untouched), each by a factor in 1 ± JITTER, on a
        JITTER_PROBABILITY share of the images; values in [0, 1]."""
        count = len(rgb)
        applied = self._uniform(count, 0.0, 1.0) < JITTER_PROBABILITY

        def factor() -> torch.Tensor:
            drawn = self._uniform(count, 1 - JITTER, 1 + JITTER)
            return torch.where(applied, drawn, torch.ones_like(drawn)).view(-1, 1, 1, 1)

        rgb = (rgb * factor()).clamp(0, 1)
        grey = (rgb * self.luma).sum(dim=1, keepdim=True)
        rgb = torch.lerp(grey.mean(dim=(2, 3), keepdim=True), rgb, factor()).clamp(0, 1)
        grey = (rgb * self.luma).sum(dim=1, keepdim=True)
        return torch.lerp(grey, rgb, factor()).clamp(0, 1)
