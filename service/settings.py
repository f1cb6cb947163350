"""All service settings in one place, read from ``RNN_SERVE_*`` environment variables."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_core.nn.recurrent_base import WEIGHT_FORMATS

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RNN_SERVE_", env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    grpc_host: str | None = Field(None, description="gRPC (KServe v2 / Triton) listen address; None: the same as host")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC listen port; 0 disables the gRPC server")
    model_dir: Path = DEFAULT_MODEL_DIR
    device: str = Field("cpu", pattern="^(cpu|gpu|auto)$")
    log_level: str = Field("info", pattern="^(?i:debug|info|warning|error|critical)$")
    log_format: str = Field("json", pattern="^(json|text)$", description="json: one object per line; text: for humans")
    access_log: bool = Field(True, description="one service.access record per request, with its request id")
    shutdown_timeout_seconds: float = Field(10.0, ge=0, description="on SIGTERM, how long in-flight work may finish")
    engine_threads: int = Field(
        1, ge=1, description="threads in every native pool of the engine (OpenBLAS, Numba, the native kernels' "
                             "OpenMP team): the batcher is the parallelism, so extra pool threads only spin-wait")
    weights: Literal[WEIGHT_FORMATS] = Field(
        "float32", description="what models' LSTM and GRU layers (checkpoints) and nodes (ONNX graphs) read on the "
                               "CPU: bfloat16 rounds the weights once (float32 arithmetic; a one-row step reads "
                               "half the bytes); other models stay float32, as GET /v1/models/{name} reports "
                               "under 'weights'")

    # request limits: bad input is refused with a clear 4xx before any math runs
    max_request_bytes: int = Field(1_000_000, ge=1_000)
    max_batch_sequences: int = Field(256, ge=1)
    max_sequence_length: int = Field(4096, ge=1)
    max_completion_length: int = Field(512, ge=1)
    max_completions: int = Field(16, ge=1)
    max_top_k: int = Field(100, ge=1, description="largest top_k a request may ask for (422 above it)")
    max_output_entries: int = Field(
        200_000, ge=1, description="per reply: steps x entries per step (top-k entries or numbers); 413 above it")
    max_response_bytes: int = Field(
        16_000_000, ge=1_000, description="per reply: the estimated JSON size is checked before any work; 413 above")
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="a connection that has not sent a whole request head by then is closed")
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="a request whose body has not fully arrived by then gets a 408")
    keep_alive_seconds: float = Field(5.0, gt=0, description="idle keep-alive connections are closed after this")

    # sessions and batching
    session_ttl_seconds: float = Field(600.0, gt=0, description="idle time before a session expires")
    max_sessions: int = Field(100_000, ge=1, description="past this, the least recently used session is evicted")
    max_steps_per_message: int = Field(1024, ge=1)
    max_steps_per_session: int = Field(1_000_000, ge=1)
    batching: bool = True
    max_batch_size: int = Field(64, ge=1)
    max_queue_delay_ms: float = Field(2.0, ge=0)
    max_pending_requests: int = Field(4096, ge=1, description="per model: past this many waiting, new ones get 429")

    # where sessions live: one process keeps them in memory; replicas share them in Redis
    session_store: Literal["memory", "redis"] = Field(
        "memory", description="memory: this process only; redis: shared by every replica behind a load balancer")
    redis_url: str = Field("redis://localhost:6379/0", description="redis:// or rediss:// URL of the session store")
    redis_key_prefix: str = Field("rnn-serve:", description="prefix of every key, so deployments can share a Redis")
    redis_socket_timeout_seconds: float = Field(
        1.0, gt=0, description="connect and read timeout; a dead Redis becomes a fast 503, not a hung request")
    redis_retries: int = Field(2, ge=0, description="quick retries of a failed Redis call before answering 503")
    redis_lock_ttl_seconds: float = Field(
        10.0, gt=0, description="a step lock lapses after this if its replica dies; keep it longer than any step")
    redis_lock_wait_seconds: float = Field(
        15.0, gt=0, description="how long a step waits for its session's lock before a 409 session_busy")
    redis_tombstone_seconds: float = Field(
        3600.0, ge=1, description="how long an expired or evicted session is remembered, for a clear 410")
    redis_count_refresh_seconds: float = Field(
        5.0, gt=0, description="refresh interval of the cached live-session count behind the metrics gauge")

    # permessage-deflate costs more CPU than it saves bandwidth on small per-keystroke messages
    ws_compression: bool = Field(False, description="offer permessage-deflate on WebSockets")
    ws_idle_timeout_seconds: float = Field(
        300.0, gt=0, description="a WebSocket with no message from its client for this long is closed (1001)")
    ws_allowed_origins: list[str] = Field(
        default_factory=list, description="browser Origins a WebSocket may come from, besides the server's own "
                                          "origin and cors_origins; '*' allows any; no Origin header is always allowed")

    # auth and CORS
    api_keys: list[str] = Field(default_factory=list, description="accepted X-API-Key values; empty: no auth")
    cors_origins: list[str] = Field(default_factory=list)
    ws_query_api_key: bool = Field(
        True, description="accept the key as ?api_key= on the WebSocket handshake (browsers cannot set headers "
                          "there); HTTP routes only ever read the X-API-Key header")
    metrics_public: bool = Field(False, description="serve /metrics without a key (for a scraper on a private network)")
    admin_keys: list[str] = Field(
        default_factory=list, description="X-API-Key values allowed on /v1/admin; empty: the admin routes are off")
    ready_when: str = Field(
        "any", description="readiness: 'any' (some model loaded; failures are listed), 'all' (every model), "
                           "or a comma-separated list of models that must be ready")


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
