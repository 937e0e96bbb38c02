"""Uploaded photos that no item names any more (a replaced photo, a deleted item) are removed by
ingest once they are an hour old; never one that an item, or a PUT in flight, still needs."""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from ingest.pipeline import IngestOptions, ingest_all, seed_journal, sync_uploads
from ingest.report import ErrorReport
from lookalike.catalogue import read_catalogue
from lookalike.journal import PHOTO_GRACE_S, PHOTO_NAME, PHOTOS_LOCK, UploadJournal
from lookalike.points import StoredItem, point_id
from tests.conftest import draw_item, image_bytes


def put(client, auth: dict, item_id: str, image: Image.Image) -> None:
    form = {"image": (io.BytesIO(image_bytes(image, "PNG")), "p.png"), "category": "api"}
    response = client.put(f"/v1/items/{item_id}", data=form, headers=auth, content_type="multipart/form-data")
    assert response.status_code in (200, 201), response.get_data(as_text=True)


def age(*paths: Path) -> None:
    """As if written two grace periods ago."""
    then = time.time() - 2 * PHOTO_GRACE_S
    for path in paths:
        os.utime(path, (then, then))


def photos(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir() if PHOTO_NAME.fullmatch(path.name)}


def ingest_everything(catalogue_dir: Path, journal: UploadJournal, encoder, store, tmp_path: Path):
    """`ingest_all` as `python -m ingest` runs it: the catalogue, then the API's items."""
    report = ErrorReport.open(tmp_path / "errors.jsonl")
    try:
        options = IngestOptions(workers=0, progress=False)
        return ingest_all(read_catalogue(catalogue_dir), journal, encoder, store, report, options)
    finally:
        report.close()


def test_ingest_removes_the_photos_no_item_names_once_they_are_old(
    settings, encoder, store, client, auth, catalogue_dir, tmp_path
):
    store.ensure_collection(encoder.dim, encoder.identity)
    put(client, auth, "kept", draw_item("red_round", 1))
    put(client, auth, "replaced", draw_item("blue_bar", 2))
    put(client, auth, "replaced", draw_item("blue_bar", 3))  # its first photo is no longer named
    put(client, auth, "deleted", draw_item("green_square", 4))
    assert client.delete("/v1/items/deleted", headers=auth).status_code == 200
    uploads = settings.upload_dir
    assert len(photos(uploads)) == 4
    someone_elses = uploads / "notes.txt"
    someone_elses.write_text("not a photo of ours")
    age(*uploads.iterdir())
    young = uploads / f"{'f' * 64}.png"  # as a PUT in flight leaves it: saved, its entry not yet written
    young.write_bytes(b"photo")

    journal = UploadJournal(uploads)
    seed_journal(journal, store)
    summary = ingest_everything(catalogue_dir, journal, encoder, store, tmp_path)

    assert summary.photos_removed == 2 and "photos_removed=2" in summary.line()
    assert photos(uploads) == {store.get("kept").image, store.get("replaced").image, young.name}
    assert someone_elses.exists()
    assert [client.get(f"/v1/items/{i}/image").status_code for i in ("kept", "replaced")] == [200, 200]


def sweepable_journal(folder: Path) -> tuple[UploadJournal, Path]:
    """A seeded journal whose folder holds one old photo that no entry names."""
    journal = UploadJournal(folder)
    journal.seed([], lambda item_ids: item_ids)
    orphan = folder / f"{'a' * 64}.jpg"
    with journal.photo_saved(orphan.name, b"photo"):
        pass
    age(orphan)
    return journal, orphan


def test_a_put_of_the_same_bytes_keeps_an_unswept_photo_from_the_sweep(tmp_path):
    journal, orphan = sweepable_journal(tmp_path)
    with journal.photo_saved(orphan.name, b"photo"):  # a PUT of the same bytes: its entry comes next
        assert journal.sweep_photos() == []
    assert orphan.exists()
    assert journal.sweep_photos(grace_s=0) == [orphan.name]  # it was an orphan all along


