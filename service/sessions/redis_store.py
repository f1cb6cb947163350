"""Session store in Redis, shared by every replica (redis-py's asyncio client).

Keys, all under ``redis_key_prefix`` (P):

    P s:{id}     hash: the whole Session (the state as ``model_core.state`` bytes, logits as float32
                 bytes); PEXPIRE = the TTL, refreshed by every put, so Redis itself expires idle sessions
    P tomb:{id}  what to say once ``s:{id}`` is gone: "expired" while the session lives (its TTL
                 outlasts the session's by ``tombstone_seconds``), "evicted" once evicted
    P lru        sorted set id -> last put (Redis clock, µs): the LRU order for ``max_sessions``
    P lock:{id}  the step lock: a random token, SET NX PX, released by compare-and-delete
    P epoch      a random token made once per data set: if it changes or vanishes, Redis lost its data
    P lost       set for a while once that is seen: a session missing without a tombstone is then
                 "state unknown" (410 session_state_unknown), not "never existed" (404)

Fencing: ``put`` and the lock's acquire carry a deadline in Redis's own clock (the time the call
starts plus the socket timeout for each attempt redis-py makes, through a measured clock offset). A command that
reaches Redis after its caller gave up (a paused or partitioned Redis replaying queued commands) does nothing, so a 503
means "not applied", and no lock is taken for an owner that is no longer waiting for it.

Every write is one Lua script, so it is atomic on the server: ``put`` compares the revision and
writes in one go (the fence if a step's lock ever lapsed), ``create`` evicts and inserts in one go.
The scripts reach keys other than their KEYS (eviction victims), so this needs one Redis server
(a primary with Sentinel is fine; Redis Cluster is not supported).

Any Redis failure surfaces as ``Unavailable`` (503) with a message naming the store; redis-py
reconnects on the next call, so the service recovers by itself when Redis is back.
"""
from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
import weakref
from contextlib import contextmanager

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, TimeoutError as RedisTimeoutError

from model_core.state import StateFormatError, state_from_bytes, state_to_bytes
from service.errors import Unavailable
from service.sessions.store import (
    ConflictError,
    Session,
    SessionGone,
    SessionNotFound,
    SessionStateUnknown,
    SessionStore,
    new_session_id,
)
from service.settings import Settings

log = logging.getLogger("service.sessions")

# LRU scores are Redis's own clock (TIME, in microseconds), so replicas with skewed clocks agree;
# a score is never below the newest one, so two writes in the same microsecond keep their order.
_NOW = """
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local newest = redis.call('ZRANGE', KEYS[#KEYS], -1, -1, 'WITHSCORES')[2]
if newest and tonumber(newest) >= now then now = tonumber(newest) + 1 end
"""

# Drop LRU entries whose session Redis has already expired (idle longer than the TTL); returns how many.
_PRUNE = """
local function prune(lru, now, ttl_ms)
  return redis.call('ZREMRANGEBYSCORE', lru, '-inf', string.format('(%d', now - ttl_ms * 1000))
end
"""

# KEYS: s, tomb, lru. ARGV: id, ttl_ms, tomb_ms, max_sessions, prefix, created, field, value, ...
# -> {status, live count, expired, evicted}; status 1 = created, 0 = the id is taken
_CREATE = _PRUNE + _NOW + """
local ttl_ms, tomb_ms, max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local expired = prune(KEYS[3], now, ttl_ms)
local taken = redis.call('HGET', KEYS[1], 'created')
if taken then
  -- the same create retried after a lost reply is not a conflict
  return {taken == ARGV[6] and 1 or 0, redis.call('ZCARD', KEYS[3]), expired, 0}
end
local evicted = 0
while redis.call('ZCARD', KEYS[3]) >= max do
  local victim = redis.call('ZPOPMIN', KEYS[3])[1]
  if redis.call('DEL', ARGV[5] .. 's:' .. victim) == 1 then
    redis.call('SET', ARGV[5] .. 'tomb:' .. victim, 'evicted', 'PX', tomb_ms)
    evicted = evicted + 1
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('SET', KEYS[2], 'expired', 'PX', ttl_ms + tomb_ms)
redis.call('ZADD', KEYS[3], string.format('%d', now), ARGV[1])
return {1, redis.call('ZCARD', KEYS[3]), expired, evicted}
"""

