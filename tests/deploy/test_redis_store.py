"""The SessionStore contract, run against both stores (memory and a real redis-server), plus what
only a shared store has: the lock across replicas, the revision fence, Redis outages."""
from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest

from tests.deploy import deploy_fixtures
from tests.deploy.deploy_fixtures import RedisServer, needs_redis
from model_core.state import state_to_bytes
from service.errors import Unavailable
from service.sessions.store import ConflictError, MemorySessionStore, SessionGone, SessionNotFound
from service.settings import Settings

redis_server, own_redis = deploy_fixtures.redis_server, deploy_fixtures.own_redis     # shared fixtures
# an LSTM-like packed state (P=2 parts of (L=2, B=1, H=4)): -0.0, a subnormal and float32's extremes
# must come back bit for bit
STATE = np.stack([np.array([[[0.5, -0.0, 1e-45, 3.4028235e38]], [[-1.0, 2.0, -3.0, 1e-3]]], np.float32),
                  np.arange(8, dtype=np.float32).reshape(2, 1, 4) / 7])
LOGITS = np.array([0.25, -1.0, 7.5], np.float32)


def state(*values: float):
    """A small one-part packed state (1, 1, 1, n) holding ``values``: a step's stand-in for the tests."""
    return np.array(values, np.float32).reshape(1, 1, 1, -1)


def same_session(a, b) -> bool:
    """Field by field: sessions hold arrays, so a round trip through Redis is compared bit for bit."""
    for name in a.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name
        else:
            assert x == y, name
    return True


def redis_store(url: str, prefix: str | None = None, on_event=None, **settings):
    """A store as a replica builds it; a fresh key prefix unless one is shared on purpose."""
    from service.sessions.redis_store import RedisSessionStore
    settings = Settings(session_store="redis", redis_url=url, redis_key_prefix=prefix or f"t-{uuid.uuid4().hex}:",
                        **settings)
    return RedisSessionStore.from_settings(settings, on_event=on_event)


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def make_store(request):
    """``make_store(ttl=..., max_sessions=..., on_event=...)``; call it inside the test's event loop."""
    if request.param == "memory":
        return lambda ttl=600.0, max_sessions=100_000, on_event=None: MemorySessionStore(ttl, max_sessions, on_event)
    url = request.getfixturevalue("redis_server").url
    return lambda ttl=600.0, max_sessions=100_000, on_event=None: redis_store(
        url, on_event=on_event, session_ttl_seconds=ttl, max_sessions=max_sessions)


def run(make, body, **kw):
    async def main():
        store = make(**kw)
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


async def raises(exc_type, coro, code: str | None = None):
    with pytest.raises(exc_type) as info:
        await coro
    if code:
        assert info.value.code == code, info.value.message
    return info.value


# -- the contract, both stores --------------------------------------------------------------------
def test_create_get_put_cas_delete(make_store):
    async def body(store):
        s = await store.create("charlm", "1")
        assert same_session(await store.get(s.id), s) and s.revision == 0 and s.state is None
        new = s.advanced(STATE, LOGITS, 3, reply_at=0, reply_digest=b"d" * 16, reply_logits=np.ones((3, 2), np.float32))
        assert await store.put(new, expected_revision=0) is new
        got = await store.get(s.id)
        assert same_session(got, new) and got.steps == 3 and got.revision == 1
        assert got.recorded(0, b"d" * 16).shape == (3, 2) and got.recorded(1, b"d" * 16) is None
        await raises(ConflictError, store.put(s.advanced(state(9), None, 1), expected_revision=0))   # stale loses
        assert same_session(await store.get(s.id), new)
        named = await store.create("charlm", "1", session_id="v2:charlm:42")
        assert named.id == "v2:charlm:42"
        assert (await raises(ConflictError, store.create("charlm", "1", session_id="v2:charlm:42"))).status == 409
        assert await store.delete(s.id) is True
        assert (await raises(SessionNotFound, store.get(s.id))).status == 404
        assert await store.delete(s.id) is False
        await raises(SessionNotFound, store.put(new.advanced(state(1), None, 1), expected_revision=1))
        await store.ping()
    run(make_store, body)


def test_unknown_is_404(make_store):
    async def body(store):
        err = await raises(SessionNotFound, store.get("never-was"), code="session_not_found")
        assert err.status == 404 and "unknown session" in err.message
    run(make_store, body)


