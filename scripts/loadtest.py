"""Load test against a real uvicorn (``python -m service``) on this machine.

    python -m scripts.loadtest                      # every scenario, default sizes
    python -m scripts.loadtest --scenario stream --sessions 10,100,1000
    python -m scripts.loadtest --scenario throughput --duration 10
    python -m scripts.loadtest --scenario classify --clients 64
    python -m scripts.loadtest --scenario memory --idle-sessions 100000
    python -m scripts.loadtest --scenario soak --sessions 200 --duration 120
    python -m scripts.loadtest --scenario targets    # issue 14's table: every target, measured, met or not

Scenarios:
* stream: N WebSocket sessions connect, then type into the char-LM, one keystroke per message
  every ``--interval`` seconds each (start times staggered); per-keystroke round-trip p50/p99.
* throughput: sessions send single-keystroke messages back to back (closed loop); aggregate
  steps/s with the batcher on, then with batching off (a second server), and the ratio.
* classify: ``--clients`` concurrent HTTP clients post temporal-order sequences; req/s and p99.
  The load comes from wrk (Debian's ``wrk``) when it is installed, else from a Python client.
* memory: ``--idle-sessions`` char-LM sessions each fed one step, then the server's RSS.
* soak: N typists (the first of ``--sessions``) type for ``--duration`` seconds; every
  ``--sample`` seconds, the server's CPU per keystroke and its RSS (flat RSS: nothing leaks per step).
* targets: each scenario at the sizes of the serving targets, then one table of target, measured
  value and verdict.

The load generator shares the machine with the server, so numbers are a floor for what the
server can do on its own; each run prints its settings and the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import uvloop
import websockets

from tests.helpers import free_port, start_server

ROOT = Path(__file__).resolve().parents[1]

TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
        "that lour'd upon our house in the deep bosom of the ocean buried.")


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc), to cost the server apart from the generator."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, **env):
        self.port = free_port()
        self.env = {f"RNN_SERVE_{k.upper()}": str(v) for k, v in env.items()}

    def __enter__(self):
        self.proc = start_server(self.port, self.env)
        self.host = f"127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            print("server did not stop within 30 s of SIGTERM; killed", file=sys.stderr)


# -- scenarios ------------------------------------------------------------------------------
async def typist(url, keystrokes, interval, delay, connected, go, rtts, errors, until=None):
    """Connect, wait until every session is connected, then type one keystroke per ``interval``
    (``keystrokes`` of them, or, given ``until`` (a one-item list, so it can be set once everyone is
    connected), until ``time.perf_counter()`` passes ``until[0]``)."""
    try:
        async with websockets.connect(url, max_size=2**22, open_timeout=120, compression=None) as ws:
            json.loads(await ws.recv())
            connected()
            await go.wait()
            await asyncio.sleep(delay)                     # staggered, so keystrokes arrive evenly
            next_at = time.perf_counter()
            i = 0
            while (until is None and i < keystrokes) or (until is not None and next_at < until[0]):
                t0 = time.perf_counter()
                await ws.send(json.dumps({"type": "input", "text": TEXT[i % len(TEXT)], "top_k": 3}))
                reply = json.loads(await ws.recv())
                if reply["type"] != "output":
                    errors.append(reply)
                rtts.append(time.perf_counter() - t0)
                next_at += interval
                i += 1
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    except Exception as exc:  # report, don't hide
        errors.append(repr(exc))
        connected()


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def run_stream(n_list, keystrokes, interval):
    """Per-keystroke round trips once all N sessions are open (connecting is timed apart).
    Returns {N: {"p99": ms, "cpu_us": server CPU µs per keystroke, connects included}}."""
    rows, results = [], {}
    with Server(max_batch_size=256) as srv:
        url = f"ws://{srv.host}/v1/models/charlm/stream"
        uvloop.run(typist(url, 10, 0.01, 0, lambda: None, _set_event(), [], []))     # warm-up, not measured
        for n in n_list:
            rtts, errors, timing = [], [], {}

            async def main():
                go, count = asyncio.Event(), [0]

                def connected():
                    count[0] += 1
                    if count[0] == n:
                        timing["connected"] = time.perf_counter()
                        go.set()
                tasks = [asyncio.create_task(typist(url, keystrokes, interval, interval * i / n, connected, go, rtts,
                                                    errors)) for i in range(n)]
                await go.wait()
                timing["typing"] = time.perf_counter()
                await asyncio.gather(*tasks)
            t0, cpu0 = time.perf_counter(), cpu_seconds(srv.proc.pid)
            uvloop.run(main())
            wall = time.perf_counter() - timing["typing"]
            cpu_us = (cpu_seconds(srv.proc.pid) - cpu0) / max(len(rtts), 1) * 1e6     # connects included
            rows.append([n, f"{timing['connected'] - t0:.1f}", len(rtts), f"{len(rtts) / wall:.0f}", f"{pct(rtts, 50):.1f}",
                         f"{pct(rtts, 99):.1f}", f"{pct(rtts, 100):.1f}", f"{cpu_us:.0f}", len(errors)])
            results[n] = {"p99": pct(rtts, 99), "cpu_us": cpu_us, "errors": len(errors)}
    print_table(f"Streaming: WebSocket sessions typing into charlm, one keystroke per message every {interval * 1000:.0f} ms",
                 ["sessions", "connect s", "keystrokes", "msg/s", "p50 ms", "p99 ms", "max ms", "server CPU µs/msg",
                  "errors"], rows)
    return results


def run_soak(n, duration, interval, sample):
    """N typists for ``duration`` s; per ``sample`` s window: keystrokes, server CPU per keystroke, RSS.
    Returns {"cpu_us": over the whole run, "rss_growth_mb": last window's RSS minus the first's}."""
    rows, rtts, errors = [], [], []
    with Server(max_batch_size=256) as srv:
        url = f"ws://{srv.host}/v1/models/charlm/stream"
        uvloop.run(typist(url, 10, 0.01, 0, lambda: None, _set_event(), [], []))     # warm-up, not measured
        pid = srv.proc.pid

        async def main():
            go, count = asyncio.Event(), [0]

            def connected():
                count[0] += 1
                if count[0] == n:
                    go.set()
            until = [math.inf]                                       # set once everyone is connected
            tasks = [asyncio.create_task(typist(url, None, interval, interval * i / n, connected, go, rtts, errors,
                                                until)) for i in range(n)]
            await go.wait()
            until[0] = time.perf_counter() + duration
            start, cpu0, done0 = time.perf_counter(), cpu_seconds(pid), len(rtts)
            last_t, last_cpu, last_done = start, cpu0, done0
            for w in range(1, math.ceil(duration / sample) + 1):
                await asyncio.sleep(max(0.0, min(start + w * sample, until[0]) - time.perf_counter()))
                now, cpu, done = time.perf_counter(), cpu_seconds(pid), len(rtts)
                keys = done - last_done
                rows.append([f"{now - start:.0f}", keys, f"{keys / (now - last_t):.0f}",
                             f"{(cpu - last_cpu) / max(keys, 1) * 1e6:.0f}", f"{rss_mb(pid):.1f}",
                             f"{pct(rtts[last_done:done], 99):.1f}"])
                last_t, last_cpu, last_done = now, cpu, done
            await asyncio.gather(*tasks)
            return (last_cpu - cpu0) / max(last_done - done0, 1) * 1e6
        cpu_us = uvloop.run(main())
    print_table(f"Soak: {n} WebSocket typists, one keystroke every {interval * 1000:.0f} ms each, for {duration:g} s",
                ["t s", "keystrokes", "msg/s", "server CPU µs/msg", "RSS MB", "p99 ms"], rows)
    growth = float(rows[-1][4]) - float(rows[0][4]) if rows else float("nan")
    print(f"server CPU over the run: {cpu_us:.0f} µs per keystroke; RSS change first to last window: {growth:+.1f} MB;"
          f" errors: {len(errors)}")
    return {"cpu_us": cpu_us, "rss_growth_mb": growth, "errors": len(errors)}


async def closed_loop(url, duration, counter, chars):
    async with websockets.connect(url, max_size=2**22, open_timeout=60, compression=None) as ws:
        json.loads(await ws.recv())
        end, i = time.perf_counter() + duration, 0
        while time.perf_counter() < end:
            await ws.send(json.dumps({"type": "input", "text": TEXT[i:i + chars] or "a", "top_k": 1}))
            reply = json.loads(await ws.recv())
            counter[0] += len(reply.get("outputs", ()))
            i = (i + chars) % (len(TEXT) - chars)


def run_throughput(sessions, duration, chars):
    rows, rates = [], {}
    for batching in (True, False):
        with Server(batching=batching, max_batch_size=256) as srv:
            counter = [0]

            async def main():
                await asyncio.gather(*(closed_loop(f"ws://{srv.host}/v1/models/charlm/stream", duration, counter, chars)
                                       for _ in range(sessions)))
            t0, cpu0 = time.perf_counter(), cpu_seconds(srv.proc.pid)
            uvloop.run(main())
            rates[batching] = counter[0] / (time.perf_counter() - t0)
            cpu_us = (cpu_seconds(srv.proc.pid) - cpu0) / max(counter[0], 1) * 1e6
            rows.append(["on" if batching else "off", sessions, chars, f"{rates[batching]:.0f}", f"{cpu_us:.0f}"])
    print_table(f"Throughput: {sessions} sessions sending back to back for {duration:g} s",
                ["batching", "sessions", "steps/msg", "steps/s", "server CPU µs/step"], rows)
    print(f"batching on / off: {rates[True] / rates[False]:.1f}x")
    return rates


CLASSIFY_SEQ = "B" + "ab" * 6 + "X" + "cd" * 20 + "Y" + "ba" * 22 + "E"
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"inputs": ["%s"]}'
wrk.headers["Content-Type"] = "application/json"
"""


