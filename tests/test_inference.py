"""The service's inference thread: one forward pass for requests that queue behind each other."""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import service.inference as inference
from lookalike.errors import ModelLoadError
from lookalike.looks import looks_of
from service import release_freed_memory
from service.inference import InferenceThread
from tests.conftest import draw_item


def test_queued_requests_share_one_forward_pass_and_get_their_own_answers(encoder, monkeypatch):
    release, batches = threading.Event(), []

    def recording_looks_of(model, images):
        batches.append(len(images))
        if len(batches) == 1:
            release.wait(10)  # hold the first pass so the others queue behind it
        return looks_of(model, images)

    monkeypatch.setattr(inference, "looks_of", recording_looks_of)
    worker = InferenceThread(encoder, max_batch=32)
    photos = [[draw_item("red_round", 0)], [draw_item("blue_bar", 1)], [draw_item("green_square", 2)] * 2]
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(worker.looks, photos[0])
        while not batches:
            pass
        rest = [pool.submit(worker.looks, p) for p in photos[1:]]
        while worker._jobs.qsize() < 2:
            pass
        release.set()
        answers = [first.result(), *(r.result() for r in rest)]
    worker.close()
    assert batches == [1, 3]  # the two queued requests (3 images) went through together
    for images, answer in zip(photos, answers, strict=True):
        expected = looks_of(encoder, images)
        assert len(answer) == len(images)
        for got, want in zip(answer, expected, strict=True):
            np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-5)
            np.testing.assert_allclose(got.colour, want.colour)


def test_a_request_whose_pass_fails_gets_the_error_and_the_thread_goes_on(encoder, monkeypatch):
    calls = []

    def failing_once(model, images):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return looks_of(model, images)

    monkeypatch.setattr(inference, "looks_of", failing_once)
    worker = InferenceThread(encoder)
    with pytest.raises(RuntimeError, match="out of memory"):
        worker.looks([draw_item("red_round", 0)])
    assert len(worker.looks([draw_item("red_round", 0)])) == 1
    worker.close()


def test_a_photo_that_fails_a_shared_pass_fails_its_own_request_only(encoder, monkeypatch):
    poison, release, batches = draw_item("blue_bar", 1, size=(33, 33)), threading.Event(), []

    def failing_on_the_poison(model, images):
        batches.append(len(images))
        if len(batches) == 1:
            release.wait(10)  # hold the first pass so the others queue behind it
        if any(image.size == poison.size for image in images):
            raise RuntimeError("this photo breaks the model")
        return looks_of(model, images)

    monkeypatch.setattr(inference, "looks_of", failing_on_the_poison)
    worker = InferenceThread(encoder, max_batch=32)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(worker.looks, [draw_item("red_round", 0)])
        while not batches:
            pass
        good, bad = pool.submit(worker.looks, [draw_item("green_square", 2)]), pool.submit(worker.looks, [poison])
        while worker._jobs.qsize() < 2:
            pass
        release.set()
        assert len(first.result()) == 1 and len(good.result()) == 1
        with pytest.raises(RuntimeError, match="breaks the model"):
            bad.result()
    worker.close()
    assert batches == [1, 2, 1, 1]  # the shared pass, then each of its requests alone


def test_the_model_is_built_on_the_inference_thread_and_its_errors_surface():
    built_on = []

    def factory():
        built_on.append(threading.current_thread().name)
        raise ModelLoadError("could not load the encoder")

    with pytest.raises(ModelLoadError):
        InferenceThread(factory)
    assert built_on == ["inference"]


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_trim"), reason="malloc_trim is glibc's")
def test_memory_freed_on_another_thread_is_given_back_after_start_up():
    """What a model load frees on the inference thread stays in that thread's malloc arena until
    `release_freed_memory` (called at the end of `create_app`) hands it back."""

    def allocate_and_free():
        chunks = [bytearray(4096) for _ in range(20_000)]  # small blocks: the arena, not mmap
        del chunks

    worker = threading.Thread(target=allocate_and_free)
    worker.start()
    worker.join()
    assert release_freed_memory() is True
