"""The models a server runs: for each model name, its serving versions
(:class:`~serve.versions.ServedVersion`, each with its own predictor, dynamic batcher, queue and
metrics labels), and the loads, swaps and unloads of a model repository
(:mod:`serve.runtime.repository`).

``detector serve --model FILE`` is the one-model shorthand: a model called ``settings.name``
with one version, ``1``, that never changes. ``--repository DIR`` serves the folder's models
under their folder names, each version its policy selects.

**Leases.** An inference request is bound to one version as soon as its headers arrive (the
admission middleware takes a :class:`~serve.versions.Lease` from :meth:`ModelRegistry.lease`),
holds it until its answer is sent, and runs on that version even when another takes over
meanwhile.

**Swaps.** A new version is loaded and checked off the event loop: the backend reads the file and
its metadata, then a warm-up batch (one image, and the largest batch too with warm-up on) must
run and give outputs of the shapes the metadata promises (:mod:`serve.runtime.model_check`). Only
then does it take traffic: the model's table of serving versions is replaced in one assignment on
the event loop, so each request sees the old table or the new one, never a mix. The versions it
replaced are *retired*: they take no new requests, answer those they hold, and are stopped and
closed after their last lease is released. A model's loads run one at a time, and each first
waits until the versions the previous one retired are closed, so a model holds at most its
serving versions plus the one being loaded: two for the default policy (latest 1).

**Failures.** A version that fails to load leaves the serving versions as they were; the reason
is logged, counted (``detector_model_loads_total{outcome="failed"}``), kept for the repository
index, and raised to the load call (:class:`~serve.versions.LoadFailed`, answered 400). In poll
mode a failed version is tried again only once its files change.

**Control modes** (Triton's): ``none`` loads every model at start and never re-reads the folder;
``poll`` re-reads it every ``repository_poll_secs`` and loads new or changed versions once their
files have settled (unchanged across two reads), unloads removed ones; ``explicit`` loads the
``load_model`` models at start and then what the load and unload calls ask for.

Everything here runs on the event loop except loading, checking and closing a model, which run
on worker threads; no web framework is imported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from serve.http_metrics import Metrics
from serve.runtime.batching import DynamicBatcher
from serve.runtime.errors import ServeError
from serve.runtime.model_check import warm_up
from serve.runtime.predictor import Predictor
from serve.runtime.repository import (
    ModelEntry,
    RepositoryError,
    SettleTracker,
    UnknownModel,
    VersionPolicy,
    scan_model,
    scan_repository,
)
from serve.settings import ServeSettings, default_lanes
from serve.versions import (
    Lease,
    LoadFailed,
    Prepared,
    ServedVersion,
    StartupLoad,
    prepare_version,
    startup_load,
)

logger = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
"""Triton's model states, as the repository index reports them."""


class ControlOff(ServeError):
    """Load and unload calls in a control mode that does not take them (Triton: an error)."""

    status, code = 409, "model_control_off"


