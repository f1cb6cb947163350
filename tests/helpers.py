"""Helpers shared across the test areas (and by scripts/ that drive a server the same way).

Servers: ``free_port``, ``start_server`` (a real ``python -m service``), ``wait_ready``, ``stop_server``.
Assertions and drivers several areas use: ``err`` (the one error shape), ``same`` (per-step outputs
equal up to float32 rounding), ``type_text`` (a session typed through the client library).
Area-specific builders live beside their tests (``tests/engine/torch_reference.py``,
``tests/onnx/onnx_reference.py``, ``tests/deploy/deploy_fixtures.py``...).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc

from service.client import AsyncStreamClient

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_ROOT = ROOT / "tests" / "golden"     # the committed reference outputs, one folder per kind
DOCKERFILE = ROOT / "Dockerfile"


def run_python(env_vars: dict, code: str, *args: str, timeout: float = 300) -> None:
    """``python -c code args`` in a fresh interpreter at the repository root with ``env_vars`` set (the
    engine reads its switches, MODEL_CORE_NATIVE_ISA and the like, at import); fails with its stderr."""
    proc = subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, **env_vars}, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, env_extra: dict | None = None, timeout: float = 30.0,
                 log_path: Path | None = None, python: str = sys.executable, cwd: Path = ROOT) -> subprocess.Popen:
    """``log_path``: stderr into a file, for servers that may log a lot (an unread pipe would block them).
    ``python``/``cwd``: another interpreter, run outside the worktree (an installed package, not this tree)."""
    env = {**os.environ, "RNN_SERVE_LOG_LEVEL": "warning", "RNN_SERVE_GRPC_PORT": str(free_port()),
           **(env_extra or {})}
    log = open(log_path, "ab") if log_path else None
    proc = subprocess.Popen([python, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log or subprocess.PIPE)
    if log:
        log.close()                                   # the server holds its own descriptor
    try:
        wait_ready(proc, port, timeout)
    except RuntimeError as exc:
        proc.kill()                                   # first: reading a live server's stderr would block
        proc.wait()
        err = Path(log_path).read_bytes() if log_path else proc.stderr.read()
        raise RuntimeError(f"{exc}: {err.decode(errors='replace')[-2000:]}") from None
    return proc


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 30.0) -> None:
    """Until ``/v2/health/ready`` answers 200; RuntimeError if the process exits or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def stop_server(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM (the graceful drain), then SIGKILL if it has not exited within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- outputs and errors ---------------------------------------------------------------------------
def err(resp, status, code):
    """The one error shape, ``{"error": {"code", "message"}}``, with this status and code; returns the message."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]["message"]


def same(a: list[dict], b: list[dict]) -> bool:
    """Per-step outputs equal up to float32 rounding: BLAS sums change order with the batch shape,
    and over a long stream those ulps compound to about 1.3e-5 relative (measured on 100 streams)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if "top_k" in x:
            assert [t["index"] for t in x["top_k"]] == [t["index"] for t in y["top_k"]]
            np.testing.assert_allclose([t["probability"] for t in x["top_k"]], [t["probability"] for t in y["top_k"]],
                                       rtol=5e-5, atol=1e-7)
        else:
            assert x["bits"] == y["bits"]
            np.testing.assert_allclose(x["probabilities"], y["probabilities"], rtol=5e-5, atol=1e-7)
    return True


# -- drivers --------------------------------------------------------------------------------------
async def type_text(base: str, text: str, chunk: int, model: str = "charlm") -> list[dict]:
    """Type ``text`` into a new session with the client library, ``chunk`` characters a message."""
    async with AsyncStreamClient(base, model, reply_timeout=60) as stream:
        assert stream.hello["type"] == "session" and stream.steps == 0
        outputs = []
        for i in range(0, len(text), chunk):
            reply = await stream.feed(text[i:i + chunk], top_k=2)
            assert reply["steps"] == min(i + chunk, len(text))
            outputs += reply["outputs"]
        await stream.end()
        return outputs


def model_input(model: str) -> tuple[str, np.ndarray]:
    """12 steps for each bundled model: token ids (1, T) or features (1, T, 1)."""
    rng = np.random.default_rng(7)
    if model == "echo":
        return "INPUT", rng.integers(0, 2, size=(1, 12, 1)).astype(np.float32)
    vocab = 81 if model == "charlm" else 8
    return "INPUT_IDS", rng.integers(0, vocab, size=(1, 12)).astype(np.int64)


def tensor(name: str, arr: np.ndarray) -> tritonclient_grpc.InferInput:
    """A gRPC input tensor holding ``arr`` (INT64 ids or FP32 features)."""
    t = tritonclient_grpc.InferInput(name, list(arr.shape), "INT64" if arr.dtype.kind == "i" else "FP32")
    t.set_data_from_numpy(arr)
    return t


def kserve_python() -> str:
    """The interpreter with the KServe SDK (its protobufs clash with tritonclient's); skips without one."""
    candidates = [os.environ.get("KSERVE_PYTHON"), str(ROOT / ".venv-kserve" / "bin" / "python"),
                  "/work/venv-kserve/bin/python"]
    for python in filter(None, candidates):
        if Path(python).is_file() and subprocess.run([python, "-c", "import kserve"], capture_output=True).returncode == 0:
            return python
    pytest.skip("the KServe SDK is not installed: set KSERVE_PYTHON, or create .venv-kserve "
                "(python3 -m venv .venv-kserve && .venv-kserve/bin/pip install kserve==0.21.0)")


# -- deployment files -----------------------------------------------------------------------------
def dockerfile_stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """{stage name: [(INSTRUCTION, arguments)]}, continuation lines joined, comments dropped."""
    stages: dict[str, list[tuple[str, str]]] = {}
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        if raw.endswith("\\"):
            current += raw[:-1]
            continue
        lines.append(current + raw)
        current = ""
    steps: list[tuple[str, str]] = []
    for line in lines:
        instr, _, args = line.strip().partition(" ")
        instr, args = instr.upper(), args.strip()
        if instr == "FROM":
            name = re.search(r"\bAS\s+(\S+)$", args, re.I)
            steps = stages.setdefault(name.group(1) if name else args, [])
        steps.append((instr, args))
    return stages
