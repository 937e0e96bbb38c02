"""Rolling out a new model: a new collection, one alias switch, no downtime, no mixed models."""

from __future__ import annotations

import io
import json
import shutil
import threading

import pytest

from ingest.pipeline import IngestOptions, ingest
from ingest.rebuild import reindex
from ingest.removal import PruneLimit
from ingest.report import ErrorReport
from lookalike.catalogue import Shard, read_catalogue, take_shard
from lookalike.encoder import ImageEncoder
from lookalike.errors import CatalogueError
from lookalike.journal import UploadJournal
from lookalike.settings import Settings
from service import create_app
from tests.conftest import ENGINES, draw_item, image_bytes


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
    catalogue = read_catalogue(catalogue_dir)
    journal = (UploadJournal(tmp_path / "uploads"),) if function is reindex else ()
    try:
        return function(
            catalogue, *journal, encoder, store, report, IngestOptions(workers=0, progress=False), **options
        )
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
    assert not store.bound_to(old_collection).collection_exists()
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


# -- items added over the API survive a change of model (issue 12, defect 1) -------------------


def put_photos(client, auth, ids: list[str]) -> None:
    for index, item_id in enumerate(ids):
        photo = image_bytes(draw_item("green_square", index + 1), "PNG")
        data = {"image": (io.BytesIO(photo), "p.png"), "category": "green_square", "metadata": '{"by": "api"}'}
        response = client.put(f"/v1/items/{item_id}", data=data, headers=auth, content_type="multipart/form-data")
        assert response.status_code == 201, response.get_data(as_text=True)


def test_reindex_with_drop_old_keeps_items_added_over_the_api(
    settings, encoder, new_encoder, store, catalogue_dir, tmp_path, auth
):
    store.ensure_collection(encoder.dim, encoder.identity)
    run(ingest, catalogue_dir, encoder, store, tmp_path)
    put_photos(create_app(settings, encoder=encoder, store=store).test_client(), auth, ["api-1", "api-2", "api-3"])

    summary = run(reindex, catalogue_dir, new_encoder, store, tmp_path, drop_old=True)

    assert summary.ingested == 15 and summary.failed == 1  # the fixture's broken catalogue file
    restarted = create_app(settings, encoder=new_encoder, store=store).test_client()
    for item_id in ("api-1", "api-2", "api-3"):
        item = restarted.get(f"/v1/items/{item_id}").get_json()
        assert item["model"] == new_encoder.identity and item["metadata"] == {"by": "api"}
        assert restarted.get(f"/v1/items/{item_id}/image").status_code == 200
    assert restarted.get("/v1/items/api-1/similar?category=green_square").status_code == 200
    assert store.count() == 15


def test_items_added_before_the_journal_existed_are_carried_too(
    settings, encoder, new_encoder, store, catalogue_dir, tmp_path, auth
):
    store.ensure_collection(encoder.dim, encoder.identity)
    put_photos(create_app(settings, encoder=encoder, store=store).test_client(), auth, ["old-api-item"])
    shutil.rmtree(settings.upload_dir / "items")  # as written by a version without the journal
    run(reindex, catalogue_dir, new_encoder, store, tmp_path, drop_old=True)
    assert store.get("old-api-item").model == new_encoder.identity


def test_an_api_item_whose_upload_is_missing_is_reported_and_the_old_collection_kept(
    settings, encoder, new_encoder, store, catalogue_dir, tmp_path, auth
):
    store.ensure_collection(encoder.dim, encoder.identity)
    put_photos(create_app(settings, encoder=encoder, store=store).test_client(), auth, ["lost-file"])
    old_collection = store.resolve()
    for upload in settings.upload_dir.glob("*.png"):
        upload.unlink()

    summary = run(reindex, catalogue_dir, new_encoder, store, tmp_path, drop_old=True)

    assert summary.failed >= 2  # the broken catalogue file and the missing upload
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert any(line["item_id"] == "lost-file" and "not found" in line["reason"] for line in lines)
    assert store.bound_to(old_collection).collection_exists()  # its vector is not dropped with it
    assert [item.id for item in UploadJournal(settings.upload_dir).catalogue().items] == ["lost-file"]


