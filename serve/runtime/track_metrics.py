"""Prometheus metrics of a long-running ``detector track``, in a registry of its own.

Every series has the label ``source`` (the source's name, as in its output files):

- ``detector_track_frames_read_total``: frames the source handed out
  (:attr:`SourceStats.frames <serve.runtime.sources.SourceStats>`);
- ``detector_track_frames_processed_total``: frames detected, tracked and written;
- ``detector_track_frames_dropped_total``: live frames replaced by a newer one before they were
  taken (``SourceStats.dropped``);
- ``detector_track_frames_corrupt_total``: frames that failed to decode and were skipped
  (``SourceStats.decode_errors``);
- ``detector_track_reconnects_total``: attempts to reopen a dropped live stream
  (``SourceStats.reconnects``);
- ``detector_track_latency_seconds``: histogram of capture to result: from the moment a live
  frame arrived from the stream (a file's frame: was decoded) to the moment its JSON line, video
  frame and preview were written;
- ``detector_track_active_tracks``: confirmed tracks in the source's latest frame;
- ``detector_track_source_running``: 1 while the source is read, 0 once it has ended or failed
  to open.

The ``SourceStats`` counts are read when Prometheus scrapes (a collector of their own), so they
are never out of step with the sources; the rest is updated by the tracking loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from serve.runtime.sources import SourceStats

__all__ = ["LATENCY_BUCKETS", "TrackMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds, capture to result: a frame on time takes one network run plus tracking (tens of
milliseconds on a GPU, up to about a second on a small CPU); longer means a backlog."""

# metric name (without _total) -> (SourceStats field, help text)
_STATS_COUNTERS = {
    "detector_track_frames_read": ("frames", "Frames the source handed out"),
    "detector_track_frames_dropped": (
        "dropped", "Live frames replaced by a newer one before they were taken (stale)",
    ),
    "detector_track_frames_corrupt": ("decode_errors", "Frames that failed to decode, skipped"),
    "detector_track_reconnects": ("reconnects", "Attempts to reopen a dropped live stream"),
}  # fmt: skip


class _SourceStatsCollector(Collector):
    """The :class:`SourceStats` counts of the watched sources, read at each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, SourceStats] = {}

    def watch(self, name: str, stats: SourceStats) -> None:
        with self._lock:
            self._stats[name] = stats

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            watched = list(self._stats.items())
        for metric, (attribute, text) in _STATS_COUNTERS.items():
            family = CounterMetricFamily(metric, text, labels=["source"])
            for name, stats in watched:
                family.add_metric([name], float(getattr(stats, attribute)))
            yield family


class TrackMetrics:
    """The metrics of one ``detector track`` run (see the module docstring)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._stats = _SourceStatsCollector()
        self.registry.register(self._stats)
        self.processed = Counter(
            "detector_track_frames_processed",
            "Frames detected, tracked and written",
            ("source",),
            registry=self.registry,
        )
        self.latency = Histogram(
            "detector_track_latency_seconds",
            "Capture to result: a live frame's arrival (a file frame's decoding) to its outputs "
            "written",
            ("source",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.active_tracks = Gauge(
            "detector_track_active_tracks",
            "Confirmed tracks in the source's latest frame",
            ("source",),
            registry=self.registry,
        )
        self.running = Gauge(
            "detector_track_source_running",
            "1 while the source is read, 0 once it has ended or failed to open",
            ("source",),
            registry=self.registry,
        )

    def watch(self, name: str, stats: SourceStats) -> None:
        """Report source ``name``: its ``stats`` from now on, every series at 0, running."""
        self._stats.watch(name, stats)
        self.processed.labels(name)
        self.latency.labels(name)
        self.active_tracks.labels(name).set(0)
        self.running.labels(name).set(1)

    def frame_done(self, name: str, latency_s: float, active_tracks: int) -> None:
        """One frame of ``name`` written, ``latency_s`` after its capture, with
        ``active_tracks`` confirmed tracks in it."""
        self.processed.labels(name).inc()
        self.latency.labels(name).observe(max(latency_s, 0.0))
        self.active_tracks.labels(name).set(active_tracks)

    def ended(self, name: str) -> None:
        """Source ``name`` has ended (or failed to open): no longer running."""
        self.running.labels(name).set(0)

    def exposition(self) -> bytes:
        """Everything, in the Prometheus text format (:attr:`content_type`)."""
        return generate_latest(self.registry)
