"""Triton's extensions over gRPC, each through ``tritonclient.grpc``'s own method, against a real server.

Its own server and repository (unload and load change it): the bundled models, two ONNX graphs with
model cards, and a model in Triton's version layout with two versions served.
"""
from __future__ import annotations

import json
import shutil

import grpc
import httpx
import numpy as np
import pytest

import tritonclient.grpc as tritonclient_grpc
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers import GOLDEN_ROOT, free_port, start_server, stop_server
from service.settings import DEFAULT_MODEL_DIR
from tests.helpers import model_input, tensor

BUNDLED = ("charlm", "echo", "temporal-order")
MODELS = (*BUNDLED, "onnx-charlm", "onnx-sentiment", "echo-versions")
GOLDEN = GOLDEN_ROOT / "onnx_serving"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for name in BUNDLED:
        shutil.copytree(DEFAULT_MODEL_DIR / name, repo / name)
    for name in ("charlm", "sentiment"):
        shutil.copytree(GOLDEN / name, repo / f"onnx-{name}")
    for v in (1, 2):
        shutil.copytree(DEFAULT_MODEL_DIR / "echo", repo / "echo-versions" / str(v))
    (repo / "echo-versions" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    http_port, grpc_port = free_port(), free_port()
    proc = start_server(http_port, {"RNN_SERVE_GRPC_PORT": str(grpc_port), "RNN_SERVE_MODEL_DIR": str(repo)},
                        timeout=90, log_path=repo / "server.log")
    c = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    yield {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}", "client": c}
    c.close()
    stop_server(proc, timeout=15)


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status(), err.value.message()


def test_model_config_says_what_the_service_does(server):
    c = server["client"]
    for model in MODELS:
        cfg = c.get_model_config(model, as_json=True)["config"]
        assert cfg["name"] == model and cfg["backend"] == "rnn-serve" and int(cfg["max_batch_size"]) >= 1
        names = {t["name"] for t in cfg["input"]}
        assert names >= ({"INPUT"} if model.startswith("echo") else {"INPUT_IDS"})
        http = httpx.get(f"http://{server['http']}/v2/models/{model}/config").json()
        assert cfg["name"] == http["name"] and cfg["platform"] == http["platform"]            # one source
        assert [t["name"] for t in cfg["input"]] == [t["name"] for t in http["input"]]
        assert {t["name"] for t in cfg["output"]} >= {"PROBABILITIES", "LOGITS"}
        if "sequence_batching" not in http:                       # a bidirectional model cannot stream
            continue
        seq = cfg["sequence_batching"]
        assert {ci["name"] for ci in seq["control_input"]} == {"START", "END", "CORRID"}
        assert int(seq["max_sequence_idle_microseconds"]) > 0 and seq["state"]
    assert c.get_model_config("charlm", model_version="1", as_json=True)["config"]["name"] == "charlm"
    code, message = status_of(lambda: c.get_model_config("nope"))
    assert code == "StatusCode.NOT_FOUND" and "nope" in message


def test_repository_index_versions_and_statistics(server):
    c = server["client"]
    index = c.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} == \
        {(m, "1", "READY") for m in MODELS} | {("echo-versions", "2", "READY")}
    assert c.get_model_metadata("echo", as_json=True)["versions"] == ["1"]
    assert c.get_model_metadata("echo-versions", as_json=True)["versions"] == ["1", "2"]
    name, arr = model_input("echo")
    for v in ("1", "2"):
        r = c.infer("echo-versions", [tensor(name, arr)], model_version=v)
        assert r.get_response().model_version == v and c.is_model_ready("echo-versions", model_version=v)
    assert c.infer("echo-versions", [tensor(name, arr)]).get_response().model_version == "2"     # the latest
    name, arr = model_input("temporal-order")
    assert c.infer("temporal-order", [tensor(name, arr)], model_version="1").get_response().model_version == "1"
    code, message = status_of(lambda: c.infer("temporal-order", [tensor(name, arr)], model_version="7"))
    assert code == "StatusCode.NOT_FOUND" and "1" in message
    assert not c.is_model_ready("temporal-order", model_version="7")

    def counts():
        stats = c.get_inference_statistics("temporal-order", as_json=True)["model_stats"]
        s = stats[0]["inference_stats"]
        return int(s.get("success", {}).get("count", 0)), int(s.get("fail", {}).get("count", 0))

    ok0, fail0 = counts()
    for _ in range(3):
        c.infer("temporal-order", [tensor(name, arr)])
    status_of(lambda: c.infer("temporal-order", [tensor(name, arr[:, :, None])]))
    assert counts() == (ok0 + 3, fail0 + 1)
    every = c.get_inference_statistics(as_json=True)["model_stats"]
    assert {(s["name"], s["version"]) for s in every} == {(m, "1") for m in MODELS} | {("echo-versions", "2")}
    http = httpx.get(f"http://{server['http']}/v2/models/temporal-order/stats")
    if http.status_code == 200:                                       # the same counters over HTTP
        assert http.json()["model_stats"][0]["inference_stats"]["success"]["count"] == ok0 + 3


