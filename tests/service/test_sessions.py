"""Sessions: chunking invariance, isolation under concurrency, batching equivalence, TTL, eviction, state."""
from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from tests.deploy import deploy_fixtures
from tests.deploy.deploy_fixtures import needs_redis
from service.registry import ModelRegistry
from service.sessions.batcher import DynamicBatcher
from service.sessions.manager import SessionManager
from service.sessions.stepper import StepItem, advance
from service.sessions.store import MemorySessionStore
from service.settings import DEFAULT_MODEL_DIR, Settings
from tests.helpers import same

redis_server = deploy_fixtures.redis_server                      # shared fixture


@pytest.fixture(scope="module", params=["memory", pytest.param("redis", marks=needs_redis)])
def client(request, make_client):
    """The app on each session store: the memory store keeps arrays, only Redis serialises them."""
    store = {}
    if request.param == "redis":
        store = {"session_store": "redis", "redis_url": request.getfixturevalue("redis_server").url,
                 "redis_key_prefix": f"t-{uuid.uuid4().hex}:"}
    return make_client(max_steps_per_message=64, max_steps_per_session=100, **store)


def new(client, model="charlm"):
    r = client.post("/v1/sessions", json={"model": model})
    assert r.status_code == 201
    return r.json()["session_id"]


def step(client, sid, inp, top_k=3):
    r = client.post(f"/v1/sessions/{sid}/step", json={"input": inp, "top_k": top_k})
    assert r.status_code == 200, r.text
    return r.json()


def test_outputs_do_not_depend_on_chunking(client):
    whole = step(client, new(client), "hello world")["outputs"]
    for cuts in (["hello wor", "ld"], list("hello world"), ["h", "ello", " world"]):
        sid = new(client)
        outs = sum((step(client, sid, c)["outputs"] for c in cuts), [])
        assert same(outs, whole)


def test_session_info_reset_and_end(client):
    sid = new(client)
    step(client, sid, "abc")
    info = client.get(f"/v1/sessions/{sid}").json()
    assert info["steps"] == 3 and info["model"] == "charlm" and info["expires_at"] > info["last_used"] >= info["created"]
    first = step(client, new(client), "x")["outputs"]
    assert client.post(f"/v1/sessions/{sid}/reset").json()["steps"] == 0
    assert same(step(client, sid, "x")["outputs"], first)
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    assert client.get(f"/v1/sessions/{sid}").json()["error"]["code"] == "session_not_found"
    assert client.delete(f"/v1/sessions/{sid}").status_code == 404


def test_streaming_classifier_and_echo(client):
    sid = new(client, "echo")
    bits = [1, 0, 1, 1, 0, 1, 0, 0]
    out = step(client, sid, [[b] for b in bits[:5]])["outputs"] + step(client, sid, [[b] for b in bits[5:]])["outputs"]
    assert [o["bits"][0] for o in out][3:] == bits[:-3]
    sid = new(client, "temporal-order")
    seq = "B" + "ab" * 6 + "X" + "cd" * 20 + "Y" + "ba" * 22 + "E"
    running = step(client, sid, seq[:50], top_k=1)["outputs"] + step(client, sid, seq[50:], top_k=1)["outputs"]
    assert len(running) == len(seq) and running[-1]["top_k"][0]["label"] == "R"


def test_completion_leaves_state_alone(client):
    sid = new(client)
    with_completion = step(client, sid, "ROMEO")
    body = {"n": 2, "max_length": 10, "seed": 3}
    a = client.post(f"/v1/sessions/{sid}/complete", json=body).json()["completions"]
    assert a == client.post(f"/v1/sessions/{sid}/complete", json=body).json()["completions"]
    assert client.get(f"/v1/sessions/{sid}").json()["steps"] == with_completion["steps"]
    assert same(step(client, sid, ":")["outputs"], step(client, new(client), "ROMEO:")["outputs"][-1:])
    fresh = new(client)
    assert client.post(f"/v1/sessions/{fresh}/complete", json={}).json()["error"]["code"] == "invalid_input"
    echo = new(client, "echo")
    step(client, echo, [[1]])
    assert "needs an lm" in client.post(f"/v1/sessions/{echo}/complete", json={}).json()["error"]["message"]


