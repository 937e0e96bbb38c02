"""The HTTP contract: every endpoint, its errors as JSON, filters inside the search."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lookalike.settings import Settings
from service import create_app
from tests.conftest import draw_item, image_bytes


def upload(image: Image.Image | bytes, name: str = "photo.jpg") -> dict:
    data = image if isinstance(image, bytes) else image_bytes(image)
    return {"image": (io.BytesIO(data), name)}


def result_ids(response) -> list[str]:
    return [result["id"] for result in response.get_json()["results"]]


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == code and body["error"]["message"]


def test_similar_by_id_returns_k_of_the_category_without_the_item(client, ingested):
    response = client.get("/v1/items/red_round-0/similar?k=3&category=red_round")
    assert response.status_code == 200
    body = response.get_json()
    assert result_ids(response) and "red_round-0" not in result_ids(response)
    assert len(body["results"]) == 3
    assert {r["category"] for r in body["results"]} == {"red_round"}
    assert body["took_ms"] >= 0
    first = body["results"][0]
    assert set(first) == {"id", "score", "category", "product_id", "image_url", "metadata"}
    assert first["product_id"] == first["id"]  # no product_id given: a product of its own
    assert first["image_url"] == f"/v1/items/{first['id']}/image"


def test_default_k_is_4(client, ingested):
    assert len(result_ids(client.get("/v1/items/red_round-0/similar"))) == 4


def test_repeated_category_means_any_of(client, ingested):
    response = client.get("/v1/items/red_round-0/similar?k=20&category=blue_bar&category=green_square")
    assert {r["category"] for r in response.get_json()["results"]} == {"blue_bar", "green_square"}
    assert len(result_ids(response)) == 8


def test_metadata_filter_and_exclude(client, ingested):
    response = client.get("/v1/items/red_round-1/similar?k=20&filter.colour=red&exclude=red_round-2")
    assert sorted(result_ids(response)) == ["red_round-3"]
    response = client.get("/v1/items/blue_bar-0/similar?k=20&filter.colour=crimson&filter.colour=green")
    assert sorted(result_ids(response)) == [
        "green_square-0",
        "green_square-1",
        "green_square-2",
        "green_square-3",
        "red_round-0",
    ]


def test_range_filters_by_query_string_and_in_a_batch(client, ingested, store, encoder):
    from lookalike.looks import looks_of
    from lookalike.points import StoredItem

    prices = (5, 15, 25)
    priced = [StoredItem(f"p{n}", "priced", "x.jpg", "0" * 64, encoder.identity, metadata={"price": n}) for n in prices]
    store.upsert(priced, looks_of(encoder, [draw_item("red_round", 0)] * 3))
    in_range = client.get("/v1/items/red_round-0/similar?k=20&filter.price.gte=10&filter.price.lt=25")
    assert result_ids(in_range) == ["p15"]
    batch = client.post("/v1/similar:batch", json={"queries": [{"id": "red_round-0", "ranges": {"price": {"gt": 10}}}]})
    assert sorted(r["id"] for r in batch.get_json()["results"][0]["results"]) == ["p15", "p25"]
    diverse = client.post("/v1/similar:batch", json={"queries": [{"id": "red_round-0", "k": 6, "diversity": 0.9}]})
    assert len(diverse.get_json()["results"][0]["results"]) == 6
    message = client.get("/v1/items/red_round-0/similar?filter.price.gte=cheap").get_json()["error"]["message"]
    assert "filter.price.gte" in message


def test_boosts_lift_items_by_their_numeric_metadata_and_zero_is_no_boost(client, ingested, store, encoder):
    from lookalike.looks import looks_of
    from lookalike.points import StoredItem

    photos = [draw_item("red_round", 1), draw_item("red_round", 2), draw_item("red_round", 3)]
    metadata = [{"margin": 0.1}, {"margin": 0.9, "on_sale": True}, {"margin": "high"}]  # text counts 0
    boosted_items = [
        StoredItem(f"m{n}", "boosted", "x.jpg", "0" * 64, encoder.identity, metadata=m) for n, m in enumerate(metadata)
    ]
    store.upsert(boosted_items, looks_of(encoder, photos))  # three red rounds: alike within 0.1
    asked = "/v1/items/red_round-0/similar?k=3&category=boosted"
    plain = client.get(asked).get_json()["results"]
    by_margin = client.get(asked + "&boost.margin=1").get_json()["results"]
    assert [r["id"] for r in by_margin] == ["m1", "m0", "m2"]
    similarity = {r["id"]: r["score"] for r in plain}
    assert by_margin[0]["score"] == pytest.approx(similarity["m1"] + 0.9, abs=1e-3)
    assert client.get(asked + "&boost.margin=0").get_json()["results"] == plain
    on_sale = client.get(asked + "&boost.on_sale=0.5&boost.margin=-1").get_json()["results"]
    assert on_sale[0]["id"] == "m2"  # 0.5 - 0.9 for m1, -0.1 for m0, 0 for m2
    batch = client.post(
        "/v1/similar:batch",
        json={"queries": [{"id": "red_round-0", "k": 3, "category": ["boosted"], "boosts": {"margin": 1}}]},
    )
    assert [r["id"] for r in batch.get_json()["results"][0]["results"]] == ["m1", "m0", "m2"]
    for bad in ("boost.margin=much", "boost.margin=nan", "boost.b%20d=1"):
        response = client.get(f"{asked}&{bad}")
        assert_error(response, 400, "invalid_request")
    assert "boost.margin" in client.get(asked + "&boost.margin=much").get_json()["error"]["message"]


def test_upload_search_finds_the_same_photo_first(client, ingested, catalogue_dir):
    data = (catalogue_dir / "green_square/item2.jpg").read_bytes()
    response = client.post("/v1/search?k=5", data=upload(data), content_type="multipart/form-data")
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert results[0]["id"] == "green_square-2"
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_upload_search_takes_params_from_the_form_too(client, ingested):
    form = {**upload(draw_item("red_round", 0)), "category": "blue_bar", "k": "2"}
    response = client.post("/v1/search", data=form, content_type="multipart/form-data")
    assert [r["category"] for r in response.get_json()["results"]] == ["blue_bar", "blue_bar"]


def test_offset_pages_through_results(client, ingested):
    everything = result_ids(client.get("/v1/items/red_round-0/similar?k=6"))
    assert result_ids(client.get("/v1/items/red_round-0/similar?k=3&offset=3")) == everything[3:]


def test_score_threshold(client, ingested):
    scores = [r["score"] for r in client.get("/v1/items/red_round-0/similar?k=11").get_json()["results"]]
    threshold = sorted(scores)[5]
    response = client.get(f"/v1/items/red_round-0/similar?k=11&score_threshold={threshold}")
    assert len(result_ids(response)) == sum(score >= threshold for score in scores)


@pytest.mark.parametrize(
    "query",
    [
        *("k=0", "k=101", "k=abc", "offset=-1", "score_threshold=2", "categroy=shoes", "filter.b%20d=x"),
        *("filter.colour=", "filter.price.gte=cheap", "filter.price.lt=nan", "filter.b%20d.gte=1", "diversity=1.5"),
    ],
)
def test_bad_parameters_are_400(client, ingested, query):
    assert_error(client.get(f"/v1/items/red_round-0/similar?{query}"), 400, "invalid_request")


def test_unknown_item_is_404_everywhere(client, ingested, auth):
    for response in (
        client.get("/v1/items/nope"),
        client.get("/v1/items/nope/similar"),
        client.get("/v1/items/nope/image"),
        client.delete("/v1/items/nope", headers=auth),
    ):
        assert_error(response, 404, "item_not_found")


def test_unknown_route_and_method_are_json(client, ingested):
    assert_error(client.get("/v2/nothing"), 404, "not_found")
    assert_error(client.get("/v1/search"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"plain text", 415, "unsupported_image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "unsupported_image"),
        (b"", 422, "invalid_image"),
        (image_bytes(draw_item("red_round", 0))[:300], 422, "invalid_image"),
        (image_bytes(Image.new("1", (20000, 20000)), "PNG"), 413, "image_too_large"),
        (image_bytes(Image.new("RGB", (1, 20000)), "PNG"), 422, "invalid_image"),  # 2.2 GB for the model
    ],
    ids=["text", "svg", "empty", "truncated", "bomb", "sliver"],
)
def test_bad_uploads_get_their_4xx(client, ingested, data, status, code):
    response = client.post("/v1/search", data=upload(data), content_type="multipart/form-data")
    assert_error(response, status, code)


def test_missing_image_field_is_400(client, ingested):
    assert_error(client.post("/v1/search", data={"k": "2"}, content_type="multipart/form-data"), 400, "invalid_request")


def test_request_over_the_size_limit_is_413(settings, encoder, store, ingested):
    small = create_app(settings.model_copy(update={"max_upload_bytes": 1000}), encoder=encoder, store=store)
    big = image_bytes(Image.effect_noise((200, 200), 50).convert("RGB"))
    response = small.test_client().post("/v1/search", data=upload(big), content_type="multipart/form-data")
    assert_error(response, 413, "request_entity_too_large")


def test_get_item_and_its_image(client, ingested, catalogue_dir):
    body = client.get("/v1/items/blue_bar-1").get_json()
    assert body["category"] == "blue_bar" and body["metadata"] == {"colour": "blue"}
    image = client.get(body["image_url"])
    assert image.status_code == 200 and image.mimetype == "image/jpeg"
    assert image.data == (catalogue_dir / "blue_bar/item1.jpg").read_bytes()


def test_put_adds_an_item_that_is_then_searchable(client, ingested, auth):
    form = {**upload(draw_item("blue_bar", 3), "new.png"), "category": "blue_bar", "metadata": json.dumps({"c": 1})}
    response = client.put("/v1/items/new-1", data=form, headers=auth, content_type="multipart/form-data")
    assert response.status_code == 201
    assert response.get_json()["metadata"] == {"c": 1}
    assert client.get("/v1/items/new-1/image").status_code == 200
    assert "new-1" in result_ids(client.get("/v1/items/blue_bar-3/similar?k=20&category=blue_bar"))

    form = {**upload(draw_item("red_round", 1)), "category": "red_round"}
    replaced = client.put("/v1/items/new-1", data=form, headers=auth, content_type="multipart/form-data")
    assert replaced.status_code == 200
    assert client.get("/v1/items/new-1").get_json()["category"] == "red_round"


def test_an_avif_photo_is_searched_added_and_served_as_avif(client, ingested, auth):
    """AVIF, what shops' sites serve now, was a 415 (and a failed item in a catalogue)."""
    avif = image_bytes(draw_item("blue_bar", 3), "AVIF")
    found = client.post("/v1/search?k=4", data=upload(avif, "p.avif"), content_type="multipart/form-data")
    assert found.status_code == 200 and found.get_json()["results"][0]["category"] == "blue_bar"
    form = {**upload(avif, "p.avif"), "category": "blue_bar"}
    assert (
        client.put("/v1/items/avif-1", data=form, headers=auth, content_type="multipart/form-data").status_code == 201
    )
    image = client.get("/v1/items/avif-1/image")
    assert image.status_code == 200 and image.mimetype == "image/avif" and image.data == avif


