"""gRPC with Triton's own clients (``tritonclient.grpc`` and ``.aio``) against a real ``python -m service``.

Every bundled model, stateless and as a sequence fed in chunks, unary and streaming: the chunks
equal the whole run, the whole run equals HTTP v2, and the per-step outputs equal the WebSocket's.
"""
from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import uuid
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import websockets.sync.client as ws_client

import tritonclient.grpc as tritonclient_grpc
import tritonclient.grpc.aio as grpc_aio
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers import free_port, kserve_python, model_input, start_server, stop_server, tensor

CHUNKS = [3, 1, 5, 3]                                          # 12 steps, split unevenly
RTOL, ATOL = 5e-5, 1e-6                                        # batch shape changes BLAS summation order


@pytest.fixture(scope="module")
def server():
    http_port, grpc_port = free_port(), free_port()
    proc = start_server(http_port, {"RNN_SERVE_GRPC_PORT": str(grpc_port)})
    yield {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}", "proc": proc}
    stop_server(proc, timeout=15)


@pytest.fixture(scope="module")
def grpc_client(server):
    c = tritonclient_grpc.InferenceServerClient(server["grpc"])
    yield c
    c.close()


def chunks(arr: np.ndarray) -> list[np.ndarray]:
    bounds = np.cumsum([0] + CHUNKS)
    return [arr[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def joined(model: str, probs: list[np.ndarray]) -> np.ndarray:
    """Chunk outputs as one run: per-step outputs concatenate; a classifier's last chunk is the answer."""
    return probs[-1] if model == "temporal-order" else np.concatenate(probs, axis=1)


def http_v2(server, model: str, name: str, arr: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": name, "datatype": "INT64" if arr.dtype.kind == "i" else "FP32",
                        "shape": list(arr.shape), "data": arr.reshape(-1).tolist()}]}
    r = httpx.post(f"http://{server['http']}/v2/models/{model}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = next(o for o in r.json()["outputs"] if o["name"] == "PROBABILITIES")
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def websocket_steps(server, model: str, arr: np.ndarray, top_k: int) -> list[dict]:
    """The same chunks through ``/v1/models/{m}/stream``: one output per step."""
    outputs = []
    with ws_client.connect(f"ws://{server['http']}/v1/models/{model}/stream", open_timeout=30) as ws:
        assert json.loads(ws.recv())["type"] == "session"
        for c in chunks(arr):
            payload = {"tokens": c[0].tolist()} if model != "echo" else {"features": c[0].tolist()}
            ws.send(json.dumps({"type": "input", "top_k": top_k, **payload}))
            reply = json.loads(ws.recv())
            assert reply["type"] == "output", reply
            outputs += reply["outputs"]
        ws.send(json.dumps({"type": "close"}))
    return outputs


def assert_same_as_websocket(model: str, probs: np.ndarray, ws_steps: list[dict], last_steps: list[int]) -> None:
    """probs: per-step (T, C) for seq models; for the classifier, one row per chunk at ``last_steps``."""
    if model == "echo":
        np.testing.assert_allclose(probs, [s["probabilities"] for s in ws_steps], rtol=RTOL, atol=ATOL)
        return
    steps = [ws_steps[i] for i in last_steps] if model == "temporal-order" else ws_steps
    assert len(steps) == len(probs)
    for row, step in zip(probs, steps):
        assert np.argsort(-row, kind="stable")[:3].tolist() == [t["index"] for t in step["top_k"]]
        np.testing.assert_allclose(row[[t["index"] for t in step["top_k"]]],
                                   [t["probability"] for t in step["top_k"]], rtol=RTOL, atol=ATOL)


def stream_sync(grpc_client, model: str, name: str, arr: np.ndarray, seq_id) -> list[np.ndarray]:
    results: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        parts = chunks(arr)
        for i, c in enumerate(parts):
            grpc_client.async_stream_infer(model, [tensor(name, c)], request_id=str(i), sequence_id=seq_id,
                                      sequence_start=i == 0, sequence_end=i == len(parts) - 1)
        out = []
        for i in range(len(parts)):
            result, error = results.get(timeout=30)
            assert error is None, error
            assert result.get_response().id == str(i)                 # in the order sent
            out.append(result.as_numpy("PROBABILITIES"))
        return out
    finally:
        grpc_client.stop_stream()


@pytest.mark.parametrize("model", ["charlm", "echo", "temporal-order"])
def test_every_model_unary_and_streamed_equals_whole_run_http_and_websocket(server, grpc_client, model):
    name, arr = model_input(model)
    whole = grpc_client.infer(model, [tensor(name, arr)]).as_numpy("PROBABILITIES")
    np.testing.assert_allclose(whole, http_v2(server, model, name, arr), rtol=RTOL, atol=ATOL)

    parts = chunks(arr)
    seq_id = int(uuid.uuid4().int % 2**62) + 1                       # Triton's numeric sequence ids
    unary = []
    for i, c in enumerate(parts):
        r = grpc_client.infer(model, [tensor(name, c)], sequence_id=seq_id, sequence_start=i == 0,
                         sequence_end=i == len(parts) - 1)
        unary.append(r.as_numpy("PROBABILITIES"))
    streamed = stream_sync(grpc_client, model, name, arr, f"s-{uuid.uuid4().hex}")   # string ids too
    for probs in (unary, streamed):
        np.testing.assert_allclose(joined(model, probs), whole, rtol=RTOL, atol=ATOL)

    per_step = np.concatenate(streamed, axis=0) if model == "temporal-order" else joined(model, streamed)[0]
    ws = websocket_steps(server, model, arr, top_k=3)
    assert_same_as_websocket(model, per_step, ws, list(np.cumsum(CHUNKS) - 1))


@pytest.mark.parametrize("model", ["charlm", "echo", "temporal-order"])
def test_every_model_through_the_aio_client_unary_and_stream(server, grpc_client, model):
    name, arr = model_input(model)
    whole = grpc_client.infer(model, [tensor(name, arr)]).as_numpy("PROBABILITIES")
    parts, seq_id = chunks(arr), f"aio-{uuid.uuid4().hex}"

    async def main():
        async with grpc_aio.InferenceServerClient(server["grpc"]) as aio:
            assert await aio.is_server_ready() and await aio.is_model_ready(model)
            stateless = (await aio.infer(model, [tensor(name, arr)])).as_numpy("PROBABILITIES")
            unary = [(await aio.infer(model, [tensor(name, c)], sequence_id=seq_id + "u", sequence_start=i == 0,
                                      sequence_end=i == len(parts) - 1)).as_numpy("PROBABILITIES")
                     for i, c in enumerate(parts)]

            async def requests():
                for i, c in enumerate(parts):
                    yield {"model_name": model, "inputs": [tensor(name, c)], "request_id": str(i),
                           "sequence_id": seq_id, "sequence_start": i == 0, "sequence_end": i == len(parts) - 1}

            streamed = []
            async for result, error in aio.stream_infer(requests()):
                assert error is None, error
                streamed.append(result.as_numpy("PROBABILITIES"))
                if len(streamed) == len(parts):
                    break
            return stateless, unary, streamed

    stateless, unary, streamed = asyncio.run(main())
    np.testing.assert_allclose(stateless, whole, rtol=RTOL, atol=ATOL)
    for probs in (unary, streamed):
        np.testing.assert_allclose(joined(model, probs), whole, rtol=RTOL, atol=ATOL)


def test_typed_contents_equal_raw_contents(server, grpc_client):
    """The KServe spec's typed ``contents`` (tritonclient always sends raw) decode to the same tensor."""
    name, arr = model_input("charlm")
    req = pb.ModelInferRequest(model_name="charlm", id="typed")
    t = req.inputs.add(name=name, datatype="INT64", shape=list(arr.shape))
    t.contents.int64_contents.extend(arr.reshape(-1).tolist())
    with grpc.insecure_channel(server["grpc"]) as channel:
        resp = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=30)
    assert resp.id == "typed" and resp.outputs[0].name == "PROBABILITIES" and not resp.outputs[0].HasField("contents")
    typed = np.frombuffer(resp.raw_output_contents[0], dtype="<f4").reshape(list(resp.outputs[0].shape))
    np.testing.assert_allclose(typed, grpc_client.infer("charlm", [tensor(name, arr)]).as_numpy("PROBABILITIES"),
                               rtol=RTOL, atol=ATOL)
    t.contents.int64_contents.append(1)                                    # 13 values for a [1, 12] shape
    with grpc.insecure_channel(server["grpc"]) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "INPUT_IDS" in err.value.details()


