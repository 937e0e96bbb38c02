"""The ONNX export and runtime: the same vectors as torch, a service that never imports torch,
an export made on first use, refusals in words."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from lookalike.encoder import ImageEncoder
from lookalike.errors import ModelLoadError
from lookalike.model_source import ModelSource
from lookalike.onnx_encoder import OnnxEncoder, PilPreprocess, export_directory, variant_file
from lookalike.onnx_export import describe_transform, sample_images
from lookalike.pixels import Uint8Preprocess
from lookalike.settings import Settings
from tests.conftest import TEST_MODEL, draw_item

ROOT = Path(__file__).resolve().parent.parent


def photos() -> list[Image.Image]:
    return [draw_item(c, i, size) for c in ("red_round", "blue_bar") for i, size in ((0, (64, 48)), (1, (40, 90)))]


def test_fp32_export_gives_torchs_vectors_and_identity(encoder: ImageEncoder, onnx_export: Path):
    exported = OnnxEncoder(variant_file(onnx_export, "fp32"))
    assert exported.identity == encoder.identity and exported.dim == encoder.dim
    cosines = (exported.embed_images(photos()) * encoder.embed_images(photos())).sum(axis=1)
    assert cosines.min() >= 0.9999


def test_int8_export_is_close_but_its_own_model(encoder: ImageEncoder, onnx_export: Path):
    quantised = OnnxEncoder(variant_file(onnx_export, "int8"))
    assert quantised.identity == f"{encoder.identity}+int8"  # never mixed with fp32 vectors in one collection
    assert quantised.placement.precision == "int8"
    cosines = (quantised.embed_images(photos()) * encoder.embed_images(photos())).sum(axis=1)
    assert cosines.min() >= 0.99


def test_pil_preprocessing_is_the_transforms_pixel_for_pixel(encoder: ImageEncoder, onnx_export: Path):
    exported = OnnxEncoder(variant_file(onnx_export, "fp32"))
    transform = Uint8Preprocess(transforms.Compose(encoder.preprocess.transforms[:-2]))
    for image in [*photos(), *sample_images(6)]:
        assert np.array_equal(exported.worker_preprocess(image), transform(image).numpy())


@pytest.mark.parametrize("size", [(20, 11), (5, 40), (32, 32)])
def test_center_crop_of_a_smaller_image_pads_as_torchvision(size):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    expected = np.asarray(transforms.CenterCrop((24, 24))(image)).transpose(2, 0, 1)
    assert np.array_equal(PilPreprocess([{"op": "center_crop", "size": [24, 24]}])(image), expected)


def test_a_transform_it_cannot_redo_is_refused_in_words():
    normalize = transforms.Normalize([0.5] * 3, [0.5] * 3)
    unknown = transforms.Compose([transforms.Grayscale(3), transforms.ToTensor(), normalize])
    with pytest.raises(ModelLoadError, match="Grayscale"):
        describe_transform(unknown)


def test_onnx_runtime_refuses_bf16_and_gpus_in_words(tmp_path: Path):
    base = {"model_name": TEST_MODEL, "encoder_runtime": "onnx", "onnx_dir": tmp_path}
    with pytest.raises(ModelLoadError, match="PRECISION=bf16 needs ENCODER_RUNTIME=torch"):
        OnnxEncoder.from_settings(Settings(**base, precision="bf16"))
    with pytest.raises(ModelLoadError, match="DEVICE=cuda needs ENCODER_RUNTIME=torch"):
        OnnxEncoder.from_settings(Settings(**base, device="cuda"))


def test_a_damaged_export_is_one_clear_error(tmp_path: Path):
    (tmp_path / "visual.fp32.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="could not load the exported encoder"):
        OnnxEncoder(tmp_path / "visual.fp32.onnx")


SERVICE_WITHOUT_TORCH = """
import json, sys
from service import create_app
client = create_app().test_client()
ready = client.get("/readyz")
heavy = ("torch", "torchvision", "open_clip", "qdrant_client")  # the embedded store needs no client
print(json.dumps({"torch": sorted(m for m in heavy if m in sys.modules),
                  "health": client.get("/healthz").status_code, "ready": ready.status_code,
                  "code": ready.get_json()["error"]["code"]}))
"""


def test_the_api_process_never_imports_torch_and_exports_on_first_use(tmp_path: Path):
    """No export yet: the service has a child process make it (torch lives there), then runs it.
    Nor does it import qdrant-client, which the embedded default never calls."""
    env = {
        **os.environ,
        "ENCODER_RUNTIME": "onnx",
        "MODEL_NAME": TEST_MODEL,
        "MODEL_PRETRAINED": "",
        "ONNX_DIR": str(tmp_path / "onnx"),
        "QDRANT_PATH": str(tmp_path / "q"),
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-c", SERVICE_WITHOUT_TORCH]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"torch": [], "health": 200, "ready": 503, "code": "collection_missing"}
    settings = Settings(model_name=TEST_MODEL, model_pretrained="", onnx_dir=tmp_path / "onnx")
    assert variant_file(export_directory(settings), "int8").is_file()  # both variants written at once


def test_export_command_writes_into_the_checkpoint_and_the_service_uses_it(tmp_path: Path, encoder: ImageEncoder):
    """`python -m finetune.export --checkpoint DIR` -> DIR/onnx, found by MODEL_CHECKPOINT=DIR."""
    from finetune.export import main

    checkpoint = tmp_path / "ckpt"
    _write_checkpoint(checkpoint)
    assert main(["--checkpoint", str(checkpoint)]) == 0
    settings = Settings(model_checkpoint=checkpoint, encoder_runtime="onnx", precision="int8")
    loaded = OnnxEncoder.from_settings(settings)
    assert loaded.identity == f"{ImageEncoder.from_settings(Settings(model_checkpoint=checkpoint)).identity}+int8"
    assert loaded.classifier is not None and loaded.classifier.classes == ["a", "b"]


def test_a_read_only_checkpoint_without_an_export_gets_one_under_onnx_dir(tmp_path: Path, monkeypatch):
    import lookalike.onnx_encoder as onnx_encoder

    checkpoint = tmp_path / "ckpt"
    _write_checkpoint(checkpoint)
    settings = Settings(model_checkpoint=checkpoint, onnx_dir=tmp_path / "exports")
    assert export_directory(settings) == checkpoint / "onnx"  # its own, when it can be written
    monkeypatch.setattr(onnx_encoder.os, "access", lambda path, mode: False)  # as on a read-only mount
    assert export_directory(settings).parent == tmp_path / "exports"
    (checkpoint / "onnx").mkdir()
    assert export_directory(settings) == checkpoint / "onnx"  # one that came with it is used as is


def _write_checkpoint(directory: Path) -> None:
    """A checkpoint folder in the fine-tuning format, for the tiny test model with a 2-class head."""
    import torch

    from lookalike.checkpoint import ClassifierHead, model_config, save_checkpoint
    from lookalike.encoder import create_clip

    source = ModelSource("random-init", TEST_MODEL)
    clip, _, preprocess = create_clip(source)
    normalize = preprocess.transforms[-1]
    preprocess_cfg = {"size": 32, "mode": "RGB", "mean": list(normalize.mean), "std": list(normalize.std)}
    head = ClassifierHead(torch.nn.functional.normalize(torch.randn(2, 32), dim=-1), 10.0, ["a", "b"])
    info = {"version": 1, "base_source": source.to_dict(), "training": {"label": "category"}}
    save_checkpoint(directory, clip, head, model_config(source), preprocess_cfg, info)
