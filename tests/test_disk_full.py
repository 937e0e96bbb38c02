"""A full disk is an error that says so (507 from the API, exit 2 from ingest), never a crash or a
half-written file; what was written before stays.

Qdrant Edge maps its files into memory: on a disk that fills up, a write kills the process with
SIGBUS (measured on a 3 MiB tmpfs: ingest exited 135). These tests stand in for a full disk by
reporting little free space (`lookalike.files.free_bytes`), or by a write failing with ENOSPC.
Beside them: what the project writes is synced to disk (a power cut leaves the old state or the new).
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from ingest.__main__ import main as ingest_main
from lookalike import files
from lookalike.errors import DiskFull, StoreOutOfSpace
from lookalike.files import MIB, on_tmpfs, unallocated_bytes, write_atomically
from lookalike.journal import LOCK_FILES, UploadJournal
from lookalike.looks import looks_of
from lookalike.points import StoredItem
from lookalike.queries import Ranking, SearchFilter
from lookalike.store import VectorStore
from tests.conftest import draw_item, image_bytes

NEARLY_FULL = 10 * MIB


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_atomically_replaces_the_file_or_leaves_it_as_it_was(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    write_atomically(target, b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"

    monkeypatch.setattr(files.os, "replace", no_space)
    with pytest.raises(DiskFull, match="the disk is full"):
        write_atomically(target, b"newer")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left


def recording_fsyncs(monkeypatch) -> list[str]:
    """What is synced from now on: "file" or "directory", in order."""
    synced: list[str] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        fsync(fd)

    monkeypatch.setattr(files.os, "fsync", recording_fsync)
    return synced


def test_write_atomically_puts_the_rename_on_disk_too(tmp_path, monkeypatch):
    """A rename is durable once its directory is synced: before, a power cut can bring back the old file."""
    synced = recording_fsyncs(monkeypatch)
    write_atomically(tmp_path / "state.json", b"new")
    assert synced == ["file", "directory"]


def test_a_forgotten_upload_entry_is_gone_from_disk_before_the_store_delete(tmp_path, monkeypatch):
    """Else a power cut after a DELETE could leave its journal entry, and the next ingest bring the item back."""
    journal = UploadJournal(tmp_path)
    journal.seed([], lambda item_ids: item_ids)
    item = StoredItem("new", "shoe", "a.jpg", "0" * 64, "model", "upload")
    with journal.recording(item):
        pass
    synced = recording_fsyncs(monkeypatch)
    with journal.forgetting(item.id):
        assert synced == ["directory"] and not journal.catalogue().items


def test_the_embedded_store_refuses_writes_on_a_nearly_full_disk(settings, encoder, ingested, monkeypatch):
    store = ingested
    item = store.get("red_round-0")
    (look,) = looks_of(encoder, [draw_item("red_round", 0)])
    monkeypatch.setattr(files, "free_bytes", lambda path: NEARLY_FULL)
    with pytest.raises(DiskFull, match="needs 64 MiB free on its disk, which has 10 MiB"):
        store.upsert([dataclasses.replace(item, id="new")], [look])
    with pytest.raises(DiskFull):
        store.delete([item.id])
    with pytest.raises(DiskFull):
        store.bound_to("another").create_physical(encoder.dim, encoder.identity)
    assert not (settings.qdrant_path / "collections" / "another").exists()
    assert store.count() == 12 and store.get(item.id) == item  # nothing changed; reads still work
    assert store.similar(item.id, SearchFilter(), Ranking(limit=3))

    monkeypatch.setattr(files, "free_bytes", lambda path: 100 * MIB)
    store.upsert([dataclasses.replace(item, id="new")], [look])  # once space is freed
    assert store.count() == 13


def test_a_put_on_a_full_disk_is_507_and_leaves_nothing_behind(client, ingested, settings, auth, monkeypatch):
    monkeypatch.setattr(files, "free_bytes", lambda path: NEARLY_FULL)
    form = {"image": (io.BytesIO(image_bytes(draw_item("blue_bar", 5), "PNG")), "new.png"), "category": "blue_bar"}
    answer = client.put("/v1/items/new-1", data=form, headers=auth, content_type="multipart/form-data")
    assert answer.status_code == 507
    assert answer.get_json()["error"]["code"] == "insufficient_storage"
    left = [path for path in settings.upload_dir.rglob("*") if path.is_file() and not LOCK_FILES.fullmatch(path.name)]
    assert left == []  # neither the photo nor a journal entry stayed
    assert client.get("/v1/items/new-1").status_code == 404
    assert client.get("/v1/items/red_round-0/similar?k=2").status_code == 200  # searching still works


def test_any_write_failing_with_enospc_is_507_not_500(client, ingested, auth, monkeypatch):
    monkeypatch.setattr("lookalike.journal.write_atomically", no_space)  # saving the photo
    form = {"image": (io.BytesIO(image_bytes(draw_item("blue_bar", 5), "PNG")), "new.png"), "category": "blue_bar"}
    answer = client.put("/v1/items/new-1", data=form, headers=auth, content_type="multipart/form-data")
    assert answer.status_code == 507
    assert answer.get_json()["error"] == {
        "code": "insufficient_storage",
        "message": "the server's disk is full: retry once space is freed",
        "request_id": answer.get_json()["error"]["request_id"],
    }


def test_ingest_on_a_full_disk_stops_with_one_line_and_resumes_later(cli_env, monkeypatch, capsys):
    monkeypatch.setattr(files, "free_bytes", lambda path: NEARLY_FULL)
    assert ingest_main(["--no-progress"]) == 2
    err = capsys.readouterr().err  # the log lines, then the one line for people
    assert err.splitlines()[-1].startswith("ingest: error: writing to the embedded store")
    assert "MiB free on its disk" in err and "Traceback" not in err

    monkeypatch.setattr(files, "free_bytes", lambda path: 100 * MIB)
    assert ingest_main(["--no-progress"]) == 0
    assert "ingested=12" in capsys.readouterr().out


@pytest.mark.parametrize("engine", ["qdrant-client"])
def test_local_mode_reports_sqlites_full_disk_as_such_not_as_damage(ingested, encoder, monkeypatch):
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # as sqlite3 sets it (measured on a full tmpfs)

    def upsert(*args, **kwargs):
        raise full

    monkeypatch.setattr(ingested.client, "upsert", upsert)
    (look,) = looks_of(encoder, [draw_item("red_round", 0)])
    with pytest.raises(DiskFull, match="disk of the embedded store is full"):
        ingested.upsert([ingested.get("red_round-0")], [look])


def test_a_path_ingest_cannot_write_is_one_line_and_exit_2(cli_env, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("INGEST_ERROR_REPORT", str(blocker / "errors.jsonl"))  # a file where a folder must be
    assert ingest_main(["--no-progress"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"ingest: error: File exists: {blocker}"


def test_tmpfs_is_told_by_the_longest_mount_above_a_path(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("overlay / overlay rw 0 0\ntmpfs /srv/fast tmpfs rw 0 0\n/dev/sda1 /srv/fast/disk ext4 rw 0 0\n")
    assert on_tmpfs(Path("/srv/fast/store"), mounts) and not on_tmpfs(Path("/srv/fast/disk/store"), mounts)
    assert not on_tmpfs(Path("/srv/fastest"), mounts) and not on_tmpfs(Path("/srv"), mounts)
    assert not on_tmpfs(Path("/srv/fast"), tmp_path / "no-such-file")


def test_holes_of_sparse_files_are_counted(tmp_path):
    (tmp_path / "sub").mkdir()
    with (tmp_path / "sub" / "sparse").open("wb") as f:
        f.truncate(8 * MIB)  # all hole
    (tmp_path / "dense").write_bytes(b"x" * MIB)
    assert 7 * MIB < unallocated_bytes(tmp_path) <= 8 * MIB


def test_a_store_on_a_nearly_full_tmpfs_is_not_opened_until_there_is_room(settings, ingested, monkeypatch):
    """On tmpfs, Edge fills its files' holes as it loads them (an 18 MiB store took more than the
    110 MiB it had, then SIGBUS): it is opened only with room for them; a 503 to retry until then."""
    ingested.close()
    monkeypatch.setattr("lookalike.store.edge.on_tmpfs", lambda path: True)
    monkeypatch.setattr(files, "free_bytes", lambda path: 70 * MIB)
    store = VectorStore.from_settings(settings)
    try:
        with pytest.raises(StoreOutOfSpace, match="on tmpfs"):
            store.count()
        monkeypatch.setattr(files, "free_bytes", lambda path: 10**12)
        assert store.count() == 12
    finally:
        store.close()