def test_ttl_expiry_is_410_expired_and_put_refreshes_it(make_store):
    async def body(store):
        a, b = await store.create("m", "v"), await store.create("m", "v")
        await asyncio.sleep(0.25)
        await store.put((await store.get(b.id)).advanced(state(1), None, 1), expected_revision=0)   # b stays fresh
        await asyncio.sleep(0.25)
        err = await raises(SessionGone, store.get(a.id), code="session_expired")
        assert err.status == 410 and "expired after 0.4 s idle" in err.message
        assert (await store.get(b.id)).steps == 1
    run(make_store, body, ttl=0.4)


def test_lru_eviction_is_410_evicted(make_store):
    events = []

    async def body(store):
        s1, s2 = await store.create("m", "v"), await store.create("m", "v")
        await store.put(await store.get(s1.id), expected_revision=0)          # s1 is now the most recent
        s3 = await store.create("m", "v")                                    # evicts s2
        err = await raises(SessionGone, store.get(s2.id), code="session_evicted")
        assert err.status == 410 and "evicted" in err.message
        assert (await store.get(s1.id)).id == s1.id and (await store.get(s3.id)).id == s3.id
        assert store.count() == 2
    run(make_store, body, max_sessions=2, on_event=events.append)
    assert events.count("created") == 3 and events.count("evicted") == 1


def test_lock_excludes_concurrent_holders_and_is_released_on_error(make_store):
    async def body(store):
        s = await store.create("m", "v")
        inside, spans = 0, []

        async def hold(i):
            nonlocal inside
            async with store.lock(s.id):
                inside += 1
                assert inside == 1
                t0 = time.monotonic()
                await asyncio.sleep(0.01)
                spans.append((t0, time.monotonic()))
                inside -= 1

        await asyncio.gather(*(hold(i) for i in range(8)))
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))           # no two holders overlapped
        with pytest.raises(RuntimeError):
            async with store.lock(s.id):
                raise RuntimeError("a step failed")
        async with asyncio.timeout(1):                                        # released: free at once
            async with store.lock(s.id):
                pass
    run(make_store, body)


# -- only a shared store --------------------------------------------------------------------------
@needs_redis
def test_two_replicas_serialise_steps_on_one_session(redis_server):
    """Two store instances on one Redis stand for two replicas; every step is kept, none twice."""
    prefix = f"t-{uuid.uuid4().hex}:"

    async def main():
        a, b = redis_store(redis_server.url, prefix), redis_store(redis_server.url, prefix)
        try:
            s = await a.create("m", "v")

            async def step(store, i):
                async with store.lock(s.id):
                    cur = await store.get(s.id)
                    await asyncio.sleep(0.002)                                # room for the other to interleave
                    before = cur.state if cur.state is not None else state()
                    await store.put(cur.advanced(np.append(before, state(i), axis=3), None, 1), cur.revision)

            await asyncio.gather(*(step(a if i % 2 else b, i) for i in range(40)))
            final = await b.get(s.id)
            assert final.steps == 40 and final.revision == 40 and sorted(final.state.ravel()) == list(range(40))
        finally:
            await a.close()
            await b.close()
    asyncio.run(main())


@needs_redis
def test_lock_wait_is_bounded_and_a_dead_holders_lock_lapses(redis_server):
    async def main():
        store = redis_store(redis_server.url, redis_lock_ttl_seconds=0.3, redis_lock_wait_seconds=0.1)
        other = redis_store(redis_server.url, store.prefix, redis_lock_ttl_seconds=0.3, redis_lock_wait_seconds=1)
        try:
            s = await store.create("m", "v")
            await store.redis.set(f"{store.prefix}lock:{s.id}", "a-replica-that-died", px=300)
            err = await raises(ConflictError, store.lock(s.id).__aenter__(), code="session_busy")
            assert err.status == 409 and "busy" in err.message
            t0 = time.monotonic()
            async with other.lock(s.id):                                       # waits out the lapse, ~0.3 s
                assert 0.05 < time.monotonic() - t0 < 1.0
        finally:
            await store.close()
            await other.close()
    asyncio.run(main())


@needs_redis
def test_revision_fences_a_step_whose_lock_lapsed(redis_server):
    async def main():
        slow = redis_store(redis_server.url, redis_lock_ttl_seconds=0.1)
        fast = redis_store(redis_server.url, slow.prefix, redis_lock_ttl_seconds=0.1)
        try:
            s = await slow.create("m", "v")
            async with slow.lock(s.id):
                cur = await slow.get(s.id)
                await asyncio.sleep(0.2)                                       # the lock lapses mid-step
                async with fast.lock(s.id):
                    await fast.put(cur.advanced(state(1), None, 1), cur.revision)
                await raises(ConflictError, slow.put(cur.advanced(state(2), None, 1), cur.revision))
            assert (await fast.get(s.id)).state.ravel().tolist() == [1]
        finally:
            await slow.close()
            await fast.close()
    asyncio.run(main())


