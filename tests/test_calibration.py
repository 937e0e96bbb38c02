"""Per-catalogue calibration of the colour weight, and the quality line (issue 18)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ingest.__main__ import main as ingest_main
from ingest.quality import calibrate_collection, quality_advice
from lookalike.calibration import Calibration, calibrate
from lookalike.looks import Look
from lookalike.points import StoredItem
from lookalike.queries import Ranking, SearchFilter
from service import create_app
from tests.conftest import ENGINES

CATEGORIES = 6
PER_CATEGORY = 20


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def synthetic(signal_in: str, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Items whose category shows only in the embedding ("shape") or only in the colour vector."""
    rng = np.random.default_rng(seed)
    labels = [f"c{n}" for n in range(CATEGORIES) for _ in range(PER_CATEGORY)]
    centres = {"shape": rng.normal(size=(CATEGORIES, dim)), "colour": rng.random((CATEGORIES, 512))}
    index = np.repeat(np.arange(CATEGORIES), PER_CATEGORY)
    noise_shape, noise_colour = rng.normal(size=(len(labels), dim)), rng.random((len(labels), 512))
    shape = centres["shape"][index] + 0.5 * noise_shape if signal_in == "shape" else noise_shape
    colour = centres["colour"][index] + 0.3 * noise_colour if signal_in == "colour" else noise_colour
    return unit(shape), unit(colour), labels


def test_colour_heavy_weight_where_colour_is_the_only_signal():
    calibration = calibrate(*synthetic("colour"))
    assert calibration.colour_weight >= 0.7
    assert calibration.colour_p_at_4 > 0.9 > 0.4 > calibration.embedding_p_at_4


def test_embedding_heavy_weight_where_shape_is_the_only_signal():
    calibration = calibrate(*synthetic("shape"))
    assert calibration.colour_weight <= 0.3
    assert calibration.embedding_p_at_4 > 0.9 > 0.4 > calibration.colour_p_at_4


def test_the_chosen_weight_is_at_least_as_good_as_either_vector_alone():
    for signal in ("shape", "colour"):
        calibration = calibrate(*synthetic(signal, seed=3))
        assert calibration.calibrated_p_at_4 >= max(calibration.embedding_p_at_4, calibration.colour_p_at_4)


def test_no_calibration_without_categories_to_measure():
    embeddings, colours, _ = synthetic("shape")
    assert calibrate(embeddings, colours, ["one"] * len(embeddings)) is None
    assert calibrate(embeddings[:3], colours[:3], ["a", "b", "c"]) is None  # no category has two items


def fill(store, signal: str, encoder) -> None:
    """Synthetic vectors stored as if the test encoder had made them (its identity and dimension)."""
    embeddings, colours, labels = synthetic(signal, dim=encoder.dim)
    store.ensure_collection(encoder.dim, encoder.identity)
    items = [StoredItem(f"i{n}", label, "x.jpg", f"s{n}", encoder.identity) for n, label in enumerate(labels)]
    store.upsert(items, [Look(e, c) for e, c in zip(embeddings, colours, strict=True)])


def test_calibration_is_stored_and_searches_without_a_weight_use_it(settings, store, encoder):
    fill(store, "colour", encoder)
    calibration = calibrate_collection(store)
    assert Calibration.from_metadata(store.metadata()) == calibration

    app = create_app(settings, encoder=encoder, store=store)
    ready = app.test_client().get("/readyz").get_json()
    assert ready["colour_weight"] == calibration.colour_weight
    assert ready["calibration"]["p_at_4"] == calibration.p_at_4
    plain = app.test_client().get("/v1/items/i0/similar?k=8").get_json()["results"]
    weighted = store.similar("i0", SearchFilter(), Ranking(8, colour_weight=calibration.colour_weight))
    assert [r["id"] for r in plain] == [hit.item.id for hit in weighted]
    app.extensions["lookalike"].inference.close()


def test_an_explicit_colour_weight_setting_overrides_the_calibration(settings, store, encoder):
    fill(store, "colour", encoder)
    calibrate_collection(store)
    app = create_app(settings.with_overrides(colour_weight=0.2), encoder=encoder, store=store)
    resources = app.extensions["lookalike"]
    resources.check_collection(force=True)
    assert resources.calibration is not None and resources.colour_weight == 0.2
    resources.inference.close()


def test_ingest_prints_the_calibration_and_calibrate_reruns_it(cli_env, capsys):
    assert ingest_main(["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "calibration: colour_weight=" in out and "leave-one-out" in out
    assert ingest_main(["--calibrate"]) == 0
    assert capsys.readouterr().out.startswith("calibration: colour_weight=")


def test_the_quality_line_says_when_colour_beats_the_encoder_and_what_to_run(tmp_path):
    weak = Calibration(1.0, {"0": 0.37, "0.5": 0.73, "1": 0.86}, {"0": 0.2, "0.5": 0.5, "1": 0.7}, 300, 1700, 0.2)
    line = quality_advice(weak, "shop/manifest.csv", None, on_gpu=False)
    assert "no better than colour alone (P@4 0.370 vs 0.860)" in line
    assert "python -m finetune shop/manifest.csv" in line and "--reindex" in line and "half an hour" in line
    spaced = quality_advice(weak, "my shop/items.csv", None, on_gpu=False)  # quoted: a command to paste
    assert (
        "python -m finetune 'my shop/items.csv' && " in spaced and "python -m ingest 'my shop/items.csv' --re" in spaced
    )

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "training.json").write_text(json.dumps({"metrics": {"overall": {"P@4": 0.80}}}))
    middling = Calibration(0.2, {"0": 0.40, "0.2": 0.42, "1": 0.30}, {"0": 0.2, "0.2": 0.2, "1": 0.1}, 300, 5000, 0.3)
    assert "against 0.800 on the catalogue it was trained on" in quality_advice(middling, "c", checkpoint, True)
    good = Calibration(0.2, {"0": 0.79, "0.2": 0.80, "1": 0.27}, {"0": 0.7, "0.2": 0.7, "1": 0.1}, 300, 2607, 0.3)
    assert quality_advice(good, "c", checkpoint, True) is None