def test_state_export_import_migrates_a_session(client):
    sid = new(client)
    step(client, sid, "Now is the winter")
    r = client.get(f"/v1/sessions/{sid}/state")
    assert r.headers["content-type"] == "application/octet-stream" and r.headers["x-state-format-version"] == "1"
    other = new(client)
    assert client.put(f"/v1/sessions/{other}/state", content=r.content).status_code == 200
    assert same(step(client, sid, " of")["outputs"], step(client, other, " of")["outputs"])
    echo_state = client.get(f"/v1/sessions/{new(client, 'echo')}/state").content
    for bad in (b"junk", echo_state, r.content[:-3]):
        resp = client.put(f"/v1/sessions/{other}/state", content=bad)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_input"


def test_a_retried_step_is_answered_from_the_record_not_applied_twice(client):
    sid = new(client)
    body = {"input": "hello", "at": 0, "top_k": 3}
    first = client.post(f"/v1/sessions/{sid}/step", json=body).json()
    again = client.post(f"/v1/sessions/{sid}/step", json={**body, "top_k": 2}).json()      # a retry, smaller reply
    assert first["steps"] == again["steps"] == 5
    assert [o["top_k"][:2] for o in first["outputs"]] == [o["top_k"] for o in again["outputs"]]
    r = client.post(f"/v1/sessions/{sid}/step", json={"input": "other", "at": 0})
    assert r.status_code == 409 and r.json()["error"]["code"] == "step_mismatch"
    assert same(step(client, sid, " wor")["outputs"], step(client, new(client), "hello wor")["outputs"][-4:])


@pytest.mark.parametrize("payload,status,code", [
    ({"model": "nope"}, 404, "not_found"),
    ({"model": "charlm", "x": 1}, 422, "invalid_request"),
])
def test_create_errors(client, payload, status, code):
    r = client.post("/v1/sessions", json=payload)
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_step_errors_and_limits(client):
    sid = new(client)
    assert client.post(f"/v1/sessions/{sid}/step", json={"input": "\u00e9"}).json()["error"]["code"] == "invalid_input"
    assert client.post(f"/v1/sessions/{sid}/step", json={"input": "a" * 65}).status_code == 413
    for _ in range(3):
        step(client, sid, "a" * 30)
    r = client.post(f"/v1/sessions/{sid}/step", json={"input": "a" * 30})
    assert r.status_code == 413 and "limit of 100 steps" in r.json()["error"]["message"]
    assert client.post("/v1/sessions/unknown/step", json={"input": "a"}).status_code == 404


def test_ttl_expiry_and_lru_eviction():
    async def run():
        events = []
        store = MemorySessionStore(ttl=0.2, max_sessions=2, on_event=events.append)
        a = await store.create("m", "v")
        await asyncio.sleep(0.25)
        with pytest.raises(Exception) as exc:
            await store.get(a.id)
        assert exc.value.status == 410 and exc.value.code == "session_expired"
        store = MemorySessionStore(ttl=60, max_sessions=2, on_event=events.append)
        s1, s2 = await store.create("m", "v"), await store.create("m", "v")
        await store.put(await store.get(s1.id), expected_revision=0)     # s1 is now most recent
        await store.create("m", "v")                                      # evicts s2, the least recently used
        with pytest.raises(Exception) as exc:
            await store.get(s2.id)
        assert exc.value.status == 410 and exc.value.code == "session_evicted"
        assert (await store.get(s1.id)).id == s1.id
        assert {"created", "expired", "evicted"} <= set(events)
    asyncio.run(run())


def test_put_is_compare_and_set():
    async def run():
        store = MemorySessionStore()
        s = await store.create("m", "v")
        await store.put(s.advanced(np.zeros((1, 1, 1, 2), np.float32), None, 1), expected_revision=0)
        with pytest.raises(Exception) as exc:
            await store.put(s.advanced(np.ones((1, 1, 1, 2), np.float32), None, 1), expected_revision=0)  # stale loses
        assert exc.value.status == 409
    asyncio.run(run())


