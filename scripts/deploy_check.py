"""The deployment under a real Docker engine: images, one container, the compose stack, failover, scaling.

    python -m scripts.deploy_check              # what .ci/run runs (a few minutes on 2 cores)
    python -m scripts.deploy_check --keep       # leave the compose stack up afterwards, to look at
    python -m scripts.deploy_check --clean-engine   # the same against a throwaway dockerd with no images
                                                    # and no build cache: what a clean machine pays

DOCKER_HOST picks the daemon, as for the docker CLI (when set, the check never starts one).

1. engine: Debian's docker.io plus the compose and buildx plugins, and a dockerd if none answers
   (scripts/docker_engine.py); stand-in base images only for tags that cannot be pulled.
2. build: the Dockerfile's ``cpu`` and ``gpu`` targets (the host's CA bundle as a build secret).
3. the cpu image alone: HEALTHCHECK healthy, readiness, classify, a WebSocket stream, a non-root user.
4. the gpu image on this host: RNN_SERVE_DEVICE=auto falls back to the CPU and says so (logs, /v2).
5. compose (docker-compose.yml + docker-compose.cpu.yml), 3 replicas behind nginx, Redis sessions:
   SIGKILL the replica serving a message, mid-message, over WebSocket and over HTTP (the drivers in
   tests/deploy/failover.py, shared with tests/deploy/test_replicas.py): no acknowledged step lost, none applied
   twice, every output equal to the uninterrupted run's.
6. scale to 4 (nginx finds the new replica) and down to 2 under load (no request fails).
7. teardown: the stack, the containers, and dockerd if this script started it. Images stay (cache).

Exit status: 0 passed, 1 a check failed, 3 no Docker engine can run here (said loudly; not a pass).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from scripts.docker_engine import (
    EngineUnavailable,
    ensure_bases,
    ensure_engine,
    run,
    stop_daemon,
    throwaway_engine,
)
from tests.deploy.failover import TEXT, check_outputs, established_peers, http_failover, ws_failover
from tests.helpers import free_port, same, type_text

ROOT = Path(__file__).resolve().parents[1]

NO_ENGINE = 3
PROJECT = "rnn-check"
COMPOSE = ["docker", "compose", "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"),
           "-f", str(ROOT / "docker-compose.cpu.yml")]
UID = "10001"                                            # the Dockerfile's `USER`
timings: list[tuple[str, float, float | None]] = []          # (phase, wall s, CPU s of our cgroup or None)


def cgroup_cpu_seconds() -> float | None:
    """CPU time of this process's cgroup (v1 cpuacct) when it has one of its own, as under
    --clean-engine, where the daemon, its builds and containers are in it too; else None."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(",") and path != "/":
            for mount in ("cpuacct", "cpu,cpuacct"):
                usage = Path("/sys/fs/cgroup", mount, path.lstrip("/"), "cpuacct.usage")
                if usage.is_file():
                    return int(usage.read_text()) / 1e9
    return None


@contextmanager
def phase(name: str):
    print(f"== {name}", flush=True)
    t0, cpu0 = time.monotonic(), cgroup_cpu_seconds()
    try:
        yield
    finally:
        cpu = None if cpu0 is None else cgroup_cpu_seconds() - cpu0
        timings.append((name, time.monotonic() - t0, cpu))
        print(f"   {name}: {timings[-1][1]:.1f} s" + ("" if cpu is None else f" ({cpu:.0f} s of CPU)"), flush=True)


def base_tags() -> list[str]:
    """The images our files name: the Dockerfile's FROM lines (not its stages) and compose's image: lines."""
    text = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I))
    froms = [t for t in re.findall(r"^FROM\s+(\S+)", text, re.M | re.I) if t not in stages]
    compose = re.findall(r"^\s+image:\s*(\S+)", (ROOT / "docker-compose.yml").read_text(), re.M)
    return list(dict.fromkeys(froms + [t for t in compose if not t.startswith("rnn-serve")]))


