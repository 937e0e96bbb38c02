"""All of the service's torch work on one thread; concurrent requests share a forward pass.

Why one thread: torch's OpenMP thread pools belong to the thread that calls torch. A forward pass
from a gunicorn request thread, once another thread owns a pool, measured about 30 % slower than
from a single thread (ViT-B-32, batch 1, 2 cores: 78 vs 60 ms); from one dedicated thread that
builds the model and runs every pass, it is as fast as the main thread.

Why batches: while one pass runs, other requests queue; the next pass takes all of them (up to
``max_batch`` images). There is no waiting timer, so a lone request pays nothing, and under load
the model runs at batch efficiency instead of once per image.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from lookalike.looks import Look, looks_of
from lookalike.runtime import Encoder

log = logging.getLogger(__name__)


@dataclass
class _Job:
    images: Sequence[Image.Image]
    done: Future = field(default_factory=Future)


class InferenceThread:
    """Owns the encoder: builds it (when given a factory) and runs every forward pass."""

    def __init__(self, encoder: Encoder | Callable[[], Encoder], max_batch: int = 32) -> None:
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        built: Future[Encoder] = Future()
        self._thread = threading.Thread(target=self._run, args=(encoder, built), name="inference", daemon=True)
        self._thread.start()
        self.encoder = built.result()  # the model's own errors (ModelLoadError) surface here

    def looks(self, images: Sequence[Image.Image]) -> list[Look]:
        """The looks of these images, computed on the inference thread (maybe with others')."""
        job = _Job(images)
        self._jobs.put(job)
        return job.done.result()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _run(self, encoder: Encoder | Callable[[], Encoder], built: Future) -> None:
        try:
            model = encoder() if callable(encoder) else encoder
        except BaseException as e:  # handed to the constructor, which re-raises it
            built.set_exception(e)
            return
        built.set_result(model)
        while (jobs := self._next_batch()) is not None:
            self._embed(model, jobs)

    def _next_batch(self) -> list[_Job] | None:
        """The next job and every job queued behind it, up to ``max_batch`` images; None: stop."""
        first = self._jobs.get()
        if first is None:
            return None
        jobs, images = [first], len(first.images)
        while images < self.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # stop after this batch
                break
            jobs.append(job)
            images += len(job.images)
        return jobs

    @classmethod
    def _embed(cls, model: Encoder, jobs: list[_Job]) -> None:
        try:
            looks = looks_of(model, [image for job in jobs for image in job.images])
        except Exception as e:
            if len(jobs) > 1:  # one request's photo must not fail the others': each alone
                log.warning("shared forward pass failed, retried one request at a time", extra={"requests": len(jobs)})
                for job in jobs:
                    cls._embed(model, [job])
                return
            log.exception("forward pass failed", extra={"images": len(jobs[0].images)})
            jobs[0].done.set_exception(e)  # the request gets the error, never hangs
            return
        if len(jobs) > 1:
            log.debug("requests shared a forward pass", extra={"requests": len(jobs), "images": len(looks)})
        start = 0
        for job in jobs:
            job.done.set_result(looks[start : start + len(job.images)])
            start += len(job.images)