def test_a_sweep_leaves_a_photo_alone_while_a_put_saves_one(tmp_path):
    journal, orphan = sweepable_journal(tmp_path)
    with (tmp_path / PHOTOS_LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # as `photo_saved` holds it while it saves or reclaims
        assert journal.sweep_photos() == []
    assert journal.sweep_photos() == [orphan.name]


def test_nothing_is_swept_while_an_entry_is_unreadable(tmp_path):
    journal, orphan = sweepable_journal(tmp_path)
    (journal.folder / "broken.json").write_text("{not json")  # whose photo is that? unknown
    assert journal.sweep_photos() == [] and orphan.exists()


def test_what_a_write_killed_midway_left_is_swept_once_old(tmp_path):
    journal, orphan = sweepable_journal(tmp_path)
    left = [tmp_path / f".{'b' * 64}.jpg.x1y2.tmp", journal.folder / ".entry.json.x1y2.tmp"]
    for path in left:
        path.write_bytes(b"half")
    fresh = tmp_path / f".{'c' * 64}.jpg.z3.tmp"  # a write going on now
    fresh.write_bytes(b"half")
    age(*left)
    assert journal.sweep_photos() == [orphan.name]  # the photos it removed
    assert not any(path.exists() for path in left) and fresh.exists()


def test_a_failed_put_keeps_the_photo_when_a_put_of_the_same_bytes_claimed_it_meanwhile(tmp_path):
    journal = UploadJournal(tmp_path)
    name = f"{'b' * 64}.jpg"
    with pytest.raises(RuntimeError), journal.photo_saved(name, b"photo"):  # the first PUT saves it...
        with journal.photo_saved(name, b"photo"):  # ...a second item's PUT of the same photo succeeds...
            pass
        raise RuntimeError("the first PUT's store write failed")
    assert (tmp_path / name).read_bytes() == b"photo"  # ...and its item keeps its photo


def test_a_failed_put_alone_removes_the_photo_it_saved(tmp_path):
    journal = UploadJournal(tmp_path)
    name = f"{'c' * 64}.jpg"
    with pytest.raises(RuntimeError), journal.photo_saved(name, b"photo"):
        raise RuntimeError("store write failed")
    assert not (tmp_path / name).exists()


def test_an_item_put_while_ingest_runs_is_kept(
    settings, encoder, store, client, auth, catalogue_dir, tmp_path, monkeypatch
):
    """Ingest reads the journal before embedding the catalogue; an item PUT meanwhile (a Qdrant
    server takes both) is in the store but not in what it read, and must not be pruned as deleted."""
    store.ensure_collection(encoder.dim, encoder.identity)
    put(client, auth, "before", draw_item("red_round", 1))
    journal = UploadJournal(settings.upload_dir)
    seed_journal(journal, store)
    embed_batch, puts = encoder.embed_batch, []

    def embed_batch_while_a_put_lands(pixels):
        if not puts:
            puts.append("during")
            put(client, auth, "during", draw_item("blue_bar", 2))
        return embed_batch(pixels)

    monkeypatch.setattr(encoder, "embed_batch", embed_batch_while_a_put_lands)
    summary = ingest_everything(catalogue_dir, journal, encoder, store, tmp_path)

    assert puts and summary.pruned == 0
    assert set(store.item_ids(image_source="upload")) == {"before", "during"}


def test_a_catalogue_item_replaced_over_the_api_while_ingest_runs_stays_the_apis(
    settings, encoder, store, client, auth, catalogue_dir, tmp_path, monkeypatch
):
    """A PUT on a catalogue item's id while ingest runs (a Qdrant server takes both): the run
    read the journal before it, and must not overwrite the API's item with the catalogue's
    version (photo, category and vectors) when it reaches that item's batch."""
    store.ensure_collection(encoder.dim, encoder.identity)
    journal = UploadJournal(settings.upload_dir)
    seed_journal(journal, store)
    catalogue = read_catalogue(catalogue_dir)
    last = catalogue.items[-1].id  # in the run's last batch: written after the PUT
    embed_batch, puts = encoder.embed_batch, []

    def embed_batch_while_a_put_lands(pixels):
        if not puts:
            puts.append(last)
            put(client, auth, last, draw_item("blue_bar", 7))
        return embed_batch(pixels)

    monkeypatch.setattr(encoder, "embed_batch", embed_batch_while_a_put_lands)
    report = ErrorReport.open(tmp_path / "errors.jsonl")
    try:
        options = IngestOptions(batch_size=2, workers=0, progress=False)
        summary = ingest_all(catalogue, journal, encoder, store, report, options)
    finally:
        report.close()

    item = store.get(last)
    assert puts and (item.image_source, item.category) == ("upload", "api")
    assert summary.skipped == 1  # left to the API (nothing else was stored before the run)
    assert set(store.item_ids(image_source="upload")) == {last}


@pytest.mark.parametrize("change", ["replaced", "deleted"])
def test_an_api_item_changed_over_the_api_while_ingest_re_embeds_it_stays_as_changed(
    change, settings, encoder, store, client, auth, catalogue_dir, tmp_path, monkeypatch
):
    """The upload pass embeds the API items the collection lacks (a new collection, a lost point)
    from the journal as the run read it; a PUT or DELETE of one meanwhile must not be undone."""
    store.ensure_collection(encoder.dim, encoder.identity)
    put(client, auth, "api-item", draw_item("red_round", 1))
    journal = UploadJournal(settings.upload_dir)
    seed_journal(journal, store)
    store.delete(["api-item"])  # the collection lacks it: the upload pass embeds it again
    embed_batch, changes = encoder.embed_batch, []

    def embed_batch_while_the_api_changes_it(pixels):
        if not changes:
            changes.append(change)
            if change == "replaced":
                put(client, auth, "api-item", draw_item("blue_bar", 2))
            else:
                assert client.delete("/v1/items/api-item", headers=auth).status_code == 404  # not stored
                (journal.folder / f"{point_id('api-item')}.json").unlink()  # as DELETE forgets it
        return embed_batch(pixels)

    monkeypatch.setattr(encoder, "embed_batch", embed_batch_while_the_api_changes_it)
    now = journal.catalogue()
    report = ErrorReport.open(tmp_path / "errors.jsonl")
    try:
        options = IngestOptions(workers=0, progress=False)
        sync_uploads(now, journal, encoder, store, report, options)
    finally:
        report.close()

    assert changes
    if change == "replaced":
        (entry,) = journal.catalogue().items
        assert store.get("api-item").image == entry.image != now.items[0].image
    else:
        assert not store.get_many(["api-item"])


def test_an_item_deleted_while_the_journal_is_seeded_does_not_come_back(
    settings, encoder, store, client, auth, monkeypatch
):
    """A deployment older than the journal: the first ingest copies the store's API items into
    it. A DELETE landing after the seed listed the store found no entry to remove, and the seed
    then wrote one: the next ingest brought the deleted item back from its photo."""
    store.ensure_collection(encoder.dim, encoder.identity)
    put(client, auth, "kept", draw_item("red_round", 1))
    put(client, auth, "deleted", draw_item("blue_bar", 2))
    journal = UploadJournal(settings.upload_dir)
    shutil.rmtree(journal.folder)  # as before the journal existed
    listed = store.stored_items

    def listed_then_deleted(image_source):
        items = list(listed(image_source))
        assert client.delete("/v1/items/deleted", headers=auth).status_code == 200
        return iter(items)

    monkeypatch.setattr(store, "stored_items", listed_then_deleted)
    seed_journal(journal, store)

    assert journal.complete and [item.id for item in journal.catalogue().items] == ["kept"]


def test_an_item_put_while_prune_runs_is_not_pruned(
    settings, encoder, store, client, auth, catalogue_dir, tmp_path, monkeypatch
):
    """`--prune` lists the store, then deletes what the catalogue no longer lists; a PUT of one
    of those ids in between (a Qdrant server takes both) made it an API item, and prune deleted it
    (its client had a 200; the item was gone until the next run restored it from the journal)."""
    store.ensure_collection(encoder.dim, encoder.identity)
    journal = UploadJournal(settings.upload_dir)
    seed_journal(journal, store)
    options = IngestOptions(workers=0, progress=False, prune=True)
    report = ErrorReport.open(tmp_path / "errors.jsonl")
    try:
        ingest_all(read_catalogue(catalogue_dir), journal, encoder, store, report, options)
        (catalogue_dir / "blue_bar" / "item3.jpg").unlink()  # left the catalogue: --prune deletes it
        item_ids = store.item_ids

        def listed_then_put(image_source=None):
            listed = list(item_ids(image_source=image_source))
            if image_source == "catalogue":
                put(client, auth, "blue_bar-item3", draw_item("blue_bar", 9))  # the API takes it over
            return iter(listed)

        monkeypatch.setattr(store, "item_ids", listed_then_put)
        summary = ingest_all(read_catalogue(catalogue_dir), journal, encoder, store, report, options)
    finally:
        report.close()

    assert summary.pruned == 0
    assert store.get("blue_bar-item3").image_source == "upload"


def test_seeding_goes_on_past_a_page_the_journal_holds_already(tmp_path, monkeypatch):
    monkeypatch.setattr("lookalike.journal.SEED_PAGE", 1)
    journal = UploadJournal(tmp_path / "uploads")
    first, second = (StoredItem(i, "api", f"{i}.png", "0" * 64, "m", "upload") for i in ("first", "second"))
    with journal.recording(first):  # PUT after the journal existed, before its first seed
        pass

    assert journal.seed([first, second], lambda item_ids: item_ids) == 1
    assert sorted(item.id for item in journal.catalogue().items) == ["first", "second"]


def test_an_item_deleted_over_the_api_is_pruned_by_the_next_ingest(settings, encoder, store, client, auth, tmp_path):
    store.ensure_collection(encoder.dim, encoder.identity)
    put(client, auth, "kept", draw_item("red_round", 1))
    put(client, auth, "deleted", draw_item("blue_bar", 2))
    journal = UploadJournal(settings.upload_dir)
    seed_journal(journal, store)
    (journal.folder / f"{point_id('deleted')}.json").unlink()  # a DELETE stopped between journal and store
    report = ErrorReport.open(tmp_path / "errors.jsonl")
    try:
        summary = sync_uploads(journal.catalogue(), journal, encoder, store, report, IngestOptions(progress=False))
    finally:
        report.close()

    assert summary.pruned == 1 and "prune" in summary.stages
    assert set(store.item_ids(image_source="upload")) == {"kept"}


def test_ingest_writers_share_item_locks_that_a_put_waits_for(tmp_path):
    """Parallel `--shard` workers each write batches that cover nearly every lock stripe: with
    exclusive locks their writes took turns. They hold them shared now; PUT and DELETE, which
    must not land under an ingest batch, still wait for every holder."""
    journal = UploadJournal(tmp_path / "uploads")
    other_worker, put_done = threading.Event(), threading.Event()

    def second_worker() -> None:
        with UploadJournal(tmp_path / "uploads").entries_while_locked(["a", "b"]):
            other_worker.set()

    def put() -> None:
        with UploadJournal(tmp_path / "uploads").item_locked("a"):
            put_done.set()

    with journal.entries_while_locked(["a", "c"]):
        threading.Thread(target=second_worker).start()
        assert other_worker.wait(5)  # not blocked by this worker
        threading.Thread(target=put).start()
        assert not put_done.wait(0.3)  # blocked while a worker writes its batch
    assert put_done.wait(5)
