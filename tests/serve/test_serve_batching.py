"""The dynamic batcher: batches form, results do not change, overload and deadlines are honest."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serve.runtime.batching import (
    BatcherClosed,
    DeadlineExceeded,
    DynamicBatcher,
    InferenceFailed,
    QueueFull,
    holding,
)
from serve.runtime.predictor import Predictor


def pictures(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    shapes = [(100, 140), (128, 128), (60, 200), (150, 90), (33, 47), (128, 64)]
    return [rng.integers(0, 256, (*shapes[i % 6], 3), dtype=np.uint8) for i in range(count)]


def test_results_are_the_same_alone_and_in_a_batch(serve_onnx):
    """Six images submitted together run as batches > 1; each one's detections equal those of
    ``Predictor.predict`` on that image alone."""
    predictor = Predictor.from_path(serve_onnx, providers=["CPUExecutionProvider"], threads=1)
    images = pictures(6)
    sizes: list[int] = []

    async def main() -> list:
        batcher = DynamicBatcher(
            predictor.run, max_batch=4, max_delay_s=0.5, queue_size=16,
            observer=lambda size, seconds: sizes.append(size),
        )  # fmt: skip
        await batcher.start()
        try:
            loop = asyncio.get_running_loop()
            tensors, ratios = predictor.prepare(images)
            return await asyncio.gather(
                *(batcher.submit(t, loop.time() + 60) for t in tensors)
            ), ratios
        finally:
            await batcher.stop()

    results, ratios = asyncio.run(main())
    assert sorted(sizes, reverse=True)[0] > 1 and max(sizes) <= 4 and sum(sizes) == 6
    assert max(r.batch_size for r in results) > 1
    for image, result, ratio in zip(images, results, ratios):
        assert result.outputs["output"].shape[0] == 1
        batched = predictor.postprocess(result.outputs, conf=0.2, iou=0.45)[0]
        alone = predictor.predict([image], conf=0.2, iou=0.45)[0]
        assert len(alone.scores) > 0
        np.testing.assert_array_equal(batched.classes, alone.classes)
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-5)
        from detector.core.preprocess import boxes_to_original

        boxes = boxes_to_original(batched.boxes, ratio, image.shape[:2])
        np.testing.assert_allclose(boxes, alone.boxes, atol=1e-3)


class Gate:
    """A network stand-in whose runs wait for the test to open a gate (to hold a batch in
    flight); records the batch sizes it ran."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.sizes: list[int] = []
        self.fail_next = False

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        assert self.open.wait(timeout=10), "test gate never opened"
        self.sizes.append(len(images))
        if self.fail_next:
            self.fail_next = False
            raise ValueError("the network failed on this batch")
        return {"output": images.reshape(len(images), -1)[:, :2] * 2}


def image(value: float) -> np.ndarray:
    return np.full((3, 2, 2), value, np.float32)


def test_full_queue_refuses_at_once_and_recovers():
    gate = Gate()

    async def main() -> None:
        batcher = DynamicBatcher(gate, max_batch=1, max_delay_s=0, queue_size=2)
        await batcher.start()
        loop = asyncio.get_running_loop()
        far = loop.time() + 30
        running = asyncio.create_task(batcher.submit(image(1), far))
        while gate.sizes == [] and batcher.depth:  # let the first one leave the queue
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(batcher.submit(image(v), far)) for v in (2, 3)]
        await asyncio.sleep(0.05)
        assert batcher.depth == 2
        with pytest.raises(QueueFull):
            await batcher.submit(image(4), far)  # refused without waiting for the gate
        gate.open.set()
        results = [await running] + [await task for task in waiting]
        assert [float(r.outputs["output"][0, 0]) for r in results] == [2.0, 4.0, 6.0]
        assert (await batcher.submit(image(5), loop.time() + 30)).outputs["output"][0, 0] == 10
        await batcher.stop()

    asyncio.run(main())
    assert gate.sizes == [1, 1, 1, 1]


def test_reservations_count_as_waiting_and_become_queue_places():
    """Requests still being read hold places: with 2 reserved the queue of 2 is full for the
    next arrival; a holder's submit uses its place; a released place is free again."""
    gate = Gate()

    async def main() -> None:
        batcher = DynamicBatcher(gate, max_batch=1, max_delay_s=0, queue_size=2)
        await batcher.start()
        far = asyncio.get_running_loop().time() + 30
        first, second = batcher.reserve(), batcher.reserve()
        assert first is not None and second is not None and batcher.pending == 2
        assert batcher.reserve() is None  # full: refused before anything is read
        with pytest.raises(QueueFull):
            await batcher.submit(image(9), far)  # without a reservation: no room either

        async def holder(reservation, value: float):
            with holding(reservation):
                await asyncio.sleep(0.01)  # "reading and decoding"
                return await batcher.submit(image(value), far)

        tasks = [asyncio.create_task(holder(r, v)) for r, v in ((first, 1), (second, 2))]
        await asyncio.sleep(0.1)
        assert batcher.pending == batcher.depth == 1  # one running, one queued, none reserved
        gate.open.set()
        assert [float((await t).outputs["output"][0, 0]) for t in tasks] == [2.0, 4.0]
        assert batcher.pending == 0
        third = batcher.reserve()
        with holding(third):  # ends without submitting (e.g. a corrupt upload): place returned
            assert batcher.pending == 1
        assert batcher.pending == 0 and not third.held
        await batcher.stop()

    asyncio.run(main())


