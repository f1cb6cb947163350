"""Fuzzing, bounded in time: schemathesis against /openapi.json on a real uvicorn (with the API key
and without), a WebSocket frame fuzzer, and hypothesis on the state and checkpoint parsers.

Zero 5xx, every reply (errors included) as the OpenAPI document declares it, zero dropped sockets,
and the server's peak RSS grows by less than ``RSS_BOUND_MB``.
``RNN_FUZZ_SCALE=20`` (for example) runs a longer fuzz by hand.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ROOT, free_port, start_server, stop_server
from model_core.checkpoint import CheckpointError, read as read_checkpoint
from model_core.state import StateFormatError, state_from_bytes, state_to_bytes

SCALE = int(os.environ.get("RNN_FUZZ_SCALE", "1"))
RSS_BOUND_MB = 250                       # peak RSS growth over the fuzz, above the loaded server
ST = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
# no 5xx, and every reply is one the schema declares: its status, content type, headers and body
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    proc = start_server(port, {"RNN_SERVE_API_KEYS": '["fuzz-key"]', "RNN_SERVE_ADMIN_KEYS": '["fuzz-admin"]',
                               "RNN_SERVE_MAX_REQUEST_BYTES": "200000"},
                        log_path=tmp_path_factory.mktemp("fuzz") / "server.log")
    base_rss = peak_rss_mb(proc.pid)
    yield port, proc
    grew = peak_rss_mb(proc.pid) - base_rss
    print(f"fuzzed server: peak RSS {base_rss:.0f} MB loaded, +{grew:.0f} MB over the fuzz")
    stop_server(proc)
    assert grew < RSS_BOUND_MB


# -- schemathesis -----------------------------------------------------------------------------------
@pytest.mark.skipif(ST is None, reason="schemathesis is not installed (the dev extra)")
@pytest.mark.parametrize("key", ["fuzz-key", None], ids=["with-key", "without-key"])
def test_schemathesis_finds_no_server_error(server, key, tmp_path):
    port, proc = server
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.name" = "charlm"\n')          # a model that exists: deeper paths
    cmd = [ST, "--config-file", str(config), "run", f"http://127.0.0.1:{port}/openapi.json", "-c", CHECKS,
           "--max-examples", str(3 * SCALE), "-w", "2", "--generation-database", "none",
           "--phases", "examples,coverage,fuzzing" if key else "fuzzing", "--request-timeout", "30"]
    if key:
        cmd += ["-H", f"X-API-Key: {key}"]
    # the schema itself is behind the key; without one, schemathesis reads it with the key and sends none
    if not key:
        cmd += ["-H", "X-Fuzz: no-key"]
        schema = tmp_path / "openapi.json"
        schema.write_text(httpx.get(f"http://127.0.0.1:{port}/openapi.json", headers={"X-API-Key": "fuzz-key"}).text)
        cmd[cmd.index(f"http://127.0.0.1:{port}/openapi.json")] = str(schema)
        cmd += ["--url", f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"},
                         cwd=tmp_path)                         # its cache stays out of the checkout
    cases = re.search(r"(\d+) generated", out.stdout)
    print(f"schemathesis ({'with' if key else 'without'} key): {cases.group(0) if cases else out.stdout[-500:]}")
    assert out.returncode == 0, out.stdout[-4000:]
    assert proc.poll() is None


# -- WebSocket frames -----------------------------------------------------------------------------
def _numbers():
    return st.one_of(st.integers(), st.integers(min_value=-2**70, max_value=2**70), st.floats(), st.booleans(),
                     st.just(2**63), st.just(-1), st.just(1e-310), st.none())


_json = st.recursive(st.one_of(_numbers(), st.text(max_size=20)),
                     lambda inner: st.one_of(st.lists(inner, max_size=5),
                                             st.dictionaries(st.text(max_size=8), inner, max_size=5)), max_leaves=20)
_fields = {"text": st.one_of(st.text(max_size=30), _json), "tokens": st.one_of(st.lists(_numbers(), max_size=8), _json),
           "features": st.one_of(st.lists(st.lists(_numbers(), max_size=3), max_size=4), _json),
           "top_k": _numbers(), "at": _numbers(), "id": _json, "n": _numbers(), "max_length": _numbers(),
           "temperature": _numbers(), "seed": _numbers(), "stop": _json, "greedy": _json}
_message = st.builds(lambda kind, extra: {"type": kind, **extra},
                     st.sampled_from(["input", "complete", "reset", "dance", None]),
                     st.dictionaries(st.sampled_from(sorted(_fields)), st.just(None), max_size=4).flatmap(
                         lambda keys: st.fixed_dictionaries({k: _fields[k] for k in keys})))


def _frame(rng: random.Random, draw_message) -> str | bytes:
    kind = rng.random()
    if kind < 0.05:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))                      # binary
    if kind < 0.08:
        depth = rng.choice([100, 1000, 5000])
        return "[" * depth + "]" * depth                                                          # deep nesting
    if kind < 0.12:
        return rng.choice(["NaN", "Infinity", "{", "", "null", "[]", '{"type": "input", "text": "a"'])
    text = json.dumps(draw_message(), allow_nan=True)
    if kind < 0.2 and text:                                                                      # a broken byte
        i = rng.randrange(len(text))
        text = text[:i] + chr(rng.randint(0, 0x7F)) + text[i + 1:]
    return text


def _strict(raw: str) -> dict:
    def no_constants(c):
        raise ValueError(f"bare {c} in a reply")
    return json.loads(raw, parse_constant=no_constants)


def test_websocket_frame_fuzzer_drops_no_socket(server):
    port, proc = server
    frames = 300 * SCALE
    rng = random.Random(13)
    samples = []

    @settings(max_examples=frames, database=None, suppress_health_check=list(HealthCheck), deadline=None)
    @given(_message)
    def collect(m):
        samples.append(m)
    collect()
    it = iter(samples)

    # schemathesis may have unloaded charlm through the repository API (a legitimate call): load it back
    httpx.post(f"http://127.0.0.1:{port}/v2/repository/models/charlm/load", headers={"X-API-Key": "fuzz-key"},
               timeout=60).raise_for_status()

    async def main():
        url = f"ws://127.0.0.1:{port}/v1/models/charlm/stream"
        sent = drops = 0
        async with websockets.connect(url, additional_headers={"X-API-Key": "fuzz-key"}, max_size=None) as ws:
            assert _strict(await ws.recv())["type"] == "session"
            for _ in range(frames):
                frame = _frame(rng, lambda: next(it, {"type": "input", "text": "a"}))
                try:
                    await ws.send(frame)
                    reply = _strict(await asyncio.wait_for(ws.recv(), 30))
                except websockets.ConnectionClosed as exc:
                    drops += 1
                    print(f"dropped after {frame[:200]!r}: {exc}")
                    break
                assert reply["type"] in ("output", "completion", "reset", "error"), reply
                sent += 1
        return sent, drops

    sent, drops = asyncio.run(main())
    print(f"websocket fuzz: {sent} frames, {drops} dropped sockets")
    assert drops == 0 and sent == frames and proc.poll() is None


# -- hypothesis on the parsers --------------------------------------------------------------------
_GOOD_STATE = state_to_bytes((np.zeros((1, 1, 4), np.float32), np.ones((1, 1, 4), np.float32)))


@settings(max_examples=200 * SCALE, database=None, deadline=None)
@given(st.one_of(st.binary(max_size=120),
                 st.tuples(st.integers(0, len(_GOOD_STATE) - 1), st.integers(0, 255)).map(
                     lambda p: _GOOD_STATE[:p[0]] + bytes([p[1]]) + _GOOD_STATE[p[0] + 1:]),
                 st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                           st.binary(max_size=64)).map(
                     lambda t: struct.pack("<8sHBB3II", b"RNNSTATE", 1, t[0], t[1], t[2], t[3], 1, zlib.crc32(t[4]))
                     + t[4])))
def test_state_parser_only_raises_its_own_error(blob):
    try:
        state = state_from_bytes(blob)
    except StateFormatError:
        return
    for part in state if isinstance(state, tuple) else (state,):
        assert np.isfinite(part).all()


_CKPT = ROOT / "models" / "echo" / "model.safetensors"


@settings(max_examples=100 * SCALE, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_checkpoint_parser_only_raises_its_own_error(data):
    raw = _CKPT.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    choice = data.draw(st.integers(0, 3))
    if choice == 0:                                           # change one tensor's header entry
        name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        header[name][data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = data.draw(_json)
    elif choice == 1:                                         # change one config field
        config = json.loads(header["__metadata__"]["config"])
        config[data.draw(st.sampled_from(sorted(config)))] = data.draw(_json)
        header["__metadata__"]["config"] = json.dumps(config)
    elif choice == 2:
        header["__metadata__"] = data.draw(_json)
    body = json.dumps(header).encode()
    blob = len(body).to_bytes(8, "little") + body + raw[8 + n:]
    if choice == 3:                                           # truncate or flip bytes anywhere
        cut = data.draw(st.integers(0, len(raw)))
        blob = raw[:cut] + data.draw(st.binary(max_size=16))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        path.write_bytes(blob)
        try:
            read_checkpoint(path)
        except CheckpointError as exc:
            assert d not in str(exc)                          # no server paths in errors