def test_delete_removes_the_item(client, ingested, auth):
    assert client.delete("/v1/items/red_round-3", headers=auth).get_json() == {"id": "red_round-3", "deleted": True}
    assert_error(client.get("/v1/items/red_round-3"), 404, "item_not_found")
    assert "red_round-3" not in result_ids(client.get("/v1/items/red_round-0/similar?k=20"))


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"category": ""}, "invalid_request"),
        ({"category": "x", "metadata": "[1]"}, "invalid_request"),
        ({"category": "x", "metadata": "{oops"}, "invalid_request"),
        ({"category": "x", "price": "3"}, "invalid_request"),
    ],
)
def test_bad_put_forms_are_400(client, ingested, auth, form, code):
    data = {**upload(draw_item("red_round", 0)), **form}
    assert_error(client.put("/v1/items/x1", data=data, headers=auth, content_type="multipart/form-data"), 400, code)


def test_writes_need_the_api_key(client, ingested):
    form = {**upload(draw_item("red_round", 0)), "category": "x"}
    assert_error(client.put("/v1/items/x1", data=form, content_type="multipart/form-data"), 401, "unauthorized")
    wrong = {"Authorization": "Bearer nope"}
    assert_error(client.delete("/v1/items/red_round-0", headers=wrong), 401, "unauthorized")
    assert client.get("/v1/items/red_round-0").status_code == 200


