"""One device abstraction (DEVICE, PRECISION): resolution, its errors, the precision choice (issue 13).

No GPU here or in CI: the CUDA branches are checked for their decisions and errors; the GPU runs
themselves are `make gpu-check` on a machine that has one.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torchvision import transforms

from finetune.__main__ import main as finetune_main
from finetune.__main__ import preset_for
from ingest.__main__ import main as ingest_main
from lookalike.device import (
    BF16,
    FP32,
    DeviceUnavailable,
    Placement,
    fastest_precision,
    fastest_training_precision,
    inference_placement,
    resolve_device,
)
from lookalike.encoder import ImageEncoder, load_visual, measure_cpu_precision
from lookalike.errors import ModelLoadError
from lookalike.model_source import ModelSource
from lookalike.settings import Settings
from tests.conftest import TEST_MODEL, draw_item

NO_GPU = not torch.cuda.is_available()


def test_auto_and_cpu_resolve_to_a_usable_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cpu") if NO_GPU else torch.device("cuda", 0))


@pytest.mark.skipif(not NO_GPU, reason="checks the message given on a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_asking_for_a_gpu_that_is_not_there_is_one_clear_error(name):
    with pytest.raises(DeviceUnavailable, match=f"DEVICE={name} but torch sees no CUDA device"):
        resolve_device(name)


def test_device_setting_is_validated():
    with pytest.raises(ValidationError):
        Settings(_env_file=None, device="gpu")
    assert Settings(_env_file=None, device="cuda:1").device == "cuda:1"


@pytest.mark.skipif(not NO_GPU, reason="checks the CLI's answer on a machine without a GPU")
def test_ingest_and_finetune_with_a_missing_gpu_exit_2_without_a_traceback(monkeypatch, capsys, settings):
    monkeypatch.setenv("DEVICE", "cuda")
    monkeypatch.setenv("QDRANT_PATH", str(settings.qdrant_path))
    monkeypatch.setenv("CATALOGUE_DIR", str(settings.catalogue_dir))
    monkeypatch.setenv("MODEL_NAME", TEST_MODEL)
    for run in (lambda: ingest_main(["--no-progress"]), lambda: finetune_main(["--preset", "model", "--no-progress"])):
        assert run() == 2
        err = capsys.readouterr().err
        assert "error: DEVICE=cuda but torch sees no CUDA device" in err and "Traceback" not in err


def test_inference_precision_is_bf16_only_on_a_gpu_unless_set():
    assert inference_placement("cpu").precision == FP32
    assert inference_placement("cpu", "bf16").precision == BF16


def test_the_encoder_on_the_cpu_placement_gives_the_same_vectors(settings):
    source = ModelSource.from_settings(Settings(_env_file=None, model_name=TEST_MODEL, model_pretrained=""))
    visual, preprocess = load_visual(source)
    images = [draw_item("red_round", i) for i in range(4)]
    default = ImageEncoder(visual, preprocess, source.label).embed_images(images)
    placed = ImageEncoder(visual, preprocess, source.label, placement=Placement(torch.device("cpu"), FP32))
    assert np.allclose(placed.embed_images(images), default, atol=1e-6)
    bf16 = ImageEncoder(visual, preprocess, source.label, placement=Placement(torch.device("cpu"), BF16))
    assert bf16.identity == placed.identity  # the identity never depends on device or precision
    assert next(bf16.visual.parameters()).dtype == torch.bfloat16  # bf16 weights on a CPU, not autocast
    cosines = (bf16.embed_images(images) * default).sum(axis=1)
    assert cosines.min() >= 0.999


def test_cpu_inference_precision_is_measured_only_where_bf16_is_native(monkeypatch):
    import lookalike.encoder as encoder_module

    measured = []
    monkeypatch.setattr(encoder_module, "measure_cpu_precision", lambda *args: measured.append(1) or BF16)
    settings = Settings(_env_file=None, model_name=TEST_MODEL, model_pretrained="", device="cpu", precision="auto")
    monkeypatch.setattr(encoder_module, "has_native_bf16", lambda: False)
    assert ImageEncoder.from_settings(settings).placement.precision == FP32 and not measured
    monkeypatch.setattr(encoder_module, "has_native_bf16", lambda: True)
    assert ImageEncoder.from_settings(settings).placement.precision == BF16 and measured
    pinned = settings.model_copy(update={"precision": "fp32"})
    assert ImageEncoder.from_settings(pinned).placement.precision == FP32 and len(measured) == 1


def test_the_measurement_picks_bf16_only_when_it_is_faster():
    source = ModelSource.from_settings(Settings(_env_file=None, model_name=TEST_MODEL, model_pretrained=""))
    visual, _ = load_visual(source)
    assert measure_cpu_precision(visual, 32, batch=2) in (FP32, BF16)  # runs both on the real model
    assert fastest_precision(lambda bf16: time.sleep(0.002 if bf16 else 0.02), "inference", 1) == BF16
    assert fastest_precision(lambda bf16: time.sleep(0.02 if bf16 else 0.002), "inference", 1) == FP32


def test_int8_needs_the_onnx_runtime():
    with pytest.raises(ModelLoadError, match="PRECISION=int8 needs ENCODER_RUNTIME=onnx"):
        ImageEncoder.from_settings(Settings(_env_file=None, model_name=TEST_MODEL, precision="int8"))


def test_training_precision_is_whichever_measures_faster_on_a_cpu():
    def step_with(bf16_seconds: float, fp32_seconds: float):
        return lambda bf16: time.sleep(bf16_seconds if bf16 else fp32_seconds)

    cpu = torch.device("cpu")
    assert fastest_training_precision(cpu, step_with(0.005, 0.03), repeats=1) == BF16
    assert fastest_training_precision(cpu, step_with(0.03, 0.005), repeats=1) == FP32
    assert fastest_training_precision(cpu, step_with(0.02, 0.021), repeats=1) == FP32  # bf16 must win by 10 %


@pytest.mark.parametrize(
    ("bf16_s", "fp32_s", "chosen", "steps"),
    [
        (0.05, 0.005, FP32, 1),  # a bf16 ten times slower (no bf16 instructions): its warm-up says so
        (0.015, 0.005, FP32, 2),  # a losing bf16: warm-up + the one round that lost
        (0.005, 0.05, BF16, 4),
    ],
)
def test_a_bf16_that_cannot_win_stops_being_timed(bf16_s, fp32_s, chosen, steps):
    calls = {True: 0, False: 0}

    def step(bf16: bool) -> None:
        calls[bf16] += 1
        time.sleep(bf16_s if bf16 else fp32_s)

    assert fastest_training_precision(torch.device("cpu"), step, repeats=3) == chosen
    assert calls == {False: steps, True: steps}  # warm-up + each round's one call


def test_a_load_that_comes_and_goes_does_not_choose_the_precision():
    """bf16 no faster than fp32 here, and the first three calls slowed by another job starting:
    timed one block after the other, fp32's block took the load and bf16 won; alternated, the
    fastest call of each is compared."""
    calls = []

    def step(bf16: bool) -> None:
        calls.append(bf16)
        time.sleep(0.02 + (0.06 if len(calls) <= 3 else 0.0))

    assert fastest_training_precision(torch.device("cpu"), step, repeats=3) == FP32
    assert calls == [False, True] * 4  # warm-ups, then fp32 and bf16 in turn


def test_preset_auto_picks_the_recipe_for_the_machine():
    plain = Settings(_env_file=None, model_pretrained="")
    assert preset_for("auto", plain, torch.device("cpu")) == "small"
    assert preset_for("auto", plain, torch.device("cuda")) == "large"
    pretrained = Settings(_env_file=None, model_pretrained="laion2b_s34b_b79k")
    assert preset_for("auto", pretrained, torch.device("cuda")) is None  # LP-FT of MODEL_NAME
    assert preset_for("model", plain, torch.device("cpu")) is None
    assert preset_for("small", plain, torch.device("cuda")) == "small"


def test_readyz_names_device_and_precision(client, ingested):
    body = client.get("/readyz").get_json()
    assert body["device"] == "cpu" and body["precision"] == "fp32"


def test_uint8_pixels_normalised_on_the_device_are_the_transforms_floats(encoder):
    """The split itself changes nothing: ToTensor + Normalize on uint8 are the transform's floats
    bitwise (the tensor resize before it is PIL's within rounding: tests/test_pixels.py)."""
    from lookalike.pixels import Uint8Preprocess

    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (50 + 7 * i, 61, 3), dtype=np.uint8)) for i in range(4)]
    pil_steps = Uint8Preprocess(transforms.Compose(encoder.preprocess.transforms[:-2]))
    uint8 = torch.stack([pil_steps(image) for image in images])
    assert uint8.dtype == torch.uint8
    floats = torch.stack([encoder.preprocess(image) for image in images])
    np.testing.assert_array_equal(encoder.embed_batch(uint8), encoder.embed_batch(floats))
    cosines = (encoder.embed_images(images) * encoder.embed_batch(floats)).sum(axis=1)
    assert cosines.min() > 0.9999


def test_a_transform_without_totensor_normalize_keeps_float_pixels_for_the_workers():
    from lookalike.pixels import split_normalisation

    assert split_normalisation(lambda image: torch.zeros(3, 4, 4)) is None
