"""Dynamic batching: requests that arrive close together share one network run.

Each request submits one pre-processed image (``[3, H, W]`` float32). A collector task on the
event loop takes the first waiting image, waits up to ``max_delay`` for more (up to
``max_batch``), and runs the batch (stacked into ``[B, 3, H, W]``) on a worker thread, so
inference never blocks the event loop. Up to ``lanes`` batches run at once, each on its own
worker thread: with one lane batches never compete with each other for the cores; with two
(the server's default for ONNX Runtime on the CPU), a new batch starts while another is still
running, which keeps the cores busier where one run does not use them fully (only a backend
whose runs may be called from several threads at once may have more than one lane). A lone
request runs the same way with any number of lanes. While every lane is busy, new requests queue
up and form the next batch as soon as a lane is free, so with ``max_delay = 0`` (the server's
default) batching is work-conserving: no request ever waits for company while a lane is idle,
and under load batches grow by themselves. A delay adds itself to every request at low load; it
pays only where a batch costs much less per image than single runs (see BENCHMARKS.md, 'Serving
throughput against the raw backend').

Honest under overload: at most ``queue_size`` requests wait; a request arriving at a full queue
is refused at once (:class:`QueueFull`, the server's 503), and one whose deadline passes gets
:class:`DeadlineExceeded` (504) instead of an answer nobody waits for any more. Requests that
expire or are abandoned before their batch starts are dropped without running.

A request that is still being decoded is waiting for inference too: the server refuses a
request on arrival when the queue plus the reservations are full (:attr:`DynamicBatcher.has_room`,
before its body is read), and *reserves* its place (:meth:`Reservation.acquire`) once its body
has arrived, refusing it then if the queue filled up meanwhile. Without a reservation, every
request that arrived while the queue had room was read and decoded first and only refused on
submit, behind the decoding of all the others (see BENCHMARKS.md, 'Overload: 503s'); reserving
only once the body is in means a client that sends its body slowly, or never, holds no place.
The reservation is held for the request's task (:func:`holding`) and becomes its place in the
queue on submit.

Health: after ``unhealthy_after`` failed batches in a row (a backend that raises on every run,
e.g. after a sticky CUDA error), or when the collector task has died, or when every lane has been
running one batch for longer than ``stuck_after_s``, :attr:`DynamicBatcher.health_problem` says
why (the server's readiness turns 503). While batches keep failing, the batcher runs a probe
batch of one image (zeros of the last batch's image shape) every ``probe_interval_s`` on a free
lane; the first that succeeds makes it healthy again, as does any batch that succeeds.

Each image may come with a *finisher* (the server's post-processing with the request's own
thresholds): it runs on the lane thread as soon as the batch's network run is done, so a
request's answer returns to the event loop ready, without a second trip to a worker thread.

A batch is a stack of independent images: the network's rows do not interact, so a request's
outputs are the same alone and inside a batch (up to float rounding of the kernels).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

RunFn = Callable[[np.ndarray], dict[str, np.ndarray]]
# one request's post-processing: its rows of the batch's outputs (batch dimension kept, 1) -> its
# answer; run on the lane thread right after the batch (see ``submit_many``)
FinishFn = Callable[[dict[str, np.ndarray]], Any]
# called after each batch with (batch size, seconds the network took)
BatchObserver = Callable[[int, float], None]


class QueueFull(RuntimeError):
    """The wait queue is full; try again later (HTTP 503 with Retry-After)."""


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before its result was ready (HTTP 504)."""


