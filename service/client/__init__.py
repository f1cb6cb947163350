"""A small client for rnn-serve: the documented way to talk to the stream and the session API.

Sync and asyncio: ``StreamClient`` / ``AsyncStreamClient`` (WebSocket) and ``SessionClient`` /
``AsyncSessionClient`` (HTTP sessions). Both resume sessions, send every input with the
idempotency field ``at`` and back off on 429/503 (``Retry-After``), following ``retry``'s rule.
Needs ``httpx`` and ``websockets`` (the ``client`` extra). See docs/client.md.
"""
from service.client.http import AsyncSessionClient, Session, SessionClient
from service.client.retry import Backoff, ServiceError, SessionLost, StepsLost
from service.client.stream import AsyncStreamClient, StreamClient

__all__ = ["AsyncSessionClient", "AsyncStreamClient", "Backoff", "ServiceError", "Session", "SessionClient",
           "SessionLost", "StepsLost", "StreamClient"]
