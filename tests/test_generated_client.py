"""A shop's developer generates a client from /openapi.json and uses it for every operation.

openapi-python-client is run on the live document with no warning; its one setting is telling it
to read the image endpoint's image/* answers as files (its documented content_type_overrides).
"""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, draw_item, image_bytes

GENERATOR = Path(sys.executable).with_name("openapi-python-client")


@pytest.fixture
def generated(live_url, tmp_path, monkeypatch):
    """The client package generated from the running service's document, importable."""
    document = httpx.get(f"{live_url}/openapi.json").json()
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    images = sorted(document["paths"]["/v1/items/{item_id}/image"]["get"]["responses"]["200"]["content"])
    config = {"content_type_overrides": {media_type: "application/octet-stream" for media_type in images}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    command = [str(GENERATOR), "generate", "--path", "openapi.json", "--meta", "none", "--config", "config.json"]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}  # its formatter (ruff) is a dev dependency
    result = subprocess.run(
        [*command, "--output-path", "shop_client"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module("shop_client")


def operation(name: str):
    return importlib.import_module(f"shop_client.api.default.{name}")


def test_every_operation_through_a_generated_client(generated, live_url):
    from shop_client.models import (
        BatchQuery,
        BatchRequest,
        ItemsPutItemBody,
        SearchRecommendBody,
        SearchSearchByUploadBody,
    )
    from shop_client.types import File

    client = generated.Client(base_url=live_url, raise_on_unexpected_status=True)
    writer = generated.AuthenticatedClient(base_url=live_url, token=API_KEY, raise_on_unexpected_status=True)

    def photo(category: str, index: int) -> File:
        return File(payload=io.BytesIO(image_bytes(draw_item(category, index))), file_name="photo.jpg")

    similar = operation("items_similar_items").sync("red_round-1", client=client, k=20, filter_colour=["red"])
    assert sorted(r.id for r in similar.results) == ["red_round-2", "red_round-3"]  # the filter reached the query
    found = operation("search_search_by_upload").sync(
        client=client, body=SearchSearchByUploadBody(image=photo("blue_bar", 0))
    )
    assert found.results[0].category == "blue_bar"
    batch = operation("batch_similar_batch").sync(
        client=client, body=BatchRequest(queries=[BatchQuery(id="green_square-0", k=2)])
    )
    assert [entry.id for entry in batch.results] == ["green_square-0"]
    recommend = operation("search_recommend").sync(
        client=client, body=SearchRecommendBody(positive_image=[photo("red_round", 2)])
    )
    assert recommend.results

    put = operation("items_put_item").sync(
        "new-1", client=writer, body=ItemsPutItemBody(image=photo("blue_bar", 3), category="blue_bar")
    )
    assert put.id == "new-1"
    stored = operation("items_get_item").sync("new-1", client=client)
    assert stored.product_id == "new-1" and stored.metadata.to_dict() == {}  # no "None" stored for what was left out
    image = operation("items_image").sync("new-1", client=client)
    assert image.payload.read()[:2] == b"\xff\xd8"  # the JPEG it was given
    operation("items_delete_item").sync("new-1", client=writer)
    assert operation("items_get_item").sync_detailed("new-1", client=client).status_code == 404
    assert operation("browse_categories").sync(client=client).categories
    assert operation("health_readyz").sync(client=client).status == "ready"