def test_writes_are_off_without_a_configured_key(settings, encoder, store, ingested):
    app = create_app(settings.model_copy(update={"api_key": None}), encoder=encoder, store=store)
    response = app.test_client().delete("/v1/items/red_round-0", headers={"Authorization": "Bearer x"})
    assert_error(response, 403, "writes_disabled")


def test_health_and_readiness(client, ingested, encoder, store):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    assert ready == {
        "status": "ready",
        "collection": "products",
        "serving": store.for_model(encoder.identity).collection,  # the alias's target, pinned
        "items": 12,
        "model": encoder.identity,
        "device": "cpu",
        "precision": "fp32",
        "colour_weight": 0.2,  # COLOUR_WEIGHT's default: this collection was never calibrated
        "random_weights": True,  # the tests' tiny model is random-init, and says so
        "calibration": None,
    }
    assert b"untrained (random)" in client.get("/").data  # the page says so too


def test_not_ready_without_a_collection(client):
    response = client.get("/readyz")
    assert_error(response, 503, "collection_missing")  # the store answers; only the collection is missing
    assert "python -m ingest" in response.get_json()["error"]["message"]
    assert response.headers["Retry-After"]
    assert client.get("/healthz").status_code == 200
    for path in ("/v1/items/red_round-0/similar", "/v1/items/red_round-0", "/v1/items/red_round-0/image"):
        assert_error(client.get(path), 503, "collection_missing")


def test_a_collection_of_another_model_is_refused(settings: Settings, store, ingested):
    from lookalike.encoder import ImageEncoder

    other = ImageEncoder.from_settings(settings.model_copy(update={"model_name": "lookalike-small"}))
    client = create_app(settings, encoder=other, store=store).test_client()
    assert_error(client.get("/readyz"), 503, "model_mismatch")
    response = client.post("/v1/search", data=upload(draw_item("red_round", 0)), content_type="multipart/form-data")
    assert_error(response, 503, "model_mismatch")


@pytest.fixture
def auto_client(settings, encoder, store, ingested, catalogue_dir):
    """An encoder whose head has one prototype per category: the mean embedding of its images."""
    from lookalike.classifier import CategoryClassifier

    classes = ["blue_bar", "green_square", "red_round"]
    prototypes = np.stack([encoder.embed_images([draw_item(c, i) for i in range(4)]).mean(axis=0) for c in classes])
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)

    def client_with(min_probability: float, names: list[str] = classes):
        with_head = copy.copy(encoder)  # the same model (either runtime), with a head
        with_head.classifier = CategoryClassifier(names, prototypes, 1000.0)
        app_settings = settings.model_copy(update={"auto_category_min_probability": min_probability})
        return create_app(app_settings, encoder=with_head, store=store).test_client()

    return client_with


def test_category_auto_filters_by_the_predicted_category(auto_client):
    form = {**upload(draw_item("red_round", 2)), "category": "auto", "k": "10"}
    body = auto_client(0.5).post("/v1/search", data=form, content_type="multipart/form-data").get_json()
    prediction = body["predicted_category"]
    assert prediction["category"] == "red_round" and prediction["applied"] is True and prediction["in_collection"]
    assert 0.5 <= prediction["probability"] <= 1
    assert {r["category"] for r in body["results"]} == {"red_round"}


def test_category_auto_below_the_threshold_searches_unfiltered(auto_client):
    form = {**upload(draw_item("red_round", 2)), "category": "auto", "k": "12"}
    body = auto_client(1.01 - 1e-9).post("/v1/search", data=form, content_type="multipart/form-data").get_json()
    assert body["predicted_category"]["applied"] is False
    assert len({r["category"] for r in body["results"]}) == 3


