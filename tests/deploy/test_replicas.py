"""Replicas behind nginx sharing Redis, all real processes on loopback: concurrency, failover, faults.

Two ``python -m service`` replicas (``RNN_SERVE_SESSION_STORE=redis``) behind nginx running
``deploy/nginx.conf``; the failover tests share their drivers with the Docker check (tests/deploy/failover.py).
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import websockets

from tests.deploy.deploy_fixtures import NGINX, REDIS_SERVER, Nginx, RedisServer, Replicas
from tests.deploy.failover import TEXT, check_outputs, established_peers, http_failover, ws_failover
from service.client import AsyncSessionClient, AsyncStreamClient, Backoff
from tests.helpers import type_text
from tests.helpers import same

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REDIS_SERVER is None or NGINX is None,
                       reason="needs redis-server and nginx (apt-get install redis-server nginx)"),
]


class Cluster:
    def __init__(self, workdir):
        self.redis = RedisServer(workdir / "redis")
        # A short lock TTL: a replica killed mid-step holds its session's lock only this long.
        # Batching off: which sessions share a batch then cannot move float32 results (up to ~2e-5
        # relative over 40 steps, store or no store), so every output compares with its solo run
        # under test_sessions.same(); batching itself is covered by test_sessions.
        self.replicas = Replicas(workdir / "replicas", self.redis.url, n=2, redis_lock_ttl_seconds=3,
                                 redis_lock_wait_seconds=10, redis_socket_timeout_seconds=0.5, batching="false")
        self.nginx = Nginx(workdir / "nginx", self.replicas.ports)
        self.http = f"http://127.0.0.1:{self.nginx.port}"
        self.ws_base = f"ws://127.0.0.1:{self.nginx.port}"
        self.ws = f"{self.ws_base}/v1/models/charlm/stream"

    def heal(self) -> None:
        """Every test starts with Redis and both replicas up, whatever the previous one did."""
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        self.replicas.start_all()

    # failover.Cluster: the victim is the replica nginx is connected to
    def serving(self) -> list[str]:
        return established_peers(self.nginx.proc.pid, set(self.replicas.ports))

    def kill(self, victim: str) -> None:
        self.replicas.kill(int(victim.rsplit(":", 1)[1]))

    def restore(self, victim: str) -> None:
        self.replicas.start(int(victim.rsplit(":", 1)[1]))

    def predict(self, texts: list[str]) -> list[list[dict]]:
        """Solo runs: each whole text alone (batch of one), stateless, for comparison."""
        outs = []
        with httpx.Client(base_url=self.http, timeout=60) as client:
            for text in texts:
                r = client.post("/v1/models/charlm/predict", json={"inputs": [text], "top_k": 2})
                assert r.status_code == 200, r.text
                outs.append(r.json()["outputs"][0])
        return outs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.redis.start()
        c.replicas.start_all()
        c.nginx.start()
        yield c
    finally:
        c.nginx.stop()
        c.replicas.stop_all()
        c.redis.stop()
        print(c.replicas.log())                       # shown by pytest only when a test failed


@pytest.fixture
def up(cluster):
    cluster.heal()
    return cluster


def upstream_port(headers) -> int:
    return int(headers["x-upstream"].rsplit(":", 1)[1])


def steps_counted(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r"^rnn_steps_total\{[^}]*\} (\S+)$", text, re.M))      # over models


# -- concurrency ------------------------------------------------------------------------------------
async def http_session(client: AsyncSessionClient, text: str, chunk: int) -> list[dict]:
    """Type ``text`` into a new HTTP session with the client library (exactly-once retries)."""
    s, outs = await client.create("charlm"), []
    for i in range(0, len(text), chunk):                     # round robin: consecutive steps change replica
        outs += (await client.step(s, text[i:i + chunk], top_k=2))["outputs"]
    assert (await client.http.get(f"/v1/sessions/{s.session_id}")).json()["steps"] == len(text)
    return outs




def test_hundreds_of_sessions_across_replicas_equal_their_solo_runs(up):
    rng = np.random.default_rng(7)
    letters = list("etaoinshrdlu ,.\n")
    texts = ["".join(rng.choice(letters, size=int(rng.integers(8, 40)))) for _ in range(200)]
    before = [steps_counted(p) for p in up.replicas.ports]

    async def main():
        limit = asyncio.Semaphore(48)

        async def one(i, text):
            async with limit:
                if i % 2:
                    return await type_text(up.ws_base, text, chunk=1 + i % 5)
                return await http_session(client, text, chunk=1 + i % 5)

        async with AsyncSessionClient(up.http, timeout=60, limits=httpx.Limits(max_connections=48)) as client:
            return await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))

    got = asyncio.run(main())
    for outs, ref in zip(got, up.predict(texts)):
        assert same(outs, ref)
    served = [steps_counted(p) - b for p, b in zip(up.replicas.ports, before)]
    assert sum(served) == sum(map(len, texts)) and min(served) > 0.2 * sum(served), served   # both replicas worked


def test_concurrent_steps_on_one_session_through_two_replicas_are_serialised(up):
    a, b = (f"http://127.0.0.1:{p}" for p in up.replicas.ports)
    sid = httpx.post(f"{a}/v1/sessions", json={"model": "charlm"}).json()["session_id"]
    rng = np.random.default_rng(3)
    chunks = ["".join(rng.choice(list("abcdefgh "), size=int(rng.integers(1, 7)))) for _ in range(24)]

    async def main():
        async with httpx.AsyncClient(timeout=60) as client:
            async def step(i, chunk):
                r = await client.post(f"{(a, b)[i % 2]}/v1/sessions/{sid}/step", json={"input": chunk, "top_k": 2})
                assert r.status_code == 200, r.text
                return r.json()
            return await asyncio.gather(*(step(i, c) for i, c in enumerate(chunks)))

    replies = asyncio.run(main())
    order = sorted(range(len(chunks)), key=lambda i: replies[i]["steps"])      # commit order
    done = 0
    for i in order:                                 # each step started where the previous one ended
        done += len(chunks[i])
        assert replies[i]["steps"] == done
    assert httpx.get(f"{b}/v1/sessions/{sid}").json()["steps"] == done == sum(map(len, chunks))
    as_committed = "".join(chunks[i] for i in order)
    assert same(sum((replies[i]["outputs"] for i in order), []), up.predict([as_committed])[0])


# -- failover ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["ws", "http"])
def test_failover_mid_message_loses_and_repeats_no_step(up, transport):
    ref = up.predict([TEXT])[0]
    if transport == "ws":
        sid, outputs, report = asyncio.run(ws_failover(up, up.ws))
    else:
        sid, outputs, report = asyncio.run(http_failover(up, up.http))
    print(f"{transport} failover: {dict(report)}")
    assert report["kills"] == 2
    check_outputs(outputs, ref, report, same)
    r = httpx.get(f"{up.http}/v1/sessions/{sid}")                        # closed at the end
    assert r.status_code == 404


def test_failover_with_the_client_library_resumes_without_loss_or_duplication(up):
    """The client library against two replicas behind nginx; the replica serving the stream is
    SIGKILLed twice with an input in flight. The client reconnects, resumes and resends with the
    same ``at``: every step is applied once and every output is received once."""
    text, chunk = TEXT, 3
    ref = up.predict([text])[0]
    report = Counter()

    async def main():
        outputs, restarting = [], None
        kill_at = {len(text) // (3 * chunk), 2 * len(text) // (3 * chunk)}      # message numbers
        async with AsyncStreamClient(up.ws_base, "charlm", backoff=Backoff(deadline=30), reply_timeout=20) as s:
            sid = s.session_id
            sent = 0
            while s.steps < len(text):
                sent += 1
                # the messages that meet a kill are longer, so the kill may land in the middle of their step
                piece = text[s.steps:s.steps + (12 * chunk if sent in kill_at else chunk)]
                feeding = asyncio.ensure_future(s.feed(piece, top_k=2))
                if sent in kill_at:
                    if restarting is not None:
                        await restarting                            # both replicas up before the next kill
                    victim = upstream_port(s.ws.response.headers)
                    await asyncio.sleep(0.002 * (sent % 3))         # in transit, or being stepped
                    t_kill = time.monotonic()
                    up.replicas.kill(victim)                        # SIGKILL with this message in flight
                    report["kills"] += 1
                reply = await feeding
                if sent in kill_at:
                    resumed_after.append(time.monotonic() - t_kill)
                    restarting = asyncio.get_running_loop().run_in_executor(None, up.replicas.start, victim)
                first = reply["steps"] - len(reply["outputs"])
                for k, out in enumerate(reply["outputs"]):
                    report["duplicated"] += (first + k) < len(outputs)
                    outputs.append(out) if first + k == len(outputs) else None
            report["reconnects"] = s.reconnects
            assert s.steps == len(text)                             # the server's count: every step exactly once
            if restarting is not None:
                await restarting
            await s.end()
        return sid, outputs

    resumed_after = []
    sid, outputs = asyncio.run(main())
    print(f"failover: {dict(report)}; each killed input answered {', '.join(f'{t:.2f}' for t in resumed_after)} "
          "s after the kill")
    assert report["kills"] == 2 and report["duplicated"] == 0 and report["reconnects"] >= 1
    assert len(outputs) == len(text)                                # no step lost, not even a reply
    assert same(outputs, ref)
    r = httpx.get(f"{up.http}/v1/sessions/{sid}")                   # closed at the end
    assert r.status_code == 404


# -- faults -----------------------------------------------------------------------------------------
def test_redis_restart_gives_clear_503s_then_recovers_by_itself(up):
    http = httpx.Client(base_url=up.http, timeout=30)
    sid = http.post("/v1/sessions", json={"model": "charlm"}).json()["session_id"]
    assert http.post(f"/v1/sessions/{sid}/step", json={"input": "abc"}).status_code == 200
    up.redis.kill()
    seen = Counter()

    def check(r: httpx.Response, v2: bool = False) -> None:
        seen[r.status_code] += 1
        assert r.status_code == 503, r.text
        message = r.json()["error"] if v2 else r.json()["error"]["message"]
        assert "session store unavailable (redis at 127.0.0.1:" in message and "retry shortly" in message
        if not v2:
            assert r.json()["error"]["code"] == "unavailable"

    for _ in range(3):                                      # round robin: both replicas answer each kind
        check(http.post("/v1/sessions", json={"model": "charlm"}))
        check(http.post(f"/v1/sessions/{sid}/step", json={"input": "d"}))
        check(http.get(f"/v1/sessions/{sid}"))
        check(http.post("/v2/models/charlm/infer", json={
            "inputs": [{"name": "INPUT_IDS", "shape": [1, 2], "datatype": "INT64", "data": [5, 6]}],
            "parameters": {"sequence_id": 9, "sequence_start": True}}), v2=True)
        ready = http.get("/v2/health/ready")
        seen[ready.status_code] += 1
        assert ready.status_code == 503 and ready.json()["ready"] is False and "redis" in ready.json()["error"]
        stateless = http.post("/v1/models/charlm/predict", json={"inputs": ["no store needed"]})
        seen[stateless.status_code] += 1
        assert stateless.status_code == 200

    async def ws_open():
        async with websockets.connect(up.ws) as ws:
            return json.loads(await ws.recv())
    event = asyncio.run(ws_open())
    assert event["type"] == "error" and event["code"] == "unavailable", event

    up.redis.start()                                        # same port, empty: no persistence in this test
    t0, r = time.monotonic(), None
    while time.monotonic() - t0 < 15:
        r = http.post("/v1/sessions", json={"model": "charlm"})
        seen[r.status_code] += 1
        if r.status_code == 201:
            break
        time.sleep(0.1)
    recovered_s = time.monotonic() - t0
    print(f"redis outage: statuses seen {dict(seen)}, recovered {recovered_s:.2f} s after redis came back")
    assert r.status_code == 201 and 500 not in seen and 502 not in seen
    assert all(up.replicas.alive(p) for p in up.replicas.ports)                # nothing crashed
    gone = http.get(f"/v1/sessions/{sid}")     # its state went with Redis: "unknown", not "never existed"
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "session_state_unknown"
    new = r.json()["session_id"]
    outs = sum((http.post(f"/v1/sessions/{new}/step", json={"input": c, "top_k": 2}).json()["outputs"]
                for c in ("after ", "the ", "storm")), [])        # three steps: both replicas take part
    assert same(outs, up.predict(["after the storm"])[0])
    for p in up.replicas.ports:
        assert httpx.get(f"http://127.0.0.1:{p}/v2/health/ready").status_code == 200
    http.close()
