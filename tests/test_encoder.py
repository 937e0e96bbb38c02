"""The encoder: open_clip's factory, normalised embeddings, a stable identity, clear load errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.encoder import ImageEncoder
from lookalike.errors import ModelLoadError
from lookalike.settings import Settings
from tests.conftest import TEST_MODEL, draw_item


def test_embeddings_are_unit_length_float32(encoder: ImageEncoder):
    embeddings = encoder.embed_images([draw_item("red_round", 0), draw_item("blue_bar", 1)])
    assert embeddings.shape == (2, encoder.dim)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def test_random_init_is_the_same_in_every_process(encoder: ImageEncoder):
    again = ImageEncoder.from_settings(Settings(model_name=TEST_MODEL, model_pretrained=""))
    assert again.identity == encoder.identity
    image = draw_item("green_square", 2)
    np.testing.assert_allclose(again.embed_images([image]), encoder.embed_images([image]), atol=1e-6)


def test_identity_names_the_model_and_its_weights(encoder: ImageEncoder):
    other = ImageEncoder.from_settings(Settings(model_name="lookalike-small", model_pretrained=""))
    assert encoder.identity.startswith("lookalike-tiny/random-init@")
    assert other.identity != encoder.identity


def test_unknown_architecture_says_what_to_set():
    with pytest.raises(ModelLoadError, match="MODEL_NAME"):
        ImageEncoder.from_settings(Settings(model_name="no-such-model", model_pretrained=""))


def test_missing_weights_file_says_what_to_set(tmp_path: Path):
    settings = Settings(model_name=TEST_MODEL, model_pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelLoadError, match="MODEL_PRETRAINED"):
        ImageEncoder.from_settings(settings)


def test_checkpoint_that_is_not_a_checkpoint_is_refused(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="MODEL_CHECKPOINT"):
        ImageEncoder.from_settings(Settings(model_checkpoint=tmp_path))


def test_corrupt_checkpoint_is_one_clear_error(tmp_path: Path):
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 8}}')
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=r"unfinished checkpoint \(no training\.json: its run stopped"):
        ImageEncoder.from_settings(Settings(model_checkpoint=tmp_path))  # could be weights of another run
    (tmp_path / "training.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="could not load the encoder checkpoint:"):
        ImageEncoder.from_settings(Settings(model_checkpoint=tmp_path))


def test_a_batch_the_device_has_no_memory_for_is_embedded_in_parts(monkeypatch):
    encoder = ImageEncoder.from_settings(Settings(model_name=TEST_MODEL, model_pretrained="", model_checkpoint=None))
    pixels = encoder.pixels([draw_item("red_round", i) for i in range(10)])
    whole = encoder.embed_batch(pixels)
    embed, sizes = encoder._embed_pixels, []

    def short_of_memory(part):
        sizes.append(len(part))
        if len(part) > 3:  # as CUDA answers a batch it has no room for
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return embed(part)

    monkeypatch.setattr(encoder, "_embed_pixels", short_of_memory)
    np.testing.assert_allclose(encoder.embed_batch(pixels), whole, atol=1e-5)
    assert sizes == [10, 5, 2, 2, 2, 2, 2]  # halved until it fits
    sizes.clear()
    np.testing.assert_allclose(encoder.embed_batch(pixels[:6]), whole[:6], atol=1e-5)
    assert sizes == [2, 2, 2]  # later batches go in parts that fit at once

    def no_memory_at_all(part):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(encoder, "_embed_pixels", no_memory_at_all)
    with pytest.raises(torch.OutOfMemoryError):  # not even one photo fits: the error, not a loop
        encoder.embed_batch(pixels[:1])