def _wrk_ms(text: str) -> float:
    value = float(text.rstrip("mus"))
    return value / 1000 if text.endswith("us") else value * 1000 if text.endswith("s") and not text.endswith("ms") else value


def classify_with_wrk(url, clients, duration):
    """wrk (C) generates the load: it takes far less of the shared CPU than a Python client."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % CLASSIFY_SEQ)
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{duration:g}s", "--latency", "-s", f.name, url],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    errors += sum(int(v) for v in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return requests, float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), _wrk_ms(lat["50"]), _wrk_ms(lat["99"]), errors


def classify_with_httpx(url, clients, duration):
    lat, errors = [], [0]

    async def client(http):
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            r = await http.post(url, json={"inputs": [CLASSIFY_SEQ]})
            lat.append(time.perf_counter() - t0)
            errors[0] += r.status_code != 200

    async def main():
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(limits=limits, timeout=30) as http:
            await asyncio.gather(*(client(http) for _ in range(clients)))
    t0 = time.perf_counter()
    uvloop.run(main())
    return len(lat), len(lat) / (time.perf_counter() - t0), pct(lat, 50), pct(lat, 99), errors[0]


def run_classify(clients, duration, generator):
    if generator == "wrk" and not shutil.which("wrk"):
        print("wrk not found (Debian package wrk); using the Python client instead")
        generator = "httpx"
    with Server() as srv:
        url = f"http://{srv.host}/v1/models/temporal-order/classify"
        run = classify_with_wrk if generator == "wrk" else classify_with_httpx
        n, rate, p50, p99, errors = run(url, clients, duration)
    rows = [[generator, clients, n, f"{rate:.0f}", f"{p50:.1f}", f"{p99:.1f}", errors]]
    print_table("HTTP classify (temporal-order, one 100-step sequence per request)",
                ["load generator", "clients", "requests", "req/s", "p50 ms", "p99 ms", "errors"], rows)
    return {"rate": rate, "p99": p99, "errors": errors}


def run_memory(n, concurrency=64):
    with Server(max_sessions=n + 10) as srv:
        base = rss_mb(srv.proc.pid)

        async def worker(http, k):
            for _ in range(k):
                sid = (await http.post(f"http://{srv.host}/v1/sessions", json={"model": "charlm"})).json()["session_id"]
                await http.post(f"http://{srv.host}/v1/sessions/{sid}/step", json={"input": "a", "top_k": 1})

        async def main():
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency), timeout=60) as http:
                await asyncio.gather(*(worker(http, n // concurrency + (i < n % concurrency)) for i in range(concurrency)))
        t0 = time.perf_counter()
        uvloop.run(main())
        created = time.perf_counter() - t0
        count = httpx.get(f"http://{srv.host}/metrics").text
        active = next(float(l.split()[1]) for l in count.splitlines() if l.startswith("rnn_sessions_active "))
        rss = rss_mb(srv.proc.pid)
    rows = [[n, int(active), f"{base:.0f}", f"{rss:.0f}", f"{(rss - base) * 1024 / max(n, 1):.2f}", f"{created:.0f}"]]
    print_table("Memory: idle char-LM sessions (each fed one step, so each holds a state)",
                ["sessions", "active", "RSS before MB", "RSS after MB", "KB/session", "setup s"], rows)
    return {"rss": rss, "active": int(active)}


# issue 14's serving targets; the HTTP classify baseline is the measurement they were set against
CLASSIFY_BASELINE = (3673, 46.0)        # req/s, p99 ms


def run_targets(duration: float, soak_duration: float, idle_sessions: int):
    """Every serving target at its own size, then one table: target, measured, verdict."""
    stream = run_stream([1000], 20, 0.2)[1000]
    soak = run_soak(200, soak_duration, 0.2, max(soak_duration / 6, 5))
    rates = run_throughput(256, duration, 1)
    classify = run_classify(64, duration, "wrk")
    memory = run_memory(idle_sessions)
    ratio = rates[True] / rates[False]

    def verdict(ok):
        return "met" if ok else "MISSED"
    rows = [
        ["1,000 typists, 5 keys/s: p99", "≤ 50 ms", f"{stream['p99']:.1f} ms", verdict(stream["p99"] <= 50)],
        ["1,000 typists: server CPU", "≤ 60 µs/key", f"{stream['cpu_us']:.0f} µs", verdict(stream["cpu_us"] <= 60)],
        [f"200 typists, {soak_duration:g} s: server CPU", "≤ 60 µs/key", f"{soak['cpu_us']:.0f} µs",
         verdict(soak["cpu_us"] <= 60)],
        [f"200 typists, {soak_duration:g} s: RSS", "flat", f"{soak['rss_growth_mb']:+.1f} MB",
         verdict(abs(soak["rss_growth_mb"]) <= 5)],
        ["batcher, 256 sessions: steps/s", "≥ 15,000", f"{rates[True]:.0f}", verdict(rates[True] >= 15_000)],
        ["batcher: on / off", "≥ 5x", f"{ratio:.1f}x", verdict(ratio >= 5)],
        ["HTTP classify, 64 clients: req/s", f"≥ {CLASSIFY_BASELINE[0]:,}", f"{classify['rate']:.0f}",
         verdict(classify["rate"] >= CLASSIFY_BASELINE[0])],
        ["HTTP classify: p99", f"≤ {CLASSIFY_BASELINE[1]:g} ms", f"{classify['p99']:.1f} ms",
         verdict(classify["p99"] <= CLASSIFY_BASELINE[1])],
        [f"{idle_sessions:,} idle sessions: RSS", "≤ 500 MB", f"{memory['rss']:.0f} MB", verdict(memory["rss"] <= 500)],
    ]
    print_table(f"Serving targets (load average {os.getloadavg()[0]:.1f} at the end; load generator on the same cores)",
                ["scenario", "target", "measured", "verdict"], rows)
    return rows


def print_table(title, header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=["all", "stream", "throughput", "classify", "memory", "soak", "targets"],
                   default="all")
    p.add_argument("--sessions", default="10,100,1000", help="stream: session counts")
    p.add_argument("--keystrokes", type=int, default=20, help="stream: keystrokes per session")
    p.add_argument("--interval", type=float, default=0.2, help="stream: seconds between a session's keystrokes")
    p.add_argument("--throughput-sessions", type=int, default=256)
    p.add_argument("--chars", type=int, default=1, help="throughput: keystrokes per message")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--generator", choices=["wrk", "httpx"], default="wrk",
                   help="classify: the load generator (wrk, Debian's package, takes less of the shared CPU)")
    p.add_argument("--idle-sessions", type=int, default=100_000)
    p.add_argument("--sample", type=float, default=10.0, help="soak: seconds per reported window")
    p.add_argument("--soak-duration", type=float, default=120.0, help="targets: the soak's length in seconds")
    args = p.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          "load generator and server share the machine")
    if args.scenario in ("all", "stream"):
        run_stream([int(s) for s in args.sessions.split(",")], args.keystrokes, args.interval)
    if args.scenario in ("all", "throughput"):
        run_throughput(args.throughput_sessions, args.duration, args.chars)
    if args.scenario in ("all", "classify"):
        run_classify(args.clients, args.duration, args.generator)
    if args.scenario in ("all", "memory"):
        run_memory(args.idle_sessions)
    if args.scenario == "soak":
        run_soak(int(args.sessions.split(",")[0]), args.duration, args.interval, args.sample)
    if args.scenario == "targets":
        run_targets(args.duration, args.soak_duration, args.idle_sessions)
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
