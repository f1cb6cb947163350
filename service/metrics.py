"""Prometheus metrics (prometheus-client), one registry per app so test apps do not collide."""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("rnn_requests", "HTTP requests by endpoint and status", ["method", "endpoint", "status"],
                                registry=r)
        self.latency = Histogram("rnn_request_seconds", "HTTP request latency", ["method", "endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ws_messages = Counter("rnn_ws_messages", "WebSocket messages handled, by type and outcome", ["type", "outcome"],
                                   registry=r)
        self.ws_latency = Histogram("rnn_ws_message_seconds", "WebSocket message handling time", ["type"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("rnn_batch_size", "sessions per batched step", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                                    registry=r)
        self.queue_delay = Histogram("rnn_batch_queue_delay_seconds", "wait from enqueue to batch start",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.steps = Counter("rnn_steps", "recurrent steps computed for sessions (rate() gives steps/s)", registry=r)
        self.session_events = Counter("rnn_sessions_events", "sessions created, expired and evicted", ["event"], registry=r)
        self.active_sessions = Gauge("rnn_sessions_active", "live sessions", registry=r)
        self.model_loaded = Gauge("rnn_model_loaded", "1 if the model loaded, 0 if it failed", ["model", "version"], registry=r)

    def on_batch(self, size: int, delay: float) -> None:
        self.batch_size.observe(size)
        self.queue_delay.observe(delay)

    def on_session_event(self, event: str) -> None:
        self.session_events.labels(event).inc()

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (``/v1/models/{name}/classify``).

    Plain ASGI rather than ``BaseHTTPMiddleware``: no extra task per request on the hot path.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            m: Metrics = scope["app"].state.metrics
            m.requests.labels(scope["method"], endpoint, str(status[0])).inc()
            m.latency.labels(scope["method"], endpoint).observe(time.perf_counter() - start)