def ca_bundle() -> str | None:
    """The CA bundle the host's pip trusts (a TLS-intercepting proxy's CA included), if any."""
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(var) and Path(os.environ[var]).is_file():
            return os.environ[var]
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return str(default) if default.is_file() else None


# BuildKit 0.8 (Debian's docker.io 20.10) now and then ends a build whose steps another concurrent
# build shares with "unexpected EOF"; such a build is started again once, from what is cached by then.
TRANSIENT = "rpc error: code = Internal desc = unexpected EOF"


def build(targets: list[str], standins: dict[str, str], logs: Path) -> None:
    """The targets and the stand-ins still to build, all at once: the targets share the `build` stage
    and the app, and downloads overlap with unpacking. Each job's log is a file (no pipe to fill while
    another job is awaited)."""
    ca = ca_bundle()
    common = ["docker", "buildx", "build", "--progress=plain"]
    jobs = {f"rnn-serve:{t}": [*common, "--target", t, "-t", f"rnn-serve:{t}",
                               *(["--secret", f"id=ca-bundle,src={ca}"] if ca else []), str(ROOT)] for t in targets}
    jobs.update({tag: [*common, "-t", tag, "-"] for tag in standins})         # no context: the Dockerfile on stdin

    def start(tag: str, attempt: int) -> tuple[subprocess.Popen, Path, int]:
        log = logs / f"build-{tag.replace('/', '_').replace(':', '_')}-{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(jobs[tag], stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "DOCKER_BUILDKIT": "1"})
        proc.stdin.write(standins.get(tag, "").encode())
        proc.stdin.close()
        return proc, log, attempt

    t0, failed = time.monotonic(), []
    pending = {tag: start(tag, 1) for tag in jobs}
    try:
        while pending:
            assert time.monotonic() - t0 < 1500, f"builds still running after 1500 s: {sorted(pending)}"
            done = [tag for tag, (proc, _, _) in pending.items() if proc.poll() is not None]
            if not done:
                time.sleep(0.5)
            for tag in done:
                proc, log, attempt = pending.pop(tag)
                out = log.read_text(errors="replace")
                if proc.returncode != 0 and TRANSIENT in out and attempt == 1:
                    print(f"   {tag}: BuildKit dropped the build ({TRANSIENT}); starting it again", flush=True)
                    pending[tag] = start(tag, 2)
                elif proc.returncode != 0:
                    failed.append(f"docker build {tag} failed:\n{out[-6000:]}")
                else:
                    notes = [line.split("image_venv:", 1)[1].strip() for line in out.splitlines()
                             if "image_venv:" in line]
                    print(f"   {tag}: built in {time.monotonic() - t0:.0f} s" + "".join(f"; {n}" for n in notes),
                          flush=True)
    finally:
        for proc, _, _ in pending.values():                 # a timeout: stop what is still building
            proc.kill()
            proc.wait()
    assert not failed, "\n".join(failed)


