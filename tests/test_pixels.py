"""The val transform re-done on tensors: PIL's pixels within rounding, at every size, and one path
for every image the torch encoder embeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from lookalike.encoder import ImageEncoder
from lookalike.pixels import TensorPreprocess, Uint8Preprocess, describe_steps, split_normalisation
from tests.conftest import draw_item

NORMALIZE = transforms.Normalize([0.5] * 3, [0.25] * 3)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Noise under a smooth gradient: every resize filter tap matters, as in a product photo's edges."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
    noise = rng.integers(0, 56, (height, width, 3))
    return Image.fromarray((ramp + noise).clip(0, 255).astype(np.uint8))


def val_transform(size: int, interpolation=transforms.InterpolationMode.BICUBIC) -> transforms.Compose:
    """open_clip's val transform, as `create_model_and_transforms` builds it."""
    return transforms.Compose(
        [transforms.Resize(size, interpolation), transforms.CenterCrop(size), transforms.ToTensor(), NORMALIZE]
    )


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(300, 240), (240, 300), (640, 161), (50, 80), (33, 33), (20, 28), (160, 160)])
def test_tensor_steps_give_pils_pixels_within_rounding(size, interpolation):
    """Downscaled, upscaled, square, already the size: torch's antialiased filters are PIL's."""
    transform = val_transform(32 if size[0] < 100 else 160, transforms.InterpolationMode(interpolation))
    pil = Uint8Preprocess(transforms.Compose(transform.transforms[:-2]))
    tensor = TensorPreprocess(describe_steps(transform.transforms[:-2]))
    for seed in range(3):
        image = photo(*size, seed)
        expected, got = pil(image).int(), tensor(image).int()
        assert got.shape == expected.shape and got.dtype == torch.int32
        difference = (got - expected).abs()
        assert difference.max() <= 2 and (difference > 0).float().mean() < 0.02, difference.float().mean()


@pytest.mark.parametrize("size", [(20, 11), (5, 40), (32, 32), (31, 60)])
def test_a_crop_larger_than_the_image_pads_exactly_as_torchvision(size):
    image = photo(*size)
    crop = transforms.CenterCrop((24, 24))
    expected = np.asarray(crop(image)).transpose(2, 0, 1)
    assert np.array_equal(TensorPreprocess(describe_steps([crop]))(image).numpy(), expected)


def test_a_step_torch_cannot_redo_falls_back_to_pil():
    nearest = transforms.Compose(
        [transforms.Resize(16, transforms.InterpolationMode.NEAREST), transforms.ToTensor(), NORMALIZE]
    )
    steps, normalisation = split_normalisation(nearest)
    assert isinstance(steps, Uint8Preprocess)
    image = photo(40, 30)
    np.testing.assert_allclose(normalisation(steps(image)[None])[0], nearest(image), atol=1e-6)
    assert isinstance(split_normalisation(val_transform(16))[0], TensorPreprocess)


def test_grey_and_transparent_images_are_made_rgb_first():
    steps = TensorPreprocess(describe_steps(val_transform(16).transforms[:-2]))
    assert steps(photo(30, 20).convert("L")).shape == (3, 16, 16)
    assert steps(photo(30, 20).convert("RGBA")).shape == (3, 16, 16)


def test_the_service_and_ingest_embed_the_same_pixels(encoder: ImageEncoder):
    """`embed_images` (a request) preprocesses as ingest's workers do: the same vectors, bit for bit."""
    images = [draw_item("red_round", 0, (70, 50)), draw_item("blue_bar", 1, (40, 90))]
    from_workers = encoder.embed_batch(torch.stack([encoder.worker_preprocess(image) for image in images]))
    assert isinstance(encoder.worker_preprocess, TensorPreprocess)
    assert np.array_equal(encoder.embed_images(images), from_workers)
