"""The store against embedded Qdrant: filters run inside the query, models never mix, one opener."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.errors import ItemNotFound, ModelMismatch, StoreError, StoreLocked
from lookalike.looks import Look
from lookalike.points import StoredItem, point_id
from lookalike.queries import Boost, Range, Ranking, SearchFilter
from lookalike.settings import Settings
from lookalike.store import VectorStore
from tests.conftest import ENGINES

MODEL = "test-model@0"


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


GREY = unit(*[1.0] * 512)  # one colour for all: these tests are about the embedding


def look(*values: float) -> Look:
    return Look(unit(*values), GREY)


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
    store.upsert(items, [look(1, 0, 0), look(0.9, 0.1, 0), look(0.95, 0, 0.05), look(0, 0, 1)])
    return store


def ids(hits) -> list[str]:
    return [hit.item.id for hit in hits]


def test_point_ids_are_stable_uuid5():
    assert point_id("sku-1") == point_id("sku-1") != point_id("sku-2")


def test_similar_by_id_never_returns_the_item_itself(filled: VectorStore):
    assert ids(filled.similar("a", SearchFilter(), Ranking(10))) == ["c", "b", "d"]


def test_several_looks_each_with_its_filter_answer_in_one_batch(filled: VectorStore):
    looks, filters = [look(1, 0, 0), look(0, 0, 1)], [SearchFilter(categories=["bag"]), SearchFilter()]
    answers = filled.similar_looks(looks, filters, Ranking(2, colour_weight=0.2))
    assert [ids(a) for a in answers] == [
        ids(filled.similar(q, f, Ranking(2, colour_weight=0.2))) for q, f in zip(looks, filters, strict=True)
    ]
    assert [ids(a) for a in answers] == [["c", "d"], ["d", "c"]]


def test_boosts_add_weighted_numeric_metadata_to_the_similarity(filled: VectorStore):
    """score + weight × field (booleans 1/0, no number = 0), on one vector and on the fused score."""
    query = look(1, 0, 0)
    for colour_weight in (0.0, 0.2):
        plain = filled.similar(query, SearchFilter(), Ranking(4, colour_weight=colour_weight))
        assert ids(plain) == ["a", "c", "b", "d"]
        on_sale = Ranking(4, colour_weight=colour_weight, boosts=(Boost("sale", 0.5),))
        boosted = filled.similar(query, SearchFilter(), on_sale)
        assert ids(boosted)[0] == "c" and boosted[0].score == pytest.approx(plain[1].score + 0.5, abs=1e-4)
        by_size = filled.similar(
            query, SearchFilter(), Ranking(4, colour_weight=colour_weight, boosts=(Boost("size", 0.01),))
        )
        assert ids(by_size)[:2] == ["a", "b"]  # size 42 and 40 lift them; "c" and "d" have no size: + 0
        zero = Ranking(4, colour_weight=colour_weight, boosts=(Boost("sale", 0.0),))
        assert [(h.item.id, h.score) for h in filled.similar(query, SearchFilter(), zero)] == [
            (h.item.id, h.score) for h in plain
        ]
    assert ids(filled.similar("a", SearchFilter(), Ranking(3, boosts=(Boost("sale", -1.0),))))[-1] == "c"  # by id too


def test_text_in_a_boosted_field_counts_zero_instead_of_failing_the_query(store: VectorStore):
    store.ensure_collection(3, MODEL)
    store.upsert([item("x", "c", price="n/a"), item("y", "c", price=3)], [look(1, 0, 0), look(0.9, 0.1, 0)])
    hits = store.similar(look(1, 0, 0), SearchFilter(), Ranking(2, boosts=(Boost("price", 1.0),)))
    assert ids(hits) == ["y", "x"]


def test_category_filter_runs_inside_the_query(filled: VectorStore):
    # "d" is the least similar bag; a post-filter over the top 1 would return nothing.
    hits = filled.similar(look(1, 0, 0), SearchFilter(categories=["bag"]), Ranking(2))
    assert ids(hits) == ["c", "d"]


def test_metadata_filters_match_text_numbers_and_booleans(filled: VectorStore):
    query = look(1, 0, 0)
    assert ids(filled.similar(query, SearchFilter(metadata={"colour": ["red"]}), Ranking(10))) == ["a", "c"]
    assert ids(filled.similar(query, SearchFilter(metadata={"size": ["40"]}), Ranking(10))) == ["b"]
    # (on Edge through the adapter's boolean keywords: qdrant-edge-py 0.9.0 sends True as 1)
    assert ids(filled.similar(query, SearchFilter(metadata={"sale": ["true"]}), Ranking(10))) == ["c"]
    assert ids(filled.similar(query, SearchFilter(metadata={"sale": ["false"]}), Ranking(10))) == []
    assert ids(filled.similar(query, SearchFilter(exclude=["a", "c"]), Ranking(10))) == ["b", "d"]


def test_offset_and_threshold(filled: VectorStore):
    query = look(1, 0, 0)
    assert ids(filled.similar(query, SearchFilter(), Ranking(2, offset=1))) == ["c", "b"]
    assert ids(filled.similar(query, SearchFilter(), Ranking(10, score_threshold=0.5))) == ["a", "c", "b"]


def test_unknown_item_is_not_found(filled: VectorStore):
    with pytest.raises(ItemNotFound):
        filled.get("nope")
    with pytest.raises(ItemNotFound):
        filled.similar("nope", SearchFilter(), Ranking(4))


def test_payload_round_trips(filled: VectorStore):
    assert filled.get("a") == item("a", "shoe", colour="red", size=42)
    assert filled.get("c") == item("c", "bag", colour="red", sale=True)  # no engine-private keys leak
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

    from lookalike.store.qdrant import CollectionLayout, QdrantStore

    client = MagicMock()
    client.get_aliases.return_value = models.CollectionsAliasesResponse(aliases=[])
    client.collection_exists.return_value = False
    layout = CollectionLayout(shard_number=6, replication_factor=2, write_consistency_factor=2, quantize_int8=True)
    QdrantStore(client, "products", embedded=False, layout=layout).ensure_collection(
        512, MODEL, ["brand", "price:number"]
    )

    name, kwargs = client.create_collection.call_args.args[0], client.create_collection.call_args.kwargs
    assert name.startswith("products__test-model")
    assert (kwargs["shard_number"], kwargs["replication_factor"], kwargs["write_consistency_factor"]) == (6, 2, 2)
    assert kwargs["quantization_config"].scalar.type == models.ScalarType.INT8
    assert kwargs["vectors_config"]["embedding"].on_disk is True
    assert kwargs["vectors_config"]["colour"].size == 512
    indexed = {call.args[1]: call.args[2] for call in client.create_payload_index.call_args_list}
    assert set(indexed) == {"category", "item_id", "product_id", "metadata.brand", "metadata.price"}
    assert indexed["metadata.brand"] == models.PayloadSchemaType.KEYWORD
    assert indexed["metadata.price"] == models.PayloadSchemaType.FLOAT  # range filters use it
    alias = client.update_collection_aliases.call_args.kwargs["change_aliases_operations"][-1].create_alias
    assert (alias.alias_name, alias.collection_name) == ("products", name)


def test_filterable_fields_added_after_the_collection_was_built_get_their_indexes(filled: VectorStore, engine):
    added = filled.ensure_indexes(["colour", "brand", "size:number"])  # "colour" was indexed at creation
    if engine == "qdrant-client":  # local mode scans: it keeps no indexes
        assert added == []
    else:
        assert added == ["metadata.brand", "metadata.size"]
        assert filled.ensure_indexes(["colour", "brand", "size:number"]) == []  # once
    assert ids(filled.similar("b", SearchFilter(ranges={"size": Range(gte=41)}), Ranking(limit=3))) == ["a"]
    assert ids(filled.similar("b", SearchFilter(metadata={"colour": ["red"]}), Ranking(limit=3))) == ["a", "c"]


def test_a_server_collection_gets_the_indexes_it_lacks_of_the_kind_asked():
    from unittest.mock import MagicMock

    from qdrant_client import models

    from lookalike.store.qdrant import QdrantStore

    client = MagicMock()
    client.get_aliases.return_value = models.CollectionsAliasesResponse(aliases=[])
    keyword, number = (models.PayloadIndexInfo(data_type=t, points=0) for t in ("keyword", "float"))
    schema = {"category": keyword, "item_id": keyword, "product_id": keyword, "metadata.size": keyword}
    client.get_collection.return_value.payload_schema = schema
    added = QdrantStore(client, "products", embedded=False).ensure_indexes(["brand", "size:number"])
    assert added == ["metadata.brand", "metadata.size"]  # size was a keyword index: now a numeric one
    indexed = {call.args[1]: call.args[2] for call in client.create_payload_index.call_args_list}
    assert indexed == {
        "metadata.brand": models.PayloadSchemaType.KEYWORD,
        "metadata.size": models.PayloadSchemaType.FLOAT,
    }
    assert number.data_type == models.PayloadSchemaType.FLOAT


@pytest.fixture
def random_catalogue(store: VectorStore) -> tuple[VectorStore, np.ndarray, np.ndarray, list[str]]:
    """300 items with random embeddings and colours, in 3 categories."""
    rng = np.random.default_rng(7)
    embeddings = rng.normal(size=(300, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    colours = rng.random(size=(300, 512)).astype(np.float32) ** 4  # skewed, like real histograms
    colours /= np.linalg.norm(colours, axis=1, keepdims=True)
    categories = [("bag", "shoe", "hat")[i % 3] for i in range(300)]
    store.ensure_collection(16, MODEL)
    items = [item(f"i{i}", categories[i]) for i in range(300)]
    store.upsert(items, [Look(e, c) for e, c in zip(embeddings, colours, strict=True)])
    return store, embeddings, colours, categories


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.7, 1.0])
def test_fused_ranking_equals_the_exhaustive_weighted_sum(random_catalogue, weight: float):
    store, embeddings, colours, categories = random_catalogue
    query = Look(embeddings[0], colours[0])
    exact = (1 - weight) * (embeddings @ query.embedding) + weight * (colours @ query.colour)
    hits = store.similar(query, SearchFilter(), Ranking(10, colour_weight=weight))
    assert ids(hits) == [f"i{i}" for i in np.argsort(-exact)[:10]]
    np.testing.assert_allclose([h.score for h in hits], np.sort(exact)[::-1][:10], atol=1e-4)

    # filtered, by id (the item itself left out), paged: still the exhaustive answer
    bags = [i for i in np.argsort(-exact) if categories[i] == "bag" and i != 0]
    hits = store.similar("i0", SearchFilter(categories=["bag"]), Ranking(5, offset=3, colour_weight=weight))
    assert ids(hits) == [f"i{i}" for i in bags[3:8]]


def test_colour_weight_moves_same_coloured_items_up(store: VectorStore):
    store.ensure_collection(3, MODEL)
    red, blue = unit(*[1.0] * 8, *[0.0] * 504), unit(*[0.0] * 504, *[1.0] * 8)
    shapes = [unit(1, 0, 0), unit(0.9, 0.1, 0), unit(0.6, 0.4, 0), unit(0.2, 0.8, 0)]
    paints = [blue, blue, red, red]  # the closest shapes are blue
    store.upsert([item(f"p{i}", "x") for i in range(4)], [Look(s, c) for s, c in zip(shapes, paints, strict=True)])
    query = Look(unit(1, 0, 0), red)

    def order(weight: float) -> list[str]:
        return ids(store.similar(query, SearchFilter(), Ranking(4, colour_weight=weight)))

    assert order(0.0) == ["p0", "p1", "p2", "p3"]
    assert order(0.5)[0] == "p2"  # the nearest red shape overtakes both blue ones
    assert order(1.0)[:2] in (["p2", "p3"], ["p3", "p2"])


def test_one_hit_per_product(store: VectorStore):
    store.ensure_collection(3, MODEL)
    photos = [
        (StoredItem("sku1-front", "shoe", "a.jpg", "0", MODEL, product_id="sku1"), unit(1, 0, 0)),
        (StoredItem("sku1-side", "shoe", "b.jpg", "0", MODEL, product_id="sku1"), unit(0.99, 0.01, 0)),
        (StoredItem("sku2-front", "shoe", "c.jpg", "0", MODEL, product_id="sku2"), unit(0.9, 0.1, 0)),
        (StoredItem("sku2-back", "shoe", "d.jpg", "0", MODEL, product_id="sku2"), unit(0.95, 0.05, 0)),
        (StoredItem("loose", "shoe", "e.jpg", "0", MODEL), unit(0.5, 0.5, 0)),  # a product of its own
    ]
    store.upsert([p for p, _ in photos], [Look(v, GREY) for _, v in photos])
    query = look(1, 0, 0)
    flat = store.similar(query, SearchFilter(), Ranking(5))
    assert ids(flat) == ["sku1-front", "sku1-side", "sku2-back", "sku2-front", "loose"]
    grouped = store.similar(query, SearchFilter(), Ranking(5, one_per_product=True))
    assert ids(grouped) == ["sku1-front", "sku2-back", "loose"]  # each product once, by its best photo
    assert [h.item.product for h in grouped] == ["sku1", "sku2", "loose"]
    paged = store.similar(query, SearchFilter(), Ranking(1, offset=1, one_per_product=True, colour_weight=0.5))
    assert ids(paged) == ["sku2-back"]
    by_id = store.similar("sku1-front", SearchFilter(), Ranking(5, one_per_product=True))
    assert ids(by_id) == ["sku1-side", "sku2-back", "loose"]  # the query photo itself is left out


def test_a_collection_without_colour_vectors_asks_for_a_reindex(store: VectorStore):
    with store._call():  # as collections were made before colour vectors
        store._create("old", {"embedding": 3}, {"model": MODEL, "dim": 3}, {})
    with pytest.raises(ModelMismatch, match="--reindex"):
        store.bound_to("old").check_model(3, MODEL)


def test_boolean_metadata_filters_match_true_false_and_lists(store: VectorStore):
    store.ensure_collection(3, MODEL, ["sale"])
    flags = {"yes": True, "no": False, "both": [True, False], "text": "true", "absent": None}
    items = [item(name, "x", **({} if value is None else {"sale": value})) for name, value in flags.items()]
    store.upsert(items, [look(1, 0, 0)] * len(items))
    query = look(1, 0, 0)
    assert sorted(ids(store.similar(query, SearchFilter(metadata={"sale": ["true"]}), Ranking(10)))) == [
        "both",
        "text",
        "yes",
    ]
    assert sorted(ids(store.similar(query, SearchFilter(metadata={"sale": ["false"]}), Ranking(10)))) == ["both", "no"]
    store.replace_payload(item("no", "x", sale=True))  # payload rewrites keep booleans searchable
    assert "no" in ids(store.similar(query, SearchFilter(metadata={"sale": ["true"]}), Ranking(10)))
    assert store.get("no").metadata == {"sale": True}


def test_a_folder_of_the_other_engine_is_refused_in_words(tmp_path):
    from lookalike.errors import StoreError
    from lookalike.store import open_embedded

    open_embedded(tmp_path / "q", "qdrant-client").close()
    with pytest.raises(StoreError, match="EMBEDDED_ENGINE=qdrant-client"):
        open_embedded(tmp_path / "q", "edge")
    open_embedded(tmp_path / "e", "edge").close()
    with pytest.raises(StoreError, match="EMBEDDED_ENGINE=edge"):
        open_embedded(tmp_path / "e", "qdrant-client")


# -- the rest of the contract: recommend, batch, look-alikes, browsing, listing, lifecycle ----------


def test_recommend_pushes_negative_look_alikes_down_and_leaves_examples_out(filled: VectorStore):
    plain = ids(filled.similar("a", SearchFilter(), Ranking(3)))
    assert plain == ["c", "b", "d"]
    pushed = ids(filled.recommend(["a"], ["c"], SearchFilter(), Ranking(3)))
    assert "a" not in pushed and "c" not in pushed and pushed[0] == "b"
    by_look = ids(
        filled.recommend([look(0, 0, 1)], [], SearchFilter(categories=["bag"]), Ranking(2, colour_weight=0.5))
    )
    assert by_look == ["d", "c"]
    with pytest.raises(ItemNotFound, match="nope"):
        filled.recommend(["a"], ["nope"], SearchFilter(), Ranking(3))


def test_batch_answers_in_order_with_an_error_in_place_of_an_unknown_id(filled: VectorStore):
    from lookalike.queries import SimilarQuery

    answers = filled.similar_many(
        [
            SimilarQuery("a", SearchFilter(), Ranking(2)),
            SimilarQuery("nope", SearchFilter(), Ranking(2)),
            SimilarQuery("c", SearchFilter(categories=["shoe"]), Ranking(1, one_per_product=True)),
            SimilarQuery("b", SearchFilter(), Ranking(1, offset=1, colour_weight=0.4)),
        ]
    )
    assert ids(answers[0]) == ids(filled.similar("a", SearchFilter(), Ranking(2)))
    assert isinstance(answers[1], ItemNotFound)
    assert ids(answers[2]) == ids(filled.similar("c", SearchFilter(categories=["shoe"]), Ranking(1))) == ["a"]
    assert ids(answers[3]) == ids(filled.similar("b", SearchFilter(), Ranking(1, offset=1, colour_weight=0.4)))


def test_look_alikes_need_both_vectors_close_and_never_name_the_item_itself(filled: VectorStore):
    from lookalike.queries import NearDuplicateRule

    rule = NearDuplicateRule(min_similarity=0.999, min_colour_similarity=0.99)  # only "a" is that close
    hits = filled.look_alikes(
        [look(1, 0, 0), look(1, 0, 0), Look(unit(1, 0, 0), unit(*[0.0] * 511, 1.0))], ["new", "a", "x"], rule
    )
    assert hits[0] is not None and hits[0].item.id == "a"
    assert hits[1] is None  # "a" itself is left out
    assert hits[2] is None  # same shape, another colour


def test_browsing_counts_samples_and_lists_by_source(filled: VectorStore):
    assert sorted(filled.categories()) == [("bag", 2), ("shoe", 2)]
    sample = filled.random_items(SearchFilter(categories=["shoe"]), 10)
    assert sorted(i.id for i in sample) == ["a", "b"]
    upload = StoredItem("u", "shoe", "u.jpg", "1" * 64, MODEL, image_source="upload")
    filled.upsert([upload], [look(1, 1, 0)])
    assert list(filled.item_ids(image_source="upload")) == ["u"]
    assert [i.id for i in filled.stored_items("upload")] == ["u"]
    assert filled.count() == 5


def test_identical_photos_can_be_hidden_by_their_bytes(filled: VectorStore):
    same = StoredItem("copy", "shoe", "copy.jpg", "f" * 64, MODEL)
    filled.upsert([same], [look(1, 0, 0)])
    hidden = filled.similar(look(1, 0, 0), SearchFilter(exclude_sha256=["f" * 64]), Ranking(10))
    assert "copy" not in ids(hidden) and "a" in ids(hidden)


def test_an_item_deleted_while_a_query_names_it_is_not_found(filled: VectorStore, monkeypatch):
    real_query = type(filled)._query

    def delete_first(self, queries):
        self._delete([point_id("a")])
        return real_query(self, queries)

    monkeypatch.setattr(type(filled), "_query", delete_first)
    with pytest.raises(ItemNotFound, match="'a'"):
        filled.similar("a", SearchFilter(), Ranking(2, colour_weight=0.5))


def test_a_missing_collection_is_unavailable_in_words(store: VectorStore):
    from lookalike.errors import StoreUnavailable

    for call in (store.count, lambda: store.get("a"), lambda: store.similar(look(1, 0, 0), SearchFilter(), Ranking(2))):
        with pytest.raises(StoreUnavailable, match="python -m ingest"):
            call()


def test_a_pinned_store_stays_on_its_collection_when_the_alias_moves(filled: VectorStore):
    pinned = filled.pinned()
    assert pinned.collection == filled.resolve() != filled.collection
    other = filled.for_model("other-model@1")
    other.create_physical(3, "other-model@1")
    assert filled.switch_alias(other.collection) == pinned.collection
    assert filled.count() == 0 and pinned.count() == 4
    filled.drop(pinned.collection)
    assert not pinned.collection_exists()


def test_unsound_points_and_labelled_vectors(filled: VectorStore):
    from lookalike.store import Record

    assert list(filled.unsound_points()) == []
    embeddings, colours, labels = filled.labelled_vectors(3)
    assert embeddings.shape == (3, 3) and colours.shape == (3, 512) and len(labels) == 3
    with filled._call():
        filled._upsert([Record(point_id("junk"), {"x": 1}, {"embedding": unit(1, 0, 0), "colour": GREY})])
    assert [(item_id, reason) for _, item_id, reason in filled.unsound_points()] == [(None, "payload unreadable")]


def test_range_filters_run_inside_the_query_on_numbers_only(store: VectorStore):
    from lookalike.queries import Range

    store.ensure_collection(3, MODEL, ["price:number"])
    prices = {"cheap": 9.5, "mid": 20, "dear": 120.0, "text": "20", "none": None}
    items = [item(name, "x", **({} if price is None else {"price": price})) for name, price in prices.items()]
    store.upsert(items, [look(1, 0, 0)] * len(items))

    def within(**bounds) -> list[str]:
        return sorted(ids(store.similar(look(1, 0, 0), SearchFilter(ranges={"price": Range(**bounds)}), Ranking(10))))

    assert within(gte=10, lte=100) == ["mid"]  # a number stored as text is not in any range
    assert within(gt=20) == ["dear"]
    assert within(lt=20) == ["cheap"]
    assert within(gte=9.5, lt=121) == ["cheap", "dear", "mid"]
    both = SearchFilter(categories=["x"], metadata={"colour": ["red"]}, ranges={"price": Range(gte=0)})
    assert store.similar(look(1, 0, 0), both, Ranking(10)) == []  # combined with the other filters


def test_a_colour_target_shifts_the_query_colour_to_that_hue_on_both_engines(store: VectorStore):
    from lookalike.colour import colour_of

    store.ensure_collection(3, MODEL)
    paints = {"red": colour_of("#dc1e1e"), "blue": colour_of("#283cdc"), "green": colour_of("#1ec83c")}
    store.upsert([item(name, "x") for name in paints], [Look(unit(1, 0, 0), c) for c in paints.values()])
    by_id = store.similar("blue", SearchFilter(), Ranking(2, colour_weight=1.0, colour_target="red"))
    by_look = store.similar(
        Look(unit(1, 0, 0), paints["blue"]), SearchFilter(), Ranking(1, colour_weight=1.0, colour_target="red")
    )
    assert ids(by_id)[0] == "red" and ids(by_look) == ["red"]
    assert ids(store.recommend(["blue"], [], SearchFilter(), Ranking(1, colour_weight=1.0, colour_target="green"))) == [
        "green"
    ]


def test_diversity_keeps_one_products_near_identical_variants_from_filling_the_page(store: VectorStore):
    store.ensure_collection(3, MODEL)
    variants = [StoredItem(f"a{n}", "x", "a.jpg", "0", MODEL, product_id="a") for n in range(4)]
    others = [item(f"o{n}", "x") for n in range(3)]
    looks = [look(1, 0.01 * n, 0) for n in range(4)] + [look(0.8, 0.6 * (-1) ** n, 0.3 * n) for n in range(3)]
    store.upsert(variants + others, looks)

    def products(diversity: float, limit: int = 4, **ranking) -> list[str]:
        hits = store.similar(look(1, 0, 0), SearchFilter(), Ranking(limit, diversity=diversity, **ranking))
        return [hit.item.product for hit in hits]

    assert products(0.0) == ["a"] * 4
    assert products(0.6).count("a") <= 2 and products(0.6)[0] == "a"  # the best hit still leads
    paged, whole = products(0.6, colour_weight=0.5, offset=1), products(0.6, limit=5, colour_weight=0.5)
    assert paged == whole[1:]  # pages of one diverse ranking
    assert products(0.6, one_per_product=True).count("a") == 1


@pytest.mark.parametrize("engine", ["qdrant-client"])  # a server's path; Edge's folder has one process
def test_a_collection_another_process_created_meanwhile_is_used(store: VectorStore, monkeypatch):
    """Parallel ``--shard`` runs, or two API workers' first PUTs, on a fresh Qdrant server: each
    sees no collection, one creates it, the other's creation fails. That one must go on."""
    create = type(store)._create

    def created_first_by_another_process(self, collection, *args):
        create(self, collection, *args)  # the other process wins the race...
        create(self, collection, *args)  # ...so this creation fails: "already exists"

    monkeypatch.setattr(type(store), "_create", created_first_by_another_process)
    store.ensure_collection(3, MODEL)
    store.upsert([item("a", "shoe")], [look(1, 0, 0)])
    assert store.count() == 1
    with pytest.raises(ModelMismatch):  # a collection of another model is still refused
        store.bound_to(store.physical_name()).create_physical(5, "other-model@1")


def test_an_alias_another_process_set_meanwhile_is_used(store: VectorStore, monkeypatch):
    set_alias = type(store)._set_alias

    def set_first_by_another_process(self, alias, collection):
        set_alias(self, alias, collection)  # the other process's switch lands first...
        raise StoreError("alias already exists")  # ...and this one's fails

    monkeypatch.setattr(type(store), "_set_alias", set_first_by_another_process)
    store.ensure_collection(3, MODEL)
    assert store.resolve() == store.for_model(MODEL).collection
