"""Triton's own HTTP clients (``tritonclient.http`` and ``.aio``), unchanged, against a real uvicorn.

Every model in the repository (the bundled checkpoints, two ONNX graphs with model cards, and a
model in Triton's version layout), with default arguments (binary tensors) and ``binary_data=False``,
stateless and as a sequence in chunks. Invariants: a sequence in chunks equals the whole run and
the WebSocket stream; ``INPUT_TEXT`` equals the same text over /v1. Every extension is called
through the client's own methods.
"""
from __future__ import annotations

import asyncio
import functools
import json
import shutil

import httpx
import numpy as np
import pytest
import websockets

from service.settings import DEFAULT_MODEL_DIR
from tests.helpers import GOLDEN_ROOT, free_port, start_server, stop_server

pytest.importorskip("tritonclient.http")       # the dev extra's tritonclient[all]; the service needs only [grpc]
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

GOLDEN = GOLDEN_ROOT / "onnx_serving"
MODELS = ["charlm", "echo", "temporal-order", "onnx-charlm", "onnx-sentiment"]
KINDS = ["http", "aio"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for name in ("charlm", "echo", "temporal-order"):
        shutil.copytree(DEFAULT_MODEL_DIR / name, repo / name)
    for name in ("charlm", "sentiment"):
        shutil.copytree(GOLDEN / name, repo / f"onnx-{name}")
    for v in (1, 2):                                                   # Triton's layout, both versions served
        shutil.copytree(DEFAULT_MODEL_DIR / "echo", repo / "echo-versions" / str(v))
    (repo / "echo-versions" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    port = free_port()
    proc = start_server(port, {"RNN_SERVE_MODEL_DIR": str(repo)}, timeout=90, log_path=repo / "server.log")
    yield f"127.0.0.1:{port}"
    stop_server(proc, timeout=20)


def call(kind: str, url: str, method: str, *args, **kwargs):
    """One client method call, through the sync or the asyncio client."""
    if kind == "http":
        with httpclient.InferenceServerClient(url) as c:
            return getattr(c, method)(*args, **kwargs)

    async def run():
        async with aioclient.InferenceServerClient(url) as c:
            return await getattr(c, method)(*args, **kwargs)
    return asyncio.run(run())


class Spec:
    """What a model takes, a sample sequence for it, and its /v1 and WebSocket references."""

    def __init__(self, url: str, name: str):
        self.url, self.name = url, name
        self.meta = httpx.get(f"http://{url}/v1/models/{name}").json()
        self.vocab = list(self.meta["vocab"]) if self.meta["vocab"] else None
        self.classify = self.meta["task"] == "classify"
        if self.vocab:
            wanted = "To be, or not to be: that is" if name.endswith("charlm") else "BaXbcYdEab"
            self.text = "".join(ch if ch in self.vocab else self.vocab[i % len(self.vocab)]
                                for i, ch in enumerate(wanted.lower() if name == "onnx-sentiment" else wanted))
            self.seq = self.text
        else:
            self.seq = [[float(b)] for b in (1, 0, 1, 1, 0, 1, 0, 0, 1)]

    def tensor(self, chunk, binary: bool, kind: str):
        mod = httpclient if kind == "http" else aioclient
        if self.vocab:
            x = np.array([[self.vocab.index(ch) for ch in chunk]], dtype=np.int64)
            t = mod.InferInput("INPUT_IDS", list(x.shape), "INT64")
        else:
            x = np.array([chunk], dtype=np.float32)
            t = mod.InferInput("INPUT", list(x.shape), "FP32")
        t.set_data_from_numpy(x, binary_data=binary)
        return t

    def outputs(self, binary: bool, kind: str):
        mod = httpclient if kind == "http" else aioclient
        return None if binary else [mod.InferRequestedOutput("PROBABILITIES", binary_data=False)]   # None: defaults

    @functools.cached_property
    def v1(self) -> np.ndarray:
        """Probabilities from /v1: (C,) for classifiers, (T, C) otherwise."""
        base = f"http://{self.url}/v1/models/{self.name}"
        if self.classify:
            r = httpx.post(f"{base}/classify", json={"inputs": [self.seq]}).json()["results"][0]["probabilities"]
            return np.array([r[label] for label in self.meta["labels"]])
        steps = httpx.post(f"{base}/predict", json={"inputs": [self.seq], "top_k": self.meta["output_size"]}).json()
        return np.stack([_dense(s, self.meta["output_size"]) for s in steps["outputs"][0]])

    @functools.cached_property
    def stream(self) -> np.ndarray:
        """Probabilities per step from the WebSocket stream, (T, C)."""
        async def run():
            async with websockets.connect(f"ws://{self.url}/v1/models/{self.name}/stream") as ws:
                await ws.recv()
                key = "text" if self.vocab else "features"
                await ws.send(json.dumps({"type": "input", key: self.seq, "top_k": self.meta["output_size"]}))
                return json.loads(await ws.recv())["outputs"]
        return np.stack([_dense(s, self.meta["output_size"]) for s in asyncio.run(run())])


def _dense(step: dict, size: int) -> np.ndarray:
    if "probabilities" in step:
        return np.array(step["probabilities"])
    out = np.zeros(size)
    for t in step["top_k"]:
        out[t["index"]] = t["probability"]
    return out


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=5e-5, atol=2e-6)


@pytest.fixture(scope="module")
def specs(server):
    return {name: Spec(server, name) for name in MODELS}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_stateless_and_in_chunks(server, specs, model, kind, binary):
    s = specs[model]
    whole = call(kind, server, "infer", model, [s.tensor(s.seq, binary, kind)], outputs=s.outputs(binary, kind))
    probs = whole.as_numpy("PROBABILITIES")[0]                     # (C,) or (T, C)
    close(probs, s.v1)
    if s.classify and binary:                                      # the default outputs include CLASS
        assert whole.as_numpy("CLASS")[0] == probs.argmax()
    cut = [0, 3, 4, len(s.seq)]
    seq_id = 1000 + MODELS.index(model) * 10 + KINDS.index(kind) * 2 + binary if kind == "http" else f"{model}-{binary}"
    chunks = []
    for i in range(3):
        r = call(kind, server, "infer", model, [s.tensor(s.seq[cut[i]:cut[i + 1]], binary, kind)],
                 outputs=s.outputs(binary, kind), sequence_id=seq_id, sequence_start=i == 0, sequence_end=i == 2)
        assert r.get_response()["parameters"]["sequence_id"] == seq_id
        chunks.append(r.as_numpy("PROBABILITIES")[0])
    stream = s.stream
    if s.classify:
        close(chunks[-1], probs)
        close(stream[-1], probs)
    else:
        close(np.concatenate(chunks), probs)
        close(stream, probs)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("kind", KINDS)
def test_input_text_equals_v1(server, specs, kind, binary):
    mod = httpclient if kind == "http" else aioclient
    for model in ("charlm", "temporal-order", "onnx-charlm", "onnx-sentiment"):
        s = specs[model]
        t = mod.InferInput("INPUT_TEXT", [1], "BYTES")
        t.set_data_from_numpy(np.array([s.text.encode()], dtype=object), binary_data=binary)
        r = call(kind, server, "infer", model, [t], outputs=s.outputs(binary, kind))
        close(r.as_numpy("PROBABILITIES")[0], s.v1)
    meta = call(kind, server, "get_model_metadata", "charlm")
    assert [i["name"] for i in meta["inputs"]][:2] == ["INPUT_IDS", "INPUT_TEXT"]
    assert json.loads(meta["parameters"]["vocabulary"]) == specs["charlm"].vocab


@pytest.mark.parametrize("kind", KINDS)
def test_extensions_through_the_clients_methods(server, specs, kind):
    s = specs["temporal-order"]
    cfg = call(kind, server, "get_model_config", "temporal-order")
    assert cfg["name"] == "temporal-order" and cfg["max_batch_size"] >= 1
    assert cfg["sequence_batching"]["control_input"] and cfg["dynamic_batching"]["priority_levels"] == 10
    index = call(kind, server, "get_model_repository_index")
    assert {(r["name"], r["version"]) for r in index} >= {("echo-versions", "1"), ("echo-versions", "2"),
                                                          ("onnx-charlm", "1")}
    before = call(kind, server, "get_inference_statistics", "temporal-order")["model_stats"][0]["inference_stats"]
    mod = httpclient if kind == "http" else aioclient
    top = mod.InferRequestedOutput("PROBABILITIES", class_count=2)
    r = call(kind, server, "infer", "temporal-order", [s.tensor(s.seq, True, kind)], outputs=[top], priority=1,
             timeout=10_000_000)
    best = r.as_numpy("PROBABILITIES")[0]
    score, index_, label = best[0].decode().split(":")
    ref = s.v1
    assert int(index_) == ref.argmax() and label == s.meta["labels"][ref.argmax()] and abs(float(score) - ref.max()) < 1e-5
    after = call(kind, server, "get_inference_statistics", "temporal-order")["model_stats"][0]["inference_stats"]
    assert after["success"]["count"] == before["success"]["count"] + 1
    assert after["compute_infer"]["ns"] > before["compute_infer"]["ns"]
    assert "model_stats" in call(kind, server, "get_inference_statistics")
    with pytest.raises(InferenceServerException, match="priority"):
        call(kind, server, "infer", "temporal-order", [s.tensor(s.seq, True, kind)], priority=11)
    assert "schedule_policy" in call(kind, server, "get_server_metadata")["extensions"]


def test_timeout_fails_a_queued_request_and_does_no_work(server, specs):
    s = specs["charlm"]
    with pytest.raises(InferenceServerException, match="timeout expired"):
        call("http", server, "infer", "charlm", [s.tensor(s.seq, True, "http")], timeout=1)
    whole = call("http", server, "infer", "charlm", [s.tensor(s.seq, True, "http")]).as_numpy("PROBABILITIES")[0]
    call("http", server, "infer", "charlm", [s.tensor(s.seq[:5], True, "http")], sequence_id=77, sequence_start=True)
    with pytest.raises(InferenceServerException, match="timeout expired"):
        call("http", server, "infer", "charlm", [s.tensor(s.seq[5:9], True, "http")], sequence_id=77, timeout=1)
    rest = call("http", server, "infer", "charlm", [s.tensor(s.seq[5:], True, "http")], sequence_id=77,
                sequence_end=True).as_numpy("PROBABILITIES")[0]
    close(rest, whole[5:])                                        # the timed-out chunk never advanced the state


@pytest.mark.parametrize("kind", KINDS)
def test_model_versions_through_the_clients(server, specs, kind):
    s = specs["echo"]
    assert call(kind, server, "get_model_metadata", "echo-versions")["versions"] == ["1", "2"]
    for v in ("1", "2"):
        assert call(kind, server, "is_model_ready", "echo-versions", v)
        r = call(kind, server, "infer", "echo-versions", [s.tensor(s.seq, True, kind)], model_version=v)
        assert r.get_response()["model_version"] == v
        close(r.as_numpy("PROBABILITIES")[0], s.v1)
        assert call(kind, server, "get_model_config", "echo-versions", v)["version_policy"] == {"all": {}}
        stats = call(kind, server, "get_inference_statistics", "echo-versions", v)["model_stats"]
        assert [m["version"] for m in stats] == [v]
    with pytest.raises(InferenceServerException, match="versions: 1, 2"):
        call(kind, server, "infer", "echo-versions", [s.tensor(s.seq, True, kind)], model_version="3")
    assert not call(kind, server, "is_model_ready", "echo-versions", "3")


def test_load_and_unload_through_the_client(server, specs):
    s = specs["echo"]
    call("http", server, "infer", "echo-versions", [s.tensor(s.seq[:2], True, "http")], sequence_id=5,
         sequence_start=True)
    with pytest.raises(InferenceServerException, match="live session"):
        call("http", server, "unload_model", "echo-versions")
    call("http", server, "infer", "echo-versions", [s.tensor(s.seq[2:3], True, "http")], sequence_id=5,
         sequence_end=True)
    call("http", server, "unload_model", "echo-versions")
    assert not call("http", server, "is_model_ready", "echo-versions")
    assert {"name": "echo-versions", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} in \
        call("http", server, "get_model_repository_index")
    with pytest.raises(InferenceServerException, match="unloaded"):
        call("http", server, "infer", "echo-versions", [s.tensor(s.seq, True, "http")])
    call("aio", server, "load_model", "echo-versions")
    assert call("aio", server, "is_model_ready", "echo-versions", "2")


def test_compression_both_ways_and_errors_in_the_v2_shape(server, specs):
    s = specs["charlm"]
    for algo in ("gzip", "deflate"):
        r = call("http", server, "infer", "charlm", [s.tensor(s.seq, False, "http")], request_compression_algorithm=algo,
                 response_compression_algorithm=algo)
        close(r.as_numpy("PROBABILITIES")[0], s.v1)
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        call("http", server, "infer", "nope", [s.tensor(s.seq, True, "http")])
    r = httpx.get(f"http://{server}/v2/models/charlm/nothing")
    assert r.status_code == 404 and set(r.json()) == {"error"}