@needs_redis
def test_stored_compactly_with_ttl_in_redis(redis_server):
    async def main():
        store = redis_store(redis_server.url, session_ttl_seconds=30)
        try:
            s = await store.create("charlm", "1")
            await store.put(s.advanced(STATE, LOGITS, 2), 0)
            key = f"{store.prefix}s:{s.id}"
            h = await store.redis.hgetall(key)
            assert h[b"state"] == state_to_bytes(tuple(STATE)) and h[b"last_output"] == LOGITS.tobytes()  # little-endian f4
            assert h[b"revision"] == b"1"
            assert b"sequence_id" not in h                                     # None is absent, not a string
            assert 29_000 < await store.redis.pttl(key) <= 30_000              # Redis holds the idle TTL
            assert await store.redis.pttl(f"{store.prefix}tomb:{s.id}") > 30_000
            assert await store.redis.pttl(f"{store.prefix}lock:{s.id}") == -2  # no lock left behind
        finally:
            await store.close()
    asyncio.run(main())


@needs_redis
def test_a_put_retried_after_its_reply_was_lost_is_not_a_conflict(redis_server):
    """redis-py retries a call whose connection dropped; the script may already have run once."""
    from service.sessions.redis_store import _fields

    async def main():
        store = redis_store(redis_server.url)
        try:
            s = await store.create("m", "v")
            new = s.advanced(state(1), None, 1)
            late = [0, store._ttl_ms, store._tomb_ms, s.id, "write-0", await store._deadline() - 10**7, *_fields(new)]
            assert (await store._put(keys=store._keys(s.id), args=late))[0] == -2       # past its deadline: nothing
            assert (await store.get(s.id)).steps == 0
            args = [0, store._ttl_ms, store._tomb_ms, s.id, "write-1", await store._deadline(), *_fields(new)]
            assert (await store._put(keys=store._keys(s.id), args=args))[0] == 1
            assert (await store._put(keys=store._keys(s.id), args=args))[0] == 1        # the same write again
            args[4] = "write-2"
            assert (await store._put(keys=store._keys(s.id), args=args))[0] == 0        # anyone else: conflict
            assert (await store.get(s.id)).steps == 1
        finally:
            await store.close()
    asyncio.run(main())


@needs_redis
def test_count_is_cached_and_refreshed_in_the_background(redis_server):
    events = []

    async def main():
        store = redis_store(redis_server.url, session_ttl_seconds=0.2, redis_count_refresh_seconds=0.05,
                            on_event=events.append)
        try:
            for _ in range(3):
                await store.create("m", "v")
            assert store.count() == 3                                          # sync, no Redis round trip
            await asyncio.sleep(0.4)
            assert store.count() == 0 and events.count("expired") == 3
        finally:
            await store.close()
    asyncio.run(main())


@needs_redis
def test_redis_down_is_503_unavailable_then_recovers(own_redis: RedisServer):
    async def main():
        store = redis_store(own_redis.url, redis_socket_timeout_seconds=0.5, redis_retries=1)
        try:
            s = await store.create("m", "v")
            own_redis.kill()
            for op in (store.create("m", "v"), store.get(s.id), store.put(s.advanced(state(1), None, 1), 0),
                       store.delete(s.id), store.ping(), store.lock(s.id).__aenter__()):
                t0 = time.monotonic()
                err = await raises(Unavailable, op, code="unavailable")
                assert err.status == 503 and time.monotonic() - t0 < 3
                assert f"session store unavailable (redis at 127.0.0.1:{own_redis.port}" in err.message
                assert "retry shortly" in err.message
            own_redis.start()                                                  # same port, empty (no persistence)
            await store.ping()                                                 # the same client reconnects
            await raises(SessionNotFound, store.get(s.id))                     # lost with Redis: a clear 404
            fresh = await store.create("m", "v")
            async with store.lock(fresh.id):
                await store.put(fresh.advanced(state(3), None, 1), 0)
            assert (await store.get(fresh.id)).state.ravel().tolist() == [3]
        finally:
            await store.close()
    asyncio.run(main())


def test_count_model_counts_live_sessions_per_model(make_store):
    """What the v2 repository's unload checks before it stops serving a model."""
    async def body(store):
        a = await store.create("charlm", "1")
        await store.create("charlm", "1")
        await store.create("echo", "1")
        assert (await store.count_model("charlm"), await store.count_model("echo")) == (2, 1)
        await store.delete(a.id)
        assert (await store.count_model("charlm"), await store.count_model("nope")) == (1, 0)
    run(make_store, body)