def test_category_auto_never_filters_by_a_class_the_collection_lacks(auto_client):
    """A head trained on another catalogue (here: other class names) predicted classes that
    are no category here: the filter matched nothing, and the search answered no results."""
    form = {**upload(draw_item("red_round", 2)), "category": "auto", "k": "12"}
    elsewhere = auto_client(0.5, ["shoes", "bags", "hats"])
    body = elsewhere.post("/v1/search", data=form, content_type="multipart/form-data").get_json()
    prediction = body["predicted_category"]
    assert prediction["category"] == "hats" and prediction["probability"] >= 0.5
    assert prediction["applied"] is False and prediction["in_collection"] is False
    assert len({r["category"] for r in body["results"]}) == 3


def test_category_auto_without_a_head_is_400(client, ingested):
    form = {**upload(draw_item("red_round", 2)), "category": "auto"}
    response = client.post("/v1/search", data=form, content_type="multipart/form-data")
    assert_error(response, 400, "invalid_request")
    assert "MODEL_CHECKPOINT" in response.get_json()["error"]["message"]


def test_category_auto_by_id_means_the_items_own_category(client, ingested):
    response = client.get("/v1/items/blue_bar-0/similar?k=10&category=auto")
    assert {r["category"] for r in response.get_json()["results"]} == {"blue_bar"}
    assert_error(client.get("/v1/items/blue_bar-0/similar?category=auto&category=x"), 400, "invalid_request")


def test_categories_and_random_items(client, ingested):
    categories = client.get("/v1/categories").get_json()["categories"]
    assert {c["name"]: c["count"] for c in categories} == {"red_round": 4, "green_square": 4, "blue_bar": 4}
    items = client.get("/v1/items:random?k=3&category=blue_bar").get_json()["items"]
    assert len(items) == 3 and {i["category"] for i in items} == {"blue_bar"}
    assert_error(client.get("/v1/items:random?k=0"), 400, "invalid_request")


def test_page_is_served_with_its_assets(client, ingested, encoder):
    page = client.get("/")
    assert page.status_code == 200 and encoder.identity.encode() in page.data
    assert client.get("/static/app.js").status_code == 200


def test_request_id_is_echoed_and_named_in_errors(client, ingested):
    response = client.get("/v1/items/nope", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.get_json()["error"]["request_id"] == "abc-123"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    assert client.get("/healthz", headers={"X-Request-ID": "bad id"}).headers["X-Request-ID"] != "bad id"


def test_metrics_expose_latency_status_timings_and_size(client, ingested):
    client.get("/v1/items/red_round-0/similar")
    client.get("/v1/items/nope")
    client.post("/v1/search", data=upload(draw_item("red_round", 0)), content_type="multipart/form-data")
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'flask_http_request_duration_seconds_bucket{endpoint="items.similar_items",le="0.005",method="GET",status="200"}'
        in text
    )
    assert 'flask_http_request_total{method="GET",status="404"} 1.0' in text
    assert 'lookalike_encode_seconds_count{kind="upload"} 1.0' in text
    assert 'lookalike_search_seconds_count{kind="by_id",ranking="fused"} 1.0' in text  # COLOUR_WEIGHT 0.2
    assert 'lookalike_search_seconds_count{kind="upload",ranking="fused"} 1.0' in text
    assert "lookalike_collection_items 12.0" in text
    assert 'lookalike_encoder_info{device="cpu",model="' in text and 'random_weights="true"} 1.0' in text
    client.get("/no/such/route")
    assert 'endpoint="None"' not in client.get("/metrics").get_data(as_text=True)


