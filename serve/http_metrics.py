"""Prometheus metrics of one app, in a registry of its own (two apps in one process, as in
tests, do not collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
)
"""HTTP methods counted under their own name; any other is counted as ``other``, so a client
inventing methods cannot add series (label values are bounded: methods, route templates,
statuses)."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    """Requests by route and status, request latency, queue depth, batch sizes, inference time."""

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
            "Images waiting for their batch to start",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "detector_batch_size",
            "Images per network run",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "detector_inference_seconds",
            "Network time per batch (the backend's run, without pre/post-processing)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "detector_rejected",
            "Requests refused without inference, by reason (queue_full, deadline)",
            ("reason",),
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request; ``route`` must be a route template (or ``unmatched``),
        never a raw path."""
        method = method if method in METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
