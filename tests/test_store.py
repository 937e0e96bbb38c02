"""The store against embedded Qdrant: filters run inside the query, models never mix, one opener."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.errors import ItemNotFound, ModelMismatch, StoreLocked
from lookalike.settings import Settings
from lookalike.store import SearchFilter, StoredItem, VectorStore, point_id
from tests.conftest import ENGINES

MODEL = "test-model@0"


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def item(item_id: str, category: str, **metadata) -> StoredItem:
    return StoredItem(item_id, category, f"{category}/{item_id}.jpg", "0" * 64, MODEL, metadata=metadata)


@pytest.fixture
def filled(store: VectorStore) -> VectorStore:
    store.ensure_collection(3, MODEL, ["colour"])
    items = [
        item("a", "shoe", colour="red", size=42),
        item("b", "shoe", colour="blue", size=40),
        item("c", "bag", colour="red", sale=True),
        item("d", "bag", colour="green"),
    ]
    embeddings = np.stack([unit(1, 0, 0), unit(0.9, 0.1, 0), unit(0.95, 0, 0.05), unit(0, 0, 1)])
    store.upsert(items, embeddings)
    return store


def ids(hits) -> list[str]:
    return [hit.item.id for hit in hits]


def test_point_ids_are_stable_uuid5():
    assert point_id("sku-1") == point_id("sku-1") != point_id("sku-2")


def test_similar_by_id_never_returns_the_item_itself(filled: VectorStore):
    assert ids(filled.similar("a", SearchFilter(), limit=10)) == ["c", "b", "d"]


def test_category_filter_runs_inside_the_query(filled: VectorStore):
    # "d" is the least similar bag; a post-filter over the top 1 would return nothing.
    hits = filled.similar(unit(1, 0, 0), SearchFilter(categories=["bag"]), limit=2)
    assert ids(hits) == ["c", "d"]


def test_metadata_filters_match_text_numbers_and_booleans(filled: VectorStore):
    query = unit(1, 0, 0)
    assert ids(filled.similar(query, SearchFilter(metadata={"colour": ["red"]}), 10)) == ["a", "c"]
    assert ids(filled.similar(query, SearchFilter(metadata={"size": ["40"]}), 10)) == ["b"]
    # qdrant-edge-py 0.9.0 turns Python True into the integer 1, so booleans never match there
    # (documented limitation of the opt-in Edge engine); this line notices when that is fixed.
    expected = [] if filled.client.__class__.__name__ == "EdgeClient" else ["c"]
    assert ids(filled.similar(query, SearchFilter(metadata={"sale": ["true"]}), 10)) == expected
    assert ids(filled.similar(query, SearchFilter(exclude=["a", "c"]), 10)) == ["b", "d"]


def test_offset_and_threshold(filled: VectorStore):
    query = unit(1, 0, 0)
    assert ids(filled.similar(query, SearchFilter(), limit=2, offset=1)) == ["c", "b"]
    assert ids(filled.similar(query, SearchFilter(), limit=10, score_threshold=0.5)) == ["a", "c", "b"]


def test_unknown_item_is_not_found(filled: VectorStore):
    with pytest.raises(ItemNotFound):
        filled.get("nope")
    with pytest.raises(ItemNotFound):
        filled.similar("nope", SearchFilter(), 4)


def test_payload_round_trips(filled: VectorStore):
    assert filled.get("a") == item("a", "shoe", colour="red", size=42)
    assert sorted(filled.item_ids()) == ["a", "b", "c", "d"]


def test_another_model_is_refused(filled: VectorStore):
    with pytest.raises(ModelMismatch, match="test-model@0"):
        filled.ensure_collection(3, "other-model@1")
    with pytest.raises(ModelMismatch):
        filled.ensure_collection(5, MODEL)


def test_second_opener_of_an_embedded_store_fails_fast(store: VectorStore, settings: Settings):
    with pytest.raises(StoreLocked, match="QDRANT_URL"):
        VectorStore.from_settings(settings)


def test_server_collections_get_the_configured_layout():
    from unittest.mock import MagicMock

    from qdrant_client import models

    from lookalike.store import CollectionLayout

    client = MagicMock()
    client.get_aliases.return_value = models.CollectionsAliasesResponse(aliases=[])
    client.collection_exists.return_value = False
    layout = CollectionLayout(shard_number=6, replication_factor=2, write_consistency_factor=2, quantize_int8=True)
    VectorStore(client, "products", embedded=False, layout=layout).ensure_collection(512, MODEL, ["brand"])

    name, kwargs = client.create_collection.call_args.args[0], client.create_collection.call_args.kwargs
    assert name.startswith("products__test-model")
    assert (kwargs["shard_number"], kwargs["replication_factor"], kwargs["write_consistency_factor"]) == (6, 2, 2)
    assert kwargs["quantization_config"].scalar.type == models.ScalarType.INT8
    assert kwargs["vectors_config"]["embedding"].on_disk is True
    indexed = {call.args[1] for call in client.create_payload_index.call_args_list}
    assert indexed == {"category", "item_id", "metadata.brand"}
    alias = client.update_collection_aliases.call_args.kwargs["change_aliases_operations"][-1].create_alias
    assert (alias.alias_name, alias.collection_name) == ("products", name)