def test_cors_headers_only_for_configured_origins(settings, encoder, store, ingested):
    app = create_app(
        settings.model_copy(update={"cors_origins": ["https://shop.example"]}), encoder=encoder, store=store
    )
    allowed = app.test_client().get("/healthz", headers={"Origin": "https://shop.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    other = app.test_client().get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_protect_reads_closes_v1_but_not_health(settings, encoder, store, ingested, auth):
    app = create_app(settings.model_copy(update={"protect_reads": True}), encoder=encoder, store=store)
    client = app.test_client()
    assert_error(client.get("/v1/items/red_round-0"), 401, "unauthorized")
    assert client.get("/v1/items/red_round-0", headers=auth).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200


def test_the_error_log_line_names_the_request_id_of_the_response(client, ingested, caplog):
    import logging

    from service.observability import RequestIdFilter

    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="service.errors"):
        response = client.get("/v1/items/nope")
    request_id = response.get_json()["error"]["request_id"]
    (record,) = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert record.request_id == request_id and record.code == "item_not_found"


def test_a_multipart_part_without_a_name_is_400(client, ingested):
    # Found by schemathesis: a nameless part used to reach the parameter parser as a None key.
    body = (
        b'--b\r\nContent-Disposition: form-data; filename="x.txt"\r\n\r\nhello\r\n'
        b'--b\r\nContent-Disposition: form-data; name="k"\r\n\r\n2\r\n--b--\r\n'
    )
    response = client.post("/v1/search", data=body, content_type="multipart/form-data; boundary=b")
    assert response.status_code == 400


def test_image_symlinked_outside_the_catalogue_is_404(client, ingested, catalogue_dir, tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(image_bytes(draw_item("red_round", 0)))
    target = catalogue_dir / "blue_bar" / "item2.jpg"
    target.unlink()
    target.symlink_to(secret)  # swapped after ingest
    assert_error(client.get("/v1/items/blue_bar-2/image"), 404, "item_not_found")
    target.unlink()
    target.symlink_to(target)  # a loop: a 500 before
    assert_error(client.get("/v1/items/blue_bar-2/image"), 404, "item_not_found")


def test_unreachable_qdrant_server_is_503_with_retry_after(settings, encoder):
    from lookalike.store import VectorStore

    unreachable = settings.model_copy(update={"qdrant_url": "http://127.0.0.1:9", "qdrant_timeout_s": 2})
    store = VectorStore.from_settings(unreachable)
    client = create_app(unreachable, encoder=encoder, store=store).test_client()
    for response in (
        client.get("/readyz"),
        client.get("/v1/items/x/similar"),
        client.post("/v1/search", data=upload(draw_item("red_round", 0)), content_type="multipart/form-data"),
    ):
        assert_error(response, 503, "store_unavailable")
        assert response.headers["Retry-After"]
        assert "127.0.0.1" not in response.get_json()["error"]["message"]  # no internal addresses
    assert client.get("/healthz").status_code == 200


def test_batch_answers_in_order_with_a_per_entry_error(client, ingested):
    body = {
        "queries": [
            {"id": "blue_bar-0", "k": 2, "category": ["green_square"]},
            {"id": "nope"},
            {"id": "red_round-1", "k": 3, "filters": {"colour": ["red"]}, "exclude": ["red_round-2"]},
            {"id": "blue_bar-1", "category": ["auto"], "k": 10},
        ]
    }
    response = client.post("/v1/similar:batch", json=body)
    assert response.status_code == 200
    entries = response.get_json()["results"]
    assert [e["id"] for e in entries] == ["blue_bar-0", "nope", "red_round-1", "blue_bar-1"]
    assert [r["category"] for r in entries[0]["results"]] == ["green_square", "green_square"]
    assert entries[1]["error"]["code"] == "item_not_found" and "results" not in entries[1]
    assert [r["id"] for r in entries[2]["results"]] == ["red_round-3"]
    assert {r["category"] for r in entries[3]["results"]} == {"blue_bar"} and len(entries[3]["results"]) == 3
    by_id = client.get("/v1/items/blue_bar-0/similar?k=2&category=green_square").get_json()["results"]
    assert [r["id"] for r in entries[0]["results"]] == [r["id"] for r in by_id]


@pytest.mark.parametrize(
    "body",
    [
        None,
        {},
        {"queries": []},
        {"queries": [{"k": 2}]},
        {"queries": [{"id": "a", "bogus": 1}]},
        {"queries": [{"id": "a"}] * 101},
    ],
    ids=["not-json", "empty", "no-queries", "no-id", "unknown-field", "too-many"],
)
def test_bad_batches_are_400(client, ingested, body):
    response = (
        client.post("/v1/similar:batch", json=body)
        if body is not None
        else client.post("/v1/similar:batch", data="x", content_type="text/plain")
    )
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"k": True}, "k"),
        ({"diversity": False}, "diversity"),
        ({"colour_weight": True}, "colour_weight"),
        ({"score_threshold": False}, "score_threshold"),
        ({"ranges": {"price": {"gte": True}}}, "ranges.price.gte"),
        ({"boosts": {"price": True}}, "boosts.price"),
    ],
)
def test_true_or_false_where_a_number_belongs_is_a_400(client, ingested, entry, named):
    """pydantic's lax mode would read JSON's true/false as 1/0: a client's mistake answered as a search."""
    response = client.post("/v1/similar:batch", json={"queries": [{"id": "red_round-0", **entry}]})
    assert_error(response, 400, "invalid_request")
    message = response.get_json()["error"]["message"]
    assert message == f"invalid body: queries[0].{named}: a number is needed, not true/false"


def test_numbers_as_text_stay_accepted_in_a_batch(client, ingested):
    entry = {"id": "red_round-0", "k": "3", "diversity": "0.5", "score_threshold": "-1"}
    response = client.post("/v1/similar:batch", json={"queries": [entry]})
    assert response.status_code == 200 and len(response.get_json()["results"][0]["results"]) == 3


def test_a_box_of_true_or_false_is_a_400(client, ingested):
    query = "boxes=" + json.dumps([[0, 0, True, 1]])
    response = client.post(
        f"/v1/search?{query}", data=upload(draw_item("red_round", 0)), content_type="multipart/form-data"
    )
    assert_error(response, 400, "invalid_request")


def recommend(client, query: str, data: dict | None = None):
    return client.post(f"/v1/recommend?{query}", data=data or {}, content_type="multipart/form-data")


def test_recommend_with_a_negative_example_pushes_its_look_alikes_down(client, ingested):
    plain = [i for i in result_ids(client.get("/v1/items/red_round-0/similar?k=20")) if i != "blue_bar-0"]
    with_negative = result_ids(recommend(client, "positive=red_round-0&negative=blue_bar-0&k=20"))
    assert set(with_negative) == set(plain)  # examples themselves are left out

    def mean_rank(ids: list[str]) -> float:
        ranks = [i for i, item_id in enumerate(ids) if item_id.startswith("blue_bar")]
        return sum(ranks) / len(ranks)

    assert mean_rank(with_negative) > mean_rank(plain)
    assert with_negative[-3:] == [i for i in with_negative if i.startswith("blue_bar")]  # at the very bottom


def test_recommend_takes_photos_as_examples(client, ingested, catalogue_dir):
    photo = (catalogue_dir / "blue_bar/item1.jpg").read_bytes()
    response = recommend(client, "k=3", {"positive_image": (io.BytesIO(photo), "p.jpg")})
    assert response.status_code == 200
    assert result_ids(response)[0] == "blue_bar-1"  # the same photo is its own best match


