"""Prometheus metrics of one app, in a registry of its own (two apps in one process, as in
tests, do not collide).

Everything about inference carries the labels ``model`` and ``version`` (the name and version the
server serves it under): queue depth, batch sizes, inference time, refusals, the requests each
version answered, its loads and whether it is serving. A swap shows as a new ``version`` series
taking over: ``detector_model_loads_total{outcome="loaded"}`` counts it, the old version's
``detector_model_version_ready`` drops to 0 while it finishes what it holds, and its queue-depth
series goes once it is closed.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
)
"""HTTP methods counted under their own name; any other is counted as ``other``, so a client
inventing methods cannot add series (label values are bounded: methods, route templates,
statuses, and the models and versions the server has loaded)."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
MODEL_LABELS = ("model", "version")


class Metrics:
    """Requests by route and status, request latency; per model and version: queue depth, batch
    sizes, inference time, refusals, answered requests, loads and readiness."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "detector_http_requests",
            "HTTP requests answered, by route template, method (or other) and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "detector_http_request_duration_seconds",
            "Whole-request latency (arrival to last byte), by route template",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "detector_queue_depth",
            "Images waiting for their batch to start, by model and version",
            MODEL_LABELS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "detector_batch_size",
            "Images per network run, by model and version",
            MODEL_LABELS,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "detector_inference_seconds",
            "Network time per batch (the backend's run, without pre/post-processing), by model "
            "and version",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "detector_rejected",
            "Requests refused without inference, by model, version and reason (queue_full, "
            "deadline)",
            (*MODEL_LABELS, "reason"),
            registry=self.registry,
        )
        self.model_requests = Counter(
            "detector_model_requests",
            "Inference requests answered by each model version, by status (499: the client "
            "went away)",
            (*MODEL_LABELS, "status"),
            registry=self.registry,
        )
        self.loads = Counter(
            "detector_model_loads",
            "Model version loads, by outcome (loaded: checked and serving; failed: refused, "
            "the versions serving before kept serving)",
            (*MODEL_LABELS, "outcome"),
            registry=self.registry,
        )
        self.version_ready = Gauge(
            "detector_model_version_ready",
            "1 while a model version takes new requests; 0 once retired, while it finishes "
            "the requests it holds (the series goes when it is closed)",
            MODEL_LABELS,
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request; ``route`` must be a route template (or ``unmatched``),
        never a raw path."""
        method = method if method in METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, model: str, version: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model, version).observe(size)
        self.inference.labels(model, version).observe(seconds)

    def reject(self, model: str, version: str, reason: str) -> None:
        self.rejected.labels(model, version, reason).inc()

    def track_version(self, model: str, version: str, depth: Callable[[], float]) -> None:
        """A version starts serving: its queue depth is read from ``depth``, its ready gauge 1."""
        self.queue_depth.labels(model, version).set_function(depth)
        self.version_ready.labels(model, version).set(1)

    def retire_version(self, model: str, version: str) -> None:
        self.version_ready.labels(model, version).set(0)

    def forget_version(self, model: str, version: str) -> None:
        """A version is closed: its gauges go (its counters and histograms stay)."""
        for gauge in (self.queue_depth, self.version_ready):
            try:
                gauge.remove(model, version)
            except KeyError:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
