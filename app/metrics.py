"""Prometheus metrics, one registry per app (so several apps in one process never collide)."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOP_EDITS = 20  # edits named in sola_edit_hits: one label value each, so a bounded few


class TopEditHits(Collector):
    """Answers per edit, exported for the most used TOP_EDITS only (an edit id per label value would grow
    without bound with every edit ever made)."""

    def __init__(self) -> None:
        self._hits: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def hit(self, edit_id: str) -> None:
        with self._lock:
            self._hits[edit_id] += 1

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "sola_edit_hits", f"Answers given through each edit, for the {TOP_EDITS} most used", labels=["edit_id"]
        )
        with self._lock:
            top = self._hits.most_common(TOP_EDITS)
        for edit_id, hits in top:
            family.add_metric([edit_id], hits)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sola_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sola_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.edits_active = Gauge("sola_edits_active", "Edits active in the index", registry=self.registry)
        self.edits_refused = Gauge(
            "sola_edits_refused",
            "Active edits refused at load (hash or base-model mismatch)",
            registry=self.registry,
        )
        self.train_seconds = Histogram(
            "sola_edit_train_seconds",
            "Wall time to train one edit",
            buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "sola_generate_batch_size",
            "Rows in the batch at each decode step",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.queries = Counter(
            "sola_queries",
            "Answered generate requests, by whether an edit answered",
            ["routed"],
            registry=self.registry,
        )
        self.tokens_generated = Counter("sola_tokens_generated", "Tokens generated", registry=self.registry)
        self.queue_depth = Gauge(
            "sola_generate_queue_depth", "Generate requests waiting for the model worker", registry=self.registry
        )
        self.rows_decoding = Gauge(
            "sola_generate_rows_decoding", "Requests in the batch now (prefilling or decoding)", registry=self.registry
        )
        self.edit_hits = TopEditHits()
        self.registry.register(self.edit_hits)
        self.generate_failures = Counter(
            "sola_generate_failures",
            "Unexpected generation failures: a prompt the tokenizer refused, or a whole batch (every request"
            " in it was answered with an error)",
            registry=self.registry,
        )


class MetricsMiddleware:
    """Counts and times every request by its route template (not the raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