def test_health_metadata_and_same_metadata_as_http(server, grpc_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("charlm") and not grpc_client.is_model_ready("no-such-model")
    meta = grpc_client.get_server_metadata(as_json=True)
    http_meta = httpx.get(f"http://{server['http']}/v2").json()
    assert meta["name"] == http_meta["name"] and meta["extensions"] == http_meta["extensions"]
    for model in ("charlm", "echo", "temporal-order"):
        m = grpc_client.get_model_metadata(model, as_json=True)
        h = httpx.get(f"http://{server['http']}/v2/models/{model}").json()
        assert m["name"] == h["name"] and m["versions"] == h["versions"] and m["platform"] == h["platform"]
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in m["inputs"]] == \
            [(t["name"], t["datatype"], t["shape"]) for t in h["inputs"]]


def test_errors_have_grpc_codes_and_the_stream_stays_open(grpc_client):
    name, arr = model_input("charlm")
    cases = [(lambda: grpc_client.infer("nope", [tensor(name, arr)]), "StatusCode.NOT_FOUND", "unknown model"),
             (lambda: grpc_client.infer("charlm", [tensor(name, arr[:, :, None])]), "StatusCode.INVALID_ARGUMENT",
              "INPUT_IDS"),
             (lambda: grpc_client.infer("charlm", [tensor(name, arr)], sequence_id="never-started"),
              "StatusCode.INVALID_ARGUMENT", "sequence_start"),
             (lambda: grpc_client.get_model_metadata("charlm", model_version="999"), "StatusCode.NOT_FOUND", "999"),
             (lambda: grpc_client.get_system_shared_memory_status(), "StatusCode.UNIMPLEMENTED", "shared memory"),
             (lambda: grpc_client.get_trace_settings(), "StatusCode.UNIMPLEMENTED", "tracing")]
    for call, code, words in cases:
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == code and words in err.value.message(), err.value

    results: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        grpc_client.async_stream_infer("nope", [tensor(name, arr)], request_id="a")
        grpc_client.async_stream_infer("charlm", [tensor(name, arr)], request_id="b", sequence_id="x-never-started")
        grpc_client.async_stream_infer("charlm", [tensor(name, arr)], request_id="c")
        (r1, e1), (r2, e2), (r3, e3) = (results.get(timeout=30) for _ in range(3))
    finally:
        grpc_client.stop_stream()
    assert r1 is None and "unknown model" in e1.message()
    assert r2 is None and "sequence_start" in e2.message()
    assert e3 is None and r3.get_response().id == "c" and r3.as_numpy("PROBABILITIES").shape == (1, 12, 81)