# KEYS: s, tomb, lru. ARGV: expected revision, ttl_ms, tomb_ms, id, write id, deadline (µs), field, value, ...
# -> {status, live count or tombstone}; status 1 = written, 0 = revision moved on, -1 = gone,
# -2 = arrived after its deadline (the caller already answered 503): not applied
_PUT = _NOW + """
local rev = redis.call('HGET', KEYS[1], 'revision')
if not rev then
  return {-1, redis.call('GET', KEYS[2]) or ''}
end
if rev ~= ARGV[1] then
  -- our own write, retried after its reply was lost, is a success and not a conflict
  local ours = redis.call('HGET', KEYS[1], 'write_id') == ARGV[5]
  return {ours and 1 or 0, redis.call('ZCARD', KEYS[3])}
end
local t = redis.call('TIME')
if t[1] * 1000000 + t[2] > tonumber(ARGV[6]) then
  return {-2, ''}
end
local ttl_ms, tomb_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'write_id', ARGV[5], unpack(ARGV, 7))
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('SET', KEYS[2], 'expired', 'PX', ttl_ms + tomb_ms)
redis.call('ZADD', KEYS[3], string.format('%d', now), ARGV[4])
return {1, redis.call('ZCARD', KEYS[3])}
"""

# KEYS: s, tomb, lru. ARGV: id -> 1 if the session existed
_DELETE = """
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return existed
"""

# KEYS: lru. ARGV: ttl_ms -> {live count, expired}
_COUNT = _PRUNE + _NOW + """
local expired = prune(KEYS[1], now, tonumber(ARGV[1]))
return {redis.call('ZCARD', KEYS[1]), expired}
"""

# KEYS: lock. ARGV: token, ttl_ms, deadline (µs). Taking a lock we already hold succeeds (a retried SET
# whose reply was lost); one that arrives after its deadline takes nothing (-1): its owner gave up.
_ACQUIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local t = redis.call('TIME')
if t[1] * 1000000 + t[2] > tonumber(ARGV[3]) then
  return -1
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""

