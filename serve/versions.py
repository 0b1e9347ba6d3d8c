"""Model versions: loading and checking one (:func:`prepare_version`), what a server starts with
(:func:`startup_load`), and a version serving requests (:class:`ServedVersion`, with its own
dynamic batcher, so its own queue and limits, and metrics labels) and the requests' hold on it
(:class:`Lease`).

Loading and checking run off the event loop (on a worker thread, or before the server starts):
the backend reads the file and its metadata, then a warm-up batch (one image, and the largest
batch too with warm-up on) must run and give outputs of the shapes the metadata promises
(:mod:`serve.runtime.model_check`). A version that fails is :class:`LoadFailed`, naming the
model, the version, the file and the reason.

A retired version takes no new leases; it answers the requests that hold one and is closed after
the last is released (:mod:`serve.registry` decides when to retire it). No web framework here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve.http_metrics import Metrics
from serve.runtime.batching import DynamicBatcher, Reservation
from serve.runtime.errors import ServeError
from serve.runtime.memory import release_free_memory
from serve.runtime.model_check import ModelCheckError, warm_up
from serve.runtime.predictor import Predictor, backend_for
from serve.runtime.repository import (
    ModelConfig,
    ModelEntry,
    RepositoryError,
    VersionFiles,
    fingerprint,
    scan_repository,
)
from serve.settings import ServeSettings, check_lanes

logger = logging.getLogger(__name__)


class LoadFailed(ServeError):
    """A model version could not be loaded or failed its checks; the versions serving before
    keep serving (HTTP 400 to the load call, as Triton answers)."""

    status, code = 400, "load_failed"


# ---------------------------------------------------------------------------- loading


def load_predictor(settings: ServeSettings, path: Path | None = None) -> Predictor:
    """Open a model file (``settings.model`` by default) with the options its backend takes
    (``lanes > 1`` with a backend that runs one batch at a time is refused before the model is
    read)."""
    path = path if path is not None else settings.model
    assert path is not None
    backend = settings.backend or backend_for(path)
    check_lanes(backend, settings.lanes)
    options: dict[str, Any] = {}
    if backend == "onnxruntime":
        options = {"providers": settings.providers or None, "threads": settings.threads}
    elif backend == "torch":
        options = {"device": settings.device, "threads": settings.threads}
    elif backend == "tensorrt":
        options = {"device": settings.device, "allow_host_code": settings.allow_engine_host_code}
    return Predictor.from_path(path, backend, **options)


def effective_max_batch(
    predictor: Predictor, settings: ServeSettings, configured: int | None = None
) -> int:
    """A fixed-batch model runs its own batch; a dynamic one up to ``settings.max_batch`` (or the
    model's ``max_batch_size`` from its ``config.pbtxt``, ``configured``, when smaller), and no
    more than a TensorRT engine's optimisation profile allows."""
    fixed = predictor.metadata.batch
    if fixed is not None:
        return fixed
    largest = settings.max_batch
    if configured is not None and configured > 0:
        largest = min(largest, configured)
    profile_max = getattr(predictor.backend, "max_shape", None)
    if profile_max:
        largest = min(largest, int(profile_max[0]))
    return largest


@dataclass
class Prepared:
    """A version loaded and (when ``warmed``) checked, not serving yet."""

    model: str
    files: VersionFiles
    predictor: Predictor
    max_batch: int
    warmed: bool


def prepare_version(
    settings: ServeSettings, entry: ModelEntry, files: VersionFiles,
    predictor: Predictor | None = None,
) -> Prepared:  # fmt: skip
    """Load version ``files`` of ``entry`` (or take ``predictor``, already loaded from it) and
    check it: a warm-up batch of one image, and of the largest batch with ``settings.warmup``
    (runs on a worker thread, or before the server starts).

    Raises:
        LoadFailed: naming the model, the version, the file and the reason.
    """
    where = f"model {entry.name!r} version {files.version} ({files.path})"
    try:
        predictor = predictor or load_predictor(settings, files.path)
    except Exception as exc:  # noqa: BLE001 - a file that does not load must not stop the server
        raise LoadFailed(f"{where}: {_reason(exc, files.path)}") from exc
    try:
        max_batch = effective_max_batch(predictor, settings, entry.config.max_batch_size)
        warm_up(predictor, max_batch, None if settings.warmup else (1,))
    except Exception as exc:  # noqa: BLE001 - the same
        predictor.close()
        raise LoadFailed(f"{where}: {_reason(exc, files.path)}") from exc
    return Prepared(entry.name, files, predictor, max_batch, warmed=True)


def _reason(exc: BaseException, path: Path) -> str:
    """An exception as one line, without repeating the file's path."""
    if isinstance(exc, (ModelCheckError, ServeError, ValueError, OSError, NotImplementedError)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = (text.strip().splitlines() or [type(exc).__name__])[0]
    return text.removeprefix(f"{path}: ") or type(exc).__name__


@dataclass
class StartupLoad:
    """What the server starts with: the repository as read, the versions loaded, and the
    versions that failed (model -> version -> (fingerprint, reason))."""

    entries: dict[str, ModelEntry]
    prepared: list[Prepared] = field(default_factory=list)
    failed: dict[str, dict[int, tuple[tuple[int, ...], str]]] = field(default_factory=dict)


def single_model_entry(settings: ServeSettings) -> ModelEntry:
    """The ``--model FILE`` shorthand as a repository of one: ``settings.name``, version 1."""
    assert settings.model is not None
    path = Path(settings.model)
    files = VersionFiles(1, path, fingerprint(path))
    return ModelEntry(settings.name, path.parent, ModelConfig(), {1: files})


def startup_load(settings: ServeSettings, predictor: Predictor | None = None) -> StartupLoad:
    """Load what the server starts with (runs before the server listens, or on a worker thread).

    ``--model FILE``: that file (``predictor`` when already loaded), warmed up by the server's
    lifespan as before. A repository: every model in control modes none and poll, the
    ``load_model`` ones in explicit mode, each version its policy selects, loaded and checked.

    Raises:
        RepositoryError: the repository folder is missing; an unknown ``--load-model``; in
            control mode none, any model or version that cannot be loaded (the repository
            cannot change later, so a server without them would stay short of them), or no
            model at all.
    """
    if settings.repository is None:
        entry = single_model_entry(settings)
        loaded = predictor or load_predictor(settings)  # checks the lanes before reading it
        try:
            check_lanes(loaded.backend.name, settings.lanes)
        except ValueError:
            loaded.close()
            raise
        prepared = Prepared(entry.name, entry.versions[1], loaded,
                            effective_max_batch(loaded, settings), warmed=False)  # fmt: skip
        return StartupLoad({entry.name: entry}, [prepared])
    root = Path(settings.repository)
    entries = scan_repository(root)
    if settings.default_model is not None and settings.default_model not in entries:
        raise RepositoryError(
            f"--default-model {settings.default_model}: no such model in {root} (it has: "
            f"{', '.join(sorted(entries)) or 'none'})"
        )
    names = _startup_models(settings, entries, root)
    result = StartupLoad(entries)
    problems: list[str] = []
    for name in names:
        entry = entries[name]
        if entry.problem is not None:
            logger.warning("not serving %s: %s", name, entry.problem)
            problems.append(entry.problem)
            continue
        wanted = entry.config.policy.select(entry.versions)
        if not wanted:
            problems.append(entry.no_version())
            logger.warning("%s", problems[-1])
            continue
        for version in wanted:
            files = entry.versions[version]
            try:
                result.prepared.append(prepare_version(settings, entry, files))
            except LoadFailed as exc:
                logger.error("%s", exc.message)
                problems.append(exc.message)
                result.failed.setdefault(name, {})[version] = (files.fingerprint, exc.message)
    if settings.model_control_mode == "none":
        if problems:
            for prepared in result.prepared:
                prepared.predictor.close()
            raise RepositoryError(
                f"{root}: {len(problems)} problem(s) with the models to serve (control mode "
                "none loads every model at start and never again; fix them, or start with "
                "--model-control-mode poll or explicit to serve the others): " + "; ".join(problems)
            )
        if not result.prepared:
            raise RepositoryError(f"{root}: no models (expected NAME/1/model.onnx and the like)")
    return result


def _startup_models(
    settings: ServeSettings, entries: dict[str, ModelEntry], root: Path
) -> list[str]:
    if settings.model_control_mode != "explicit" or "*" in settings.load_model:
        return sorted(entries)
    unknown = [name for name in settings.load_model if name not in entries]
    if unknown:
        raise RepositoryError(
            f"--load-model {', '.join(unknown)}: no such model in {root} (it has: "
            f"{', '.join(sorted(entries)) or 'none'})"
        )
    return sorted(set(settings.load_model))


# ---------------------------------------------------------------------------- serving


class ServedVersion:
    """One loaded (model, version): its predictor, its own batcher, and the requests leased to
    it. Retired, it takes no new leases and is closed after the last is released."""

    def __init__(self, prepared: Prepared, batcher: DynamicBatcher, metrics: Metrics) -> None:
        self.model = prepared.model
        self.version = prepared.files.version
        self.files = prepared.files
        self.predictor = prepared.predictor
        self.batcher = batcher
        self.metrics = metrics
        self.leases = 0
        self.retired = False
        self.owns_gauges = True  # False once a reload of the same number took its series
        self.closed = asyncio.Event()
        self._on_drained: Callable[[], None] | None = None
        self._closing = False

    @property
    def label(self) -> str:
        """The version as the APIs and metrics name it."""
        return str(self.version)

    def lease(self) -> Lease:
        """Bind a request to this version until :meth:`Lease.release`."""
        assert not self.retired, "a retired version takes no new requests"
        self.leases += 1
        return Lease(self)

    def _released(self) -> None:
        self.leases -= 1
        if self.retired and self.leases == 0 and self._on_drained is not None:
            drained, self._on_drained = self._on_drained, None
            drained()

    def retire(self, on_drained: Callable[[], None]) -> None:
        """Take no new requests; call ``on_drained`` once the last leased one is answered."""
        self.retired = True
        if self.owns_gauges:
            self.metrics.retire_version(self.model, self.label)
        if self.leases == 0:
            on_drained()
        else:
            self._on_drained = on_drained

    async def close(self) -> None:
        """Stop the batcher (running batches answer first) and release the model, once (a
        second call waits for the first)."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        try:
            await self.batcher.stop()
            await asyncio.to_thread(self.predictor.close)
            # glibc keeps what the model freed in its arenas: without this, resident memory
            # stays as high as with the model loaded and climbs with each swap
            await asyncio.to_thread(release_free_memory)
        finally:
            if self.owns_gauges:
                self.metrics.forget_version(self.model, self.label)
            self.closed.set()


class Lease:
    """A request's hold on the version it was admitted to, and its place in that version's
    queue (:class:`~serve.runtime.batching.Reservation`, taken once its body has arrived)."""

    def __init__(self, version: ServedVersion) -> None:
        self.version = version
        self.reservation: Reservation = version.batcher.reservation()
        self._released = False

    def release(self, status: int | None = None) -> None:
        """Let go of the version (idempotent); ``status``: the answer's, counted per version."""
        if self._released:
            return
        self._released = True
        self.reservation.release()
        if status is not None:
            served = self.version
            served.metrics.model_requests.labels(served.model, served.label, str(status)).inc()
        self.version._released()