def test_recommend_errors(client, ingested):
    assert_error(recommend(client, "negative=red_round-0"), 400, "invalid_request")
    assert_error(recommend(client, "positive=nope"), 404, "item_not_found")
    bad = {"positive_image": (io.BytesIO(b"not an image"), "x.jpg")}
    assert_error(recommend(client, "positive=red_round-0", bad), 415, "unsupported_image")


def test_hide_duplicates_leaves_out_the_same_photo(settings, encoder, store, catalogue_dir, client, tmp_path, ingested):
    from lookalike.looks import looks_of
    from lookalike.points import StoredItem

    photo = catalogue_dir / "green_square/item2.jpg"
    original = store.get("green_square-2")
    copy = StoredItem("copy-of-green-2", "green_square", original.image, original.sha256, original.model)
    store.upsert([copy], looks_of(encoder, [Image.open(photo).convert("RGB")]))

    shown = result_ids(client.get("/v1/items/green_square-2/similar?k=3"))
    hidden = result_ids(client.get("/v1/items/green_square-2/similar?k=3&hide_duplicates=true"))
    assert shown[0] == "copy-of-green-2" and "copy-of-green-2" not in hidden
    form = {**upload(photo.read_bytes()), "hide_duplicates": "true", "k": "3"}
    uploaded = result_ids(client.post("/v1/search", data=form, content_type="multipart/form-data"))
    assert not {"green_square-2", "copy-of-green-2"} & set(uploaded)


MULTIPROCESS_SCRIPT = """
import io, sys
from pathlib import Path
from tests.conftest import draw_item, image_bytes
from lookalike.settings import Settings
from lookalike.encoder import ImageEncoder
from lookalike.looks import looks_of
from lookalike.points import StoredItem
from lookalike.store import VectorStore
from service import create_app

tmp = Path(sys.argv[1])
settings = Settings(qdrant_path=tmp / "q", model_name="lookalike-tiny", model_pretrained="", catalogue_dir=tmp)
encoder = ImageEncoder.from_settings(settings)
store = VectorStore.from_settings(settings)
store.ensure_collection(encoder.dim, encoder.identity)
store.upsert([StoredItem("a", "c", "c/a.jpg", "0", encoder.identity)], looks_of(encoder, [draw_item("x", 0)]))
client = create_app(settings, encoder=encoder, store=store).test_client()
client.get("/v1/items/a/similar")
client.post("/v1/search", data={"image": (io.BytesIO(image_bytes(draw_item("x", 1))), "q.jpg")},
            content_type="multipart/form-data")
print(client.get("/metrics").get_data(as_text=True))
"""


def test_metrics_in_multiprocess_mode_come_from_the_shared_files(tmp_path):
    """What several gunicorn workers use (PROMETHEUS_MULTIPROC_DIR), in a fresh interpreter."""
    import os
    import subprocess
    import sys

    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONPATH": str(Path(__file__).parent.parent)}
    result = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert (
        'flask_http_request_duration_seconds_count{endpoint="items.similar_items",method="GET",status="200"} 1.0'
        in text
    )
    assert 'lookalike_encode_seconds_count{kind="upload"} 1.0' in text
    assert 'lookalike_search_seconds_count{kind="by_id",ranking="fused"} 1.0' in text
    assert "\nlookalike_collection_items 1.0\n" in text
    assert 'lookalike_encoder_info{device="cpu"' in text
    assert any(shared.iterdir())  # values live in the shared files


def paint_round(colour: tuple[int, int, int], index: int) -> Image.Image:
    """The same round shape in any colour (the catalogue's red_round, repainted)."""
    image = Image.new("RGB", (64, 48), (255, 255, 255))
    x, y = 8 + index * 3, 6 + index * 2
    ImageDraw.Draw(image).ellipse((x, y, x + 30, y + 30), fill=colour)
    return image


@pytest.fixture
def painted(client, auth, store):
    """One shape in three colours: two red, two blue, two green photos."""
    paints = {"red": (220, 30, 30), "blue": (40, 60, 220), "green": (30, 200, 60)}
    for name, colour in paints.items():
        for index in range(2):
            form = {**upload(paint_round(colour, index + 1)), "category": "round"}
            response = client.put(
                f"/v1/items/{name}-{index}", data=form, headers=auth, content_type="multipart/form-data"
            )
            assert response.status_code == 201
    return paint_round(paints["red"], 0)


def test_colour_weight_puts_same_coloured_items_first(client, painted):
    def ranks_of_red(weight: float, by_id: bool = False) -> list[int]:
        if by_id:
            response = client.get(f"/v1/items/red-0/similar?k=5&colour_weight={weight}")
        else:
            form = {**upload(painted), "k": "6", "colour_weight": str(weight)}
            response = client.post("/v1/search", data=form, content_type="multipart/form-data")
        assert response.status_code == 200, response.get_data(as_text=True)
        return [rank for rank, item_id in enumerate(result_ids(response)) if item_id.startswith("red")]

    assert ranks_of_red(1.0) == [0, 1]  # colour alone: the red photos first
    assert ranks_of_red(1.0, by_id=True) == [0]
    assert sum(ranks_of_red(0.8)) <= sum(ranks_of_red(0.0))  # more colour weight, red moves up (or stays)
    assert ranks_of_red(0.8, by_id=True) <= ranks_of_red(0.0, by_id=True)


def test_colour_weight_out_of_range_is_400(client, ingested):
    assert_error(client.get("/v1/items/red_round-0/similar?colour_weight=1.5"), 400, "invalid_request")
    assert_error(client.get("/v1/items/red_round-0/similar?group_by=brand"), 400, "invalid_request")