class BatcherClosed(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


class InferenceFailed(RuntimeError):
    """The network's run raised for the request's batch (logged with its traceback once, by
    the batcher; the cause is the original exception)."""


@dataclass
class BatchResult:
    """One request's share of a batch: its rows of every output (batch dimension kept, 1)."""

    outputs: dict[str, np.ndarray]
    batch_size: int  # how many images ran together
    queue_s: float  # time from submit to the start of its batch
    inference_s: float  # the network time of the whole batch
    finished: Any = None  # what the request's finish function returned, if it gave one
    finish_s: float = 0.0  # the time that function took


class Reservation:
    """A place in a batcher's queue for one request: taken with :meth:`acquire` (once the
    request's body has arrived; :meth:`DynamicBatcher.reserve` takes it at once) and held until
    its images are queued (:meth:`DynamicBatcher.submit_many` takes it over) or it ends without
    them."""

    def __init__(self, batcher: DynamicBatcher, held: bool = True) -> None:
        self.batcher = batcher
        self.held = held
        if held:
            batcher._reserved += 1

    def acquire(self) -> bool:
        """Take the place now; ``False`` when ``queue_size`` requests are already pending."""
        if self.held:
            return True
        if not self.batcher.has_room:
            return False
        self.batcher._reserved += 1
        self.held = True
        return True

    def release(self) -> None:
        """Give the place back (idempotent)."""
        if self.held:
            self.held = False
            self.batcher._reserved -= 1


# the reservation of the request whose task is running (set by ``holding``)
_current: ContextVar[Reservation | None] = ContextVar("batcher_reservation", default=None)


@contextmanager
def holding(reservation: Reservation) -> Iterator[Reservation]:
    """Hold ``reservation`` for the code inside (one request's handling, in its task): a
    ``submit_many`` there uses the reserved place instead of asking for one; whatever is left of
    the reservation is released on exit."""
    token = _current.set(reservation)
    try:
        yield reservation
    finally:
        _current.reset(token)
        reservation.release()


@dataclass
class _Item:
    image: np.ndarray  # [3, H, W] float32
    deadline: float  # loop.time() by which it must be answered
    future: asyncio.Future[BatchResult]
    finish: FinishFn | None = None
    submitted: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Collects single images into batches and runs up to ``lanes`` batches at a time.

    Args:
        run: the network, ``[B, 3, H, W]`` float32 -> named outputs with leading dimension B
            (``Predictor.run``). Called on the worker threads only, from ``lanes`` threads at
            once when ``lanes > 1`` (so it must be safe to call concurrently then).
        max_batch: most images per network run.
        max_delay_s: how long the first image of a batch waits for others to join.
        queue_size: most requests waiting (not yet running); more are refused with
            :class:`QueueFull`.
        observer: optional callback ``(batch_size, inference_seconds)`` after each batch (metrics),
            called on the event loop.
        lanes: most batches running at once (worker threads); 1 runs one batch at a time.
        unhealthy_after: failed batches in a row that make it unhealthy.
        probe_interval_s: seconds between probe runs while unhealthy from failed batches.
        stuck_after_s: a batch running longer than this holds a stuck lane; every lane stuck
            is unhealthy (``None``: never).
    """

    def __init__(
        self,
        run: RunFn,
        max_batch: int,
        max_delay_s: float,
        queue_size: int,
        observer: BatchObserver | None = None,
        lanes: int = 1,
        unhealthy_after: int = 3,
        probe_interval_s: float = 1.0,
        stuck_after_s: float | None = None,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or max_delay_s < 0 or lanes < 1 or unhealthy_after < 1:
            raise ValueError(
                f"need max_batch >= 1, queue_size >= 1, max_delay_s >= 0, lanes >= 1; got "
                f"{max_batch}, {queue_size}, {max_delay_s}, {lanes}"
            )
        self.run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.queue_size = queue_size
        self.observer = observer
        self.lanes = lanes
        self._waiting: deque[_Item] = deque()
        self._reserved = 0  # places held by admitted requests not yet queued
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._free_lanes: asyncio.Semaphore | None = None
        self._in_flight: dict[asyncio.Task[None], float] = {}  # batches running: their start
        self.unhealthy_after = unhealthy_after
        self.probe_interval_s = probe_interval_s
        self.stuck_after_s = stuck_after_s
        self.failures = 0  # batches failed in a row
        self._image_shape: tuple[int, ...] | None = None  # of the last batch, for probes
        self._watch: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for their batch to start."""
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Batches running now (at most ``lanes``)."""
        return len(self._in_flight)

    @property
    def pending(self) -> int:
        """Requests waiting for inference: queued, or admitted and still being read/decoded."""
        return len(self._waiting) + self._reserved

    @property
    def has_room(self) -> bool:
        """Fewer than ``queue_size`` requests are pending: a new one may come in."""
        return self.pending < self.queue_size

    def reserve(self) -> Reservation | None:
        """Hold a place now, or ``None`` when ``queue_size`` requests are already pending."""
        return Reservation(self) if self.has_room else None

    def reservation(self) -> Reservation:
        """A place not taken yet: :meth:`Reservation.acquire` takes it (once the request's body
        has arrived), :func:`holding` hands it to ``submit_many``."""
        return Reservation(self, held=False)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def health_problem(self) -> str | None:
        """Why inference cannot be trusted now, or ``None`` when it is healthy."""
        if self._task is None:
            return "the batcher is not running"
        if self._task.done():
            return "the batcher's collector task has stopped"
        if self.failures >= self.unhealthy_after:
            return (f"the last {self.failures} batches failed; probing the model every "
                    f"{self.probe_interval_s:g} s")  # fmt: skip
        if self.stuck_after_s is not None and len(self._in_flight) >= self.lanes:
            now = time.perf_counter()
            if all(now - start > self.stuck_after_s for start in self._in_flight.values()):
                return (f"every lane ({self.lanes}) has been running one batch for more than "
                        f"{self.stuck_after_s:g} s")  # fmt: skip
        return None

    async def start(self) -> None:
        """Start the collector task and the worker threads (call from the event loop)."""
        if self.running:
            return
        self._wakeup = asyncio.Event()
        self._free_lanes = asyncio.Semaphore(self.lanes)
        self._executor = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="inference")
        self._task = asyncio.create_task(self._collect(), name="batcher")
        self._watch = asyncio.create_task(self._probe_while_failing(), name="batcher-probe")

    async def stop(self) -> None:
        """Stop collecting; the batches running finish and answer their requests first, then
        the requests still waiting get :class:`BatcherClosed`."""
        for task in (self._watch, self._task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # noqa: BLE001 - a collector that died is logged already
                    pass
        self._watch = self._task = None
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        while self._waiting:
            item = self._waiting.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherClosed("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, image: np.ndarray, deadline: float) -> BatchResult:
        """Queue one ``[3, H, W]`` image and wait for its outputs.

        Args:
            deadline: absolute ``loop.time()`` by which the answer is needed.

        Raises:
            QueueFull: ``queue_size`` requests are already waiting.
            DeadlineExceeded: the deadline passed first.
            BatcherClosed: the batcher is not running.
        """
        return (await self.submit_many([image], deadline))[0]

    async def submit_many(
        self, images: list[np.ndarray], deadline: float,
        finishers: Sequence[FinishFn | None] | None = None,
    ) -> list[BatchResult]:  # fmt: skip
        """Queue several images of one request together (admitted or refused as a whole: a
        request is admitted while fewer than ``queue_size`` requests are pending, or when it
        holds a :class:`Reservation` of this batcher) and wait for all of them.

        ``finishers`` (one per image, or ``None``) post-process each image's rows on the lane
        thread as soon as its batch has run, so the answer comes back to the event loop ready,
        without another hand-off to a worker thread; the result is ``BatchResult.finished``. An
        exception raised there fails that image's request only."""
        if not self.running or self._wakeup is None:
            raise BatcherClosed("the model is not loaded (starting up or shutting down)")
        reservation = _current.get()
        if reservation is not None and reservation.batcher is self and reservation.held:
            reservation.release()  # its place is taken by the images queued now
        elif self.pending >= self.queue_size:
            raise QueueFull(
                f"{len(self._waiting)} images are already waiting for inference and "
                f"{self._reserved} requests are being read"
            )
        loop = asyncio.get_running_loop()
        finishers = finishers or [None] * len(images)
        if len(finishers) != len(images):
            raise ValueError(f"{len(images)} images but {len(finishers)} finishers")
        items = [
            _Item(image, deadline, loop.create_future(), finish)
            for image, finish in zip(images, finishers)
        ]
        self._waiting.extend(items)
        self._wakeup.set()
        futures = [item.future for item in items]
        try:
            done = await asyncio.wait_for(
                asyncio.gather(*futures), timeout=max(deadline - loop.time(), 0.0)
            )
        except asyncio.TimeoutError as exc:
            raise DeadlineExceeded("the request deadline passed before inference finished") from exc
        finally:
            for future in futures:  # abandoned (deadline, client gone): skip them if not started
                if not future.done():
                    future.cancel()
        return list(done)

    async def _collect(self) -> None:
        """Form batches forever: wait for a free lane and a first image, give others
        ``max_delay`` to join, start the batch on that lane and go on with the next."""
        assert self._free_lanes is not None
        while True:
            await self._free_lanes.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:  # cancelled by stop(): the lane was never used
                self._free_lanes.release()
                raise
            task = asyncio.create_task(self._run_batch(batch), name="batch")
            self._in_flight[task] = time.perf_counter()
            task.add_done_callback(self._lane_freed)

    def _lane_freed(self, task: asyncio.Task[None]) -> None:
        assert self._free_lanes is not None
        self._in_flight.pop(task, None)
        self._free_lanes.release()

    async def _probe_while_failing(self) -> None:
        """Every ``probe_interval_s``, while the last ``unhealthy_after`` batches failed, run one
        image (zeros of the last batch's image shape) when a lane is idle; success ends the
        streak."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.probe_interval_s)
            if self.failures < self.unhealthy_after or self._image_shape is None:
                continue
            if len(self._in_flight) >= self.lanes:  # every lane busy: no room for a probe now
                continue
            probe = np.zeros((1, *self._image_shape), np.float32)
            try:
                await loop.run_in_executor(self._executor, self.run, probe)
            except Exception as exc:  # noqa: BLE001 - still failing: probe again later
                logger.warning("probe batch failed (%s: %s)", type(exc).__name__, exc)
                continue
            if self.failures >= self.unhealthy_after:
                logger.warning("probe batch succeeded after %d failed batches", self.failures)
            self.failures = 0

    async def _next_batch(self) -> list[_Item]:
        """The next batch: wait for a first image, then up to ``max_delay`` for others."""
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_stale(loop.time())
            if not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(self._waiting) < self.max_batch and self.max_delay_s > 0:
                close = loop.time() + self.max_delay_s
                while len(self._waiting) < self.max_batch and (left := close - loop.time()) > 0:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), timeout=left)
                    except asyncio.TimeoutError:
                        break
                self._drop_stale(loop.time())
            count = min(self.max_batch, len(self._waiting))
            batch = [self._waiting.popleft() for _ in range(count)]
            if batch:
                return batch

    def _drop_stale(self, now: float) -> None:
        """Remove waiting items that were abandoned or whose deadline passed."""
        if any(item.future.done() or item.deadline <= now for item in self._waiting):
            kept = [i for i in self._waiting if not i.future.done() and i.deadline > now]
            for item in self._waiting:
                if not item.future.done() and item.deadline <= now:
                    item.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            self._waiting = deque(kept)

    async def _run_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self._image_shape = batch[0].image.shape
        try:
            seconds, answers = await loop.run_in_executor(self._executor, self._timed_run, batch)
        except Exception as exc:  # noqa: BLE001 - the failure belongs to the requests
            self.failures += 1
            if self.failures <= self.unhealthy_after:  # then the probes report, not each batch
                logger.exception("inference failed for a batch of %d", len(batch))
            for item in batch:
                if not item.future.done():
                    failed = InferenceFailed(f"inference failed ({type(exc).__name__})")
                    failed.__cause__ = exc
                    item.future.set_exception(failed)
            return
        self.failures = 0
        if self.observer is not None:
            self.observer(len(batch), seconds)
        for item, (rows, finished, finish_s, error) in zip(batch, answers):
            if item.future.done():
                continue
            if error is not None:
                item.future.set_exception(error)
                continue
            item.future.set_result(BatchResult(
                rows, len(batch), started - item.submitted, seconds, finished, finish_s
            ))  # fmt: skip

    def _timed_run(self, batch: list[_Item]) -> tuple[float, list[_Answer]]:
        """On a lane thread: stack the ``[3, H, W]`` images into ``[B, 3, H, W]`` (off the event
        loop), run them, then split the outputs per image and run each image's finisher; the
        network's seconds and one answer per image."""
        stacked = np.stack([item.image for item in batch])
        start = time.perf_counter()
        outputs = self.run(stacked)
        seconds = time.perf_counter() - start
        return seconds, [_answer(item, row, outputs) for row, item in enumerate(batch)]


# one image's rows of the outputs, its finisher's result and seconds, or the error it raised
_Answer = tuple[dict[str, np.ndarray], Any, float, Exception | None]


def _answer(item: _Item, row: int, outputs: dict[str, np.ndarray]) -> _Answer:
    rows = {name: value[row : row + 1] for name, value in outputs.items()}
    if item.finish is None:
        return rows, None, 0.0, None
    start = time.perf_counter()
    try:
        return rows, item.finish(rows), time.perf_counter() - start, None
    except Exception as exc:  # noqa: BLE001 - answered to that image's request
        return rows, None, time.perf_counter() - start, exc
