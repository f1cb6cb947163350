"""One-step sequence requests over every protocol, against one real uvicorn (``python -m service``).

    python -m scripts.bench_protocols                 # 5 s per protocol, 8 concurrent sequences
    python -m scripts.bench_protocols --quick         # 1 s each, 4 sequences (the smoke test runs this)

Each of ``--concurrency`` clients owns one char-LM sequence and feeds it one token per request, back
to back (closed loop), for ``--duration`` seconds after a short warm-up:

* ``triton http json`` / ``triton http binary``: ``tritonclient.http.aio`` on ``/v2/models/charlm/infer``
  with ``sequence_id``; JSON tensors, then the binary tensor extension (the client's default);
* ``triton grpc unary`` / ``triton grpc stream``: ``tritonclient.grpc.aio`` ``infer`` and ``stream_infer``;
* ``v1 session step``: ``POST /v1/sessions/{id}/step`` with httpx; ``websocket``: ``/v1/models/charlm/stream``.

v2 answers carry the full 81-way ``PROBABILITIES``; v1 and the WebSocket answer the top 5. All
protocols run in the same process, the same run, against the same server. The load generator shares
the cores with the server, so the server's own CPU time per request (from ``/proc/<pid>/stat``) is
printed too: it is the number that does not depend on how fast this Python client is.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import websockets

from scripts.loadtest import cpu_seconds, print_table
from tests.helpers import free_port, start_server

MODEL, VOCAB = "charlm", 81


# ---- one client per protocol: open() starts a sequence, step(token) sends one step, close() ends it --

class TritonHTTP:
    def __init__(self, host, binary):
        import tritonclient.http.aio as http_aio
        self.mod, self.host, self.binary = http_aio, host, binary

    async def open(self):
        self.client, self.sid, self.first = self.mod.InferenceServerClient(self.host), uuid.uuid4().hex, True

    async def step(self, token):
        x = self.mod.InferInput("INPUT_IDS", [1, 1], "INT64")
        x.set_data_from_numpy(np.array([[token]], dtype=np.int64), binary_data=self.binary)
        out = self.mod.InferRequestedOutput("PROBABILITIES", binary_data=self.binary)
        r = await self.client.infer(MODEL, [x], outputs=[out], sequence_id=self.sid, sequence_start=self.first)
        self.first = False
        assert r.as_numpy("PROBABILITIES").shape == (1, 1, VOCAB)

    async def close(self):
        await self.client.close()


class TritonGRPC:
    def __init__(self, host, stream):
        import tritonclient.grpc.aio as grpc_aio
        self.mod, self.host, self.stream = grpc_aio, host, stream

    async def open(self):
        self.client, self.sid, self.first = self.mod.InferenceServerClient(self.host), uuid.uuid4().hex, True
        if self.stream:
            self.requests: asyncio.Queue = asyncio.Queue()

            async def feed():
                while (req := await self.requests.get()) is not None:
                    yield req
            self.responses = self.client.stream_infer(feed()).__aiter__()

    def _inputs(self, token):
        x = self.mod.InferInput("INPUT_IDS", [1, 1], "INT64")
        x.set_data_from_numpy(np.array([[token]], dtype=np.int64))
        return [x]

    async def step(self, token):
        seq = {"sequence_id": self.sid, "sequence_start": self.first}
        self.first = False
        if self.stream:
            await self.requests.put({"model_name": MODEL, "inputs": self._inputs(token), **seq})
            r, err = await self.responses.__anext__()
            if err is not None:
                raise err
        else:
            r = await self.client.infer(MODEL, self._inputs(token), **seq)
        assert r.as_numpy("PROBABILITIES").shape == (1, 1, VOCAB)

    async def close(self):
        if self.stream:
            await self.requests.put(None)
        await self.client.close()


class V1Session:
    def __init__(self, host):
        self.base = f"http://{host}"

    async def open(self):
        self.http = httpx.AsyncClient(base_url=self.base, timeout=30)
        r = await self.http.post("/v1/sessions", json={"model": MODEL})
        r.raise_for_status()
        self.sid = r.json()["session_id"]

    async def step(self, token):
        r = await self.http.post(f"/v1/sessions/{self.sid}/step", json={"input": [token], "top_k": 5})
        r.raise_for_status()

    async def close(self):
        await self.http.delete(f"/v1/sessions/{self.sid}")
        await self.http.aclose()


class WebSocket:
    def __init__(self, host):
        self.url = f"ws://{host}/v1/models/{MODEL}/stream"

    async def open(self):
        self.ws = await websockets.connect(self.url, open_timeout=30)
        assert json.loads(await self.ws.recv())["type"] == "session"

    async def step(self, token):
        await self.ws.send(json.dumps({"type": "input", "tokens": [token], "top_k": 5}))
        reply = json.loads(await self.ws.recv())
        assert reply["type"] == "output", reply

    async def close(self):
        await self.ws.close()


PROTOCOLS = {
    "triton http json": lambda h: TritonHTTP(h["http"], binary=False),
    "triton http binary": lambda h: TritonHTTP(h["http"], binary=True),
    "triton grpc unary": lambda h: TritonGRPC(h["grpc"], stream=False),
    "triton grpc stream": lambda h: TritonGRPC(h["grpc"], stream=True),
    "v1 session step": lambda h: V1Session(h["http"]),
    "websocket": lambda h: WebSocket(h["http"]),
}


async def run_protocol(make, hosts, pid, concurrency, duration, warmup=10):
    """Closed loop: each client waits for its answer before the next step. Returns a result row."""
    clients = [make(hosts) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(c.open() for c in clients))
        return await _measure(clients, pid, duration, warmup)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def _measure(clients, pid, duration, warmup):
    rng = np.random.default_rng(0)
    latencies: list[float] = []

    async def warm(c):                             # a sequence's first request starts it; then steady state
        for _ in range(warmup):
            await c.step(int(rng.integers(VOCAB)))

    async def loop(c, deadline):
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            await c.step(int(rng.integers(VOCAB)))
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(warm(c) for c in clients))
    t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
    await asyncio.gather(*(loop(c, t0 + duration) for c in clients))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "rps": len(ms) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "server_cpu_us": cpu / max(len(ms), 1) * 1e6}


def report(results: dict, baseline: str) -> None:
    base = results.get(baseline) or {}
    header = ["protocol", "req/s", "p50 ms", "p99 ms", "server CPU µs/req", f"req/s vs {baseline}",
              f"p50 vs {baseline}", f"CPU vs {baseline}"]
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "failed: " + r["error"][:60]] + [""] * (len(header) - 2))
            continue

        def ratio(k):
            return f"{r[k] / base[k]:.2f}x" if base.get(k) else ""

        rows.append([name, f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['server_cpu_us']:.0f}",
                     ratio("rps"), ratio("p50_ms"), ratio("server_cpu_us")])
    print_table(f"one-step sequence requests, ratios against {baseline}", header, rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per protocol")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent sequences (one client each)")
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated subset of: " + ", ".join(PROTOCOLS))
    p.add_argument("--quick", action="store_true", help="1 s per protocol, 4 sequences")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="the server's OPENBLAS/OMP threads (default 1: one-step batches are small, and idle BLAS "
                        "threads spinning on cores shared with the load generator only add noise)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.concurrency = min(args.duration, 1.0), min(args.concurrency, 4)
    names = [n.strip() for n in args.protocols.split(",")]
    if unknown := sorted(set(names) - set(PROTOCOLS)):
        p.error(f"unknown protocols {unknown}")
    http_port, grpc_port = free_port(), free_port()
    threads = str(args.blas_threads)
    proc = start_server(http_port, {"RNN_SERVE_GRPC_PORT": str(grpc_port), "RNN_SERVE_ACCESS_LOG": "false",
                                    "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads})
    hosts = {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"{args.concurrency} sequences x {args.duration:g} s per protocol, one token per request, "
          f"{args.blas_threads} BLAS thread(s) in the server; "
          "the load generator shares the cores with the server")
    results = {}
    try:
        for name in names:
            try:
                results[name] = asyncio.run(run_protocol(PROTOCOLS[name], hosts, proc.pid, args.concurrency,
                                                         args.duration))
            except Exception as exc:                  # one broken protocol still leaves the others' numbers
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    report(results, "websocket" if "websocket" in results else names[0])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