def test_oversize_requests_are_refused_at_the_transport_and_the_server_keeps_serving(server, grpc_client):
    big = np.zeros((1, 300_000), dtype=np.int64)                      # 2.4 MB > max_request_bytes (1 MB)
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer("charlm", [tensor("INPUT_IDS", big)])
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    with pytest.raises(InferenceServerException) as err:           # gzip: the limit holds after decompression
        grpc_client.infer("charlm", [tensor("INPUT_IDS", big)], compression_algorithm="gzip")
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    results: queue.Queue = queue.Queue()                            # in a stream: the stream ends with it
    grpc_client.start_stream(callback=lambda result, error: results.put((result, error)))
    grpc_client.async_stream_infer("charlm", [tensor("INPUT_IDS", big)])
    result, error = results.get(timeout=30)
    grpc_client.stop_stream()
    assert result is None and "RESOURCE_EXHAUSTED" in str(error)
    assert server["proc"].poll() is None and grpc_client.is_server_ready()
    name, arr = model_input("charlm")
    assert grpc_client.infer("charlm", [tensor(name, arr)]).as_numpy("PROBABILITIES").shape == (1, 12, 81)


def test_api_keys_are_required_on_grpc_except_health():
    http_port, grpc_port = free_port(), free_port()
    proc = start_server(http_port, {"RNN_SERVE_GRPC_PORT": str(grpc_port), "RNN_SERVE_API_KEYS": '["k-one", "k-two"]'})
    try:
        c = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert c.is_server_live() and c.is_server_ready()                 # probes stay open, as on HTTP
        name, arr = model_input("temporal-order")
        for headers in (None, {"x-api-key": "wrong"}):
            with pytest.raises(InferenceServerException) as err:
                c.infer("temporal-order", [tensor(name, arr)], headers=headers)
            assert err.value.status() == "StatusCode.UNAUTHENTICATED" and "x-api-key" in err.value.message()
        with pytest.raises(InferenceServerException) as err:
            c.get_model_metadata("temporal-order")
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        assert c.infer("temporal-order", [tensor(name, arr)], headers={"x-api-key": "k-two"}).as_numpy("CLASS").shape == (1,)

        results: queue.Queue = queue.Queue()
        c.start_stream(callback=lambda result, error: results.put((result, error)))     # no key: refused
        try:
            c.async_stream_infer("temporal-order", [tensor(name, arr)])
        except InferenceServerException:
            pass                                            # the stream may already have been closed on it
        result, error = results.get(timeout=30)
        assert result is None and "UNAUTHENTICATED" in str(error)
        c.stop_stream()
        c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_kserve_sdk_grpc_client_every_model_raw_typed_and_chunked(server, grpc_client, tmp_path):
    python = kserve_python()
    cases = {}
    for model in ("charlm", "echo", "temporal-order"):
        name, arr = model_input(model)
        cases[model] = {"name": name, "dtype": str(arr.dtype), "data": arr.tolist(), "chunks": CHUNKS}
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([python, str(Path(__file__).with_name("kserve_grpc_script.py")), server["grpc"],
                           str(tmp_path / "cases.json")], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["live"] and got["ready"]
    for model, case in cases.items():
        whole = grpc_client.infer(model, [tensor(case["name"], np.asarray(case["data"], dtype=case["dtype"]))]
                             ).as_numpy("PROBABILITIES")
        assert got[model]["ready"]
        np.testing.assert_allclose(got[model]["raw"], whole, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got[model]["typed"], whole, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(joined(model, [np.asarray(c) for c in got[model]["chunks"]]), whole,
                                   rtol=RTOL, atol=ATOL)


def test_a_stream_retry_with_at_is_answered_from_the_record_not_applied_twice(grpc_client):
    """On a gRPC stream, as over HTTP: a request resent with the same ``at`` parameter (its reply was
    lost) gets the recorded outputs and advances nothing; a stale ``at`` gets an error in the stream."""
    ids = np.array([[3, 4, 5]], dtype=np.int64)
    results: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        sends = [(ids, 0, True), (ids, 0, True), (ids[:, :2], 3, False), (ids[:, :2], 3, False), (ids[:, :1], 0, False)]
        for i, (x, at, start) in enumerate(sends):
            grpc_client.async_stream_infer("charlm", [tensor("INPUT_IDS", x)], request_id=str(i), sequence_id="grpc-at",
                                      sequence_start=start, parameters={"at": at})
        got = [results.get(timeout=30) for _ in sends]
    finally:
        grpc_client.stop_stream()
    probs = [r.as_numpy("PROBABILITIES") if e is None else e for r, e in got]
    np.testing.assert_array_equal(probs[0], probs[1])                   # the start, retried
    np.testing.assert_array_equal(probs[2], probs[3])                   # the middle step, retried
    assert "at step 5" in str(probs[4])                                 # not a retry: refused, nothing applied
