"""Real Redis, nginx and uvicorn replicas on loopback, for the deployment tests (no Docker needed).

Each process is started by a helper that owns it and stops it in ``finally``/fixture teardown;
redis-server and nginx also die with the test run itself (PR_SET_PDEATHSIG), so a killed pytest
leaves nothing behind. The tests skip, saying why, only when a binary is missing.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, free_port, start_server

REDIS_SERVER = shutil.which("redis-server")
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
needs_redis = pytest.mark.skipif(REDIS_SERVER is None,
                                 reason="redis-server is not installed (apt-get install redis-server)")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the test process dies first (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)      # PR_SET_PDEATHSIG
    except OSError:
        pass


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _wait(check, what: str, timeout: float = 30.0) -> None:   # generous: CI shares 2 cores
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout:g} s")


class RedisServer:
    """``redis-server`` on a free loopback port; ``kill`` and ``start`` keep the port.

    No persistence, unless ``persistent``: then an append-only file fsynced on every write, so a
    SIGKILL loses nothing that was acknowledged. ``pause``/``resume``: SIGSTOP/SIGCONT.
    """

    def __init__(self, workdir: Path, persistent: bool = False):
        self.dir, self.port, self.proc, self.persistent = workdir, free_port(), None, persistent
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> RedisServer:
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]),
                 "--dir", str(self.dir)], stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        _wait(lambda: self.proc.poll() is None and self.ping(), f"redis-server on port {self.port}")
        return self

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)         # a paused server cannot act on SIGTERM
        _stop(self.proc)


class Nginx:
    """nginx running ``deploy/nginx.conf`` with its upstream pointed at loopback replicas.

    The rewrite touches only what differs outside compose: the listen address, the upstream
    servers (the replicas' DNS name becomes an upstream block of fixed ports), log and temp paths, one worker.
    """

    def __init__(self, workdir: Path, upstream_ports: list[int]):
        self.dir, self.port, self.upstream_ports, self.proc = workdir, free_port(), upstream_ports, None
        self.grpc_port = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)

    def config(self) -> str:
        conf = (ROOT / "deploy" / "nginx.conf").read_text()
        d = self.dir
        # Outside Docker there is no DNS name for the replicas: the `set` names an upstream block of
        # loopback ports instead (proxy_pass picks a defined upstream by name before resolving).
        servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in self.upstream_ports)
        rewrites = [
            (r"^worker_processes .*;$", "worker_processes 1;"),
            (r"^error_log .*;$", f"error_log {d}/error.log warn;"),
            (r"^\s*resolver .*;$", ""),
            (r"^\s*set \$rnn_serve service:8000;", "        set $rnn_serve rnn_serve;"),
            (r"^\s*set \$rnn_serve_grpc service:8001;", "        set $rnn_serve_grpc rnn_serve_grpc;"),
            (r"access_log /dev/stdout", f"access_log {d}/access.log"),
            (r"^\s*listen 80;$", f"        listen 127.0.0.1:{self.port};"),
            (r"^\s*listen 8001 http2;$", f"        listen 127.0.0.1:{self.grpc_port} http2;"),
            (r"^http \{$", "http {\n" + "".join(f"    {k}_temp_path {d}/{k};\n"
                                                 for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
             + "    add_header X-Upstream $upstream_addr always;\n"                  # which replica answered
             + f"    upstream rnn_serve {{\n{servers}    }}\n"
             + "    upstream rnn_serve_grpc {\n        server 127.0.0.1:9;\n    }"),      # no gRPC replicas here
        ]
        for pattern, repl in rewrites:
            conf, n = re.subn(pattern, lambda _: repl, conf, count=1, flags=re.M)
            assert n == 1, f"deploy/nginx.conf: no match for {pattern!r}"
        return conf

    def start(self) -> Nginx:
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        with open(self.dir / "nginx.out", "ab") as log:
            self.proc = subprocess.Popen(
                [NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(conf),
                 "-g", f"daemon off; pid {self.dir / 'nginx.pid'};"],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.dir / 'error.log').read_text()[-2000:]}")
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/nginx-health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, f"nginx on port {self.port}")
        return self

    def stop(self) -> None:
        _stop(self.proc)                                 # SIGTERM: fast shutdown, workers included


class Replicas:
    """N real uvicorn replicas sharing one Redis session store (``python -m service``)."""

    def __init__(self, workdir: Path, redis_url: str, n: int = 2, **settings):
        self.dir, self.ports = workdir, [free_port() for _ in range(n)]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = {"RNN_SERVE_SESSION_STORE": "redis", "RNN_SERVE_REDIS_URL": redis_url,
                    "RNN_SERVE_REDIS_KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}:",
                    **{f"RNN_SERVE_{k.upper()}": str(v) for k, v in settings.items()}}
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, port: int) -> None:
        self.procs[port] = start_server(port, self.env, timeout=60, log_path=self.dir / f"replica-{port}.log")

    def start_all(self) -> Replicas:
        with ThreadPoolExecutor(len(self.ports)) as pool:        # model loading overlaps
            list(pool.map(self.start, [p for p in self.ports if not self.alive(p)]))
        return self

    def alive(self, port: int) -> bool:
        return port in self.procs and self.procs[port].poll() is None

    def kill(self, port: int) -> None:
        _stop(self.procs[port], signal.SIGKILL)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            _stop(proc)

    def log(self) -> str:
        return "\n".join(f"--- replica {p}:\n{(self.dir / f'replica-{p}.log').read_text()[-3000:]}"
                         for p in self.ports if (self.dir / f"replica-{p}.log").exists())


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One Redis for the store tests; each test keeps to its own key prefix."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of the test's own, for tests that kill and restart it."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    try:
        yield server.start()
    finally:
        server.stop()