def image_mb(tag: str) -> float:
    return int(run("docker", "image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e6


def inspect(container: str) -> dict:
    return json.loads(run("docker", "inspect", container).stdout)[0]


def wait_healthy(container: str, timeout: float = 180) -> float:
    t0 = time.monotonic()
    while (state := inspect(container)["State"]).get("Health", {}).get("Status") != "healthy":
        if not state["Running"] and state.get("Restarting") is False and state["ExitCode"]:
            raise AssertionError(f"{container} exited {state['ExitCode']}:\n{run('docker', 'logs', container).stderr[-3000:]}")
        assert time.monotonic() - t0 < timeout, f"{container} not healthy after {timeout:g} s: {state.get('Health')}"
        time.sleep(0.5)
    return time.monotonic() - t0


# -- one container ---------------------------------------------------------------------------------
def check_single(target: str) -> None:
    port, name = free_port(), f"{PROJECT}-{target}"
    run("docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", f"rnn-serve:{target}")
    try:
        print(f"   {target}: healthy after {wait_healthy(name):.1f} s (its own HEALTHCHECK)")
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/v2/health/ready", timeout=10).json() == {"ready": True}
        device = httpx.get(f"{base}/v2", timeout=10).json()["device"]
        user = run("docker", "exec", name, "id", "-u").stdout.strip()
        assert user == UID and inspect(name)["Config"]["User"] == UID, f"runs as uid {user}"
        if target == "cpu":
            r = httpx.post(f"{base}/v1/models/temporal-order/classify", json={"inputs": ["BaXbcYdE"], "top_k": 2},
                           timeout=30)
            assert r.status_code == 200 and r.json()["results"][0]["label"], r.text
            outs = asyncio.run(type_text(f"ws://127.0.0.1:{port}", "To be, or not", chunk=3))
            ref = httpx.post(f"{base}/v1/models/charlm/predict", json={"inputs": ["To be, or not"], "top_k": 2},
                             timeout=30).json()["outputs"][0]
            assert same(outs, ref)
            print(f"   cpu: ready, classify, a WebSocket stream equal to predict, uid {user}, device {device}")
        else:
            out = run("docker", "logs", name)
            logs = out.stdout + out.stderr
            assert device == "cpu" and "no usable GPU" in logs, (device, logs[-2000:])
            print(f"   gpu image without a GPU: /v2 says device {device!r}; log: "
                  f"{next(line for line in logs.splitlines() if 'no usable GPU' in line)[:160]}")
    finally:
        run("docker", "rm", "-f", name, check=False)


# -- the compose stack -------------------------------------------------------------------------------
class Stack:
    """The compose project; failover.Cluster over its replicas (the victim found in nginx's sockets)."""

    def __init__(self):
        self.port = free_port()
        self.env = {**os.environ, "RNN_SERVE_PUBLIC_ADDR": "127.0.0.1", "RNN_SERVE_PUBLIC_PORT": str(self.port),
                    "RNN_SERVE_PUBLIC_GRPC_PORT": str(free_port())}
        self.http, self.ws = f"http://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.port}/v1/models/charlm/stream"
        self.victims: dict[str, str] = {}

    def compose(self, *args: str, timeout: float = 600) -> str:
        r = subprocess.run([*COMPOSE, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"docker compose {' '.join(args)}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
        return r.stdout

    def up(self, replicas: int) -> None:
        self.compose("up", "-d", "--no-build", "--wait", "--scale", f"service={replicas}")
        self.refresh()

    def containers(self, service: str = "service") -> list[str]:
        return self.compose("ps", "-q", service).split()

    def refresh(self) -> None:
        """Who is where, looked up once: a kill must land within milliseconds, not after a docker call."""
        self.pids: dict[str, tuple[str, int]] = {}           # replica IP -> (container, host PID of its python)
        for c in self.containers():
            info = inspect(c)
            for net in info["NetworkSettings"]["Networks"].values():
                if net["IPAddress"]:
                    self.pids[net["IPAddress"]] = (c, info["State"]["Pid"])
        self.nginx_pid = inspect(self.containers("nginx")[0])["State"]["Pid"]

    # failover.Cluster
    def serving(self) -> list[str]:
        return established_peers(self.nginx_pid, {8000})

    def kill(self, victim: str) -> None:
        container, pid = self.pids[victim.split(":")[0]]
        os.kill(pid, signal.SIGKILL)                     # PID 1 in the container: the replica's python
        self.victims[victim] = container

    def restore(self, victim: str) -> None:
        time.sleep(0.5)                                  # let Docker see the exit before asking for health
        wait_healthy(self.victims[victim])               # `restart: unless-stopped` brings it back
        self.refresh()

    def predict(self, text: str) -> list[dict]:
        r = httpx.post(f"{self.http}/v1/models/charlm/predict", json={"inputs": [text], "top_k": 2}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["outputs"][0]


def check_failover(stack: Stack) -> dict[str, dict]:
    ref, figures = stack.predict(TEXT), {}
    for transport, drive in (("ws", lambda: ws_failover(stack, stack.ws)), ("http", lambda: http_failover(stack, stack.http))):
        _, outputs, report = asyncio.run(drive())
        check_outputs(outputs, ref, report, same)
        assert report["kills"] == 2, report
        figures[transport] = dict(report)
        print(f"   {transport}: {dict(report)}")
    return figures


def served_by(stack: Stack, since: str) -> set[str]:
    logs = subprocess.run([*COMPOSE, "logs", "--no-log-prefix", "--since", since, "nginx"], env=stack.env,
                          capture_output=True, text=True, timeout=60).stdout
    return set(re.findall(r"upstream=([\d.]+):8000", logs))


def check_scaling(stack: Stack) -> None:
    stack.up(4)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 6))
    time.sleep(7)                                             # nginx's resolver cache (valid=5s)
    with httpx.Client(base_url=stack.http, timeout=30) as client:
        for _ in range(60):
            assert client.post("/v1/models/charlm/predict", json={"inputs": ["ab"]}).status_code == 200
    ips = set(stack.pids)
    seen = served_by(stack, since)
    assert set(ips) <= seen, f"after scaling to 4, nginx used {sorted(seen)} of {sorted(ips)}"
    print(f"   up to 4: every replica served ({len(seen)} upstreams in nginx's log)")

    failures, stop = [], threading.Event()

    def load():
        with httpx.Client(base_url=stack.http, timeout=30) as client:
            while not stop.is_set():
                r = client.post("/v1/models/charlm/predict", json={"inputs": ["ab"]})
                failures.append(r.status_code) if r.status_code != 200 else failures.append(None)
    worker = threading.Thread(target=load)
    worker.start()
    try:
        stack.up(2)
        time.sleep(6)                                         # past the resolver cache: the gone ones drop out
    finally:
        stop.set()
        worker.join()
    bad = [s for s in failures if s is not None]
    assert len(stack.containers()) == 2 and not bad, f"scale down: {len(bad)} failed requests {bad[:5]}"
    print(f"   down to 2 under load: {len(failures)} requests, 0 failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the compose stack running at the end")
    parser.add_argument("--clean-engine", action="store_true",
                        help="run against a throwaway dockerd (empty data root, own network namespace), removed after")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rnn-deploy-check-"))
    if args.clean_engine:
        return clean_engine_run(work)
    dockerd, stack, t_all, sizes, figures = None, None, time.monotonic(), {}, {}
    try:
        with phase("engine"):
            dockerd = ensure_engine(work)
            print(f"   docker {run('docker', 'version', '-f', '{{.Server.Version}}').stdout.strip()}, "
                  f"{run('docker', 'compose', 'version', '--short').stdout.strip()} compose, "
                  f"dockerd {'started by this check' if dockerd else 'already running'}")
    except EngineUnavailable as exc:
        print("\n" + "!" * 100 + f"\n!! DEPLOYMENT CHECK SKIPPED: no Docker engine can run here.\n!! {exc}\n"
              + "!" * 100, flush=True)
        stop_daemon(dockerd)
        shutil.rmtree(work, ignore_errors=True)
        return NO_ENGINE
    try:
        with phase("base images"):
            (work / "bases").mkdir()
            how, standins = ensure_bases(base_tags(), work / "bases", say=print)
            for tag, state in how.items():
                print(f"   {tag}: {state}" + (" (built with the images, on the first)" if tag in standins else ""))
        with phase("build cpu + gpu" + (f" + {len(standins)} stand-ins" if standins else "")):
            build(["cpu", "gpu"], standins, work)
        sizes = {t: image_mb(f"rnn-serve:{t}") for t in ("cpu", "gpu")}
        sizes["base"] = image_mb(base_tags()[0])
        with phase("cpu container"):
            check_single("cpu")
        with phase("gpu container (no GPU)"):
            check_single("gpu")
        stack = Stack()
        with phase("compose up (3 replicas)"):
            stack.up(3)
        with phase("failover (SIGKILL mid-message)"):
            figures = check_failover(stack)
        with phase("scale 4 -> 2"):
            check_scaling(stack)
        ok = True
    except Exception as exc:                        # any failure is reported with the logs, never a pass
        print(f"\nDEPLOYMENT CHECK FAILED: {type(exc).__name__}: {exc}\n{getattr(exc, 'stderr', '') or ''}", flush=True)
        if stack is not None:
            print(subprocess.run([*COMPOSE, "logs", "--tail", "40"], env=stack.env, capture_output=True,
                                 text=True).stdout[-6000:])
        ok = False
    finally:
        with phase("teardown"):
            if stack is not None and not args.keep:
                subprocess.run([*COMPOSE, "down", "-v", "--remove-orphans", "-t", "20"], env=stack.env,
                               capture_output=True, timeout=300)
            if not args.keep:
                stop_daemon(dockerd)
                shutil.rmtree(work, ignore_errors=True)
    summary(sizes, figures, time.monotonic() - t_all)
    print("DEPLOYMENT CHECK " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


def clean_engine_run(work: Path) -> int:
    """This check, run again in a throwaway engine's network namespace with DOCKER_HOST pointing at it."""
    try:
        with throwaway_engine(work) as (env, inside, cpu_seconds):
            print(f"== a throwaway dockerd at {env['DOCKER_HOST']}: no images, no build cache", flush=True)
            t0 = time.monotonic()
            rc = subprocess.run([*inside, sys.executable, str(Path(__file__).resolve())], env=env).returncode
            if cpu_seconds() is not None:
                print(f"-- the clean run used {cpu_seconds():.0f} s of CPU (the check, dockerd, builds, containers) "
                      f"in {time.monotonic() - t0:.0f} s; load average now {os.getloadavg()[0]:.1f}", flush=True)
            if rc not in (0, NO_ENGINE):
                log = (work / "dockerd.log").read_text(errors="replace").splitlines()
                print("-- the throwaway dockerd's log, its last warnings and errors:",
                      *[line for line in log if "level=error" in line or "level=warn" in line][-20:], sep="\n")
            return rc
    except EngineUnavailable as exc:
        print(f"\n!! DEPLOYMENT CHECK SKIPPED: {exc}", flush=True)
        return NO_ENGINE
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(sizes: dict[str, float], figures: dict[str, dict], total: float) -> None:
    cpu = timings and timings[0][2] is not None
    print("\n-- timings " + "-" * 50 + ("   CPU (this run's cgroup)" if cpu else ""))
    for name, secs, cpu_s in timings:
        print(f"   {name:34s} {secs:7.1f} s" + (f"   {cpu_s:7.1f} s" if cpu else ""))
    print(f"   {'total':34s} {total:7.1f} s" + (f"   {sum(t[2] for t in timings):7.1f} s" if cpu else "")
          + f"   (load average {os.getloadavg()[0]:.1f})")
    if sizes:
        print("-- image sizes (docker image inspect) " + "-" * 23)
        for tag, mb in sizes.items():
            print(f"   {tag:34s} {mb:7.0f} MB" + ("   (its base image)" if tag == "base" else ""))
    for transport, r in figures.items():
        print(f"-- failover over {transport}: kills {r.get('kills', 0)}, steps acknowledged {r.get('acknowledged', 0)}, "
              f"lost {r.get('lost_acknowledged', 0)}, duplicated {r.get('duplicated', 0)}, "
              f"committed while the reply died {r.get('committed_without_reply', 0)}, resent {r.get('resent_steps', 0)}")


if __name__ == "__main__":
    sys.exit(main())
