"""Regression tests for defects found by testing as an attacker or careless operator would (issue 12).

Each test failed on the code before its fix.
"""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import pytest

from finetune.__main__ import parse_args as finetune_args
from finetune.evaluate import main as evaluate_main
from ingest.__main__ import main as ingest_main
from lookalike.catalogue import read_catalogue
from lookalike.errors import InvalidImage, StoreUnavailable
from lookalike.images import read_bytes
from lookalike.journal import LOCK_FILES, UploadJournal
from lookalike.queries import SearchFilter, metadata_matches
from tests.conftest import draw_item, image_bytes, write_manifest


def files_under(folder: Path) -> list[Path]:
    """The photos and journal entries under ``folder`` (not the locks a PUT takes)."""
    return [path for path in folder.rglob("*") if path.is_file() and not LOCK_FILES.fullmatch(path.name)]


def upload(data: bytes, name: str = "photo.jpg") -> dict:
    return {"image": (io.BytesIO(data), name)}


# -- 4. filter values that look numeric to str.isdigit ------------------------------------------


@pytest.mark.parametrize("value", ["--1", "²", "-²", "١٢", "99999999999999999999999"])
def test_numeric_looking_filter_values_are_matched_as_text(client, ingested, value):
    for response in (
        client.get(f"/v1/items/red_round-0/similar?filter.colour={value}"),
        client.post(
            f"/v1/search?filter.colour={value}",
            data=upload(image_bytes(draw_item("red_round", 1))),
            content_type="multipart/form-data",
        ),
        client.post("/v1/similar:batch", json={"queries": [{"id": "red_round-0", "filters": {"colour": [value]}}]}),
    ):
        assert response.status_code == 200, response.get_data(as_text=True)


def test_integer_filter_text_still_matches_stored_integers():
    (match,) = metadata_matches(SearchFilter(metadata={"size": ["-12", "12a", "²"]}))
    assert (match.texts, match.integers, match.booleans) == (["-12", "12a", "²"], [-12], [])


# -- 5. deeply nested JSON ---------------------------------------------------------------------


def test_deeply_nested_batch_body_is_a_400(client, ingested):
    body = '{"queries": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post("/v1/similar:batch", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"


# -- 6. PUT/DELETE racing searches on the same id ----------------------------------------------


def test_searches_racing_put_and_delete_of_their_item_never_answer_500(app, ingested, auth):
    photo = image_bytes(draw_item("red_round", 2))
    stop = threading.Event()
    statuses: list[int] = []

    def writer() -> None:
        client = app.test_client()
        while not stop.is_set():
            client.put("/v1/items/racer", data={**upload(photo), "category": "red_round"}, headers=auth)
            client.delete("/v1/items/racer", headers=auth)

    def reader(path: str) -> None:
        client = app.test_client()
        for _ in range(150):
            if path == "/v1/similar:batch":
                body = {"queries": [{"id": "racer", "colour_weight": 0.5}, {"id": "red_round-1"}]}
                statuses.append(client.post(path, json=body).status_code)
            elif path.startswith("/v1/recommend"):
                statuses.append(client.post(path).status_code)
            else:
                statuses.append(client.get(path).status_code)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(path,))
        for path in (
            "/v1/items/racer/similar?colour_weight=0.5",
            "/v1/items/racer/similar?colour_weight=0",
            "/v1/recommend?positive=racer&positive=red_round-1",
            "/v1/similar:batch",
        )
    ]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join()
    stop.set()
    threads[0].join()
    assert not [s for s in statuses if s >= 500]
    assert set(statuses) <= {200, 404}


# -- 7. non-finite metadata; no orphan uploads --------------------------------------------------


