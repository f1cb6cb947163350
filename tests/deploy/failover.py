"""Kill the replica serving a message, mid-message, and prove no acknowledged step is lost or repeated.

One driver per transport, shared by the loopback test (tests/deploy/test_replicas.py: uvicorn processes
behind nginx) and the Docker check (scripts/deploy_check.py: compose containers behind nginx). Both
find the victim the same way: the replica nginx holds an established connection to while our one
message is in flight (``established_peers`` reads nginx's socket table), so nothing in the service or
in nginx's config has to name the replica.

A client recovers exactly as the API documents: after a lost reply it reads the session's ``steps``
(committed at most once, under the session lock) and resends only what was not committed.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from typing import Protocol

import httpx
import websockets

from service.client.http import AsyncSessionClient, Session

TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
        "that lour'd upon our house in the deep bosom of the ocean buried.") * 5
KILL_CHARS = 150          # a message that meets a kill: a step long enough (~0.1 s) to be killed in the middle


class Cluster(Protocol):
    """Replicas behind one nginx, as a failover driver needs them."""

    def serving(self) -> list[str]:
        """``host:port`` of each replica nginx is connected to right now."""

    def kill(self, victim: str) -> None:
        """SIGKILL the replica at ``victim`` (no drain, no goodbye)."""

    def restore(self, victim: str) -> None:
        """Block until the killed replica (or its restart) serves again."""


def established_peers(pid: int, ports: set[int]) -> list[str]:
    """Remote ``ip:port`` of the ESTABLISHED TCP connections to ``ports`` in ``pid``'s network namespace.
    (The kernel walks every socket on the host to answer, ~20 ms on a busy one: hence long kill messages.)"""
    peers = []
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            _, _, remote, state = line.split()[:4]
            ip_hex, port_hex = remote.split(":")
            if state == "01" and int(port_hex, 16) in ports:          # 01: TCP_ESTABLISHED
                ip = socket.inet_ntoa(int(ip_hex, 16).to_bytes(4, "little"))
                peers.append(f"{ip}:{int(port_hex, 16)}")
    return peers


async def _victim(cluster: Cluster, in_flight: asyncio.Task | None = None, timeout: float = 5.0) -> str | None:
    """The one replica serving our in-flight message (nginx connects to it within milliseconds);
    None if ``in_flight`` finished before we saw it (a fast step on a busy host): try a later one."""
    deadline = time.monotonic() + timeout
    while not (peers := cluster.serving()):
        if in_flight is not None and in_flight.done():
            return None
        assert time.monotonic() < deadline, "nginx never connected to a replica"
        await asyncio.sleep(0.0005)
    assert len(set(peers)) == 1, f"more than one replica serving one client: {peers}"
    return peers[0]


class _Outputs:
    """Per-step outputs by absolute step index; a second output for a step is a duplicate."""

    def __init__(self, report: Counter):
        self.by_step, self.report = {}, report

    def record(self, reply: dict) -> int:
        start = reply["steps"] - len(reply["outputs"])
        for k, out in enumerate(reply["outputs"]):
            self.report["duplicated"] += (start + k) in self.by_step
            self.by_step[start + k] = out
        self.report["acknowledged"] += len(reply["outputs"])
        return reply["steps"]


def _kill_points(text: str, kills: int) -> list[int]:
    """Kill at evenly spaced characters; each kill message then has room for its KILL_CHARS."""
    points = [(i + 1) * len(text) // (kills + 1) for i in range(kills)]
    assert all(b - a > KILL_CHARS for a, b in zip(points, points[1:] + [len(text)])), "text too short for the kills"
    return points


def _after_kill(report: Counter, acked: int, committed: int, start: int, piece: str) -> int:
    assert acked <= committed <= start + len(piece), (acked, committed, start, len(piece))   # applied at most once
    report["committed_without_reply"] += committed - acked          # known from `steps`: not resent
    report["resent_steps"] += start + len(piece) - committed        # the uncommitted part only
    return committed


async def ws_failover(cluster: Cluster, ws_url: str, text: str = TEXT, chunk: int = 3, kills: int = 2):
    """Type ``text`` over one WebSocket session, SIGKILLing its replica with a message in flight ``kills``
    times. Returns (session id, {step: output}, report)."""
    report, points = Counter(), _kill_points(text, kills)

    async def connect(url: str, deadline_s: float = 30):
        deadline = time.monotonic() + deadline_s                  # retry while nginx has no replica to offer
        while True:
            try:
                ws = await websockets.connect(url, max_size=2**22, open_timeout=10)
                return ws, json.loads(await ws.recv())
            except (OSError, websockets.InvalidStatus, websockets.ConnectionClosed):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    loop = asyncio.get_running_loop()
    ws, hello = await connect(ws_url)
    outputs = _Outputs(report)
    sid, acked, sent, restoring = hello["session_id"], 0, 0, None
    while acked < len(text):
        sent += 1
        kill = report["kills"] < len(points) and acked >= points[report["kills"]]
        start, piece = acked, text[acked:acked + (KILL_CHARS if kill else chunk)]
        if kill and restoring is not None:
            await restoring                                       # every replica up before the next kill
        victim = await _victim(cluster) if kill else None
        await ws.send(json.dumps({"type": "input", "text": piece, "id": acked, "top_k": 2}))
        if victim is None:
            reply = json.loads(await ws.recv())
            assert reply["type"] == "output", reply
            acked = outputs.record(reply)
            continue
        await asyncio.sleep(0.002 * (sent % 3))                   # in transit, or being stepped
        cluster.kill(victim)
        report["kills"] += 1
        try:
            acked = outputs.record(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            report["reply_beat_the_kill"] += 1
        except websockets.ConnectionClosed:
            pass
        await ws.close()
        ws, hello = await connect(f"{ws_url}?session_id={sid}")
        assert hello["resumed"] and hello["session_id"] == sid, hello
        acked = _after_kill(report, acked, hello["steps"], start, piece)
        restoring = loop.run_in_executor(None, cluster.restore, victim)
    assert acked == len(text)                                     # the server's count: every step exactly once
    if restoring is not None:
        await restoring
    await ws.send(json.dumps({"type": "close"}))
    await ws.close()
    return sid, outputs.by_step, report


async def http_failover(cluster: Cluster, base_url: str, text: str = TEXT, chunk: int = 3, kills: int = 2):
    """The same over HTTP: session steps as POSTs; a POST whose replica dies gets nginx's 503
    (never retried elsewhere), and the client reads ``steps`` to know what was committed."""
    report, points = Counter(), _kill_points(text, kills)
    outputs = _Outputs(report)
    loop = asyncio.get_running_loop()
    async with AsyncSessionClient(base_url, timeout=60) as sessions:
        client = sessions.http                              # raw: a kill's 503 is to be seen, not retried
        r = await client.post("/v1/sessions", json={"model": "charlm"})
        assert r.status_code == 201, r.text
        sid, acked, restoring = r.json()["session_id"], 0, None
        while acked < len(text):
            kill = report["kills"] < len(points) and acked >= points[report["kills"]]
            start, piece = acked, text[acked:acked + (KILL_CHARS if kill else chunk)]
            body = {"input": piece, "top_k": 2}
            if not kill:
                # as the documented client sends it: with ``at``, resent on a 503 (right after a kill, nginx
                # may still pick the dead replica, and never retries a POST): exactly-once either way
                acked = outputs.record(await sessions.step(Session(sid, acked), piece, top_k=2))
                continue
            if restoring is not None:
                await restoring
            in_flight = asyncio.create_task(client.post(f"/v1/sessions/{sid}/step", json=body))
            victim = await _victim(cluster, in_flight)            # the replica this POST reached
            if victim is None:                                    # answered before we saw it: an ordinary step
                r = await in_flight
                assert r.status_code == 200, r.text
                acked = outputs.record(r.json())
                report["kill_missed"] += 1
                continue
            cluster.kill(victim)
            report["kills"] += 1
            try:
                r = await in_flight
            except httpx.TransportError:          # the kill cut the reply mid-body: the outcome is unknown,
                r = None                          # as after a 503, and `steps` below tells what was committed
                report["reply_cut_by_the_kill"] += 1
            if r is not None and r.status_code == 200:
                acked = outputs.record(r.json())
                report["reply_beat_the_kill"] += 1
            elif r is not None:
                assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
            for _ in range(100):                                  # the dead replica's lock lapses first
                s = await client.get(f"/v1/sessions/{sid}")
                if s.status_code == 200:
                    break
                assert s.status_code == 503, s.text
                await asyncio.sleep(0.2)
            acked = _after_kill(report, acked, s.json()["steps"], start, piece)
            restoring = loop.run_in_executor(None, cluster.restore, victim)
        assert acked == len(text)
        if restoring is not None:
            await restoring
        assert (await client.delete(f"/v1/sessions/{sid}")).status_code in (200, 204)
        report["resent_after_503"] += sessions.retries
    return sid, outputs.by_step, report


def check_outputs(outputs: dict[int, dict], reference: list[dict], report: Counter, same) -> None:
    """No duplicate, every missing output is a step committed while its reply died, and every output
    received equals the uninterrupted run's."""
    assert report["duplicated"] == 0, report
    missing = [k for k in range(len(reference)) if k not in outputs]
    assert len(missing) == report["committed_without_reply"], (missing, report)
    report["lost_acknowledged"] = 0                                # acked <= committed held after every kill
    assert same([outputs[k] for k in sorted(outputs)], [reference[k] for k in sorted(outputs)])
