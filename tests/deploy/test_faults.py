"""Exactly-once steps under faults, all real processes on loopback: redis-server paused
(SIGSTOP/SIGCONT) and SIGKILLed with and without persistence, and a replica SIGKILLed, each with
WebSocket and HTTP sessions streaming through the client library (``service.client``), which
follows the documented retry rule. Every run counts acknowledged steps lost and duplicated."""
from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.helpers import same

from tests.deploy.deploy_fixtures import REDIS_SERVER, RedisServer, Replicas
from service.client import AsyncSessionClient, AsyncStreamClient, Backoff, SessionLost

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server (apt-get install redis-server)")]
TEXT = "now is the winter of our discontent made glorious summer by this sun"
CHUNK, PACE = 2, 0.08                       # characters per input, seconds between inputs
LOCK_TTL = 8.0


class Rig:
    def __init__(self, workdir):
        self.redis = RedisServer(workdir / "redis", persistent=True)
        self.replicas = Replicas(workdir / "replicas", self.redis.url, n=2, redis_socket_timeout_seconds=0.3,
                                 redis_retries=1, redis_lock_ttl_seconds=LOCK_TTL, redis_lock_wait_seconds=10,
                                 batching="false")
        self.http = [f"http://127.0.0.1:{p}" for p in self.replicas.ports]
        self.ws = [f"ws://127.0.0.1:{p}" for p in self.replicas.ports]
        self.ref: list[dict] | None = None

    def heal(self) -> None:
        if not self.redis.persistent or self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.kill()
            self.redis.persistent = True
            self.redis.start()
        self.replicas.start_all()
        if self.ref is None:
            r = httpx.post(f"{self.http[0]}/v1/models/charlm/predict", json={"inputs": [TEXT], "top_k": 2}, timeout=60)
            self.ref = r.json()["outputs"][0]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("faults"))
    try:
        r.redis.start()
        r.replicas.start_all()
        yield r
    finally:
        r.replicas.stop_all()
        r.redis.stop()
        print(r.replicas.log())


@pytest.fixture
def up(rig):
    rig.heal()
    return rig


def stream_through_a_fault(rig: Rig, fault, n_ws: int = 4, n_http: int = 4, http_replica: int | None = None):
    """Stream TEXT through WebSocket and HTTP sessions while ``fault`` runs in a thread. Returns a
    report (lost, duplicated, retries, reconnects, sessions lost) and each session's outputs."""
    report, results, progress, stamps = Counter(), {}, Counter(), {}
    backoff = Backoff(attempts=400, deadline=40)

    def take(name: str, reply: dict, outputs: list) -> None:
        first = reply["steps"] - len(reply["outputs"])
        report["duplicated"] += max(0, len(outputs) - first)          # positions we already had
        report["lost"] += max(0, first - len(outputs))                # positions skipped
        outputs[first:] = reply["outputs"]
        progress["steps"] += len(reply["outputs"])
        stamps.setdefault(name, []).append(time.monotonic())

    async def ws_session(i: int):
        urls = rig.ws[i % 2:] + rig.ws[:i % 2]                     # half start on each replica
        outputs = []
        try:
            async with AsyncStreamClient(urls, "charlm", backoff=backoff, reply_timeout=10) as s:
                while s.steps < len(TEXT):
                    take(f"ws{i}", await s.feed(TEXT[s.steps:s.steps + CHUNK], top_k=2), outputs)
                    await asyncio.sleep(PACE)
                report["retries"] += s.retries
                report["reconnects"] += s.reconnects
                results[f"ws{i}"] = (s.session_id, outputs)
        except SessionLost as exc:
            report[f"session_lost:{exc.code}"] += 1

    async def http_session(i: int):
        base = rig.http[http_replica if http_replica is not None else i % 2]
        outputs = []
        try:
            async with AsyncSessionClient(base, backoff=backoff, timeout=10) as c:
                s = await c.create("charlm")
                while s.steps < len(TEXT):
                    take(f"http{i}", await c.step(s, TEXT[s.steps:s.steps + CHUNK], top_k=2), outputs)
                    await asyncio.sleep(PACE)
                report["retries"] += c.retries
                results[f"http{i}"] = (s.session_id, outputs)
        except SessionLost as exc:
            report[f"session_lost:{exc.code}"] += 1

    async def main():
        await asyncio.gather(*(ws_session(i) for i in range(n_ws)), *(http_session(i) for i in range(n_http)))

    # The clients run in a thread and the fault in this one: the processes it starts die with the
    # thread that started them (PR_SET_PDEATHSIG), so that must be the test's own thread.
    t0 = time.monotonic()
    errors = []
    clients = threading.Thread(target=lambda: _capture(errors, lambda: asyncio.run(main())))
    clients.start()
    while progress["steps"] < (n_ws + n_http) * len(TEXT) // 4 and clients.is_alive():
        time.sleep(0.01)                                         # the fault lands a quarter of the way in
    fault()
    clients.join()
    if errors:
        raise errors[0]
    report["seconds"] = round(time.monotonic() - t0, 1)
    for name, (sid, outputs) in results.items():                # the server's count agrees
        info = httpx.get(f"{rig.http[1]}/v1/sessions/{sid}", timeout=10).json()
        assert "steps" in info, (name, info)
        steps = info["steps"]
        report["duplicated"] += max(0, steps - len(TEXT))
        report["lost"] += max(0, len(TEXT) - len(outputs))
        assert same(outputs, rig.ref), name
    print(f"fault run: {dict(report)}")
    results["stamps"] = stamps
    return report, results


