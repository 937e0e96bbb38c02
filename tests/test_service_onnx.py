"""The whole HTTP contract again, on the ONNX Runtime encoder (ENCODER_RUNTIME=onnx): every test
of test_service.py is collected here too, with the `encoder` fixture replaced by the export."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.onnx_encoder import OnnxEncoder, variant_file
from tests.test_service import *  # noqa: F403 -- the contract's tests, collected again in this module
from tests.test_service import (
    assert_error,
    test_metrics_in_multiprocess_mode_come_from_the_shared_files,
    test_text_searches_by_words_alone_or_mixed_with_the_photo,
)

# Runs its own torch encoder in a fresh interpreter: nothing of it depends on the runtime.
del test_metrics_in_multiprocess_mode_come_from_the_shared_files
# The export holds the image tower only: text search is a 400 here (below).
del test_text_searches_by_words_alone_or_mixed_with_the_photo


@pytest.fixture(scope="session")
def encoder(onnx_export: Path) -> OnnxEncoder:
    return OnnxEncoder(variant_file(onnx_export, "fp32"))


def test_text_search_on_the_onnx_runtime_is_a_400_naming_the_torch_runtime(client, ingested):
    response = client.post("/v1/search", data={"text": "red"})
    assert_error(response, 400, "invalid_request")
    assert "ENCODER_RUNTIME=torch" in response.get_json()["error"]["message"]


def test_these_tests_run_on_the_exported_model(app, client, ingested, encoder):
    assert isinstance(app.extensions["lookalike"].encoder, OnnxEncoder)
    ready = client.get("/readyz").get_json()
    assert ready["precision"] == "fp32" and ready["device"] == "cpu"
