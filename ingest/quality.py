"""After ingest: fit the ranking to this catalogue (`lookalike.calibration`), and tell the shop in
one line how well the encoder separates its categories, with the command that would improve it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import time
from pathlib import Path

from lookalike.calibration import MAX_GALLERY, METADATA_KEY, Calibration, calibrate
from lookalike.store import VectorStore

log = logging.getLogger(__name__)
#: The encoder "loses" here when its P@4 is below this share of its P@4 on its own training catalogue.
TRANSFER_RATIO = 0.8


def calibrate_collection(store: VectorStore) -> Calibration | None:
    """Measure the weights on the stored items and keep the best in the collection's metadata."""
    started = time.perf_counter()
    embeddings, colours, labels = store.labelled_vectors(MAX_GALLERY)
    calibration = calibrate(embeddings, colours, labels)
    if calibration is None:
        log.info("calibration skipped: the catalogue's categories cannot measure a ranking")
        return None
    calibration = dataclasses.replace(calibration, seconds=round(time.perf_counter() - started, 3))  # reads too
    store.update_metadata({METADATA_KEY: calibration.to_metadata()})
    log.info("calibrated", extra=calibration.to_metadata())
    return calibration


def quality_advice(calibration: Calibration, catalogue: str, checkpoint: Path | None, on_gpu: bool) -> str | None:
    """A line for the summary when fine-tuning on this catalogue would pay, else None."""
    embedding, colour = calibration.embedding_p_at_4, calibration.colour_p_at_4
    trained_on = _training_p_at_4(checkpoint)
    if embedding <= colour:
        reason = (
            f"the encoder separates this catalogue's categories no better than colour alone "
            f"(P@4 {embedding:.3f} vs {colour:.3f})"
        )
    elif trained_on is not None and embedding < TRANSFER_RATIO * trained_on:
        reason = (
            f"the encoder scores P@4 {embedding:.3f} here against {trained_on:.3f} on the catalogue it was trained on"
        )
    else:
        return None
    duration = "about 3 minutes on this GPU" if on_gpu else "about half an hour on 2 CPU cores"
    catalogue = shlex.quote(catalogue)  # the line is a command to paste
    return (
        f"quality: {reason}; fine-tune on it ({duration}), then re-index: python -m finetune {catalogue} "
        f"&& MODEL_CHECKPOINT=<the checkpoint it prints> python -m ingest {catalogue} --reindex"
    )


def _training_p_at_4(checkpoint: Path | None) -> float | None:
    """The checkpoint's held-out P@4 on its own training catalogue (training.json), if known."""
    if checkpoint is None:
        return None
    try:
        return float(json.loads((Path(checkpoint) / "training.json").read_text())["metrics"]["overall"]["P@4"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
