"""Builds the FastAPI app: settings, error handlers, routers, and models loaded in the lifespan."""
from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.middleware.cors import CORSMiddleware

from model_core.heap import keep_freed_memory
from model_core.threads import set_num_threads
from service import __version__
from service.api.routes import admin, health, inference, kserve, models, repository, sessions, stream
from service.auth import APIKeyMiddleware, document_keys
from service.errors import install_error_handlers
from service.grpc_api import server as grpc_server
from service.body_limits import BodySizeLimit
from service.logs import RequestLogMiddleware
from service.metrics import Metrics, MetricsMiddleware
from service.openinference.infer import V2Inference
from service.openinference.statistics import InferenceStatistics
from service.registry import ModelRegistry
from service.sessions.manager import SessionManager
from service.sessions.store import MemorySessionStore
from service.batcher_registry import BatcherRegistry
from service.settings import Settings, get_settings


log = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        metrics = app.state.metrics
        set_num_threads(settings.engine_threads)  # before any model runs: every native pool, on purpose
        keep_freed_memory()                       # an arena, as onnxruntime's: requests reuse pages (model_core/heap.py)
        registry = ModelRegistry(settings.model_dir, settings.device, weights=settings.weights)
        if settings.device == "auto" and registry.device_in_use == "cpu":
            log.warning("RNN_SERVE_DEVICE=auto: no usable GPU (CuPy and a visible CUDA device); serving on the CPU")
        registry.load_all()                       # before yield: no request sees a half-loaded repository
        for e in registry.entries():
            metrics.model_loaded.labels(e.name, e.version).set(1 if e.status == "ready" else 0)
        app.state.registry = registry
        if settings.session_store == "redis":         # shared by replicas; redis-py is imported only here
            from service.sessions.redis_store import RedisSessionStore
            store = RedisSessionStore.from_settings(settings, on_event=metrics.on_session_event)
        else:
            store = MemorySessionStore(ttl=settings.session_ttl_seconds, max_sessions=settings.max_sessions,
                                       on_event=metrics.on_session_event)
        metrics.active_sessions.set_function(store.count)
        # one registry of batchers, (model, version, kind): sessions' steps and stateless requests
        app.state.batchers = BatcherRegistry(settings, registry, on_batch=metrics.on_batch)
        app.state.sessions = SessionManager(registry, store, settings, batchers=app.state.batchers,
                                            on_steps=metrics.on_steps)
        app.state.v2 = V2Inference(registry, app.state.sessions, app.state.batchers, settings, InferenceStatistics())
        # gRPC on its own port, in this event loop, over the same registry, sessions, batchers and statistics
        app.state.grpc = await grpc_server.start(settings, registry, app.state.sessions, app.state.v2)
        log.info("ready", extra={"models": [e.name for e in registry.entries() if e.status == "ready"],
                                 "device": registry.device_in_use, "session_store": type(store).__name__})
        gc.collect()
        gc.freeze()          # the models and startup objects are permanent: keep them out of every GC pass
        yield
        await grpc_server.stop(app.state.grpc, settings.shutdown_timeout_seconds)   # uvicorn has drained HTTP
        log.info("shutting down: draining batchers")
        await app.state.sessions.close()                # closes the shared batchers, then the store
        log.info("stopped")

    app = FastAPI(title="rnn-serve", version=__version__, lifespan=lifespan,
                  description="Recurrent sequence models (RNN, LSTM, GRU): classification, per-step outputs, "
                              "autocomplete, sessions and streaming.")
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.add_middleware(APIKeyMiddleware)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes, timeout=settings.body_timeout_seconds)
    if settings.cors_origins:       # outside the key check and the limits: preflights and errors get CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(RequestLogMiddleware, enabled=settings.access_log)    # outermost: ids every request

    @app.get("/", include_in_schema=False)
    def demo_page():
        """The demo: autocomplete over the WebSocket and a classification panel (no build step, no CDN)."""
        return FileResponse(Path(__file__).parent / "static" / "index.html")

    @app.get("/metrics", include_in_schema=False)
    def metrics_endpoint():
        return app.state.metrics.render()

    for router in (models.router, inference.router, sessions.router, stream.router, health.router, kserve.router, admin.router):
        app.include_router(router)
    app.include_router(repository.router)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document_keys(FastAPI.openapi(app))
        return app.openapi_schema
    app.openapi = openapi
    return app
