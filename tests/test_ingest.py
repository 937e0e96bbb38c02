"""Ingest: folder and manifest, incremental reruns, prune, per-item failures, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ingest.__main__ import main as ingest_main
from ingest.decode import Batch, Decoded, chunk_size, iter_batches, merge
from ingest.pipeline import BatchWriter, IngestOptions, ingest, ingest_all
from ingest.report import ErrorReport
from lookalike.catalogue import CatalogueItem, read_catalogue
from lookalike.colour import colour_histogram
from lookalike.encoder import ImageEncoder
from lookalike.images import decode_image, sha256_hex
from lookalike.journal import UploadJournal
from lookalike.looks import Look
from lookalike.queries import NearDuplicateRule
from lookalike.settings import Settings
from lookalike.store import VectorStore
from tests.conftest import ENGINES, TEST_MODEL, draw_item, image_bytes, write_manifest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


def run_ingest(source: Path, encoder: ImageEncoder, store: VectorStore, report_path: Path, **options):
    store.ensure_collection(encoder.dim, encoder.identity)
    report = ErrorReport.open(report_path)
    try:
        options = IngestOptions(**{"batch_size": 4, "workers": 0, "progress": False, **options})
        return ingest(read_catalogue(source), encoder, store, report, options)
    finally:
        report.close()


def report_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_ingest_then_rerun_skips_everything(catalogue_dir, encoder, store, tmp_path):
    first = run_ingest(catalogue_dir, encoder, store, tmp_path / "r1.jsonl")
    assert (first.ingested, first.failed) == (12, 1)
    assert store.count() == 12
    (failure,) = report_lines(tmp_path / "r1.jsonl")
    assert failure["item_id"] == "red_round-broken" and failure["code"] == "unsupported_image"

    second = run_ingest(catalogue_dir, encoder, store, tmp_path / "r2.jsonl")
    assert (second.ingested, second.skipped, second.failed) == (0, 12, 1)
    assert store.count() == 12


def test_changed_image_is_re_embedded_and_changed_metadata_only_rewritten(catalogue_dir, encoder, store, tmp_path):
    rows = [{"id": f"sku-{i}", "image": f"blue_bar/item{i}.jpg", "category": "bar", "colour": "blue"} for i in range(4)]
    manifest = write_manifest(catalogue_dir, rows)
    run_ingest(manifest, encoder, store, tmp_path / "r.jsonl")
    before = store.get("sku-1").sha256

    draw_item("red_round", 3).save(catalogue_dir / "blue_bar/item1.jpg")
    rows[2]["colour"] = "navy"
    write_manifest(catalogue_dir, rows)
    summary = run_ingest(manifest, encoder, store, tmp_path / "r.jsonl")
    assert (summary.ingested, summary.updated, summary.skipped) == (1, 1, 2)
    assert store.get("sku-1").sha256 != before
    assert store.get("sku-2").metadata == {"colour": "navy"}


def test_an_item_deleted_during_a_run_does_not_stop_the_run(catalogue_dir, encoder, store, tmp_path, monkeypatch):
    """With a Qdrant server the API keeps running beside ingest: an item DELETEd after the run looked
    it up, whose metadata changed, cannot take its new payload. Its rewrite is skipped, not the run."""
    rows = [{"id": f"sku-{i}", "image": f"blue_bar/item{i}.jpg", "category": "bar", "colour": "blue"} for i in range(4)]
    manifest = write_manifest(catalogue_dir, rows)
    run_ingest(manifest, encoder, store, tmp_path / "r.jsonl")
    for row in rows:
        row["colour"] = "navy"
    write_manifest(catalogue_dir, rows)
    replace_payload = type(store).replace_payload

    def deleted_first(self, item):
        if item.id == "sku-1":
            self.delete([item.id])  # the API's DELETE lands between the lookup and the rewrite
        replace_payload(self, item)

    monkeypatch.setattr(type(store), "replace_payload", deleted_first)
    summary = run_ingest(manifest, encoder, store, tmp_path / "r.jsonl")
    assert (summary.updated, summary.skipped, summary.failed) == (3, 1, 0)
    assert [store.get(f"sku-{i}").metadata for i in (0, 2, 3)] == [{"colour": "navy"}] * 3
    assert not store.get_many(["sku-1"])  # not brought back by a payload without vectors
    assert run_ingest(manifest, encoder, store, tmp_path / "r.jsonl").ingested == 1  # the next run adds it


def test_manifest_product_ids_are_stored_and_reruns_skip(catalogue_dir, encoder, store, tmp_path):
    rows = [
        {"id": f"photo-{i}", "image": f"blue_bar/item{i}.jpg", "category": "bar", "product_id": f"sku-{i // 2}"}
        for i in range(4)
    ]
    rows[3].pop("product_id")  # a photo without a product is a product of its own
    manifest = write_manifest(catalogue_dir, rows)
    assert run_ingest(manifest, encoder, store, tmp_path / "r.jsonl").ingested == 4
    assert [store.get(f"photo-{i}").product for i in range(4)] == ["sku-0", "sku-0", "sku-1", "photo-3"]
    assert store.get("photo-0").metadata == {}  # product_id is a column of its own, not metadata
    rerun = run_ingest(manifest, encoder, store, tmp_path / "r.jsonl")
    assert (rerun.ingested, rerun.updated, rerun.skipped) == (0, 0, 4)


def test_stored_colour_vectors_are_the_colour_histograms(catalogue_dir, encoder, store, tmp_path):
    import numpy as np

    from lookalike.colour import colour_histogram
    from lookalike.points import point_id

    run_ingest(catalogue_dir, encoder, store, tmp_path / "r.jsonl")
    with store._call():
        (record,) = store._retrieve([point_id("green_square-item2")], with_vectors=True)
    expected = colour_histogram(Image.open(catalogue_dir / "green_square/item2.jpg"))
    np.testing.assert_allclose(record.vectors["colour"], expected, atol=1e-5)


def test_prune_removes_exactly_the_items_that_left(catalogue_dir, encoder, store, tmp_path):
    rows = [{"id": f"sku-{i}", "image": f"green_square/item{i}.jpg", "category": "sq"} for i in range(4)]
    manifest = write_manifest(catalogue_dir, rows)
    run_ingest(manifest, encoder, store, tmp_path / "r.jsonl")
    write_manifest(catalogue_dir, rows[:1] + rows[2:])

    kept = run_ingest(manifest, encoder, store, tmp_path / "r.jsonl")
    assert kept.pruned == 0 and store.count() == 4  # without --prune nothing is deleted
    pruned = run_ingest(manifest, encoder, store, tmp_path / "r.jsonl", prune=True)
    assert pruned.pruned == 1
    assert sorted(store.item_ids()) == ["sku-0", "sku-2", "sku-3"]


def test_each_kind_of_bad_file_fails_only_its_item(catalogue_dir, encoder, store, tmp_path):
    bad = catalogue_dir / "bad"
    bad.mkdir()
    good_jpeg = image_bytes(draw_item("red_round", 1))
    (bad / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("hello")
    (bad / "huge.png").write_bytes(image_bytes(Image.new("1", (20000, 20000)), "PNG"))
    (bad / "fine.png").write_bytes(image_bytes(draw_item("blue_bar", 0), "PNG"))
    rows = [
        {"id": name, "image": f"bad/{name}", "category": "bad"}
        for name in ("truncated.jpg", "empty.jpg", "text.jpg", "huge.png", "fine.png", "missing.jpg")
    ]
    rows.append({"id": "escape", "image": "../outside.jpg", "category": "bad"})
    manifest = write_manifest(catalogue_dir, [{**row, "id": row["id"].replace(".", "_")} for row in rows])

    summary = run_ingest(manifest, encoder, store, tmp_path / "r.jsonl", max_pixels=40_000_000)
    assert (summary.ingested, summary.failed) == (1, 6)
    codes = {line["item_id"]: line["code"] for line in report_lines(tmp_path / "r.jsonl")}
    assert codes == {
        "escape": "invalid_row",
        "truncated_jpg": "invalid_image",
        "empty_jpg": "invalid_image",
        "text_jpg": "unsupported_image",
        "huge_png": "image_too_large",
        "missing_jpg": "invalid_image",
    }
    assert [i for i in store.item_ids()] == ["fine_png"]


def test_cli_prints_summary_and_writes_report(settings: Settings, monkeypatch, capsys):
    for name, value in {
        "QDRANT_PATH": str(settings.qdrant_path),
        "CATALOGUE_DIR": str(settings.catalogue_dir),
        "MODEL_NAME": TEST_MODEL,
        "MODEL_PRETRAINED": "",
        "INGEST_ERROR_REPORT": str(settings.ingest_error_report),
        "DECODE_WORKERS": "1",
        "EMBEDDED_ENGINE": settings.embedded_engine,
        "NEAR_DUPLICATE_SIMILARITY": "0.99999",  # see SAME_LOOK
        "NEAR_DUPLICATE_COLOUR_SIMILARITY": "0.99",
    }.items():
        monkeypatch.setenv(name, value)
    assert ingest_main(["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "near-duplicate check skipped: an encoder with random weights" in out  # TEST_MODEL is random-init
    assert "ingested=12 skipped=0 updated=0 failed=1 pruned=0 duplicates=0 near_duplicates=0" in out
    assert "items=12" in out
    assert len(report_lines(settings.ingest_error_report)) == 1


def test_cli_refuses_a_locked_store_with_exit_2(settings: Settings, store: VectorStore, monkeypatch, capsys):
    monkeypatch.setenv("QDRANT_PATH", str(settings.qdrant_path))
    monkeypatch.setenv("CATALOGUE_DIR", str(settings.catalogue_dir))
    monkeypatch.setenv("EMBEDDED_ENGINE", settings.embedded_engine)
    assert ingest_main(["--no-progress"]) == 2
    assert "in use by another process" in capsys.readouterr().err


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from lookalike.store import VectorStore
    from ingest.__main__ import main

    upsert, calls = VectorStore.upsert, []

    def upsert_then_die(self, items, embeddings):
        upsert(self, items, embeddings)
        calls.append(1)
        if len(calls) == int(os.environ["KILL_AFTER_BATCHES"]):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as if the machine died

    VectorStore.upsert = upsert_then_die
    sys.exit(main(["--no-progress"]))
    """
)


