"""A damaged embedded store: a 503 that says what to do, `ingest --verify` repairs, backups restore
(issue 12, defect 3). Damage is done to the files of a store the test builds (Qdrant Edge)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ingest.__main__ import main as ingest_main
from ingest.pipeline import IngestOptions, ingest
from ingest.report import ErrorReport
from lookalike.backup import copy_uploads
from lookalike.catalogue import read_catalogue
from lookalike.journal import UploadJournal
from lookalike.looks import looks_of
from lookalike.points import COLOUR, EMBEDDING, StoredItem, point_id
from lookalike.settings import Settings
from lookalike.store import Record, VectorStore
from lookalike.store import edge as edge_store
from service import create_app
from tests.conftest import draw_item, image_bytes


def segment(settings: Settings) -> Path:
    (found,) = settings.qdrant_path.glob("collections/*/shard/segments/*")
    return found


def damage(settings: Settings, kind: str) -> None:
    if kind == "truncated_vectors":
        os.truncate(segment(settings) / "vector_storage-embedding/vectors/chunk_0.mmap", 100)
    elif kind == "lost_id_mapping":
        (segment(settings) / "mutable_id_tracker.mappings").unlink()
    elif kind == "lost_collection_json":
        (collection_json,) = settings.qdrant_path.glob("collections/*/collection.json")
        collection_json.unlink()
    elif kind == "lost_payloads":
        shutil.rmtree(segment(settings) / "payload_storage")


def serve(settings: Settings, encoder):
    app = create_app(settings, encoder=encoder)
    app.config["TESTING"] = True
    return app


def close(app) -> None:
    resources = app.extensions["lookalike"]
    resources.inference.close()
    resources.store.close()


@pytest.fixture(autouse=True)
def small_batches(monkeypatch) -> None:
    """Several writes per ingest: a lost id mapping then loses points the WAL does not replay."""
    monkeypatch.setenv("BATCH_SIZE", "4")


def ingest_all_items(capsys) -> None:
    assert ingest_main(["--no-progress"]) == 0
    assert "items=12" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["truncated_vectors", "lost_id_mapping", "lost_collection_json", "lost_payloads"])
def test_a_damaged_store_answers_503_store_damaged_and_verify_repairs_it(cli_env, encoder, capsys, kind):
    ingest_all_items(capsys)
    damage(cli_env, kind)

    app = serve(cli_env, encoder)
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["error"]["code"] == "store_damaged"
    assert "--verify" in ready.get_json()["error"]["message"]
    for response in (
        client.get("/v1/items/red_round-item1/similar?colour_weight=0.3"),
        client.post("/v1/search", data={"image": (io.BytesIO(image_bytes(draw_item("red_round", 1))), "a.jpg")}),
    ):
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.get_json()["error"]["code"] == "store_damaged"
        assert "/tmp" not in response.get_data(as_text=True)  # no file paths in answers
    close(app)

    assert ingest_main(["--verify", "--no-progress"]) == 0
    assert "items=12" in capsys.readouterr().out
    app = serve(cli_env, encoder)
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/items/red_round-item1/similar?k=3").status_code == 200
    close(app)


@pytest.mark.parametrize("kind", ["lost_collection_json", "lost_payloads", "lost_id_mapping"])
def test_plain_ingest_and_reindex_on_a_damaged_store_stop_with_exit_2_and_the_way_out(cli_env, capsys, kind):
    ingest_all_items(capsys)
    damage(cli_env, kind)
    for arguments in (["--no-progress"], ["--reindex", "--no-progress"]):
        assert ingest_main(arguments) == 2
        assert "--verify" in capsys.readouterr().err


def test_verify_re_embeds_a_point_with_an_unreadable_payload(cli_env, capsys):
    ingest_all_items(capsys)
    store = VectorStore.from_settings(cli_env)
    vectors = {EMBEDDING: np.ones(store_dim(store), np.float32), COLOUR: np.ones(512, np.float32)}
    with store._call():
        store._upsert([Record(point_id("red_round-item2"), {"junk": True}, vectors)])
    store.close()

    assert ingest_main(["--verify", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "repaired=1" in out and "items=12" in out
    store = VectorStore.from_settings(cli_env)
    assert store.get("red_round-item2").category == "red_round"
    store.close()
    assert "damaged" in cli_env.ingest_error_report.read_text()


def store_dim(store: VectorStore) -> int:
    return store.metadata()["dim"]


def test_backup_then_restore_serves_the_backed_up_items(cli_env, encoder, capsys, tmp_path, auth):
    ingest_all_items(capsys)
    app = serve(cli_env, encoder)
    photo = image_bytes(draw_item("blue_bar", 2), "PNG")
    put = app.test_client().put(
        "/v1/items/api-item", data={"image": (io.BytesIO(photo), "p.png"), "category": "blue_bar"}, headers=auth
    )
    assert put.status_code == 201
    close(app)

    assert ingest_main(["--backup", str(tmp_path / "backups")]) == 0
    (backup,) = (tmp_path / "backups").iterdir()
    damage(cli_env, "lost_id_mapping")
    shutil.rmtree(cli_env.upload_dir)

    assert ingest_main(["--restore", str(backup)]) == 0
    app = serve(cli_env, encoder)
    client = app.test_client()
    assert client.get("/readyz").get_json()["items"] == 13
    assert client.get("/v1/items/api-item/image").status_code == 200
    assert client.get("/v1/items/api-item/similar").status_code == 200
    close(app)


def test_a_backup_taken_while_puts_land_has_the_photo_of_every_entry(tmp_path, monkeypatch):
    """With a Qdrant server the API takes PUTs during a backup; the uploads were copied in one
    pass that listed the photos first, so an entry written meanwhile could be copied without its
    photo, and that item was lost to a restore."""
    journal = UploadJournal(tmp_path / "uploads")
    for index in range(3):
        add_over_the_api(journal, f"before-{index}")
    copytree, copied = shutil.copytree, []

    def copying_while_a_put_lands(source, destination):
        copied.append(Path(source).parent.name)
        if len(copied) == 1:
            add_over_the_api(journal, "during")  # its photo, then its entry, as PUT does
        return shutil.copy2(source, destination)

    def copytree_with_the_put(*args, **kwargs):
        return copytree(*args, **kwargs, copy_function=copying_while_a_put_lands)

    monkeypatch.setattr(shutil, "copytree", copytree_with_the_put)
    copy_uploads(journal.upload_dir, tmp_path / "copy")
    monkeypatch.undo()

    entries = UploadJournal(tmp_path / "copy").catalogue()
    assert {item.id for item in entries.items} >= {"before-0", "before-1", "before-2"}
    assert all(item.path.is_file() for item in entries.items)
    assert copied.index("uploads") > max(i for i, folder in enumerate(copied) if folder == "items")


def add_over_the_api(journal: UploadJournal, item_id: str) -> None:
    photo = image_bytes(draw_item("blue_bar", len(item_id)), "PNG")
    name = f"{hashlib.sha256(photo + item_id.encode()).hexdigest()}.png"
    item = StoredItem(item_id, "api", name, name[:64], "m", "upload")
    with journal.photo_saved(name, photo), journal.recording(item):
        pass


def test_restore_refuses_while_the_store_is_in_use(cli_env, capsys, tmp_path):
    ingest_all_items(capsys)
    assert ingest_main(["--backup", str(tmp_path / "b")]) == 0
    (backup,) = (tmp_path / "b").iterdir()
    holder = VectorStore.from_settings(cli_env)
    try:
        assert ingest_main(["--restore", str(backup)]) == 2
        assert "in use by another process" in capsys.readouterr().err
    finally:
        holder.close()


def test_verify_reports_stored_items_the_catalogue_no_longer_lists(cli_env, capsys):
    ingest_all_items(capsys)
    (cli_env.catalogue_dir / "blue_bar" / "item3.jpg").unlink()
    assert ingest_main(["--verify", "--no-progress"]) == 0
    lines = [json.loads(line) for line in cli_env.ingest_error_report.read_text().splitlines()]
    assert {"item_id": "blue_bar-item3", "code": "not_in_catalogue"}.items() <= next(
        line for line in lines if line["code"] == "not_in_catalogue"
    ).items()
    assert "items=12" in capsys.readouterr().out  # reported, kept: --prune removes it


def copying_fails_at(monkeypatch, folder_name: str) -> None:
    """The disk fills while `folder_name` (a backup's or restore's copy) is being copied."""
    copytree = shutil.copytree

    def failing(source, target, *args, **kwargs):
        if Path(source).name == folder_name:
            copytree(source, target, *args, **kwargs)  # written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return copytree(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", failing)


def test_a_backup_stopped_by_a_full_disk_leaves_nothing_that_looks_like_a_backup(
    cli_env, capsys, tmp_path, monkeypatch
):
    """A backup folder with the store copied and the uploads not was left as a backup to restore."""
    ingest_all_items(capsys)
    cli_env.upload_dir.mkdir(parents=True, exist_ok=True)
    (cli_env.upload_dir / "journal.jsonl").write_text("")
    with monkeypatch.context() as patched:
        copying_fails_at(patched, cli_env.upload_dir.name)
        assert ingest_main(["--backup", str(tmp_path / "backups")]) == 2
    assert "disk is full" in capsys.readouterr().err
    assert list((tmp_path / "backups").iterdir()) == []
    assert ingest_main(["--backup", str(tmp_path / "backups")]) == 0  # and the next one is whole
    (backup,) = (tmp_path / "backups").iterdir()
    assert (backup / "qdrant").is_dir() and (backup / "uploads" / "journal.jsonl").is_file()


def test_a_restore_stopped_by_a_full_disk_leaves_the_store_in_place(cli_env, encoder, capsys, tmp_path, monkeypatch):
    """The store was moved aside before the copy: a restore that failed midway served a partial copy."""
    ingest_all_items(capsys)
    assert ingest_main(["--backup", str(tmp_path / "backups")]) == 0
    (backup,) = (tmp_path / "backups").iterdir()
    (cli_env.catalogue_dir / "blue_bar" / "item0.jpg").unlink()
    assert ingest_main(["--prune", "--no-progress"]) == 0  # the store now differs from the backup: 11 items
    with monkeypatch.context() as patched:
        copying_fails_at(patched, "qdrant")
        assert ingest_main(["--restore", str(backup)]) == 2
    assert "disk is full" in capsys.readouterr().err
    assert sorted(p.name for p in cli_env.qdrant_path.parent.iterdir() if "qdrant" in p.name) == ["qdrant"]
    app = serve(cli_env, encoder)
    assert app.test_client().get("/readyz").get_json()["items"] == 11  # the store as it was, serving
    close(app)
    assert ingest_main(["--restore", str(backup)]) == 0
    app = serve(cli_env, encoder)
    assert app.test_client().get("/readyz").get_json()["items"] == 12
    close(app)


class RecordingShard:
    """An Edge shard that notes its updates and flushes in ``events``."""

    def __init__(self, shard, events: list) -> None:
        self._shard, self._events = shard, events

    def update(self, operation):
        self._events.append("update")
        return self._shard.update(operation)

    def flush(self):
        self._events.append("flush")
        return self._shard.flush()

    def __getattr__(self, name: str):
        return getattr(self._shard, name)


def test_the_point_floor_is_raised_only_once_the_write_is_on_disk(ingested, encoder, monkeypatch):
    """Edge syncs its log on ``flush`` only, the floor file at once: a floor raised before the flush
    could outlive the points in a power cut, and a sound store would be refused as damaged."""
    store, events = ingested, []
    physical = store.physical_name()
    store.folder.shards[physical] = RecordingShard(store.folder.shards[physical], events)
    write_json = edge_store._write_json

    def recording_write(path: Path, data) -> None:
        events.append((path.name, data.get("at_least")))
        write_json(path, data)

    monkeypatch.setattr(edge_store, "_write_json", recording_write)
    item = store.get("red_round-0")
    store.upsert([replace(item, id="new")], looks_of(encoder, [draw_item("red_round", 0)]))
    assert events == ["update", "flush", ("points.json", 13)]
    events.clear()
    store.delete(["new", "red_round-0"])  # lowered first: a cut mid-delete is no false alarm either
    assert events == [("points.json", 11), "update", "flush", ("points.json", 11)]


@pytest.mark.parametrize("sync_every_s", [3600.0, 0.0])
def test_ingests_writes_are_synced_once_their_interval_passed_and_at_the_end(
    ingested, encoder, monkeypatch, sync_every_s
):
    """A sync a batch was a third of ingest's write time and held the GIL its main thread needs:
    inside `writing_behind` upserts are synced once the interval has passed, and when the block
    ends; the API's writes to the store itself are synced each, also meanwhile."""
    store, events = ingested, []
    physical = store.physical_name()
    store.folder.shards[physical] = RecordingShard(store.folder.shards[physical], events)
    write_json = edge_store._write_json
    monkeypatch.setattr(edge_store, "_write_json", lambda path, data: (events.append(data), write_json(path, data)))
    item, look = store.get("red_round-0"), looks_of(encoder, [draw_item("red_round", 0)])

    with store.writing_behind(sync_every_s) as writes:
        writes.upsert([replace(item, id="new-1")], look)
        writes.upsert([replace(item, id="new-2")], look)
        if sync_every_s:
            assert events == ["update", "update"]
        else:
            assert events == ["update", "flush", {"at_least": 13}, "update", "flush", {"at_least": 14}]
        events.clear()
        store.upsert([replace(item, id="api")], look)  # an API write meanwhile
        assert events == ["update", "flush", {"at_least": 15}]
        events.clear()
    assert events == ["flush", {"at_least": 15}]
    assert store.count() == 15


def test_an_ingest_pass_ends_synced_with_its_floor_at_the_count(store, encoder, catalogue_dir, tmp_path):
    """Ingest syncs the store every `sync_every_s` and when the pass ends: with an interval no
    pass reaches, the floor (written only by a sync) is the count as soon as the pass returns."""
    store.ensure_collection(encoder.dim, encoder.identity)
    floor = store.folder.directory(store.physical_name()) / edge_store.FLOOR_FILE
    report = ErrorReport.open(tmp_path / "r.jsonl")
    try:
        options = IngestOptions(batch_size=2, workers=0, progress=False, sync_every_s=3600.0)
        summary = ingest(read_catalogue(catalogue_dir), encoder, store, report, options)
    finally:
        report.close()

    assert summary.ingested == 12
    assert json.loads(floor.read_text()) == {"at_least": 12} == {"at_least": store.count()}
