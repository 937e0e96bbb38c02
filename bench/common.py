"""Shared helpers of the benchmarks: timing, percentiles, one JSON file and one line per figure."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.cpu import cpu_model

RESULTS_DIR = Path("bench/results")


def spread_sample(items: list, count: int) -> list:
    """``count`` items spread evenly over the list (every category of a sorted catalogue)."""
    return items[:: max(1, len(items) // count)][:count]


def unit_rows(rng: np.random.Generator, n: int, dim: int, *, colour: bool = False) -> np.ndarray:
    """``n`` random unit vectors; ``colour``: non-negative and skewed, like Hellinger histograms."""
    rows = rng.random((n, dim), dtype=np.float32) ** 4 if colour else rng.standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class FreeEncoder:
    """An encoder whose forward pass costs nothing: random unit vectors in its place, everything
    else (identity, workers' preprocessing, placement) the wrapped encoder's. Ingest with it
    measures the pipeline alone: what it would reach with an infinitely fast model."""

    def __init__(self, encoder: Any, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.identity, self.dim = f"{encoder.identity}+free", encoder.dim
        self.worker_preprocess, self.placement = encoder.worker_preprocess, encoder.placement

    def embed_batch(self, pixels: Any) -> np.ndarray:
        return unit_rows(self.rng, len(pixels), self.dim)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    values = np.asarray(samples_s) * 1000
    return {f"p{p}": round(float(np.percentile(values, p)), 3) for p in (50, 95, 99)}


def time_calls(call: Callable[[int], Any], repeat: int, warmup: int = 2) -> list[float]:
    """Seconds of ``call(i)`` for i in range(repeat), after ``warmup`` untimed calls."""
    for i in range(warmup):
        call(i)
    samples = []
    for i in range(repeat):
        started = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - started)
    return samples


def report(name: str, figures: list[dict[str, Any]]) -> None:
    """Print one line per figure (value, baseline, ratio, goal) and write bench/results/<name>.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for figure in figures:
        parts = [f"{key}={value}" for key, value in figure.items()]
        print(f"[{name}] " + " ".join(parts))
    print(f"[{name}] machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores")
    meta = {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
    }
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps({"meta": meta, "figures": figures}, indent=2))


def validation_figures(history: list[dict], best_epoch: int) -> dict:
    """The validation P@4 (of the embedding the head trains) of the epoch kept and of the last one
    evaluated: how far a run fell after its best (none without validation photos)."""
    curve = validation_curve(history)
    if not curve:
        return {}
    kept = next((p_at_4 for epoch, p_at_4 in curve if epoch == best_epoch), curve[-1][1])
    return {"validation_p_at_4": kept, "validation_last_p_at_4": curve[-1][1]}


def validation_curve(history: list[dict]) -> list[list]:
    """[epoch, validation P@4] of each evaluated epoch, by the P@4 that chose the epoch kept (the
    embedding the head trains, where retrieval ranks by another)."""
    return [[entry["epoch"], round(entry.get("trained P@4", entry["P@4"]), 3)] for entry in history if "P@4" in entry]