# KEYS: epoch, lost. ARGV: new token, the epoch this replica knew ('' if none), lost_ms
# -> {epoch, 1 if data was lost recently}. A changed or missing epoch means Redis lost its data.
_EPOCH = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1])
end
if (not cur and ARGV[2] ~= '') or (cur and ARGV[2] ~= '' and cur ~= ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
end
return {cur or ARGV[1], redis.call('EXISTS', KEYS[2])}
"""

# KEYS: s, tomb, lru. ARGV: ttl_ms, tomb_ms, id, last_used -> the session's hash (flat), or {} if gone.
# A use that is not a step (GET, completion, export) restarts the idle TTL without a new revision.
_TOUCH = _NOW + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local ttl_ms, tomb_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'last_used', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('SET', KEYS[2], 'expired', 'PX', ttl_ms + tomb_ms)
redis.call('ZADD', KEYS[3], string.format('%d', now), ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: lock. ARGV: token. Delete only our own lock, never one a later holder took after ours lapsed.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _fields(s: Session) -> list:
    """The session as hash fields; None values are simply absent. Only this store serialises arrays."""
    out = ["model", s.model, "model_version", s.model_version, "steps", s.steps, "revision", s.revision,
           "created", repr(s.created), "last_used", repr(s.last_used), "ttl", repr(s.ttl)]
    if s.state is not None:
        out += ["state", state_to_bytes(tuple(s.state))]           # the engine's parts, versioned and checksummed
    if s.last_output is not None:
        out += ["last_output", _f4(s.last_output)]
    if s.reply_logits is not None:
        out += ["reply_logits", _f4(s.reply_logits), "reply_rows", len(s.reply_logits)]
    for name in ("sequence_id", "reply_at", "reply_digest"):
        value = getattr(s, name)
        if value is not None:
            out += [name, value]
    return out


def _f4(a) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def _session(sid: str, h: dict[bytes, bytes]) -> Session:
    seq, reply_at, state, last, reply = (h.get(k) for k in (b"sequence_id", b"reply_at", b"state", b"last_output",
                                                            b"reply_logits"))
    try:
        state = np.stack(state_from_bytes(state)) if state is not None else None     # packed
    except StateFormatError as exc:
        raise SessionStateUnknown(f"session {sid!r}: its stored state is unreadable ({exc}); start a new one") from None
    return Session(id=sid, model=h[b"model"].decode(), model_version=h[b"model_version"].decode(), state=state,
                   last_output=np.frombuffer(last, "<f4").astype(np.float32) if last is not None else None,
                   steps=int(h[b"steps"]), revision=int(h[b"revision"]),
                   created=float(h[b"created"]), last_used=float(h[b"last_used"]), ttl=float(h[b"ttl"]),
                   sequence_id=seq.decode() if seq is not None else None,
                   reply_at=int(reply_at) if reply_at is not None else None, reply_digest=h.get(b"reply_digest"),
                   reply_logits=(np.frombuffer(reply, "<f4").astype(np.float32).reshape(int(h[b"reply_rows"]), -1)
                                 if reply is not None else None))


class RedisSessionStore(SessionStore):
    def __init__(self, redis: Redis, *, prefix: str = "rnn-serve:", ttl: float = 600.0, max_sessions: int = 100_000,
                 tombstone_seconds: float = 3600.0, lock_ttl: float = 10.0, lock_wait: float = 15.0,
                 count_refresh: float = 5.0, fence: float = 1.0, fence_attempts: int = 1, on_event=None):
        self.redis, self.prefix = redis, prefix
        # how long after it is sent a write may still apply: the socket timeout, per attempt redis-py makes
        self.fence, self.fence_attempts = fence, fence_attempts
        self._offset_us: float | None = None   # Redis clock minus ours, measured with TIME
        self._epoch: bytes | None = None       # the data set this replica has seen
        self._lost = False
        self.ttl, self.max_sessions = ttl, max_sessions
        self.lock_ttl, self.lock_wait, self.count_refresh = lock_ttl, lock_wait, count_refresh
        self._ttl_ms, self._tomb_ms = max(1, round(ttl * 1000)), max(1, round(tombstone_seconds * 1000))
        self._on_event = on_event or (lambda event: None)
        self._count = 0
        self._refresher: asyncio.Task | None = None
        self._local_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        kw = redis.connection_pool.connection_kwargs
        self.where = kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}"   # never the password
        self._create, self._put, self._delete = (redis.register_script(s) for s in (_CREATE, _PUT, _DELETE))
        self._count_script, self._acquire, self._release = (redis.register_script(s)
                                                            for s in (_COUNT, _ACQUIRE, _RELEASE))
        self._epoch_script, self._touch = redis.register_script(_EPOCH), redis.register_script(_TOUCH)
        self._background: set[asyncio.Task] = set()
        try:
            asyncio.get_running_loop()
            self._start_refresher()                       # built in the lifespan: count from the start
        except RuntimeError:                              # no loop yet: the first call starts it
            pass

    @classmethod
    def from_settings(cls, settings: Settings, on_event=None) -> RedisSessionStore:
        # Short timeouts and a couple of quick retries: a blip is absorbed, an outage is a fast 503.
        retry = Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.25), retries=settings.redis_retries,
                      supported_errors=(RedisConnectionError, RedisTimeoutError))
        redis = Redis.from_url(settings.redis_url, socket_timeout=settings.redis_socket_timeout_seconds,
                               socket_connect_timeout=settings.redis_socket_timeout_seconds, retry=retry,
                               health_check_interval=30, client_name="rnn-serve")
        return cls(redis, prefix=settings.redis_key_prefix, ttl=settings.session_ttl_seconds,
                   max_sessions=settings.max_sessions, tombstone_seconds=settings.redis_tombstone_seconds,
                   lock_ttl=settings.redis_lock_ttl_seconds, lock_wait=settings.redis_lock_wait_seconds,
                   count_refresh=settings.redis_count_refresh_seconds,
                   fence=settings.redis_socket_timeout_seconds, fence_attempts=settings.redis_retries + 1,
                   on_event=on_event)

    def _keys(self, sid: str) -> list[str]:
        return [f"{self.prefix}s:{sid}", f"{self.prefix}tomb:{sid}", f"{self.prefix}lru"]

    @contextmanager
    def _reachable(self):
        """Every Redis failure becomes one clear 503; nothing was half-written (each write is one script)."""
        try:
            yield
        except RedisError as exc:
            log.warning("session store: redis at %s: %s: %s", self.where, type(exc).__name__, exc)
            raise Unavailable(f"session store unavailable (redis at {self.where}: {type(exc).__name__}); "
                              "retry shortly") from None

    def _counted(self, live: int, expired: int = 0, evicted: int = 0) -> None:
        self._count = int(live)
        for event, n in (("expired", expired), ("evicted", evicted)):
            for _ in range(int(n)):
                self._on_event(event)

    def _start_refresher(self) -> None:
        """The metrics gauge reads ``count()`` synchronously, so a light task keeps a cached number fresh."""
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_count())

    # -- fencing and data loss ------------------------------------------------------------------
    async def _measure_clock(self) -> None:
        sec, usec = await self.redis.time()
        # Redis's clock minus ours, taken at the reply's arrival: it errs early (a tighter fence), never late
        self._offset_us = (sec * 1e6 + usec) - time.time() * 1e6

    async def _deadline(self) -> int:
        """Redis time (µs) after which a write sent now must not apply: its caller has given up.

        The caller waits ``fence`` seconds per attempt, and ``fence_attempts`` attempts, from when
        each is sent (never earlier than now): so it cannot have given up before now plus that.
        """
        if self._offset_us is None:
            with self._reachable():
                await self._measure_clock()
        return int(time.time() * 1e6 + self._offset_us + self.fence * self.fence_attempts * 1e6)

    async def _sync_epoch(self) -> bool:
        """Learn the data set's epoch; True while a recent loss of Redis's data is on record."""
        with self._reachable():
            epoch, lost = await self._epoch_script(
                keys=[f"{self.prefix}epoch", f"{self.prefix}lost"],
                args=[secrets.token_hex(8), self._epoch or b"", self._ttl_ms + self._tomb_ms])
        if self._epoch is not None and epoch != self._epoch:
            log.error("session store: redis at %s lost its data (new epoch); sessions it held are gone", self.where)
        self._epoch, self._lost = epoch, bool(lost)
        return self._lost

    def _in_background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_count(self) -> None:
        while True:
            try:
                live, expired = await self._count_script(keys=[f"{self.prefix}lru"], args=[self._ttl_ms])
                self._counted(live, expired)
                await self._measure_clock()                 # the fence follows clock drift
                await self._sync_epoch()                    # notice a data loss even with no misses
            except (RedisError, Unavailable) as exc:      # the gauge keeps its last value; requests report it
                log.debug("session count not refreshed: %s", exc)
            except Exception:                             # never let the gauge die silently
                log.exception("session count not refreshed")
            await asyncio.sleep(self.count_refresh)

    # -- the SessionStore interface --------------------------------------------------------------
    async def create(self, model: str, model_version: str, session_id: str | None = None) -> Session:
        self._start_refresher()
        s = Session(id=session_id or new_session_id(), model=model, model_version=model_version, ttl=self.ttl)
        with self._reachable():
            ok, live, expired, evicted = await self._create(
                keys=self._keys(s.id),
                args=[s.id, self._ttl_ms, self._tomb_ms, self.max_sessions, self.prefix, repr(s.created), *_fields(s)])
        self._counted(live, expired, evicted)
        if not ok:
            raise ConflictError(f"session {s.id!r} already exists")
        self._on_event("created")
        return s

    async def get(self, session_id: str) -> Session:
        self._start_refresher()
        s_key, tomb_key, _ = self._keys(session_id)
        with self._reachable():
            async with self.redis.pipeline(transaction=True) as pipe:
                h, tomb = await pipe.hgetall(s_key).get(tomb_key).execute()
        if h:
            return _session(session_id, h)
        if tomb is None:
            await self._sync_epoch()                        # a miss: did Redis lose its data?
        raise self._missing(session_id, tomb)

    async def touch(self, session_id: str) -> Session:
        with self._reachable():
            flat = await self._touch(keys=self._keys(session_id),
                                     args=[self._ttl_ms, self._tomb_ms, session_id, repr(time.time())])
        if flat:
            return _session(session_id, dict(zip(flat[::2], flat[1::2])))
        return await self.get(session_id)                   # gone: get says how (410 / 404)

    def _missing(self, session_id: str, tomb: bytes | None) -> Exception:
        if tomb is None and self._lost:
            return SessionStateUnknown(f"session {session_id!r}: the session store lost its data (Redis restarted "
                                       "without persistence), so this session's state is unknown; start a new one")
        if tomb == b"expired":
            return SessionGone(f"session {session_id!r} expired after {self.ttl:g} s idle; start a new one",
                               code="session_expired")
        if tomb == b"evicted":
            return SessionGone(f"session {session_id!r} was evicted (more than {self.max_sessions} sessions); "
                               "start a new one", code="session_evicted")
        return SessionNotFound(f"unknown session {session_id!r}")

    async def put(self, session: Session, expected_revision: int) -> Session:
        deadline = await self._deadline()
        with self._reachable():
            status, extra = await self._put(
                keys=self._keys(session.id),
                args=[expected_revision, self._ttl_ms, self._tomb_ms, session.id, secrets.token_hex(8), deadline,
                      *_fields(session)])
        if status == -2:
            raise Unavailable(f"session store too slow (redis at {self.where}); this step was not applied, "
                              "retry shortly")
        if status == -1:
            if not extra:
                await self._sync_epoch()
            err = self._missing(session.id, extra or None)
            if isinstance(err, SessionNotFound):
                err = SessionNotFound(f"session {session.id!r} ended while this step ran")
            raise err
        if status == 0:
            raise ConflictError(f"session {session.id!r} was advanced by another request; retry")
        self._count = int(extra)
        return session

    async def delete(self, session_id: str) -> bool:
        with self._reachable():
            return bool(await self._delete(keys=self._keys(session_id), args=[session_id]))

    def lock(self, session_id: str) -> _RedisLock:
        # Requests for one session on this replica queue on a local lock first, so only one of them
        # polls Redis and they keep their arrival order.
        local = self._local_locks.get(session_id)
        if local is None:
            local = self._local_locks[session_id] = asyncio.Lock()
        return _RedisLock(self, session_id, local)

    def count(self) -> int:
        return self._count

    async def count_model(self, model: str) -> int:
        """Live sessions on ``model``: a scan of the LRU set, for the unload check (an admin call)."""
        n, want = 0, model.encode()
        with self._reachable():
            ids = [sid async for sid, _ in self.redis.zscan_iter(f"{self.prefix}lru")]
            for i in range(0, len(ids), 1000):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for sid in ids[i:i + 1000]:
                        pipe.hget(f"{self.prefix}s:{sid.decode()}", "model")
                    n += sum(1 for m in await pipe.execute() if m == want)
        return n

    async def ping(self) -> None:
        with self._reachable():
            await self.redis.ping()
        await self._sync_epoch()

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        for task in list(self._background):
            task.cancel()
        await self.redis.aclose()


class _RedisLock:
    """``async with store.lock(id)``: one holder across all replicas, waiting at most ``lock_wait``.

    The lock lapses after ``lock_ttl`` (longer than any step) if its holder dies; should a step
    ever outlive it, the revision check in ``put`` still refuses the stale write.
    """

    def __init__(self, store: RedisSessionStore, session_id: str, local: asyncio.Lock):
        self.store, self.key, self.local = store, f"{store.prefix}lock:{session_id}", local
        self.session_id = session_id
        self.token = secrets.token_hex(16)

    async def __aenter__(self) -> _RedisLock:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.store.lock_wait
        try:
            async with asyncio.timeout(self.store.lock_wait):     # not wait_for: its extra task can leak the lock
                await self.local.acquire()
        except TimeoutError:
            raise self._busy() from None
        try:
            await self._acquire(loop, deadline)
        except BaseException:
            self.local.release()
            raise
        return self

    async def _acquire(self, loop, deadline: float) -> None:
        ttl_ms, delay = max(1, round(self.store.lock_ttl * 1000)), 0.002
        while True:
            fence = await self.store._deadline()
            try:
                with self.store._reachable():
                    got = await self.store._acquire(keys=[self.key], args=[self.token, ttl_ms, fence])
            except Unavailable:
                # our SET may still be queued in a paused Redis: if it lands in time, drop it at once
                self.store._in_background(self._release_soon())
                raise
            if got == 1:
                return
            if got == -1:
                raise Unavailable(f"session store too slow (redis at {self.store.where}); nothing was applied, "
                                  "retry shortly")
            left = deadline - loop.time()
            if left <= 0:
                raise self._busy()
            await asyncio.sleep(min(left, delay * random.uniform(0.5, 1.0)))   # jitter: waiters spread out
            delay = min(delay * 2, 0.05)

    def _busy(self) -> ConflictError:
        return ConflictError(f"session {self.session_id!r} is busy with another step (waited "
                             f"{self.store.lock_wait:g} s); retry", code="session_busy")

    async def __aexit__(self, *exc) -> None:
        try:
            if not await self.store._release(keys=[self.key], args=[self.token]):
                log.warning("step lock of session %r lapsed before its step ended; the revision check fenced it",
                            self.session_id)
        except RedisError as err:
            # Never turn a committed step into an error reply (the client would resend it); the lock
            # is released in the background once Redis answers, and lapses after lock_ttl at worst.
            log.warning("step lock of session %r not released (redis: %s); retrying in the background",
                        self.session_id, err)
            self.store._in_background(self._release_soon())
        finally:
            self.local.release()

    async def _release_soon(self) -> None:
        """Release our token once Redis answers again (for at most lock_ttl, when it lapses anyway)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.store.lock_ttl
        while loop.time() < until:
            try:
                await self.store._release(keys=[self.key], args=[self.token])
                return
            except RedisError:
                await asyncio.sleep(0.2)