def _capture(errors: list, fn) -> None:
    try:
        fn()
    except BaseException as exc:           # re-raised in the test's thread
        errors.append(exc)


def after(seconds: float, *actions):
    def run():
        time.sleep(seconds)
        for a in actions:
            a()
    return run


def test_redis_paused_mid_stream_commits_no_step_whose_reply_was_an_error(up):
    resumed = {}

    def fault():
        up.redis.pause()                                           # SIGSTOP: commands queue, replies stop
        time.sleep(2.5)
        up.redis.resume()
        resumed["at"] = time.monotonic()

    report, results = stream_through_a_fault(up, fault)
    stamps = results.pop("stamps")
    assert report["lost"] == 0 and report["duplicated"] == 0 and len(results) == 8
    assert report["retries"] + report["reconnects"] > 0                # the pause was felt
    # no lock outlived its owner: every session stepped again soon after the resume, none waited
    # out a stale lock (LOCK_TTL)
    back = max(min(t for t in ts if t > resumed["at"]) - resumed["at"] for ts in stamps.values())
    print(f"every session stepped again within {back:.2f} s of the resume")
    assert back < LOCK_TTL / 2, back


def test_redis_sigkill_with_persistence_loses_no_acknowledged_step(up):
    report, results = stream_through_a_fault(up, after(0, up.redis.kill, lambda: time.sleep(1.0), up.redis.start))
    results.pop("stamps")
    assert report["lost"] == 0 and report["duplicated"] == 0 and len(results) == 8


def test_replica_sigkill_mid_stream_fails_over_without_loss_or_duplication(up):
    victim = up.replicas.ports[0]
    report, results = stream_through_a_fault(up, after(0, lambda: up.replicas.kill(victim)), http_replica=1)
    results.pop("stamps")
    assert report["lost"] == 0 and report["duplicated"] == 0 and len(results) == 8
    assert report["reconnects"] >= 2                                   # the sockets on the victim moved over


def test_redis_sigkill_without_persistence_says_state_unknown_not_not_found(up):
    def wipe_and_restart():
        up.redis.kill()
        for f in up.redis.dir.iterdir():                           # the data is gone with the process
            shutil.rmtree(f) if f.is_dir() else f.unlink()
        up.redis.persistent = False
        up.redis.start()

    report, results = stream_through_a_fault(up, after(0, wipe_and_restart))
    results.pop("stamps")
    lost_sessions = sum(v for k, v in report.items() if k.startswith("session_lost:"))
    assert report["session_lost:session_state_unknown"] == lost_sessions > 0, report
    assert report["duplicated"] == 0 and len(results) + lost_sessions == 8
