"""Training data held on the device: the gallery decoded once into one uint8 tensor, augmented there.

An option (`TrainingConfig.data_on_device`), not the default: the idea was that PIL workers
cannot feed a GPU, but on one H200 an epoch took about as long either way (~1 s; the cost lies
elsewhere) and the square crop of the cache trained the large preset to a lower held-out P@4
(0.837 vs 0.865 with PIL's RandomResizedCrop over the whole photo). With it, the cached images
become one square uint8 tensor on the device
(2,076 images at 184 px: 210 MB) and every batch is augmented there in one go: a random resized
crop (scale and aspect as AUGMENTATION) and a horizontal flip as one `affine_grid` +
`grid_sample`, and a brightness factor that leaves hue alone. Evaluation images go through the
model's own val transform once and stay on the device as float16.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from finetune.data import ImageCache

#: Brightness is scaled by a factor in this range (hue and saturation are left alone).
BRIGHTNESS = (0.8, 1.2)
ASPECT = (3 / 4, 4 / 3)


def square_uint8(image: Image.Image, side: int) -> torch.Tensor:
    """The image resized so its shorter side is ``side`` and centre-cropped to a square (3, side, side)."""
    scale = side / min(image.size)
    resized = image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))))
    left, top = (resized.width - side) // 2, (resized.height - side) // 2
    square = resized.crop((left, top, left + side, top + side))
    return torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1)


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
        self.pixels = torch.stack([square_uint8(image, side) for image in cache.images]).to(device)
        self.labels = torch.as_tensor(list(labels), device=device)
        self.size, self.batch_size, self.scale = size, batch_size, scale
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.labels), device=self.labels.device, generator=self.generator)
        for batch in range(len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield self.augment(self.pixels[index]), self.labels[index]

    def augment(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> normalised float (B, 3, size, size), each image cropped differently."""
        count, device = pixels.shape[0], pixels.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(count, device=device, generator=self.generator)

        area = uniform(*self.scale)
        aspect = torch.exp(uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
        width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the source side
        height = torch.sqrt(area / aspect).clamp(max=1.0)
        centre_x = (1 - width) * uniform(-1.0, 1.0)  # in grid coordinates, [-1, 1]
        centre_y = (1 - height) * uniform(-1.0, 1.0)
        flip = torch.where(torch.rand(count, device=device, generator=self.generator) < 0.5, -1.0, 1.0)
        theta = torch.zeros(count, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
        theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
        grid = F.affine_grid(theta, [count, 3, self.size, self.size], align_corners=False)
        crops = F.grid_sample(
            pixels.float() / 255, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        crops = (crops * uniform(*BRIGHTNESS).view(-1, 1, 1, 1)).clamp(0, 1)
        return ((crops - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def preprocess_on_device(
    cache: ImageCache, preprocess: Callable[[Image.Image], torch.Tensor], device: torch.device
) -> ImageCache:
    """The cache with every image through the val transform once, kept on the device (float16)."""
    pixels = torch.stack([preprocess(image) for image in cache.images]).to(device, torch.float16)
    return ImageCache(cache.images, cache.items, pixels)
