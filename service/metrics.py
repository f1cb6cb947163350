"""Prometheus metrics (prometheus-client), one registry per app so test apps do not collide.

The registry carries prometheus-client's standard collectors too (``process_*``, ``python_gc_*``,
``python_info``), as the default registry would. Hot paths reach label children through
``Children`` (made once, then a dict lookup) rather than ``.labels()`` on every message.
"""
from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
NO_MODEL = ""          # the model label of a request that names no loaded model (bounded: never a client's string)


class Children(dict):
    """label values (a tuple) -> the metric's child, made on first use: ``.labels()`` takes a lock
    and rebuilds its key on every call, which a per-message path should not pay for."""

    def __init__(self, metric):
        super().__init__()
        self.metric = metric

    def __missing__(self, values: tuple):
        child = self[values] = self.metric.labels(*values)
        return child


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.requests = Counter("rnn_requests", "HTTP requests by endpoint, model and status code",
                                ["method", "endpoint", "model", "code"], registry=r)
        self.latency = Histogram("rnn_request_seconds", "HTTP request latency", ["method", "endpoint", "model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ws_messages = Counter("rnn_ws_messages", "WebSocket messages handled, by model, type and outcome",
                                   ["model", "type", "outcome"], registry=r)
        self.ws_latency = Histogram("rnn_ws_message_seconds", "WebSocket message handling time", ["model", "type"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("rnn_batch_size", "sessions per batched step", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                                    registry=r)
        self.queue_delay = Histogram("rnn_batch_queue_delay_seconds", "wait from enqueue to batch start",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.steps = Counter("rnn_steps", "recurrent steps computed for sessions, by model (rate() gives steps/s)",
                             ["model"], registry=r)
        self.session_events = Counter("rnn_sessions_events", "sessions created, expired and evicted", ["event"], registry=r)
        self.active_sessions = Gauge("rnn_sessions_active", "live sessions", registry=r)
        self.model_loaded = Gauge("rnn_model_loaded", "1 if the model loaded, 0 if it failed", ["model", "version"], registry=r)
        self.requests_by, self.latency_by = Children(self.requests), Children(self.latency)
        self.ws_messages_by, self.ws_latency_by = Children(self.ws_messages), Children(self.ws_latency)
        self._steps_by, self._events_by = Children(self.steps), Children(self.session_events)

    def on_batch(self, size: int, delay: float) -> None:
        self.batch_size.observe(size)
        self.queue_delay.observe(delay)

    def on_steps(self, model: str, n: int) -> None:
        self._steps_by[(model,)].inc(n)

    def on_session_event(self, event: str) -> None:
        self._events_by[(event,)].inc()

    def on_ws_message(self, model: str, kind: str, outcome: str, seconds: float) -> None:
        self.ws_messages_by[(model, kind, outcome)].inc()
        self.ws_latency_by[(model, kind)].observe(seconds)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (``/v1/models/{name}/classify``),
    the model it names (when that model is loaded) and its status ``code``.

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
            state = scope["app"].state
            m: Metrics = state.metrics
            model = _model_label(scope, state)
            m.requests_by[(scope["method"], endpoint, model, str(status[0]))].inc()
            m.latency_by[(scope["method"], endpoint, model)].observe(time.perf_counter() - start)


def _model_label(scope: Scope, state) -> str:
    """The path's ``{name}`` if it is a loaded model, else ``NO_MODEL``: clients cannot mint series."""
    name = scope.get("path_params", {}).get("name")
    registry = getattr(state, "registry", None)
    if name is None or registry is None:
        return NO_MODEL
    try:
        registry.get(name)
    except ServiceError:                  # unknown: a 404 on its way
        return NO_MODEL
    return name