def test_sigkill_mid_run_then_rerun_finishes_without_duplicates(settings: Settings, tmp_path: Path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "QDRANT_PATH": str(settings.qdrant_path),
        "CATALOGUE_DIR": str(settings.catalogue_dir),
        "MODEL_NAME": TEST_MODEL,
        "MODEL_PRETRAINED": "",
        "BATCH_SIZE": "2",
        "DECODE_WORKERS": "1",
        "INGEST_ERROR_REPORT": str(tmp_path / "r.jsonl"),
        "KILL_AFTER_BATCHES": "2",
        "EMBEDDED_ENGINE": settings.embedded_engine,
    }
    killed = subprocess.run([sys.executable, "-c", KILLER], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    rerun = subprocess.run(
        [sys.executable, "-m", "ingest", "--no-progress"], env=env, capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # 2 batches of 2 were committed before the kill: they are skipped, the other 8 embedded.
    assert "ingested=8 skipped=4 updated=0 failed=1" in rerun.stdout
    assert "items=12" in rerun.stdout


@pytest.mark.parametrize("workers", [0, 2])
def test_decoding_in_worker_processes_gives_the_same_result(catalogue_dir, encoder, store, tmp_path, workers):
    store.ensure_collection(encoder.dim, encoder.identity)
    report = ErrorReport.open(tmp_path / "r.jsonl")
    options = IngestOptions(batch_size=3, workers=workers, progress=False)
    summary = ingest(read_catalogue(catalogue_dir), encoder, store, report, options)
    report.close()
    assert (summary.ingested, summary.failed) == (12, 1)


@pytest.mark.parametrize(("batch_size", "chunk"), [(256, 16), (32, 16), (8, 8), (100, 4), (3, 3), (37, 37)])
def test_workers_decode_chunks_that_divide_the_batch(batch_size, chunk):
    assert chunk_size(batch_size) == chunk


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_assembled_from_chunks_keep_size_and_order(catalogue_dir, encoder, workers, monkeypatch):
    monkeypatch.setattr("ingest.decode.DECODE_CHUNK", 4)  # batches of 8 from chunks of 4
    items = read_catalogue(catalogue_dir).items  # 13, one of them broken
    stored = {items[2].id: sha256_hex(items[2].path.read_bytes())}  # unchanged: hashed, not decoded
    batches = list(
        iter_batches(items, stored, encoder.worker_preprocess, max_pixels=10**6, batch_size=8, workers=workers)
    )

    assert [len(b.decoded) for b in batches] == [8, 5]
    results = [d for b in batches for d in b.decoded]
    assert all(d.item is item for d, item in zip(results, items, strict=True))  # the main process's own items
    assert results[2].unchanged and results[2].colour is None
    assert sum(d.error is not None for d in results) == 1
    for d in results:
        if d.decoded:  # each item with its own hash and colour, not a neighbour's in the chunk
            data = d.item.path.read_bytes()
            assert d.sha256 == sha256_hex(data)
            np.testing.assert_array_equal(d.colour, colour_histogram(decode_image(data, 10**6)))
    for batch in batches:
        assert batch.pixels.shape[0] == sum(d.decoded for d in batch.decoded)
        expected = [
            encoder.worker_preprocess(decode_image(d.item.path.read_bytes(), 10**6)) for d in batch.decoded if d.decoded
        ]
        assert torch.equal(batch.pixels, torch.stack(expected))  # each photo's pixels, in catalogue order


def test_merge_concatenates_chunks_in_order_skipping_those_without_pixels():
    def chunk(ids: str, pixels: torch.Tensor | None) -> Batch:
        return Batch([Decoded(CatalogueItem(i, Path(i), i, "c"), None) for i in ids], pixels)

    first, last = torch.rand(2, 3, 4, 4), torch.rand(1, 3, 4, 4)  # floats: a transform that was not split
    merged = merge([chunk("ab", first), chunk("c", None), chunk("d", last)])
    assert [d.item.id for d in merged.decoded] == list("abcd")
    assert merged.pixels.dtype == torch.float32 and torch.equal(merged.pixels, torch.cat([first, last]))
    assert merge([chunk("c", None)]).pixels is None
    assert merge([chunk("ab", first)]).pixels is first  # one chunk: no copy


def test_shards_split_the_catalogue_and_prune_only_their_own(catalogue_dir, encoder, store, tmp_path):
    from lookalike.catalogue import Shard, take_shard

    full = read_catalogue(catalogue_dir)
    slices = [take_shard(read_catalogue(catalogue_dir), Shard(i, 3)) for i in range(3)]
    assert sorted(i.id for s in slices for i in s.items) == sorted(i.id for i in full.items)
    store.ensure_collection(encoder.dim, encoder.identity)
    for part in slices:
        report = ErrorReport.open(tmp_path / "r.jsonl")
        ingest(part, encoder, store, report, IngestOptions(workers=0, progress=False, prune=True))
        report.close()
    assert store.count() == 12  # no worker pruned another's items


def test_shard_syntax_is_checked():
    from lookalike.catalogue import Shard
    from lookalike.errors import CatalogueError

    assert Shard.parse("2/3") == Shard(2, 3)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(CatalogueError):
            Shard.parse(bad)


def test_upserts_retry_with_backoff_then_stop_with_the_cause(monkeypatch, encoder, store):
    import ingest.pipeline as pipeline
    from lookalike.errors import StoreUnavailable
    from lookalike.looks import looks_of
    from lookalike.points import StoredItem

    sleeps: list[float] = []
    monkeypatch.setattr(pipeline.time, "sleep", sleeps.append)
    store.ensure_collection(encoder.dim, encoder.identity)
    item = StoredItem("a", "c", "c/a.jpg", "0", encoder.identity)
    embedding = looks_of(encoder, [draw_item("red_round", 0)])
    calls = []
    real_upsert = store.upsert

    def flaky(items, embeddings):
        calls.append(1)
        if len(calls) < 3:
            raise StoreUnavailable("Qdrant is unreachable: connection refused")
        real_upsert(items, embeddings)

    monkeypatch.setattr(store, "upsert", flaky)
    pipeline.upsert_with_retry(store, [item], embedding)
    assert sleeps == [1.0, 2.0] and store.count() == 1

    monkeypatch.setattr(store, "upsert", lambda *a: (_ for _ in ()).throw(StoreUnavailable("down")))
    with pytest.raises(StoreUnavailable, match="gave up after 5 attempts"):
        pipeline.upsert_with_retry(store, [item], embedding)


@pytest.mark.parametrize("index_duplicates", [True, False])
def test_same_bytes_under_two_ids_is_reported_as_a_duplicate(catalogue_dir, encoder, store, tmp_path, index_duplicates):
    copy = catalogue_dir / "blue_bar" / "zz-copy.jpg"
    copy.write_bytes((catalogue_dir / "blue_bar" / "item1.jpg").read_bytes())
    summary = run_ingest(catalogue_dir, encoder, store, tmp_path / "r.jsonl", index_duplicates=index_duplicates)
    assert summary.duplicates == 1
    lines = [line for line in report_lines(tmp_path / "r.jsonl") if line["code"] == "duplicate"]
    assert lines == [
        {
            "item_id": "blue_bar-zz-copy",
            "path": "blue_bar/zz-copy.jpg",
            "code": "duplicate",
            "reason": "same image bytes as item 'blue_bar-item1'",
        }
    ]
    assert ("blue_bar-zz-copy" in set(store.item_ids())) is index_duplicates


#: The tiny random-init test encoder maps shifted shapes within 0.9995 of each other, so only
#: pixel-identical looks count here; the shipped defaults were measured on a trained encoder (README).
SAME_LOOK = NearDuplicateRule(min_similarity=0.99999, min_colour_similarity=0.99)


def save_reencoded_copy(catalogue_dir: Path) -> None:
    """The same photo uploaded again: other bytes (PNG), same pixels."""
    Image.open(catalogue_dir / "blue_bar/item1.jpg").save(catalogue_dir / "blue_bar/zz-copy.png")


@pytest.mark.parametrize(("batch_size", "index_duplicates"), [(4, True), (4, False), (32, True)])
def test_a_re_uploaded_photo_is_reported_as_a_near_duplicate(
    catalogue_dir, encoder, store, tmp_path, batch_size, index_duplicates
):
    save_reencoded_copy(catalogue_dir)
    summary = run_ingest(
        catalogue_dir,
        encoder,
        store,
        tmp_path / "r.jsonl",
        batch_size=batch_size,  # 4: the original is stored before the copy's batch; 32: both in one batch
        near_duplicates=SAME_LOOK,
        index_duplicates=index_duplicates,
    )
    (line,) = [line for line in report_lines(tmp_path / "r.jsonl") if line["code"] == "near_duplicate"]
    assert line["item_id"] == "blue_bar-zz-copy" and "'blue_bar-item1'" in line["reason"]
    assert (summary.near_duplicates, summary.duplicates) == (1, 0)
    assert ("blue_bar-zz-copy" in set(store.item_ids())) is index_duplicates
    assert summary.ingested == 12 + index_duplicates


@pytest.mark.parametrize("run_index_bytes", [1, None])
def test_near_duplicates_of_this_run_are_found_in_memory_or_past_its_capacity_by_the_store(
    catalogue_dir, encoder, store, tmp_path, monkeypatch, run_index_bytes
):
    import ingest.duplicates

    if run_index_bytes is not None:
        monkeypatch.setattr(ingest.duplicates, "RUN_INDEX_BYTES", run_index_bytes)
    asked = []
    look_alikes = store.look_alikes
    monkeypatch.setattr(store, "look_alikes", lambda *a: asked.append(1) or look_alikes(*a))
    save_reencoded_copy(catalogue_dir)
    summary = run_ingest(catalogue_dir, encoder, store, tmp_path / "r.jsonl", batch_size=4, near_duplicates=SAME_LOOK)
    (line,) = [line for line in report_lines(tmp_path / "r.jsonl") if line["code"] == "near_duplicate"]
    assert line["item_id"] == "blue_bar-zz-copy" and "'blue_bar-item1'" in line["reason"]
    assert summary.near_duplicates == 1
    assert bool(asked) is (run_index_bytes is not None)  # an empty store is not asked while memory holds the run


def test_a_copy_added_later_is_reported_against_the_stored_original(catalogue_dir, encoder, store, tmp_path):
    assert (
        run_ingest(catalogue_dir, encoder, store, tmp_path / "r1.jsonl", near_duplicates=SAME_LOOK).near_duplicates == 0
    )
    save_reencoded_copy(catalogue_dir)
    summary = run_ingest(catalogue_dir, encoder, store, tmp_path / "r2.jsonl", near_duplicates=SAME_LOOK)
    assert (summary.ingested, summary.skipped, summary.near_duplicates) == (1, 12, 1)
    (line,) = [line for line in report_lines(tmp_path / "r2.jsonl") if line["code"] == "near_duplicate"]
    assert "'blue_bar-item1'" in line["reason"]


def test_exact_duplicates_are_not_reported_twice(catalogue_dir, encoder, store, tmp_path):
    (catalogue_dir / "blue_bar/zz-copy.jpg").write_bytes((catalogue_dir / "blue_bar/item1.jpg").read_bytes())
    summary = run_ingest(catalogue_dir, encoder, store, tmp_path / "r.jsonl", near_duplicates=SAME_LOOK)
    assert (summary.duplicates, summary.near_duplicates) == (1, 0)


def test_batch_writer_keeps_order_and_hands_a_failure_to_the_caller():
    written = []

    def write(batch, embeddings):
        if batch == "boom":
            raise RuntimeError("disk full")
        written.append(batch)

    with pytest.raises(RuntimeError, match="disk full"), BatchWriter(write) as writer:
        for batch in ["a", "b", "boom", "c", "d", "e", "f"]:
            writer.put(batch, None)
    assert written == ["a", "b"]  # nothing after the failure is written


def test_every_file_is_read_once_and_unchanged_images_are_not_decoded(
    catalogue_dir, encoder, store, tmp_path, monkeypatch
):
    from collections import Counter

    import ingest.decode as decode

    reads, decodes = Counter(), Counter()
    real_read, real_decode = decode.read_bytes, decode.decode_image
    monkeypatch.setattr(decode, "read_bytes", lambda path: reads.update([str(path)]) or real_read(path))
    monkeypatch.setattr(decode, "decode_image", lambda data, limit: decodes.update(["x"]) or real_decode(data, limit))

    first = run_ingest(catalogue_dir, encoder, store, tmp_path / "r1.jsonl")
    assert first.ingested == 12 and set(reads.values()) == {1} and len(reads) == 13  # 12 photos + the broken one
    assert decodes["x"] == 13
    reads.clear(), decodes.clear()
    second = run_ingest(catalogue_dir, encoder, store, tmp_path / "r2.jsonl")
    assert (second.ingested, second.skipped) == (0, 12) and set(reads.values()) == {1}
    assert decodes["x"] == 1  # only the broken file, never stored, is tried again


def test_ingest_on_the_onnx_runtime_stores_torchs_vectors(catalogue_dir, encoder, onnx_export, settings, tmp_path):
    """ENCODER_RUNTIME=onnx in ingest: numpy pixels through a decode worker, the same vectors."""
    from lookalike.onnx_encoder import OnnxEncoder, variant_file

    stores = {}
    for name, runtime in (("torch", encoder), ("onnx", OnnxEncoder(variant_file(onnx_export, "fp32")))):
        store = VectorStore.from_settings(settings.model_copy(update={"qdrant_path": tmp_path / name}))
        summary = run_ingest(catalogue_dir, runtime, store, tmp_path / f"{name}.jsonl", workers=1)
        assert (summary.ingested, summary.failed) == (12, 1)
        stores[name] = store.labelled_vectors(100)
        store.close()
    (torch_rows, torch_colours, torch_labels), (onnx_rows, onnx_colours, onnx_labels) = stores["torch"], stores["onnx"]
    assert torch_labels == onnx_labels and np.array_equal(torch_colours, onnx_colours)
    assert (torch_rows * onnx_rows).sum(axis=1).min() >= 0.9999


@pytest.mark.parametrize("device", [None, torch.device("cpu")], ids=["numpy", "tensors"])
def test_a_near_duplicate_names_the_earlier_item_of_the_closest_colour_or_the_first_of_its_batch(device):
    import io

    from ingest.duplicates import NearDuplicates
    from ingest.report import IngestSummary

    def look(embedding: list[float], colour: list[float]) -> Look:
        return Look(*(np.asarray(v, np.float32) / np.linalg.norm(v) for v in (embedding, colour)))

    stream, summary = io.StringIO(), IngestSummary()
    rule = NearDuplicateRule(min_similarity=0.99, min_colour_similarity=0.9)
    check = NearDuplicates(None, rule, ErrorReport(stream), summary, ask_store=False, device=device).check
    items = [CatalogueItem(name, Path(name), name, "c") for name in ("a", "b", "c", "d", "e", "f", "g")]
    shape, other = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    first = [look(shape, [1, 0.3, 0]), look(shape, [1, 0.05, 0]), look(other, [1, 0, 0])]
    assert check(items[:3], first, set()) == {"b"}  # b after a in its batch (colours 0.971 alike)
    # d: a and b both alike, b by the closer colour (0.999 against 0.958); e: a's shape, no one's
    # colour; f and g: each other's only match, g after f in the batch
    later = [look(shape, [1, 0, 0]), look(shape, [0, 0, 1]), look([0, 0, 1], [0, 1, 0]), look([0, 0, 1], [0, 1, 0])]
    assert check(items[3:], later, set()) == {"d", "g"}
    reasons = {line["item_id"]: line["reason"] for line in map(json.loads, stream.getvalue().splitlines())}
    assert reasons["b"].startswith("looks the same as item 'a'")
    assert reasons["d"].startswith("looks the same as item 'b'") and "colour similarity 0.999" in reasons["d"]
    assert reasons["g"].startswith("looks the same as item 'f'")
    assert set(reasons) == {"b", "d", "g"} and summary.near_duplicates == 3


def test_the_runs_embeddings_held_as_tensors_find_what_numpy_finds_as_they_grow():
    """On a GPU the run's embeddings live there (`NearDuplicates(device=...)`); the same code on
    the CPU's tensors must report what numpy does, across the doublings of its storage."""
    import io

    from ingest.duplicates import NearDuplicates
    from ingest.report import IngestSummary

    rng = np.random.default_rng(0)
    embeddings, colours = rng.standard_normal((700, 64)), np.abs(rng.standard_normal((700, 64)))
    for copy in range(150, 700, 23):  # a slightly changed copy of one of the first 97 items
        original = copy % 97
        embeddings[copy] = embeddings[original] + 0.001 * rng.standard_normal(64)
        colours[copy] = colours[original]
    unit = [(rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32) for rows in (embeddings, colours)]
    looks = [Look(embedding, colour) for embedding, colour in zip(*unit, strict=True)]
    items = [CatalogueItem(f"i{n}", Path(f"{n}.jpg"), f"{n}.jpg", "c") for n in range(700)]
    reports = []
    for device in (None, torch.device("cpu")):
        stream, summary = io.StringIO(), IngestSummary()
        duplicates = NearDuplicates(None, SAME_LOOK, ErrorReport(stream), summary, ask_store=False, device=device)
        for start in range(0, 700, 100):
            duplicates.check(items[start : start + 100], looks[start : start + 100], set())
        reports.append(stream.getvalue())
        assert summary.near_duplicates == len(range(150, 700, 23))
    assert reports[0] == reports[1]


def test_the_near_duplicate_products_hold_numpy_to_one_blas_thread_and_give_it_back():
    from ingest.duplicates import BLAS, one_blas_thread

    def blas_threads() -> list[int]:
        return [library.num_threads for library in BLAS.select(user_api="blas").lib_controllers]

    before = blas_threads()
    assert before, "numpy loaded no BLAS library that threadpoolctl can see"
    with one_blas_thread():
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before


def test_an_empty_catalogue_cannot_prune_or_reindex_the_collection_away(cli_env, tmp_path, monkeypatch, capsys):
    """An unmounted share is an empty folder: `--prune` deleted every catalogue item of the collection."""

    def collection() -> tuple[int, str]:
        store = VectorStore.from_settings(cli_env)
        try:
            return store.count(), store.physical_name()
        finally:
            store.close()

    assert ingest_main(["--no-progress"]) == 0
    before = collection()
    empty = tmp_path / "unmounted"
    empty.mkdir()
    monkeypatch.setenv("CATALOGUE_DIR", str(empty))
    capsys.readouterr()
    for options in (["--prune"], ["--reindex", "--drop-old"], ["--prune", "--shard", "0/2"], ["--verify", "--prune"]):
        assert ingest_main([*options, "--no-progress"]) == 2
        assert "lists no items: --prune or --reindex would remove every catalogue" in capsys.readouterr().err
    assert collection() == before == (12, before[1])  # the same collection, every item kept
    assert ingest_main(["--no-progress"]) == 0  # without --prune an empty catalogue removes nothing
    assert "items=12" in capsys.readouterr().out
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "api-only"))  # no catalogue items: nothing to lose
    assert ingest_main(["--reindex", "--no-progress"]) == 0


