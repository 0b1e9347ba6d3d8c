"""Decoding work is not spent on a request that can no longer be answered: when its deadline
passes, or its task is cancelled (the client went away: the admission middleware cancels it),
the request's images still waiting for a decoder are never decoded. Driven in-process on the
real ``run_images`` with a one-thread image pool and a decoder that records what it ran."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from serve import pipeline
from serve.errors import DeadlinePassed
from serve.http_metrics import Metrics

IMAGES = 6
DECODE_S = 0.3


class _Upload:
    def __init__(self, index: int) -> None:
        self.filename = f"{index}.png"

    async def read(self) -> bytes:
        return self.filename.encode()


@pytest.fixture
def decoded(monkeypatch) -> list[bytes]:
    """The payloads the (slow, recording) decoder was actually run on."""
    ran: list[bytes] = []
    lock = threading.Lock()

    def slow_prepare(predictor, data, max_pixels, name, keep_image=False):
        with lock:
            ran.append(data)
        time.sleep(DECODE_S)
        raise AssertionError("never reached: the request is over before the first decode ends")

    monkeypatch.setattr(pipeline, "prepare_upload", slow_prepare)
    return ran


def _state(pool: ThreadPoolExecutor, timeout_s: float) -> SimpleNamespace:
    settings = SimpleNamespace(timeout_s=timeout_s, max_pixels=1_000_000)
    return SimpleNamespace(settings=settings, metrics=Metrics(), image_pool=pool)


VERSION = SimpleNamespace(predictor=object(), batcher=object(), model="m", label="1")
"""The model version the request runs on (never reached: the request ends while decoding)."""


def test_images_waiting_for_a_decoder_are_not_decoded_past_the_deadline(decoded):
    with ThreadPoolExecutor(1) as pool:
        state = _state(pool, timeout_s=0.1)
        uploads = [_Upload(i) for i in range(IMAGES)]
        with pytest.raises(DeadlinePassed):
            asyncio.run(pipeline.run_images(state, VERSION, uploads, pipeline.PredictParams()))
        pool.shutdown(wait=True)
    assert decoded == [b"0.png"]  # the one that had started; the other 5 never ran
    assert state.metrics.rejected.labels("m", "1", "deadline")._value.get() == 1


def test_images_waiting_for_a_decoder_are_not_decoded_once_the_client_is_gone(decoded):
    async def client_leaves(state: SimpleNamespace) -> None:
        uploads = [_Upload(i) for i in range(IMAGES)]
        request = pipeline.run_images(state, VERSION, uploads, pipeline.PredictParams())
        task = asyncio.ensure_future(request)
        while not decoded:  # the first decode has started
            await asyncio.sleep(0.01)
        task.cancel()  # what the admission middleware does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task

    with ThreadPoolExecutor(1) as pool:
        asyncio.run(client_leaves(_state(pool, timeout_s=60)))
        pool.shutdown(wait=True)
    assert decoded == [b"0.png"]


def test_images_waiting_for_a_decoder_are_not_decoded_after_a_bad_one(monkeypatch):
    """A request fails on its first bad image (4xx); its other images are not decoded."""
    from serve.runtime.images import ImageError

    ran: list[bytes] = []

    def failing_prepare(predictor, data, max_pixels, name, keep_image=False):
        ran.append(data)
        time.sleep(0.05)
        raise ImageError(f"{name}: not an image")

    monkeypatch.setattr(pipeline, "prepare_upload", failing_prepare)
    with ThreadPoolExecutor(1) as pool:
        state = _state(pool, timeout_s=60)
        with pytest.raises(ImageError):
            asyncio.run(pipeline.run_images(state, VERSION, [_Upload(i) for i in range(IMAGES)],
                                            pipeline.PredictParams()))  # fmt: skip
        pool.shutdown(wait=True)
    # the freed worker may take the next image before the event loop sees the failure; the
    # other 4 are never decoded
    assert ran[0] == b"0.png" and len(ran) <= 2, ran