def test_group_by_product_id_returns_each_product_once(client, ingested, auth):
    for index in range(3):  # three photos of one product
        form = {**upload(draw_item("blue_bar", index)), "category": "blue_bar", "product_id": "sku-9"}
        response = client.put(f"/v1/items/sku9-{index}", data=form, headers=auth, content_type="multipart/form-data")
        assert response.get_json()["product_id"] == "sku-9"
    flat = client.get("/v1/items/blue_bar-0/similar?k=20&category=blue_bar").get_json()["results"]
    grouped = client.get("/v1/items/blue_bar-0/similar?k=20&category=blue_bar&group_by=product_id")
    products = [r["product_id"] for r in grouped.get_json()["results"]]
    assert sum(r["product_id"] == "sku-9" for r in flat) == 3
    assert products.count("sku-9") == 1 and len(products) == len(set(products)) == 4
    best_sku9 = next(r["id"] for r in flat if r["product_id"] == "sku-9")  # its best photo represents it
    assert best_sku9 in result_ids(grouped)

    form = {**upload(draw_item("blue_bar", 0)), "group_by": "product_id", "k": "20", "category": "blue_bar"}
    uploaded = client.post("/v1/search", data=form, content_type="multipart/form-data").get_json()["results"]
    assert [r["product_id"] for r in uploaded].count("sku-9") == 1
    batch = client.post(
        "/v1/similar:batch",
        json={"queries": [{"id": "blue_bar-0", "k": 20, "category": ["blue_bar"], "group_by": "product_id"}]},
    )
    assert batch.get_json()["results"][0]["results"] == grouped.get_json()["results"]


def test_a_re_uploaded_photo_is_reported_as_a_duplicate_of_the_stored_one(settings, encoder, store, auth):
    # The tiny random-init test encoder maps shifted shapes within 0.9995 of each other, so only
    # pixel-identical looks count here (the shipped thresholds were measured on a trained encoder).
    strict = settings.model_copy(
        update={"near_duplicate_similarity": 0.99999, "near_duplicate_colour_similarity": 0.99}
    )
    client = create_app(strict, encoder=encoder, store=store).test_client()

    def put(item_id: str, image: Image.Image, fmt: str = "JPEG") -> dict:
        form = {**upload(image_bytes(image, fmt), f"p.{fmt.lower()}"), "category": "round"}
        response = client.put(f"/v1/items/{item_id}", data=form, headers=auth, content_type="multipart/form-data")
        assert response.status_code == 201, response.get_data(as_text=True)
        return response.get_json()

    original = draw_item("red_round", 0)
    assert "duplicate_of" not in put("first", original)
    again = put("again", Image.open(io.BytesIO(image_bytes(original))).convert("RGB"), "PNG")  # other bytes, same look
    assert again["duplicate_of"]["id"] == "first" and again["duplicate_of"]["colour_similarity"] >= 0.99
    assert "duplicate_of" not in put("other", draw_item("blue_bar", 3))
    assert client.get("/v1/items/again").status_code == 200  # stored either way


