"""Session store: each client's recurrent state between messages.

``SessionStore`` is the interface (the Redis store of the deployment issue implements it too);
``MemorySessionStore`` is the default for one process. A ``Session`` holds the engine's own arrays
(the B=1 state and the last logits), so a keystroke never serialises anything in one process; only
a store that leaves the process (Redis) turns them into ``model_core.state`` bytes and back.

Expired (idle past the TTL) and evicted (least recently used, past ``max_sessions``) sessions are
remembered for a while, so using one gives a clear error saying which, never a silently fresh state.
"""
from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import OrderedDict
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace

import numpy as np

from service.errors import ServiceError


class SessionNotFound(ServiceError):
    status, code = 404, "session_not_found"


class SessionGone(ServiceError):
    """Expired or evicted: 410 Gone, with the reason in the code."""

    status = 410


class SessionStateUnknown(SessionGone):
    """The store lost its data (e.g. Redis restarted without persistence): this session may have
    existed, and its state is gone. Distinct from ``session_not_found`` (never had it)."""

    code = "session_state_unknown"


class StepMismatch(ServiceError):
    """An input's ``at`` is not where the session is, and it is not a retry of the last step."""

    status, code = 409, "step_mismatch"


@dataclass(frozen=True, slots=True, eq=False)
class Session:
    """A value: stores hand out copies and take back new versions (compare-and-set on ``revision``).

    The arrays in it are never written to: a step makes new ones (slots keep 100,000 idle sessions small).
    """

    id: str
    model: str
    model_version: str
    state: np.ndarray | None = None      # the engine's B=1 state parts stacked: (P, L*D, 1, H); None = zeros
    last_output: np.ndarray | None = None    # the last step's logits (C,) float32, for completions
    steps: int = 0
    revision: int = 0
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    ttl: float = 600.0
    sequence_id: str | None = None       # set for sessions made by the v2 sequence extension
    # the last step taken with an idempotency ``at``, so its retry is answered, not applied twice:
    reply_at: int | None = None          # the step count that step started from
    reply_digest: bytes | None = None    # what it fed (a hash of the encoded input)
    reply_logits: np.ndarray | None = None   # its outputs (K, C) float32

    @property
    def expires_at(self) -> float:
        return self.last_used + self.ttl

    def advanced(self, state, last_output: np.ndarray | None, steps: int, **record) -> Session:
        """The next revision after ``steps`` new steps (``record``: the ``reply_*`` fields of an ``at`` step).

        Built directly, not with ``dataclasses.replace`` (a keystroke path: replace costs several µs)."""
        return Session(self.id, self.model, self.model_version, state, last_output, self.steps + steps,
                       self.revision + 1, self.created, time.time(), self.ttl, self.sequence_id,
                       record.get("reply_at", self.reply_at), record.get("reply_digest", self.reply_digest),
                       record.get("reply_logits", self.reply_logits))

    def recorded(self, at: int, digest: bytes) -> np.ndarray | None:
        """The outputs of the step that started at ``at`` with this input, if it was the last one taken."""
        if self.reply_at == at and self.reply_digest == digest and self.reply_logits is not None:
            return self.reply_logits
        return None

    def info(self) -> dict:
        return {"session_id": self.id, "model": self.model, "model_version": self.model_version,
                "steps": self.steps, "created": self.created, "last_used": self.last_used,
                "expires_at": self.expires_at, "ttl_seconds": self.ttl}


def new_session_id() -> str:
    return secrets.token_urlsafe(16)