def test_without_delay_requests_arriving_during_a_run_form_the_next_batch():
    gate = Gate()

    async def main() -> None:
        batcher = DynamicBatcher(gate, max_batch=8, max_delay_s=0, queue_size=8)
        await batcher.start()
        far = asyncio.get_running_loop().time() + 30
        first = asyncio.create_task(batcher.submit(image(1), far))  # runs alone, at once
        await asyncio.sleep(0.05)
        assert batcher.depth == 0
        later = [asyncio.create_task(batcher.submit(image(v), far)) for v in (2, 3, 4)]
        await asyncio.sleep(0.05)
        assert batcher.depth == 3
        gate.open.set()
        assert (await first).batch_size == 1
        assert [(await task).batch_size for task in later] == [3, 3, 3]
        await batcher.stop()

    asyncio.run(main())
    assert gate.sizes == [1, 3]


def test_deadline_and_abandoned_requests_are_not_run():
    gate = Gate()

    async def main() -> None:
        batcher = DynamicBatcher(gate, max_batch=1, max_delay_s=0, queue_size=8)
        await batcher.start()
        loop = asyncio.get_running_loop()
        blocker = asyncio.create_task(batcher.submit(image(1), loop.time() + 30))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(image(2), loop.time() + 0.1)  # waits behind the blocker
        gate.open.set()
        assert (await blocker).outputs["output"][0, 0] == 2
        assert (await batcher.submit(image(3), loop.time() + 30)).outputs["output"][0, 0] == 6
        await batcher.stop()

    asyncio.run(main())
    assert gate.sizes == [1, 1]  # the expired request never reached the network


def test_a_failed_batch_fails_its_requests_only():
    gate = Gate()
    gate.open.set()

    async def main() -> None:
        batcher = DynamicBatcher(gate, max_batch=4, max_delay_s=0.2, queue_size=8)
        await batcher.start()
        loop = asyncio.get_running_loop()
        gate.fail_next = True
        outcomes = await asyncio.gather(
            *(batcher.submit(image(v), loop.time() + 30) for v in (1, 2)), return_exceptions=True
        )
        # each request gets InferenceFailed, caused by what the network raised
        assert all(isinstance(o, InferenceFailed) for o in outcomes)
        assert all(isinstance(o.__cause__, ValueError) for o in outcomes)
        many = await batcher.submit_many([image(v) for v in (1, 2, 3)], loop.time() + 30)
        assert [float(r.outputs["output"][0, 0]) for r in many] == [2.0, 4.0, 6.0]
        assert all(r.batch_size == 3 for r in many)
        await batcher.stop()
        with pytest.raises(BatcherClosed):
            await batcher.submit(image(1), loop.time() + 30)

    asyncio.run(main())
    assert gate.sizes == [2, 3]


def test_finishers_run_on_the_lane_and_fail_only_their_own_image():
    """Each image's finisher gets its own rows, runs on the inference thread right after the
    batch (no hand-off back to the event loop in between), and its result comes back in
    ``finished``; one that raises fails its image's request, not the batch's other images."""
    gate = Gate()
    gate.open.set()
    threads: list[str] = []

    def double_first(rows: dict[str, np.ndarray]) -> float:
        threads.append(threading.current_thread().name)
        return float(rows["output"][0, 0]) * 10

    def broken(rows: dict[str, np.ndarray]) -> float:
        raise KeyError("no such output")

    async def main() -> None:
        batcher = DynamicBatcher(gate, max_batch=4, max_delay_s=0.2, queue_size=8)
        await batcher.start()
        loop = asyncio.get_running_loop()
        try:
            many = await batcher.submit_many(
                [image(v) for v in (1, 2, 3)], loop.time() + 30, [double_first, None, double_first]
            )
            assert [r.finished for r in many] == [20.0, None, 60.0]
            assert [float(r.outputs["output"][0, 0]) for r in many] == [2.0, 4.0, 6.0]
            assert many[0].finish_s > 0 and many[1].finish_s == 0
            outcomes = await asyncio.gather(
                batcher.submit_many([image(4)], loop.time() + 30, [broken]),
                batcher.submit_many([image(5)], loop.time() + 30, [double_first]),
                return_exceptions=True,
            )
            assert isinstance(outcomes[0], KeyError)
            assert outcomes[1][0].finished == 100.0 and outcomes[1][0].batch_size == 2
            with pytest.raises(ValueError, match="2 images but 1 finishers"):
                await batcher.submit_many([image(6), image(7)], loop.time() + 30, [None])
        finally:
            await batcher.stop()

    asyncio.run(main())
    assert gate.sizes == [3, 2]
    assert threads and all(name.startswith("inference") for name in threads)


