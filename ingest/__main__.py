"""``python -m ingest [CATALOGUE]``: bring the Qdrant collection in line with a catalogue.

Exit status: 0 when the run completed (items that failed are in the error report), 2 when the
run could not proceed (no catalogue, store locked or unreachable, model mismatch).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ingest.pipeline import IngestOptions, ingest_all, seed_journal
from ingest.quality import calibrate_collection, quality_advice
from ingest.rebuild import reindex, verify
from ingest.removal import PruneLimit, refuse_mass_removal
from ingest.report import ErrorReport
from lookalike.backup import backup, restore
from lookalike.catalogue import Shard, read_catalogue, take_shard
from lookalike.cli import description, int_range, program
from lookalike.device import default_workers
from lookalike.errors import LookalikeError
from lookalike.files import command_error
from lookalike.journal import UploadJournal
from lookalike.logs import configure_logging
from lookalike.queries import NearDuplicateRule
from lookalike.runtime import load_encoder
from lookalike.settings import Settings
from lookalike.store import VectorStore

log = logging.getLogger("ingest")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program("ingest"), description=description(__doc__))
    parser.add_argument(
        "catalogue",
        nargs="?",
        type=Path,
        help="folder of category sub-folders or CSV/JSONL manifest (default: CATALOGUE_DIR)",
    )
    parser.add_argument("--prune", action="store_true", help="delete items that left the catalogue")
    parser.add_argument(
        "--max-prune",
        type=prune_limit,
        default=PruneLimit(),
        metavar="N|P%",
        help="with --prune or --reindex: stop before any write when more than N items or P%% of the collection's "
        "catalogue items would be removed (default: %(default)s; a manifest cut short would remove its tail)",
    )
    parser.add_argument(
        "--reindex", action="store_true", help="build the current model's collection anew, then switch COLLECTION to it"
    )
    parser.add_argument("--drop-old", action="store_true", help="with --reindex: delete the previous collection")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every stored item (payload readable, vectors finite and unit length, collection readable), "
        "embed damaged ones again or rebuild the collection, then ingest as usual",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="only measure the shape/colour weight on the stored items again and keep it (runs after every ingest)",
    )
    parser.add_argument("--backup", type=Path, metavar="DIR", help="write a backup of the store and uploads, then stop")
    parser.add_argument("--restore", type=Path, metavar="BACKUP", help="put a backup back in place, then stop")
    parser.add_argument(
        "--batch-size", type=int_range(1, 1024), help="images per forward pass, 1-1024 (default: BATCH_SIZE)"
    )
    parser.add_argument("--workers", type=int_range(0, 64), help="decode processes, 0-64 (default: DECODE_WORKERS)")
    parser.add_argument("--error-report", type=Path, help="JSONL of failed items (default: INGEST_ERROR_REPORT)")
    parser.add_argument(
        "--skip-duplicates",
        action="store_true",
        help="do not index items whose bytes equal an earlier item's, or that look the same as a stored item "
        "(NEAR_DUPLICATE_SIMILARITY)",
    )
    parser.add_argument("--shard", help="i/n: handle only slice i of n (parallel workers, Qdrant server)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def prune_limit(text: str) -> PruneLimit:
    try:
        return PruneLimit.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()  # a bad setting is logged as every other stop is
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level)
        return run(args, settings)
    except OSError as e:  # a path in the settings that cannot be written, a full disk
        error: LookalikeError = command_error(e)
        log.error("ingest stopped", exc_info=True, extra={"code": error.code, "reason": error.message})
    except LookalikeError as e:
        error = e
        log.error("ingest stopped", extra={"code": error.code, "reason": error.message})
    print(f"ingest: error: {error.message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.backup or args.restore:
        done = backup(settings, args.backup) if args.backup else restore(settings, args.restore)
        print(f"{'backup written to' if args.backup else 'restored into'} {done}")
        return 0
    if args.calibrate:
        store = VectorStore.from_settings(settings)
        try:
            calibration = calibrate_collection(store)
        finally:
            store.close()
        print(calibration.line() if calibration else "calibration: the catalogue's categories cannot measure a ranking")
        return 0
    return run_ingest(args, settings)


def run_ingest(args: argparse.Namespace, settings: Settings) -> int:
    overrides = {
        "catalogue_dir": args.catalogue,
        "batch_size": args.batch_size,
        "decode_workers": args.workers,
        "ingest_error_report": args.error_report,
    }
    settings = settings.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    whole = read_catalogue(settings.catalogue_source())
    catalogue = take_shard(whole, Shard.parse(args.shard)) if args.shard else whole
    store = VectorStore.from_settings(settings)  # first: a locked store fails before the model loads
    encoder = load_encoder(settings)
    report = ErrorReport.open(settings.ingest_error_report)
    journal = UploadJournal(settings.upload_dir)  # items added over the API: kept across models
    device = encoder.placement.device
    workers = default_workers(device) if settings.decode_workers is None else settings.decode_workers
    options = IngestOptions(
        batch_size=settings.ingest_batch_size(device.type),
        workers=workers,
        max_pixels=settings.max_image_pixels,
        prune=args.prune,
        progress=not args.no_progress,
        index_duplicates=not args.skip_duplicates,
        near_duplicates=None if encoder.random_weights else NearDuplicateRule.from_settings(settings),
        filterable_fields=settings.filterable_fields,
        max_prune=args.max_prune,
    )
    if encoder.random_weights and NearDuplicateRule.from_settings(settings) is not None:
        print("near-duplicate check skipped: an encoder with random weights finds unrelated photos alike")
    try:
        if args.prune or args.reindex:
            refuse_mass_removal(whole, store, args.max_prune)
        if args.reindex:
            summary = reindex(catalogue, journal, encoder, store, report, options, drop_old=args.drop_old)
        elif args.verify:
            summary = verify(catalogue, journal, encoder, store, report, options)
        else:
            store.ensure_collection(encoder.dim, encoder.identity, settings.filterable_fields)
            store.ensure_indexes(settings.filterable_fields)  # fields added since the collection was built
            seed_journal(journal, store)
            summary = ingest_all(catalogue, journal, encoder, store, report, options)
        total = store.count()
        calibration = calibrate_collection(store)
    finally:
        report.close()
        store.close()
    print(
        f"{summary.line()} collection={settings.collection} items={total} model={encoder.identity} "
        f"device={encoder.placement.describe()!r}"
    )
    print(summary.stages_line())
    if calibration is not None:
        print(calibration.line())
        source = str(args.catalogue or settings.catalogue_dir or "CATALOGUE")
        advice = quality_advice(calibration, source, settings.model_checkpoint, device.type == "cuda")
        if advice:
            print(advice)
    if summary.failed:
        print(f"failed items are listed in {settings.ingest_error_report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
