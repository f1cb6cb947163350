"""All service settings in one place, read from ``RNN_SERVE_*`` environment variables."""
from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RNN_SERVE_", env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    model_dir: Path = DEFAULT_MODEL_DIR
    device: str = Field("cpu", pattern="^(cpu|gpu|auto)$")
    log_level: str = Field("info", pattern="^(?i:debug|info|warning|error|critical)$")
    log_format: str = Field("json", pattern="^(json|text)$", description="json: one object per line; text: for humans")
    access_log: bool = Field(True, description="one service.access record per request, with its request id")
    shutdown_timeout_seconds: float = Field(10.0, ge=0, description="on SIGTERM, how long in-flight work may finish")

    # request limits: bad input is refused with a clear 4xx before any math runs
    max_request_bytes: int = Field(1_000_000, ge=1_000)
    max_batch_sequences: int = Field(256, ge=1)
    max_sequence_length: int = Field(4096, ge=1)
    max_completion_length: int = Field(512, ge=1)
    max_completions: int = Field(16, ge=1)

    # sessions and batching
    session_ttl_seconds: float = Field(600.0, gt=0, description="idle time before a session expires")
    max_sessions: int = Field(100_000, ge=1, description="past this, the least recently used session is evicted")
    max_steps_per_message: int = Field(1024, ge=1)
    max_steps_per_session: int = Field(1_000_000, ge=1)
    batching: bool = True
    max_batch_size: int = Field(64, ge=1)
    max_queue_delay_ms: float = Field(2.0, ge=0)

    # auth and CORS
    api_keys: list[str] = Field(default_factory=list, description="accepted X-API-Key values; empty: no auth")
    cors_origins: list[str] = Field(default_factory=list)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