class SessionStore:
    """Interface. ``put`` is a compare-and-set on ``revision``, so a stale writer never wins, and
    ``lock(id)`` serialises the steps of one session (across replicas, for a shared store).

    The methods are coroutines because a shared store talks to the network; ``count`` is the
    exception (a cheap, possibly cached number for the metrics gauge).
    """

    async def create(self, model: str, model_version: str, session_id: str | None = None) -> Session: ...
    async def get(self, session_id: str) -> Session: ...
    async def put(self, session: Session, expected_revision: int) -> Session: ...
    async def delete(self, session_id: str) -> bool: ...
    async def touch(self, session_id: str) -> Session:
        """``get`` that also counts as a use: the idle TTL starts again (GET, complete, state export)."""
    def lock(self, session_id: str) -> AbstractAsyncContextManager: ...
    def count(self) -> int: ...
    async def count_model(self, model: str) -> int: ...          # live sessions on one model (admin, not hot)
    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise ``Unavailable`` when the store cannot be reached (readiness); a local store always can."""


class ConflictError(ServiceError):
    status, code = 409, "session_conflict"


class MemorySessionStore(SessionStore):
    def __init__(self, ttl: float = 600.0, max_sessions: int = 100_000, on_event=None):
        self.ttl, self.max_sessions = ttl, max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()   # least recently used first
        self._gone: OrderedDict[str, str] = OrderedDict()           # id -> "expired" | "evicted"
        self._lock = threading.Lock()           # count() is also read by the metrics exporter
        self._step_locks: dict[str, _StepLock] = {}            # only while a step holds or waits for one
        self._on_event = on_event or (lambda event: None)

    def _forget(self, sid: str, reason: str) -> None:
        self._sessions.pop(sid, None)
        self._gone[sid] = reason
        while len(self._gone) > max(10 * self.max_sessions, 10_000):
            self._gone.popitem(last=False)
        self._on_event(reason)

    def _expire(self, now: float) -> None:
        while self._sessions:
            sid, s = next(iter(self._sessions.items()))
            if s.expires_at > now:
                break
            self._forget(sid, "expired")

    async def create(self, model: str, model_version: str, session_id: str | None = None) -> Session:
        with self._lock:
            self._expire(time.time())
            sid = session_id or new_session_id()
            if sid in self._sessions:
                raise ConflictError(f"session {sid!r} already exists")
            while len(self._sessions) >= self.max_sessions:
                self._forget(next(iter(self._sessions)), "evicted")
            s = Session(id=sid, model=model, model_version=model_version, ttl=self.ttl)
            self._sessions[sid] = s
            self._gone.pop(sid, None)
            self._on_event("created")
            return s

    async def get(self, session_id: str) -> Session:
        with self._lock:
            now = time.time()
            s = self._sessions.get(session_id)
            if s is not None and s.expires_at <= now:
                self._forget(session_id, "expired")
                s = None
            if s is None:
                reason = self._gone.get(session_id)
                if reason == "expired":
                    raise SessionGone(f"session {session_id!r} expired after {self.ttl:g} s idle; start a new one",
                                      code="session_expired")
                if reason == "evicted":
                    raise SessionGone(f"session {session_id!r} was evicted (more than {self.max_sessions} sessions); "
                                      "start a new one", code="session_evicted")
                raise SessionNotFound(f"unknown session {session_id!r}")
            return s

    async def put(self, session: Session, expected_revision: int) -> Session:
        with self._lock:
            current = self._sessions.get(session.id)
            if current is None:
                raise SessionNotFound(f"session {session.id!r} ended while this step ran")
            if current.revision != expected_revision:
                raise ConflictError(f"session {session.id!r} was advanced by another request; retry")
            self._sessions[session.id] = session
            self._sessions.move_to_end(session.id)
            return session

    async def delete(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    async def touch(self, session_id: str) -> Session:
        s = await self.get(session_id)
        with self._lock:
            if self._sessions.get(session_id) is s:         # not replaced meanwhile: same revision, new time
                s = self._sessions[session_id] = replace(s, last_used=time.time())
                self._sessions.move_to_end(session_id)
            return s

    def lock(self, session_id: str) -> _StepLock:
        """One process: an asyncio lock per session, dropped with its last user."""
        lock = self._step_locks.get(session_id)
        if lock is None:
            lock = self._step_locks[session_id] = _StepLock(self._step_locks, session_id)
        return lock

    def count(self) -> int:
        with self._lock:
            self._expire(time.time())
            return len(self._sessions)

    async def count_model(self, model: str) -> int:
        with self._lock:
            self._expire(time.time())
            return sum(1 for s in self._sessions.values() if s.model == model)

    async def close(self) -> None:
        pass


class _StepLock:
    """``async with``: one step of a session at a time. It leaves the store's table when its last
    user is done (a counted entry, cheaper per keystroke than a weak-value table)."""

    __slots__ = ("_lock", "_users", "_table", "_sid")

    def __init__(self, table: dict, sid: str):
        self._lock, self._users, self._table, self._sid = asyncio.Lock(), 0, table, sid

    async def __aenter__(self) -> _StepLock:
        self._users += 1
        try:
            await self._lock.acquire()
        except BaseException:                  # cancelled while waiting: no longer a user
            self._done()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        self._lock.release()
        self._done()

    def _done(self) -> None:
        self._users -= 1
        if self._users == 0 and self._table.get(self._sid) is self:
            del self._table[self._sid]
