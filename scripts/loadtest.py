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
  steps/s with the batcher on, then with batching off (a second server), and the ratio; then the
  same sessions against the transport floor (below), the most messages/s uvicorn carries here.
* classify: ``--clients`` concurrent HTTP clients post temporal-order sequences; req/s and p99.
  The load comes from wrk (Debian's ``wrk``) when it is installed, else from a Python client.
* memory: ``--idle-sessions`` char-LM sessions each fed one step, then the server's RSS.
* soak: N typists (the first of ``--sessions``) type for ``--duration`` seconds; every
  ``--sample`` seconds, the server's CPU per keystroke and its RSS (flat RSS: nothing leaks per step).
* targets: each scenario at the sizes of the serving targets, then one table of target, measured
  value and verdict.

The load generator (``scripts.ws_load``: raw asyncio sockets, frames built once) shares the machine
with the server, so numbers are a floor for what the server can do on its own; the server's CPU is
read from /proc. The stream and throughput scenarios also run their typists against the transport
floor (``scripts.transport_floor``: uvicorn and a canned reply, none of our code), so the table shows
what a keystroke costs before our code runs. Each run prints its settings and the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import uvloop

from scripts.http_load import fill_sessions
from scripts.ws_load import type_into
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


class Floor(Server):
    """The transport alone (``scripts.transport_floor``) under the same uvicorn and WebSocket settings,
    or (``raw``) the bare uvloop protocol: the floor under any Python server."""

    def __init__(self, raw: bool = False):
        super().__init__()
        self.raw = raw

    def __enter__(self):
        command = (["-m", "scripts.transport_floor", "--raw", "--port", str(self.port)] if self.raw else
                   ["-m", "uvicorn", "scripts.transport_floor:app", "--host", "127.0.0.1", "--port", str(self.port),
                    "--log-level", "warning", "--no-access-log", "--ws-per-message-deflate", "false"])
        self.proc = subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the transport floor app did not start") from None
                time.sleep(0.1)
        self.host = f"127.0.0.1:{self.port}"
        return self


# -- scenarios ------------------------------------------------------------------------------
def _typing(server: Server, n: int, interval: float, *, count=None, duration=None, sample=None, texts=None):
    """N lean typists (``scripts.ws_load``) into ``server``; the server's own CPU per keystroke is read
    from /proc once typing has started (connects apart). Returns (tally, {"cpu_us", "wall", "keys",
    "connect_s", "windows": [(t, keys, cpu µs/key, RSS MB, p99 ms)] when ``sample`` is given})."""
    url = f"ws://{server.host}/v1/models/charlm/stream"
    pid, out = server.proc.pid, {}
    uvloop.run(type_into(url, list(TEXT), 1, 0.001, count=10))        # warm-up, not measured

    async def sampler(tally):
        start, cpu0, done0 = time.perf_counter(), cpu_seconds(pid), tally.replies
        out.update(connect_s=start - t0, windows=[])
        if sample:
            last = (start, cpu0, len(tally.rtts))
            for w in range(1, math.ceil(duration / sample) + 1):
                await asyncio.sleep(max(0.0, start + min(w * sample, duration) - time.perf_counter()))
                now, cpu, done = time.perf_counter(), cpu_seconds(pid), len(tally.rtts)
                keys = done - last[2]
                out["windows"].append((now - start, keys, (cpu - last[1]) / max(keys, 1) * 1e6, rss_mb(pid),
                                       pct(tally.rtts[last[2]:done], 99)))
                last = (now, cpu, done)
        out["mark"] = (start, cpu0, done0)
    t0 = time.perf_counter()
    tally, _ = uvloop.run(type_into(url, texts or list(TEXT), n, interval, count=count, duration=duration,
                                    on_typing=sampler))
    start, cpu0, done0 = out.pop("mark")
    keys = tally.replies - done0
    out.update(wall=time.perf_counter() - start, keys=keys, cpu_us=(cpu_seconds(pid) - cpu0) / max(keys, 1) * 1e6)
    return tally, out


def run_stream(n_list, keystrokes, interval, floor=True):
    """Per-keystroke round trips once all N sessions are open (connecting is timed apart), and
    the same typists against the transport floor. Returns {N: {"p99": ms, "cpu_us": server CPU µs
    per keystroke, "floor_us": the transport's alone, "errors"}}."""
    rows, results = [], {}
    with Server(max_batch_size=256) as srv:
        for n in n_list:
            tally, m = _typing(srv, n, interval, count=keystrokes)
            results[n] = {"p99": pct(tally.rtts, 99), "cpu_us": m["cpu_us"], "errors": len(tally.errors),
                          "floor_us": math.nan, "floor_p99": math.nan}
            rows.append([n, f"{m['connect_s']:.1f}", len(tally.rtts), f"{m['keys'] / m['wall']:.0f}",
                         f"{pct(tally.rtts, 50):.1f}", f"{pct(tally.rtts, 99):.1f}", f"{pct(tally.rtts, 100):.1f}",
                         f"{m['cpu_us']:.0f}", len(tally.errors)])
    if floor:
        with Floor() as fl, Floor(raw=True) as raw:
            for n, row in zip(n_list, rows):
                tally, m = _typing(fl, n, interval, count=keystrokes)
                _, r = _typing(raw, n, interval, count=keystrokes)
                results[n].update(floor_us=m["cpu_us"], floor_p99=pct(tally.rtts, 99), raw_us=r["cpu_us"])
                row[-1:-1] = [f"{m['cpu_us']:.0f}", f"{results[n]['cpu_us'] - m['cpu_us']:.0f}",
                              f"{pct(tally.rtts, 99):.1f}", f"{r['cpu_us']:.0f}"]
    print_table(f"Streaming: WebSocket sessions typing into charlm, one keystroke per message every {interval * 1000:.0f} ms",
                ["sessions", "connect s", "keystrokes", "msg/s", "p50 ms", "p99 ms", "max ms", "server CPU µs/msg",
                 *(["floor µs/msg", "ours µs/msg", "floor p99 ms", "raw floor µs/msg"] if floor else []), "errors"], rows)
    if floor:
        print("floor: the same typists against scripts.transport_floor (uvicorn's WebSocket protocol and the event loop "
              "alone, a canned reply); ours: the server's CPU above it; raw floor: a bare uvloop protocol answering "
              "the same way (the floor under any Python server)")
    return results


def run_soak(n, duration, interval, sample):
    """N typists for ``duration`` s; per ``sample`` s window: keystrokes, server CPU per keystroke, RSS.
    Returns {"cpu_us": over the whole run, "rss_growth_mb": last window's RSS minus the first's}."""
    with Server(max_batch_size=256) as srv:
        tally, m = _typing(srv, n, interval, duration=duration, sample=sample)
    rows = [[f"{t:.0f}", keys, f"{keys / sample:.0f}", f"{cpu:.0f}", f"{rss:.1f}", f"{p99:.1f}"]
            for t, keys, cpu, rss, p99 in m["windows"]]
    print_table(f"Soak: {n} WebSocket typists, one keystroke every {interval * 1000:.0f} ms each, for {duration:g} s",
                ["t s", "keystrokes", "msg/s", "server CPU µs/msg", "RSS MB", "p99 ms"], rows)
    growth = m["windows"][-1][3] - m["windows"][0][3] if m["windows"] else float("nan")
    print(f"server CPU over the run: {m['cpu_us']:.0f} µs per keystroke; RSS change first to last window: {growth:+.1f} MB;"
          f" errors: {len(tally.errors)}")
    return {"cpu_us": m["cpu_us"], "rss_growth_mb": growth, "errors": len(tally.errors)}


def run_throughput(sessions, duration, chars):
    """Closed loop: every session sends its next message as soon as the last reply is in."""
    rows, rates = [], {}
    texts = [TEXT[i:i + chars] for i in range(0, len(TEXT) - chars + 1, chars)]
    for batching in (True, False):
        with Server(batching=batching, max_batch_size=256) as srv:
            tally, m = _typing(srv, sessions, 0.0, duration=duration, texts=texts)
            rates[batching] = m["keys"] * chars / m["wall"]
            rows.append(["on" if batching else "off", sessions, chars, f"{rates[batching]:.0f}",
                         f"{m['cpu_us'] / chars:.0f}", len(tally.errors)])
    with Floor() as fl:                       # the most messages/s the transport alone carries
        tally, m = _typing(fl, sessions, 0.0, duration=duration, texts=texts)
        rates["floor"] = m["keys"] * chars / m["wall"]
        rows.append(["transport floor", sessions, chars, f"{rates['floor']:.0f}", f"{m['cpu_us'] / chars:.0f}",
                     len(tally.errors)])
    print_table(f"Throughput: {sessions} sessions sending back to back for {duration:g} s",
                ["batching", "sessions", "steps/msg", "steps/s", "server CPU µs/step", "errors"], rows)
    print(f"batching on / off: {rates[True] / rates[False]:.1f}x; the transport alone (a canned reply, no model) "
          f"carries {rates['floor']:.0f} messages/s")
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


def run_memory(n, concurrency=32):
    with Server(max_sessions=n + 10) as srv:
        base = rss_mb(srv.proc.pid)
        t0 = time.perf_counter()
        errors = uvloop.run(fill_sessions("127.0.0.1", srv.port, n, "charlm", "a", concurrency))
        created = time.perf_counter() - t0
        if errors:
            print(f"{len(errors)} errors while filling, first: {errors[0]}")
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
        ["1,000 typists: the transport alone", "(floor)", f"{stream['floor_us']:.0f} µs, p99 {stream['floor_p99']:.1f} ms",
         "-"],
        ["1,000 typists: a bare Python protocol", "(floor)", f"{stream['raw_us']:.0f} µs", "-"],
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