def test_unload_refuses_live_sessions_then_unload_and_load(server):
    c = server["client"]
    name, arr = model_input("echo")
    c.infer("echo", [tensor(name, arr)], sequence_id="held", sequence_start=True)
    code, message = status_of(lambda: c.unload_model("echo"))
    assert code == "StatusCode.FAILED_PRECONDITION" and "live session" in message
    c.infer("echo", [tensor(name, arr)], sequence_id="held", sequence_end=True)
    c.unload_model("echo")
    assert not c.is_model_ready("echo")
    assert status_of(lambda: c.infer("echo", [tensor(name, arr)]))[0] in ("StatusCode.NOT_FOUND",
                                                                         "StatusCode.UNAVAILABLE")
    assert {m["state"] for m in c.get_model_repository_index(as_json=True)["models"] if m["name"] == "echo"} == \
        {"UNAVAILABLE"}
    c.load_model("echo")
    assert c.is_model_ready("echo") and c.infer("echo", [tensor(name, arr)]).as_numpy("PROBABILITIES").shape == (1, 12, 1)
    assert status_of(lambda: c.load_model("nope"))[0] == "StatusCode.NOT_FOUND"
    assert status_of(lambda: c.load_model("echo", config="{}"))[0] == "StatusCode.INVALID_ARGUMENT"

    c.infer("echo", [tensor(name, arr)], sequence_id="forced", sequence_start=True)    # Triton's client has no
    req = pb.RepositoryModelUnloadRequest(model_name="echo")                           # force flag: the raw RPC
    req.parameters["force"].bool_param = True
    with grpc.insecure_channel(server["grpc"]) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(req, timeout=30)
    assert not c.is_model_ready("echo")
    c.load_model("echo")


def test_class_count_priority_and_timeout(server):
    c = server["client"]
    name, arr = model_input("temporal-order")
    full = c.infer("temporal-order", [tensor(name, arr)]).as_numpy("PROBABILITIES")[0]
    out = tritonclient_grpc.InferRequestedOutput("PROBABILITIES", class_count=2)
    top = c.infer("temporal-order", [tensor(name, arr)], outputs=[out]).as_numpy("PROBABILITIES")
    assert top.shape == (1, 2) and top.dtype == object
    score, index, _label = top[0, 0].decode().split(":")
    assert int(index) == int(full.argmax()) and abs(float(score) - full.max()) < 1e-5

    assert c.infer("temporal-order", [tensor(name, arr)], priority=1).as_numpy("CLASS").shape == (1,)
    code, message = status_of(lambda: c.infer("temporal-order", [tensor(name, arr)], priority=10**6))
    assert code == "StatusCode.INVALID_ARGUMENT" and "priority" in message
    code, message = status_of(lambda: c.infer("temporal-order", [tensor(name, arr)], timeout=1))   # 1 µs: expires
    assert code == "StatusCode.UNAVAILABLE" and "timeout" in message                            # as Triton's
    assert c.infer("temporal-order", [tensor(name, arr)], timeout=30_000_000).as_numpy("CLASS").shape == (1,)


@pytest.mark.parametrize("model", ["charlm", "onnx-charlm"])
def test_text_input_equals_v1(server, model):
    """``INPUT_TEXT`` BYTES over gRPC: the same probabilities as /v1 predict of the same text."""
    c = server["client"]
    vocab = httpx.get(f"http://{server['http']}/v1/models/{model}").json()["vocab"]
    text = "".join(ch if ch in vocab else vocab[i % len(vocab)] for i, ch in enumerate("To be, or not"))
    t = tritonclient_grpc.InferInput("INPUT_TEXT", [1], "BYTES")
    t.set_data_from_numpy(np.array([text.encode()], dtype=object))
    probs = c.infer(model, [t]).as_numpy("PROBABILITIES")[0]                           # (T, C)
    v1 = httpx.post(f"http://{server['http']}/v1/models/{model}/predict", json={"inputs": [text], "top_k": 3},
                    timeout=30).json()["outputs"][0]
    assert len(v1) == len(text) == len(probs)
    for row, step in zip(probs, v1):
        top = step["top_k"] if isinstance(step, dict) else step
        assert np.argsort(-row, kind="stable")[:3].tolist() == [k["index"] for k in top]
        np.testing.assert_allclose(row[[k["index"] for k in top]], [k["probability"] for k in top], rtol=5e-5, atol=1e-6)
    assert {"INPUT_IDS", "INPUT_TEXT"} <= {t["name"] for t in c.get_model_metadata(model, as_json=True)["inputs"]}