@pytest.mark.parametrize("metadata", ['{"price": NaN}', '{"price": Infinity}', '{"p": {"q": [1e400]}}'])
def test_put_with_non_finite_metadata_is_a_400_and_leaves_no_file(client, ingested, auth, settings, metadata):
    data = {**upload(image_bytes(draw_item("blue_bar", 3), "PNG"), "x.png"), "category": "c", "metadata": metadata}
    response = client.put("/v1/items/nan-item", data=data, headers=auth, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "finite" in response.get_json()["error"]["message"]
    assert not files_under(settings.upload_dir)
    assert client.get("/v1/items/nan-item").status_code == 404


def test_a_put_whose_store_write_fails_leaves_no_file(client, ingested, auth, settings, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(ingested), "upsert", broken)
    data = {**upload(image_bytes(draw_item("blue_bar", 3), "PNG"), "x.png"), "category": "c"}
    response = client.put("/v1/items/doomed", data=data, headers=auth, content_type="multipart/form-data")
    assert response.status_code == 500
    assert not files_under(settings.upload_dir)


def test_a_put_that_fails_after_its_retry_succeeded_keeps_the_item(client, ingested, auth, settings, monkeypatch):
    """A site retries a PUT that is taking long (the store briefly unreachable): the retry is
    stored, then the first attempt fails. Its undo must not remove the retry's journal entry, or
    the next ingest deletes the item as no longer in the journal."""
    store_upsert = type(ingested).upsert
    first_in_store, first_may_fail = threading.Event(), threading.Event()

    def upsert(self, items, looks):
        if not first_in_store.is_set():  # the first attempt: stalls, then fails
            first_in_store.set()
            first_may_fail.wait(10)
            raise StoreUnavailable("the vector store (Qdrant) is unreachable; retry later")
        store_upsert(self, items, looks)

    monkeypatch.setattr(type(ingested), "upsert", upsert)
    photo = image_bytes(draw_item("blue_bar", 3), "PNG")
    statuses: dict[str, int] = {}

    def put(attempt: str) -> None:
        data = {**upload(photo, "x.png"), "category": "c"}
        response = client.put("/v1/items/retried", data=data, headers=auth, content_type="multipart/form-data")
        statuses[attempt] = response.status_code

    first = threading.Thread(target=put, args=("first",))
    first.start()
    assert first_in_store.wait(10)
    retry = threading.Thread(target=put, args=("retry",))
    retry.start()
    retry.join(timeout=1.5)  # without the item's lock the retry is stored by now
    first_may_fail.set()
    first.join()
    retry.join()

    assert statuses == {"first": 503, "retry": 201}
    assert client.get("/v1/items/retried").status_code == 200
    assert [item.id for item in UploadJournal(settings.upload_dir).catalogue().items] == ["retried"]


# -- 8. FIFOs and other non-regular files --------------------------------------------------------


def test_a_fifo_in_the_catalogue_fails_its_row_instead_of_hanging(catalogue_dir, tmp_path):
    os.mkfifo(catalogue_dir / "red_round" / "pipe.jpg")
    rows = [
        {"id": "pipe", "image": "red_round/pipe.jpg", "category": "red_round"},
        {"id": "ok", "image": "red_round/item0.jpg", "category": "red_round"},
    ]
    catalogue = read_catalogue(write_manifest(catalogue_dir, rows))
    assert [item.id for item in catalogue.items] == ["ok"]
    assert "not a regular file" in catalogue.errors[0].reason
    folder = read_catalogue(catalogue_dir)  # a folder catalogue lists it too, as a failed row
    assert any("not a regular file" in e.reason for e in folder.errors)


def test_reading_a_fifo_fails_at_once(tmp_path):
    fifo = tmp_path / "swapped.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InvalidImage, match="not a regular file"):
        read_bytes(fifo)


# -- 9. CLI options are validated like the settings ----------------------------------------------


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--workers", "-1"], ["--batch-size", "x"]])
def test_ingest_refuses_bad_options_with_exit_2(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ingest_main([*option, "--no-progress"])
    assert exit_info.value.code == 2
    assert option[0] in capsys.readouterr().err


@pytest.mark.parametrize(
    "option",
    [
        ["--epochs", "0"],
        ["--batch-size", "-3"],
        ["--lr", "nan"],
        ["--wise-alpha", "2"],
        ["--lr", "0"],
        ["--head-scale", "0"],
        ["--margin", "-0.1"],
        ["--label-smoothing", "1"],
    ],
)
def test_finetune_refuses_bad_options_with_exit_2(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune_args(option)
    assert exit_info.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_evaluate_refuses_bad_colour_weights_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--colour-weights", "0.2,7"])
    assert exit_info.value.code == 2
    assert "--colour-weights" in capsys.readouterr().err


def test_settings_overrides_are_validated(settings):
    from lookalike.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="batch_size"):
        settings.with_overrides(batch_size=0)
    assert settings.with_overrides(batch_size=7).batch_size == 7


# -- 10. images are served as the type their content is ------------------------------------------


def test_an_image_named_html_is_served_as_an_image_with_nosniff(client, settings, auth, catalogue_dir):
    # A real PNG named .html inside the catalogue (what a careless upload to the catalogue folder does).
    (catalogue_dir / "red_round" / "evil.html").write_bytes(image_bytes(draw_item("red_round", 1), "PNG"))
    rows = [{"id": "evil", "image": "red_round/evil.html", "category": "red_round"}]
    from ingest.pipeline import IngestOptions, ingest
    from ingest.report import ErrorReport

    store = client.application.extensions["lookalike"].store
    encoder = client.application.extensions["lookalike"].encoder
    store.ensure_collection(encoder.dim, encoder.identity)
    report = ErrorReport.open(settings.ingest_error_report)
    ingest(
        read_catalogue(write_manifest(catalogue_dir, rows)),
        encoder,
        store,
        report,
        IngestOptions(workers=0, progress=False),
    )
    report.close()
    response = client.get("/v1/items/evil/image")
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_every_response_says_nosniff_and_the_page_has_a_csp(client, ingested):
    for path in ("/healthz", "/v1/items/nope", "/v1/items/red_round-0"):
        assert client.get(path).headers["X-Content-Type-Options"] == "nosniff"
    csp = client.get("/").headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "object-src 'none'" in csp


# -- 13. hide_duplicates on recommend and batch ---------------------------------------------------


def _put_copy(client, auth, source_id: str, copy_id: str, catalogue_dir: Path) -> None:
    category, index = source_id.rsplit("-", 1)
    data = (catalogue_dir / category / f"item{index}.jpg").read_bytes()
    response = client.put(
        f"/v1/items/{copy_id}",
        data={**upload(data), "category": category},
        headers=auth,
        content_type="multipart/form-data",
    )
    assert response.status_code == 201


def test_hide_duplicates_works_on_recommend(client, ingested, auth, catalogue_dir):
    _put_copy(client, auth, "red_round-1", "copy-of-red-1", catalogue_dir)
    shown = client.get("/v1/items/red_round-1/similar?k=20").get_json()["results"]
    assert "copy-of-red-1" in [r["id"] for r in shown]
    for hide, expect in (("false", True), ("true", False)):
        response = client.post(f"/v1/recommend?positive=red_round-1&k=20&hide_duplicates={hide}")
        assert response.status_code == 200
        assert ("copy-of-red-1" in [r["id"] for r in response.get_json()["results"]]) is expect
    photo = (catalogue_dir / "red_round" / "item1.jpg").read_bytes()
    response = client.post(
        "/v1/recommend?k=20&hide_duplicates=true",
        data={"positive_image": (io.BytesIO(photo), "p.jpg")},
        content_type="multipart/form-data",
    )
    ids = [r["id"] for r in response.get_json()["results"]]
    assert "copy-of-red-1" not in ids and "red_round-1" not in ids


def test_hide_duplicates_works_in_batch(client, ingested, auth, catalogue_dir):
    _put_copy(client, auth, "green_square-2", "copy-of-green-2", catalogue_dir)
    body = {
        "queries": [
            {"id": "green_square-2", "k": 20, "hide_duplicates": True},
            {"id": "green_square-2", "k": 20},
            {"id": "no-such-item", "hide_duplicates": True},
        ]
    }
    results = client.post("/v1/similar:batch", json=body).get_json()["results"]
    assert "copy-of-green-2" not in [r["id"] for r in results[0]["results"]]
    assert "copy-of-green-2" in [r["id"] for r in results[1]["results"]]
    assert results[2]["error"]["code"] == "item_not_found"


def test_openapi_says_where_hide_duplicates_applies(client):
    spec = json.dumps(client.get("/openapi.json").get_json())
    assert "any example's" in spec


def test_two_images_in_one_upload_field_are_a_400_not_the_first_one_silently(client, ingested, auth):
    one, other = (image_bytes(draw_item(shape, 1), "PNG") for shape in ("blue_bar", "red_round"))
    photos = {"image": [(io.BytesIO(one), "a.png"), (io.BytesIO(other), "b.png")]}
    put = client.put(
        "/v1/items/two", data={**photos, "category": "c"}, headers=auth, content_type="multipart/form-data"
    )
    photos = {"image": [(io.BytesIO(one), "a.png"), (io.BytesIO(other), "b.png")]}
    search = client.post("/v1/search", data=photos, content_type="multipart/form-data")
    for response in (put, search):
        assert response.status_code == 400
        assert "one image" in response.get_json()["error"]["message"]
    assert client.get("/v1/items/two").status_code == 404