def test_a_colour_target_moves_the_results_toward_that_colour(client, ingested):
    def categories(query: str) -> list[str]:
        response = client.get(f"/v1/items/blue_bar-0/similar?k=4&{query}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return [r["category"] for r in response.get_json()["results"]]

    plain = categories("")
    assert plain.count("blue_bar") == 3  # its own kind first
    assert categories("colour=red").count("red_round") > plain.count("red_round")  # "like this, but in red"
    assert categories("colour=%23dc1e1e&colour_weight=1") == ["red_round"] * 4  # colour alone: red items only
    assert categories("colour=green&colour_weight=1") == ["green_square"] * 4
    assert categories("colour=red&colour_weight=0") == plain  # no weight, no effect
    form = {**upload(draw_item("blue_bar", 1)), "colour": "red", "k": "2"}
    by_photo = client.post("/v1/search", data=form, content_type="multipart/form-data").get_json()["results"]
    assert [r["category"] for r in by_photo].count("red_round") >= 1
    bad = client.get("/v1/items/blue_bar-0/similar?colour=rouge")
    assert bad.status_code == 400 and "colour" in bad.get_json()["error"]["message"]


def test_a_box_searches_with_that_region_of_the_photo(client, ingested):
    from PIL import Image

    photo = Image.new("RGB", (128, 48), "white")  # two products side by side
    photo.paste(draw_item("red_round", 1), (0, 0))
    photo.paste(draw_item("blue_bar", 1), (64, 0))

    def first_category(box: str) -> str:
        form = {**upload(photo), "box": box, "k": "1"}
        response = client.post("/v1/search", data=form, content_type="multipart/form-data")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["results"][0]["category"]

    assert first_category("0,0,0.5,1") == "red_round"
    assert first_category("0.5,0,1,1") == "blue_bar"
    tall = Image.new("RGB", (48, 1000), "white")  # a box 8 px wide of it is a sliver (1:125)
    sliver = client.post("/v1/search", data={**upload(tall), "box": "0,0,0.17,1"}, content_type="multipart/form-data")
    assert_error(sliver, 400, "invalid_request")
    assert "50:1" in sliver.get_json()["error"]["message"]
    for bad in ("0.5,0,0.4,1", "0,0,1", "a,b,c,d", "0,0,1.5,1", "0,0,0.01,1"):
        response = client.post("/v1/search", data={**upload(photo), "box": bad}, content_type="multipart/form-data")
        assert response.status_code == 400, bad
    recommend = {"positive_image": (io.BytesIO(image_bytes(photo)), "p.jpg"), "box": "0.5,0,1,1", "k": "1"}
    answer = client.post("/v1/recommend", data=recommend, content_type="multipart/form-data").get_json()
    assert answer["results"][0]["category"] == "blue_bar"


def two_products() -> Image.Image:
    photo = Image.new("RGB", (128, 48), "white")
    photo.paste(draw_item("red_round", 1), (0, 0))
    photo.paste(draw_item("blue_bar", 1), (64, 0))
    return photo


def test_boxes_answer_one_result_list_per_region_in_one_request(client, ingested):
    def search(**fields: str) -> dict:
        form = {**upload(two_products()), "k": "3", **fields}
        response = client.post("/v1/search", data=form, content_type="multipart/form-data")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    body = search(boxes="[[0, 0, 0.5, 1], [0.5, 0, 1, 1]]")
    assert body["results"] == [] and [r["box"] for r in body["regions"]] == [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]
    left, right = ([hit["id"] for hit in region["results"]] for region in body["regions"])
    assert left == [hit["id"] for hit in search(box="0,0,0.5,1")["results"]]  # as one box at a time
    assert right == [hit["id"] for hit in search(box="0.5,0,1,1")["results"]]
    assert body["regions"][0]["results"][0]["category"] == "red_round"
    assert body["regions"][1]["results"][0]["category"] == "blue_bar"
    assert "regions" not in search()  # one photo, one list: the answer as before
    too_many = json.dumps([[0, 0, 1, 1]] * 11)
    for bad in ("[]", "[[0, 0, 1]]", "[[0.5, 0, 0.4, 1]]", "not json", too_many, "[[0, 0, 0.01, 1]]"):
        response = client.post("/v1/search", data={**upload(two_products()), "boxes": bad})
        assert_error(response, 400, "invalid_request")
    both = {**upload(two_products()), "boxes": "[[0, 0, 1, 1]]", "box": "0,0,1,1"}
    assert_error(client.post("/v1/search", data=both), 400, "invalid_request")


def test_boxes_with_category_auto_predict_per_region(auto_client):
    form = {**upload(two_products()), "boxes": "[[0, 0, 0.5, 1], [0.5, 0, 1, 1]]", "category": "auto", "k": "10"}
    body = auto_client(0.5).post("/v1/search", data=form, content_type="multipart/form-data").get_json()
    for region, expected in zip(body["regions"], ("red_round", "blue_bar"), strict=True):
        assert region["predicted_category"]["category"] == expected and region["predicted_category"]["applied"]
        assert {hit["category"] for hit in region["results"]} == {expected}


def test_text_searches_by_words_alone_or_mixed_with_the_photo(client, ingested):
    """The wiring, on a random-init CLIP (its text tower exists; its answers mean nothing)."""

    def search(image: bool = True, **fields: str) -> list[tuple[str, float]]:
        form = {**(upload(draw_item("red_round", 2)) if image else {}), "k": "4", **fields}
        response = client.post("/v1/search", data=form, content_type="multipart/form-data")
        assert response.status_code == 200, response.get_data(as_text=True)
        return [(r["id"], r["score"]) for r in response.get_json()["results"]]

    words = search(image=False, text="a round red thing")
    assert len(words) == 4
    assert search(text="a round red thing", text_weight="0") == search()  # the photo alone
    mixed_all_words = search(text="a round red thing", text_weight="1", colour_weight="0")
    assert [i for i, _ in mixed_all_words] == [i for i, _ in words]
    assert [s for _, s in mixed_all_words] == pytest.approx([s for _, s in words], abs=1e-5)
    for bad in ({"text": "   "}, {"text": "x" * 301}, {"text": "red", "colour": "red"}, {"text_weight": "2"}):
        response = client.post("/v1/search", data=bad, content_type="multipart/form-data")
        assert_error(response, 400, "invalid_request")
    with_boxes = {**upload(draw_item("red_round", 2)), "text": "red", "boxes": "[[0, 0, 1, 1]]"}
    assert_error(client.post("/v1/search", data=with_boxes), 400, "invalid_request")
    assert_error(client.post("/v1/search", data={"k": "3"}), 400, "invalid_request")  # no image, no text


def test_text_search_without_a_text_tower_is_a_400_saying_why(settings: Settings, store, ingested):
    from lookalike.encoder import ImageEncoder

    image_only = ImageEncoder.from_settings(settings.model_copy(update={"text_search": False}))
    client = create_app(settings, encoder=image_only, store=store).test_client()
    response = client.post("/v1/search", data={"text": "red"})
    assert_error(response, 400, "invalid_request")
    assert "TEXT_SEARCH=false" in response.get_json()["error"]["message"]


def test_recommend_with_a_json_body_is_a_415_saying_what_it_takes(client, ingested):
    response = client.post("/v1/recommend", json={"positive": ["red_round-0"]})
    assert_error(response, 415, "unsupported_media_type")
    assert "multipart/form-data" in response.get_json()["error"]["message"]


def test_a_model_that_cannot_load_fails_the_start_even_without_a_collection(settings: Settings, store, monkeypatch):
    """The model builds beside the store's loading; its error still stops create_app."""
    import service
    from lookalike.errors import ModelLoadError

    def broken(_settings):
        raise ModelLoadError("could not load the encoder")

    monkeypatch.setattr(service, "load_encoder", broken)
    with pytest.raises(ModelLoadError):
        create_app(settings, store=store)