def test_puts_and_deletes_during_a_reindex_are_not_lost(
    settings, encoder, new_encoder, store, catalogue_dir, tmp_path, auth, monkeypatch
):
    store.ensure_collection(encoder.dim, encoder.identity)
    run(ingest, catalogue_dir, encoder, store, tmp_path)
    old_service = create_app(settings, encoder=encoder, store=store).test_client()
    put_photos(old_service, auth, ["doomed"])
    batches = []
    embed_batch = new_encoder.embed_batch

    def embed_and_meanwhile_write(pixels):
        batches.append(1)
        if len(batches) == 2:  # the rebuild is under way (its API items): the old service takes writes
            put_photos(old_service, auth, ["added-during-reindex"])
            assert old_service.delete("/v1/items/doomed", headers=auth).status_code == 200
        return embed_batch(pixels)

    monkeypatch.setattr(new_encoder, "embed_batch", embed_and_meanwhile_write)
    run(reindex, catalogue_dir, new_encoder, store, tmp_path, drop_old=True)
    monkeypatch.undo()

    assert len(batches) > 2  # the replay after the switch embedded again

    assert store.get("added-during-reindex").model == new_encoder.identity
    assert not store.get_many(["doomed"])


# -- the switch waits for a whole collection -------------------------------------------------------


def reindex_slice(catalogue_dir, encoder, store, tmp_path, shard: str | None, **options):
    catalogue = read_catalogue(catalogue_dir)
    catalogue = take_shard(catalogue, Shard.parse(shard)) if shard else catalogue
    report = ErrorReport.open(tmp_path / "r.jsonl")
    try:
        options = IngestOptions(workers=0, progress=False, **options)
        return reindex(catalogue, UploadJournal(tmp_path / "uploads"), encoder, store, report, options, drop_old=True)
    finally:
        report.close()


def test_a_reindex_in_slices_switches_once_every_slice_is_built(
    settings, encoder, new_encoder, store, catalogue_dir, tmp_path, auth
):
    """Each `--shard` worker switched the alias when its own slice was built (and dropped the old
    collection): searches answered from one slice of the catalogue until the others finished."""
    store.ensure_collection(encoder.dim, encoder.identity)
    run(ingest, catalogue_dir, encoder, store, tmp_path)
    settings = settings.with_overrides(upload_dir=tmp_path / "uploads")
    put_photos(create_app(settings, encoder=encoder, store=store).test_client(), auth, ["api-1", "api-2", "api-3"])
    old_collection = store.resolve()

    reindex_slice(catalogue_dir, new_encoder, store, tmp_path, "1/2")
    assert store.resolve() == old_collection and store.count() == 15  # still serving the whole old one
    assert 0 < store.for_model(new_encoder.identity).count() < 15

    reindex_slice(catalogue_dir, new_encoder, store, tmp_path, "0/2")
    assert store.resolve() == store.for_model(new_encoder.identity).collection
    assert store.count() == 15 and not store.bound_to(old_collection).collection_exists()
    models = {item.model for item in store.get_many(["api-1", "api-2", "api-3", "red_round-item0"]).values()}
    assert models == {new_encoder.identity}  # every slice's API items, replayed by the last slice

    serving = store.resolve()
    summary = reindex_slice(catalogue_dir, new_encoder, store, tmp_path, "0/2")  # a later run, same model
    assert summary.ingested == 0 and store.resolve() == serving and store.count() == 15


def test_a_reindex_that_could_not_read_its_photos_leaves_the_old_collection_serving(
    encoder, new_encoder, store, catalogue_dir, tmp_path
):
    """A share that went away midway failed most photos: the switch served (and --drop-old kept)
    a collection without them."""
    store.ensure_collection(encoder.dim, encoder.identity)
    run(ingest, catalogue_dir, encoder, store, tmp_path)
    old_collection = store.resolve()
    for photo in sorted(catalogue_dir.glob("*/item*.jpg"))[:4]:
        photo.write_bytes(b"")  # listed, unreadable as an image: 4 of 12

    with pytest.raises(CatalogueError, match=r"lacks 4 of the 12 catalogue items .* \(33%\)"):
        reindex_slice(catalogue_dir, new_encoder, store, tmp_path, None)
    assert store.resolve() == old_collection and store.count() == 12

    reindex_slice(catalogue_dir, new_encoder, store, tmp_path, None, max_prune=PruneLimit(count=4))
    assert store.resolve() == store.for_model(new_encoder.identity).collection and store.count() == 8