@dataclass
class ModelRecord:
    """One model name: what its folder holds, the versions serving it, and its history."""

    name: str
    entry: ModelEntry | None = None
    serving: dict[int, ServedVersion] = field(default_factory=dict)
    retiring: set[ServedVersion] = field(default_factory=set)
    failed: dict[int, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    reason: str = "not loaded"
    loading: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def state(self) -> str:
        if self.serving:
            return READY
        return LOADING if self.loading else UNAVAILABLE

    def default(self) -> ServedVersion | None:
        """The version a request without a version runs: the highest serving one."""
        return self.serving[max(self.serving)] if self.serving else None


class ModelRegistry:
    """Every model the server knows, by name; see the module's docstring."""

    def __init__(self, settings: ServeSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ModelRecord] = {}
        self.started = False
        self._tracker = SettleTracker()
        self._poll_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def repository(self) -> Path | None:
        return None if self.settings.repository is None else Path(self.settings.repository)

    @property
    def control_mode(self) -> str:
        """``none`` for the ``--model FILE`` shorthand, else the setting."""
        return "none" if self.repository is None else self.settings.model_control_mode

    # -------------------------------------------------------------------- life cycle

    async def start(self, startup: StartupLoad | Predictor | None = None) -> None:
        """Serve what :func:`startup_load` loaded (run here on a worker thread when not given;
        a ``Predictor``: the ``--model`` file, loaded already); in poll mode, start polling."""
        if not isinstance(startup, StartupLoad):
            startup = await asyncio.to_thread(startup_load, self.settings, startup)
        try:
            for name, entry in startup.entries.items():
                self.models[name] = ModelRecord(
                    name, entry, failed=dict(startup.failed.get(name, {}))
                )
                if entry.problem:
                    self.models[name].reason = entry.problem
            while startup.prepared:
                prepared = startup.prepared[0]
                if not prepared.warmed and self.settings.warmup:
                    await asyncio.to_thread(warm_up, prepared.predictor, prepared.max_batch)
                served = await self._serve(prepared)
                startup.prepared.pop(0)  # the served version owns its predictor from here
                record = self.models[prepared.model]
                record.serving = dict(sorted({**record.serving, served.version: served}.items()))
                self.metrics.loads.labels(served.model, served.label, "loaded").inc()
            for record in self.models.values():
                if not record.serving and record.failed:
                    record.reason = "failed to load: " + "; ".join(
                        reason for _, reason in record.failed.values()
                    )
        except BaseException:
            for prepared in startup.prepared:
                prepared.predictor.close()
            await self.stop()
            raise
        self._tracker.observe(startup.entries)  # what was loaded counts as settled
        self.started = True
        if self.control_mode == "poll":
            self._poll_task = asyncio.create_task(self._poll_forever(), name="repository-poll")
        for record in self.models.values():
            for served in record.serving.values():
                logger.info(
                    "serving %s version %s: %s (%s, %s) max batch %d, %d lane(s)", served.model,
                    served.label, served.files.path, served.predictor.backend.name,
                    served.predictor.metadata.precision, served.batcher.max_batch,
                    served.batcher.lanes,
                )  # fmt: skip

    async def stop(self) -> None:
        """Stop polling; let every version answer its running batches, then close them all."""
        self.started = False
        if self._poll_task is not None:
            self._poll_task.cancel()
            try:
                await self._poll_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - logged by the loop
                pass
            self._poll_task = None
        versions = [v for r in self.models.values() for v in (*r.serving.values(), *r.retiring)]
        for record in self.models.values():
            record.serving = {}
        for served in versions:
            if not served.closed.is_set():
                await served.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _serve(self, prepared: Prepared) -> ServedVersion:
        """Start a batcher for a prepared version (it takes traffic once in a serving table)."""
        settings, predictor = self.settings, prepared.predictor
        lanes = settings.lanes or default_lanes(
            predictor.backend.name, getattr(predictor.backend, "providers", None)
        )
        model, version = prepared.model, str(prepared.files.version)
        batcher = DynamicBatcher(
            predictor.run,
            max_batch=prepared.max_batch,
            max_delay_s=settings.max_delay_ms / 1000,
            queue_size=settings.queue_size,
            observer=lambda size, seconds: self.metrics.observe_batch(
                model, version, size, seconds
            ),
            lanes=lanes,
            unhealthy_after=settings.unhealthy_after,
            probe_interval_s=settings.probe_interval_s,
            # a batch running this long has wedged its lane (a hung driver call, a deadlock)
            stuck_after_s=max(3 * settings.timeout_s, 30.0),
        )
        await batcher.start()
        served = ServedVersion(prepared, batcher, self.metrics)
        record = self.models.get(model)
        if record is not None:  # a reload of a serving version number takes over its series
            for old in (*record.serving.values(), *record.retiring):
                if old.version == served.version:
                    old.owns_gauges = False
        self.metrics.track_version(model, version, lambda: batcher.depth)
        return served

    # -------------------------------------------------------------------- requests

    def default_model(self) -> str:
        """The model ``/v1/detect`` runs: ``--default-model``, the ``--model`` file's, or the
        only model of the repository.

        Raises:
            UnknownModel: none is set and the repository has several (or no) models.
        """
        if self.settings.default_model is not None:
            return self.settings.default_model
        if self.repository is None:
            return self.settings.name
        if len(self.models) == 1:
            return next(iter(self.models))
        names = ", ".join(sorted(self.models)) or "none"
        raise UnknownModel(
            f"no default model: this server serves several ({names}); name one in the path, "
            "/v1/models/NAME/detect, or start it with --default-model NAME"
        )

    def record(self, name: str) -> ModelRecord:
        """The record of a model this server knows.

        Raises:
            UnknownModel: no such model.
        """
        record = self.models.get(name)
        if record is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(f"unknown model {name!r}; this server serves: {known} "
                               "(GET /v1/models, POST /v2/repository/index)")  # fmt: skip
        return record

    def resolve(self, name: str | None, version: str | None) -> ServedVersion:
        """The serving version a request for ``name`` (``None``: the default model) and
        ``version`` (``None``: the model's default, its highest serving version) runs on.

        Raises:
            UnknownModel: no such model or version, or the model is not loaded (404).
        """
        name = self.default_model() if name is None else name
        record = self.record(name)
        if not record.serving:
            raise UnknownModel(
                f"model {name!r} is not loaded ({record.state}: {record.reason})"
                + ("" if self.control_mode != "explicit" else
                   f"; load it with POST /v2/repository/models/{name}/load")
            )  # fmt: skip
        if version is None:
            served = record.default()
            assert served is not None
            return served
        number = int(version) if version.isascii() and version.isdigit() else None
        if number is None or number not in record.serving:
            serving = ", ".join(str(v) for v in record.serving)
            raise UnknownModel(
                f"unknown version {version!r} of model {name!r}; serving version(s): {serving}"
            )
        return record.serving[number]

    def lease(self, name: str | None, version: str | None) -> Lease:
        """Bind an arriving request to the version it is for (:meth:`resolve`)."""
        return self.resolve(name, version).lease()

    def listing(self, name: str | None = None) -> list[tuple[ServedVersion, bool, bool]]:
        """Serving versions as (version, is its model's default, is the server's default
        model): the default model first, then by name; a model's versions newest first."""
        try:
            default = self.default_model()
        except UnknownModel:
            default = None
        names = [name] if name is not None else sorted(self.models, key=lambda n: (n != default, n))
        rows = []
        for model in names:
            record = self.record(model)
            top = record.default()
            for served in sorted(record.serving.values(), key=lambda s: -s.version):
                rows.append((served, served is top, model == default))
        return rows

    @property
    def health_problem(self) -> str | None:
        """Why inference is failing on some serving version, or ``None``."""
        for record in self.models.values():
            for served in record.serving.values():
                problem = served.batcher.health_problem
                if problem is not None:
                    if self.repository is None:
                        return problem
                    return f"model {served.model!r} version {served.label}: {problem}"
        return None

    # -------------------------------------------------------------------- repository calls

    def check_control(self) -> Path:
        """The repository, when the control mode takes load and unload calls.

        Raises:
            ControlOff: ``--model FILE``, or control mode none or poll.
        """
        root = self.repository
        if root is None:
            raise ControlOff(
                "this server serves one model file (--model); load and unload calls need a "
                "model repository: detector serve --repository DIR --model-control-mode explicit"
            )
        if self.control_mode != "explicit":
            raise ControlOff(
                f"the model control mode is {self.control_mode}: "
                + ("the server loaded every model at start and never changes them"
                   if self.control_mode == "none" else
                   "the server follows the repository folder itself")
                + "; load and unload calls need --model-control-mode explicit"
            )  # fmt: skip
        return root

    async def load(self, name: str, policy: VersionPolicy | None = None) -> None:
        """Load or reload model ``name`` from the repository (explicit mode): the versions its
        policy (``policy``: a load call's own) selects, loading those new or changed, retiring
        those no longer selected.

        Raises:
            ControlOff, UnknownModel, LoadFailed: see above; on LoadFailed the versions that
                served before still serve.
        """
        root = self.check_control()
        entry = await asyncio.to_thread(scan_model, root, name)
        if entry.problem is not None:
            raise LoadFailed(entry.problem)
        policy = policy or entry.config.policy
        wanted = policy.select(entry.versions)
        if not wanted:
            raise LoadFailed(entry.no_version(policy))
        record = self.models.setdefault(name, ModelRecord(name))
        await self._apply(record, entry, wanted, retry_failed=True)

    async def unload(self, name: str) -> None:
        """Stop serving model ``name``: new requests for it get 404; those it holds finish.

        Raises:
            ControlOff, UnknownModel.
        """
        root = self.check_control()
        record = self.models.get(name)
        if record is None:  # in the folder but never loaded: nothing to do (404 if not there)
            await asyncio.to_thread(scan_model, root, name)
            self.models[name] = ModelRecord(name)
            return
        async with record.lock:
            self._switch(record, {}, "unloaded")

    def _switch(self, record: ModelRecord, table: dict[int, ServedVersion], reason: str) -> None:
        """Make ``table`` the model's serving versions (one assignment: every request sees the
        old table or this one); retire the versions that left it."""
        old, record.serving = record.serving, dict(sorted(table.items()))
        record.reason = reason
        for version, served in old.items():
            if table.get(version) is not served:
                self._retire(record, served)

    def _retire(self, record: ModelRecord, served: ServedVersion) -> None:
        record.retiring.add(served)

        def drained() -> None:
            task = asyncio.get_running_loop().create_task(self._close(record, served))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

        served.retire(drained)
        logger.info("model %s version %s retired (%d request(s) to finish)", served.model,
                    served.label, served.leases)  # fmt: skip

    async def _close(self, record: ModelRecord, served: ServedVersion) -> None:
        try:
            await served.close()
        except Exception:  # noqa: BLE001 - a close that fails must not stop the server
            logger.exception("closing model %s version %s failed", served.model, served.label)
        finally:
            record.retiring.discard(served)
            logger.info("model %s version %s closed", served.model, served.label)

    async def _apply(self, record: ModelRecord, entry: ModelEntry, wanted: Iterable[int],
                     retry_failed: bool) -> None:  # fmt: skip
        """Serve ``wanted`` versions of ``entry``: keep the serving ones whose files did not
        change, load and check the others one at a time, then switch and retire the rest.

        Raises:
            LoadFailed: a version failed (nothing changed); with ``retry_failed`` False a
                version that failed before with the same files is not tried again and nothing
                changes, silently.
        """
        async with record.lock:
            if record.retiring:  # the versions of the previous swap must be gone first
                await asyncio.gather(*(s.closed.wait() for s in list(record.retiring)))
            record.entry = entry
            for gone in [v for v in record.failed if v not in entry.versions]:
                del record.failed[gone]  # its folder was removed: nothing to report any more
            wanted = sorted(wanted)
            keep = {
                v: s
                for v, s in record.serving.items()
                if v in wanted and s.files.fingerprint == entry.versions[v].fingerprint
            }
            to_load = [v for v in wanted if v not in keep]
            if not to_load and set(keep) == set(record.serving):
                return
            if not retry_failed and any(
                record.failed.get(v, ((), ""))[0] == entry.versions[v].fingerprint for v in to_load
            ):
                return
            loaded: dict[int, ServedVersion] = {}
            record.loading = True
            try:
                for version in to_load:
                    loaded[version] = await self._load_one(record, entry, version)
            except LoadFailed:
                for served in loaded.values():
                    await served.close()
                raise
            finally:
                record.loading = False
            self._switch(record, {**keep, **loaded}, "")
            logger.info("model %s now serves version(s) %s", record.name,
                        ", ".join(str(v) for v in record.serving))  # fmt: skip

    async def _load_one(
        self, record: ModelRecord, entry: ModelEntry, version: int
    ) -> ServedVersion:
        files = entry.versions[version]
        label = str(version)
        try:
            prepared = await asyncio.to_thread(prepare_version, self.settings, entry, files)
        except LoadFailed as exc:
            record.failed[version] = (files.fingerprint, exc.message)
            self.metrics.loads.labels(record.name, label, "failed").inc()
            logger.error("load failed, %s; the version(s) serving before keep serving",
                         exc.message)  # fmt: skip
            raise
        record.failed.pop(version, None)
        served = await self._serve(prepared)
        self.metrics.loads.labels(record.name, label, "loaded").inc()
        logger.info("model %s version %s loaded and checked: %s", record.name, label, files.path)
        return served

    # -------------------------------------------------------------------- poll mode

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.poll_once()
            except Exception:  # noqa: BLE001 - one failed poll must not end polling
                logger.exception("polling the repository %s failed", self.repository)

    async def poll_once(self) -> None:
        """Read the folder once: load settled new or changed versions, unload removed ones."""
        root = self.repository
        assert root is not None
        try:
            entries = await asyncio.to_thread(scan_repository, root)
        except RepositoryError as exc:
            logger.error("%s; the models serving keep serving", exc.message)
            return
        settled = self._tracker.observe(entries)
        for name, entry in entries.items():
            record = self.models.setdefault(name, ModelRecord(name, entry))
            if entry.problem is not None:
                record.entry, record.reason = entry, entry.problem
                continue
            if not entry.versions:
                if record.serving:
                    async with record.lock:
                        self._switch(record, {}, f"no version folders left in {entry.folder}")
                continue
            wanted = entry.config.policy.select(settled[name])
            if not wanted:
                continue  # nothing settled yet: keep serving what serves
            try:
                await self._apply(record, entry, wanted, retry_failed=False)
            except LoadFailed:
                pass  # logged and counted; the serving versions go on
        for name in [n for n in self.models if n not in entries]:
            record = self.models[name]
            async with record.lock:
                self._switch(record, {}, f"its folder was removed from {root}")
            del self.models[name]

    # -------------------------------------------------------------------- index

    async def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository index as Triton answers it: per model, one entry per version serving
        (READY), finishing its requests (UNLOADING) or failed (UNAVAILABLE, with the reason),
        or one entry without a version for a model with none of these."""
        names = set(self.models)
        root = self.repository
        if root is not None and self.control_mode == "explicit":
            try:  # explicit mode: what the folder holds now, loaded or not
                names |= set(await asyncio.to_thread(scan_repository, root))
            except RepositoryError as exc:
                logger.error("%s", exc.message)
        rows: list[dict[str, str]] = []
        for name in sorted(names):
            record = self.models.get(name) or ModelRecord(name)
            entries: dict[int, dict[str, str]] = {}
            for served in record.retiring:
                entries[served.version] = _row(name, served.label, UNLOADING, "unloaded")
            for version, (_, reason) in record.failed.items():
                entries[version] = _row(name, str(version), UNAVAILABLE, reason)
            for version, served in record.serving.items():
                entries[version] = _row(name, served.label, READY, "")
            if entries:
                rows += [entries[v] for v in sorted(entries)]
            else:
                rows.append({"name": name, "state": record.state, "reason": record.reason})
        return [r for r in rows if r["state"] == READY] if ready_only else rows


def _row(name: str, version: str, state: str, reason: str) -> dict[str, str]:
    return {"name": name, "version": version, "state": state, "reason": reason}