def test_a_manifest_cut_short_cannot_prune_its_tail_away(cli_env, monkeypatch, capsys):
    """A manifest truncated by a failed copy lists only its head: `--prune` deleted the rest."""
    root = cli_env.catalogue_dir
    rows = [
        {"id": f"{p.parent.name}-{p.stem}", "image": str(p.relative_to(root)), "category": p.parent.name}
        for p in sorted(root.glob("*/item*.jpg"))
    ]
    manifest = write_manifest(root, rows)
    monkeypatch.setenv("CATALOGUE_DIR", str(manifest))
    assert ingest_main(["--no-progress"]) == 0
    assert "items=12" in capsys.readouterr().out
    text = manifest.read_text()
    manifest.write_text(text[: len(text) * 6 // 10])  # cut mid-row: 7 whole rows and a broken one
    listed = read_catalogue(manifest)
    assert (len(listed.items), len(listed.errors)) == (7, 1)

    for options in (["--prune"], ["--reindex", "--drop-old"], ["--prune", "--max-prune", "4"], ["--verify", "--prune"]):
        assert ingest_main([*options, "--no-progress"]) == 2
        assert "no longer lists 5 of the collection's 12 catalogue items (42%)" in capsys.readouterr().err
    assert ingest_main(["--no-progress"]) == 0
    assert "items=12" in capsys.readouterr().out  # nothing removed
    assert ingest_main(["--prune", "--max-prune", "5", "--no-progress"]) == 0  # told: so many really left
    assert "pruned=5" in capsys.readouterr().out
    manifest.write_text(text)
    assert ingest_main(["--no-progress"]) == 0
    write_manifest(root, rows[:-2])  # two items left: within the default 25%
    assert ingest_main(["--prune", "--no-progress"]) == 0
    assert "pruned=2" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["abc", "-1", "101%", "x%", "1.5"])
def test_max_prune_is_a_count_or_a_percentage(text, capsys):
    with pytest.raises(SystemExit):
        ingest_main(["--max-prune", text])
    assert "--max-prune" in capsys.readouterr().err


def test_a_field_made_filterable_after_the_first_ingest_is_indexed_by_the_next(cli_env, monkeypatch):
    assert ingest_main(["--no-progress"]) == 0
    monkeypatch.setenv("FILTERABLE_FIELDS", "brand,price:number")
    assert ingest_main(["--no-progress"]) == 0
    store = VectorStore.from_settings(cli_env)
    try:  # nothing left to add: the second run indexed them (local mode keeps no indexes at all)
        assert store.ensure_indexes(["brand", "price:number"]) == []
        assert store.count() == 12
    finally:
        store.close()


def test_a_pass_with_nothing_to_ingest_draws_no_progress_bar(catalogue_dir, encoder, store, tmp_path, capsys):
    """Every run ends with the pass over the API-added items; with none, it drew an empty bar
    ("ingest: 0img") under the catalogue's, twice after a reindex."""
    store.ensure_collection(encoder.dim, encoder.identity)
    report = ErrorReport.open(tmp_path / "r.jsonl")
    try:
        options = IngestOptions(batch_size=4, workers=0, progress=True)
        ingest_all(read_catalogue(catalogue_dir), UploadJournal(tmp_path / "uploads"), encoder, store, report, options)
    finally:
        report.close()

    bars = capsys.readouterr().err
    assert "13/13" in bars and "ingest: 0img" not in bars