def test_step_locks_serialise_one_session_and_leave_nothing_behind():
    async def run():
        store, order = MemorySessionStore(), []

        async def use(i):
            async with store.lock("s"):
                order.append(("in", i))
                await asyncio.sleep(0.001)
                order.append(("out", i))
        waiter = asyncio.ensure_future(use(99))
        await asyncio.sleep(0)
        blocked = asyncio.ensure_future(use(100))
        await asyncio.sleep(0)
        blocked.cancel()                                              # gives up while waiting
        await asyncio.gather(waiter, *(use(i) for i in range(5)), return_exceptions=True)
        assert all(order[k][0] == "in" and order[k + 1] == ("out", order[k][1]) for k in range(0, len(order), 2))
        assert len(order) == 12 and not store._step_locks                    # no entry outlives its users
    asyncio.run(run())


def run_sessions(batching: bool, texts: list[str], chunk: int):
    """Drive many sessions concurrently through the manager; returns each session's outputs."""
    registry = ModelRegistry(DEFAULT_MODEL_DIR)
    registry.load("charlm")
    settings = Settings(batching=batching, max_batch_size=16, max_queue_delay_ms=1)
    batches = []
    manager = SessionManager(registry, MemorySessionStore(), settings, on_batch=lambda n, d: batches.append(n))

    async def one(text):
        sid = (await manager.create("charlm")).id
        outs = []
        for i in range(0, len(text), chunk):
            outs += (await manager.step(sid, text[i:i + chunk], top_k=2))[1]
        return outs

    async def main():
        try:
            return await asyncio.gather(*(one(t) for t in texts))
        finally:
            await manager.close()

    return asyncio.run(main()), batches


def test_concurrent_sessions_are_isolated_and_batching_changes_nothing():
    rng = np.random.default_rng(0)
    letters = list("abcdefghij ")
    texts = ["".join(rng.choice(letters, size=int(rng.integers(5, 30)))) for _ in range(40)]
    batched, sizes = run_sessions(True, texts, chunk=4)
    solo, solo_sizes = run_sessions(False, texts, chunk=4)
    assert max(sizes) > 1 and set(solo_sizes) == {1}                  # batching really happened
    for b, s in zip(batched, solo):
        assert same(b, s)


def test_batcher_preserves_order_within_a_session():
    registry = ModelRegistry(DEFAULT_MODEL_DIR)
    registry.load("charlm")
    model = registry.get("charlm").model

    async def main():
        batcher = DynamicBatcher.for_sessions(model, max_batch=8, max_delay=0.005)
        futures = [asyncio.ensure_future(batcher.submit(StepItem(None, np.array([i % 5]), None))) for i in range(20)]
        results = await asyncio.gather(*futures)
        await batcher.close()
        return results

    results = asyncio.run(main())
    for i, done in enumerate(results):                                 # FIFO: request i got input i
        ref = advance(model, [StepItem(None, np.array([i % 5]), None)])[0].logits
        # float32: the batch shape changes sums by an ulp; a wrong order is O(1)
        np.testing.assert_allclose(done.logits, ref, rtol=1e-5, atol=1e-5)


def test_a_non_finite_output_is_a_clear_error_never_bare_nan():
    """The reply path checks finiteness once per batch: NaN never reaches the JSON, the client gets
    ``non_finite_output`` and the step still counts (it was applied, as a retry with ``at`` would see)."""
    registry = ModelRegistry(DEFAULT_MODEL_DIR)
    registry.load("echo")
    head = registry.get("echo").model.head                           # this registry's own copy of the model
    weight = head.parameters()["weight"]
    weight.flags.writeable = True                   # a served model is frozen; this test poisons it on purpose
    weight[...] = np.inf                            # in place: load_state_dict rightly refuses it
    manager = SessionManager(registry, MemorySessionStore(), Settings())

    async def main():
        try:
            sid = (await manager.create("echo")).id
            with pytest.raises(Exception) as exc:
                await manager.step(sid, [[1.0]], top_k=1)
            session, logits = await manager.step_logits(sid, np.array([[1.0]]))       # raw logits: the caller's call
            return exc.value, session, logits
        finally:
            await manager.close()
    err, session, logits = asyncio.run(main())
    assert err.status == 422 and err.code == "non_finite_output"
    assert session.steps == 2 and not np.isfinite(logits).all()
