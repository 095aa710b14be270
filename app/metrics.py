"""Prometheus metrics, one registry per app (so several apps in one process never collide)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
            "Generate requests decoded together",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
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
