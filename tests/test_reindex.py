"""Rolling out a new model: a new collection, one alias switch, no downtime, no mixed models."""

from __future__ import annotations

import threading

import pytest

from ingest.pipeline import ingest, reindex
from ingest.report import ErrorReport
from lookalike.catalogue import read_catalogue
from lookalike.encoder import ImageEncoder
from lookalike.settings import Settings
from service import create_app
from tests.conftest import ENGINES


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def new_encoder() -> ImageEncoder:
    return ImageEncoder.from_settings(
        Settings(model_name="lookalike-small", model_pretrained="", model_checkpoint=None)
    )


def run(function, catalogue_dir, encoder, store, tmp_path, **options):
    report = ErrorReport.open(tmp_path / "r.jsonl")
    try:
        return function(read_catalogue(catalogue_dir), encoder, store, report, workers=0, progress=False, **options)
    finally:
        report.close()


def test_reindex_switches_the_alias_while_searches_keep_answering(
    settings, encoder, new_encoder, store, catalogue_dir, tmp_path
):
    store.ensure_collection(encoder.dim, encoder.identity)
    run(ingest, catalogue_dir, encoder, store, tmp_path)
    old_collection = store.resolve()
    serving = create_app(settings, encoder=encoder, store=store).test_client()

    statuses: list[int] = []
    done = threading.Event()

    def rebuild():
        try:
            run(reindex, catalogue_dir, new_encoder, store, tmp_path, drop_old=False)
        finally:
            done.set()

    worker = threading.Thread(target=rebuild)
    worker.start()
    while not done.is_set() or len(statuses) < 5:
        statuses.append(serving.get("/v1/items/red_round-item0/similar?k=3").status_code)
    worker.join()

    assert set(statuses) == {200}
    assert store.resolve() == store.for_model(new_encoder.identity).collection != old_collection
    assert store.count() == 12
    # The running service stays on the collection of its own model until it restarts.
    assert serving.get("/readyz").get_json()["serving"] == old_collection
    restarted = create_app(settings, encoder=new_encoder, store=store).test_client()
    assert restarted.get("/readyz").get_json()["model"] == new_encoder.identity
    stale = create_app(settings, encoder=encoder, store=store).test_client()
    assert stale.get("/readyz").get_json()["error"]["code"] == "model_mismatch"


def test_drop_old_removes_the_previous_collection(encoder, new_encoder, store, catalogue_dir, tmp_path):
    store.ensure_collection(encoder.dim, encoder.identity)
    run(ingest, catalogue_dir, encoder, store, tmp_path)
    old_collection = store.resolve()
    summary = run(reindex, catalogue_dir, new_encoder, store, tmp_path, drop_old=True)
    assert summary.ingested == 12  # nothing reused from the old model's vectors
    assert not store.client.collection_exists(old_collection)
    again = run(reindex, catalogue_dir, new_encoder, store, tmp_path, drop_old=True)
    assert (again.ingested, again.skipped) == (0, 12)  # same model: nothing to rebuild
    assert store.collection_exists()


def test_a_plain_collection_from_an_older_layout_is_replaced_only_with_drop_old(
    encoder, new_encoder, store, catalogue_dir, tmp_path
):
    from lookalike.errors import StoreError

    store.create_physical(encoder.dim, encoder.identity)  # "products" itself, no alias
    run(ingest, catalogue_dir, encoder, store, tmp_path)
    with pytest.raises(StoreError, match="--drop-old"):
        run(reindex, catalogue_dir, new_encoder, store, tmp_path, drop_old=False)
    assert store.count() == 12 and store.is_plain_collection()

    run(reindex, catalogue_dir, new_encoder, store, tmp_path, drop_old=True)
    assert not store.is_plain_collection()
    assert store.resolve() == store.for_model(new_encoder.identity).collection
    assert store.count() == 12