def test_stop_answers_waiting_requests():
    gate = Gate()

    async def main() -> None:
        batcher = DynamicBatcher(gate, max_batch=8, max_delay_s=5, queue_size=8)
        await batcher.start()
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(batcher.submit(image(1), loop.time() + 30))
        await asyncio.sleep(0.05)
        assert batcher.depth == 1
        await batcher.stop()
        with pytest.raises(BatcherClosed):
            await waiting

    asyncio.run(main())
    assert gate.sizes == []


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher(Gate(), max_batch=0, max_delay_s=0, queue_size=1)
    with pytest.raises(ValueError, match="lanes"):
        DynamicBatcher(Gate(), max_batch=1, max_delay_s=0, queue_size=1, lanes=0)


class Rendezvous:
    """A network stand-in that counts the runs going on at once and waits at a
    ``threading.Barrier(2)`` for a second run: two runs that overlap both pass it; a run left
    alone there gives up after ``wait_s`` (so a test cannot hang) and breaks the barrier."""

    def __init__(self, wait_s: float) -> None:
        self.barrier = threading.Barrier(2)
        self.wait_s = wait_s
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.sizes: list[int] = []

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.sizes.append(len(images))
        try:
            self.barrier.wait(timeout=self.wait_s)
        except threading.BrokenBarrierError:
            pass
        finally:
            with self.lock:
                self.now -= 1
        return {"output": images.reshape(len(images), -1)[:, :2] * 2}


def run_four(network: Rendezvous, lanes: int) -> list[float]:
    """Four images submitted at once to a batcher of ``max_batch`` 2 (two batches); each
    request's output."""

    async def main() -> list[float]:
        batcher = DynamicBatcher(network, max_batch=2, max_delay_s=0, queue_size=8, lanes=lanes)
        await batcher.start()
        try:
            far = asyncio.get_running_loop().time() + 60
            results = await asyncio.gather(*(batcher.submit(image(v), far) for v in (1, 2, 3, 4)))
        finally:
            await batcher.stop()
        return [float(r.outputs["output"][0, 0]) for r in results]

    return asyncio.run(main())


def test_two_lanes_run_two_batches_at_once():
    """With two lanes the second batch starts while the first is still running: both meet at
    the barrier (which needs two runs at once) and finish; every request gets its own rows."""
    network = Rendezvous(wait_s=30)
    assert run_four(network, lanes=2) == [2.0, 4.0, 6.0, 8.0]
    assert network.most == 2 and sorted(network.sizes) == [2, 2]
    assert not network.barrier.broken  # they met: neither waited out its timeout alone


def test_one_lane_never_overlaps_batches():
    """With one lane a batch starts only after the previous one ended: the first run waits at
    the barrier alone until it gives up, the second never ran beside it."""
    network = Rendezvous(wait_s=0.3)
    assert run_four(network, lanes=1) == [2.0, 4.0, 6.0, 8.0]
    assert network.most == 1 and network.sizes == [2, 2]
    assert network.barrier.broken  # nobody joined the first run


def test_stop_waits_for_every_batch_in_flight():
    """stop() lets both running batches finish and answer their requests; the request still
    queued behind them gets BatcherClosed and never runs."""
    gate = Gate()

    async def main() -> None:
        batcher = DynamicBatcher(gate, max_batch=1, max_delay_s=0, queue_size=8, lanes=2)
        await batcher.start()
        loop = asyncio.get_running_loop()
        far = loop.time() + 30
        running = [asyncio.create_task(batcher.submit(image(v), far)) for v in (1, 2)]
        for _ in range(500):  # both batches leave the queue and start
            if batcher.in_flight == 2:
                break
            await asyncio.sleep(0.01)
        assert batcher.in_flight == 2
        queued = asyncio.create_task(batcher.submit(image(3), far))
        await asyncio.sleep(0.05)
        assert batcher.depth == 1  # no lane free for it
        stopping = asyncio.create_task(batcher.stop())
        await asyncio.sleep(0.1)
        assert not stopping.done()  # held by the two batches behind the closed gate
        gate.open.set()
        await stopping
        assert [float((await t).outputs["output"][0, 0]) for t in running] == [2.0, 4.0]
        with pytest.raises(BatcherClosed):
            await queued
        assert batcher.in_flight == 0

    asyncio.run(main())
    assert gate.sizes == [1, 1]
