"""The transport-neutral v2 core: datatypes, versions, limits, Triton's extensions as plain dicts."""
from __future__ import annotations

import asyncio
import json
import shutil
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.errors import PayloadTooLarge, ServiceError
from service.main import create_app
from service.openinference import datatypes as dt
from service.openinference import repository
from service.openinference.model_config import for_protobuf, model_config
from service.openinference.tensors import classification
from service.openinference.types import InferInput, InferRequest, RequestedOutput
from service.registry import ModelRegistry
from service.sessions.batcher import DynamicBatcher, RequestTimeout
from service.settings import DEFAULT_MODEL_DIR, Settings

TEXT = "To be, or not"


# -- datatypes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("datatype,values", [
    ("BOOL", [True, False, True, True]), ("UINT8", [0, 255, 7, 1]), ("UINT16", [0, 65535, 3, 4]),
    ("UINT32", [0, 2**32 - 1, 5, 6]), ("UINT64", [0, 2**64 - 1, 1, 2]), ("INT8", [-128, 127, 0, 1]),
    ("INT16", [-(2**15), 2**15 - 1, 0, 1]), ("INT32", [-(2**31), 2**31 - 1, 0, 1]),
    ("INT64", [-(2**63), 2**63 - 1, 0, 1]), ("FP16", [0.5, -2.0, 1.0, 65504.0]), ("FP32", [0.25, -1e30, 3, 1.5]),
    ("FP64", [1e300, -0.5, 2, 0.0]), ("BYTES", ["ab", "", "ü", "x:y"]),
])
def test_every_datatype_round_trips_json_and_bytes(datatype, values):
    arr = dt.from_json("T", datatype, [2, 2], values, 100)
    assert arr.shape == (2, 2)
    again = dt.from_bytes("T", datatype, [2, 2], dt.to_bytes(arr, datatype), 100)
    assert again.tolist() == arr.tolist()
    if datatype == "BYTES":
        assert dt.to_json(arr, datatype) == values
    nested = dt.from_json("T", datatype, [2, 2], [values[:2], values[2:]], 100)
    assert nested.tolist() == arr.tolist()


@pytest.mark.parametrize("datatype,data,needle", [
    ("INT64", [1, True], "integers only"),              # a JSON boolean is not a number
    ("FP32", [1.0, False], "numbers only"),
    ("BOOL", [1, 0], "true/false only"),
    ("INT64", [1.5, 2], "integers only"),
    ("UINT8", [256, 1], "[0, 255]"),
    ("INT8", [-129, 1], "[-128, 127]"),
    ("UINT64", [-1, 1], "[0, 18446744073709551615]"),
    ("FP16", [70000.0, 1], "out of range for FP16"),
    ("FP32", [1e39, 1], "out of range for FP32"),
    ("FP64", [10**400, 1], "out of range for FP64"),
    ("BYTES", [1, 2], "strings"),
    ("INT64", [1, 2, 3], "needs 2 values, data has 3"),
    ("STRING", [1, 2], "not supported"),
    ("INT64", "12", "must be a list"),
])
def test_bad_json_values_name_the_tensor(datatype, data, needle):
    with pytest.raises(ServiceError) as err:
        dt.from_json("MY_INPUT", datatype, [2], data, 100)
    assert err.value.status == 400 and "MY_INPUT" in err.value.message and needle in err.value.message


@pytest.mark.parametrize("shape", [[2**62, 2**62, 2**62], [10**30], [5000, 5000]])
def test_element_count_overflow_is_a_413_not_a_crash(shape):
    with pytest.raises(PayloadTooLarge, match="MY_INPUT"):
        dt.from_json("MY_INPUT", "INT64", shape, [1], 1000)
    with pytest.raises(PayloadTooLarge):
        dt.from_bytes("MY_INPUT", "FP32", shape, b"\0" * 4, 1000)


@pytest.mark.parametrize("raw,needle", [
    (b"\x05\x00\x00\x00ab", "past the end"), (b"\x01\x00", "ends after 0"),
    (b"\x01\x00\x00\x00a\x00\x00\x00\x00zz", "left over"),
])
def test_bad_bytes_elements(raw, needle):
    with pytest.raises(ServiceError, match=needle):
        dt.from_bytes("TXT", "BYTES", [2] if needle != "ends after 0" else [1], raw, 10)
    with pytest.raises(ServiceError, match="needs 8 bytes"):
        dt.from_bytes("X", "FP32", [2], b"\0" * 7, 10)


def test_classification_strings_are_tritons():
    out = classification(np.array([[0.1, 0.7, 0.2]]), 2, ["a", "b", "c"])
    assert out.tolist() == [[b"0.700000:1:b", b"0.200000:2:c"]]
    assert classification(np.array([0.1, 0.9]), 1, None).tolist() == [b"0.900000:1"]


# -- versions -----------------------------------------------------------------------------------
def _versioned_repo(root, policy=None, versions=(1, 2, 3)):
    for v in versions:
        shutil.copytree(DEFAULT_MODEL_DIR / "echo", root / "echo" / str(v))
    if policy is not None:
        (root / "echo" / "config.json").write_text(json.dumps({"version_policy": policy}))
    shutil.copytree(DEFAULT_MODEL_DIR / "temporal-order", root / "temporal-order")        # flat: version 1
    return root


@pytest.mark.parametrize("policy,served", [
    (None, [3]), ({"latest": {"num_versions": 2}}, [2, 3]), ({"all": {}}, [1, 2, 3]),
    ({"specific": {"versions": [1, 3]}}, [1, 3]),
])
def test_version_policy_selects_versions_by_folder_number(tmp_path, policy, served):
    reg = ModelRegistry(_versioned_repo(tmp_path, policy))
    reg.load_all()
    assert [e.number for e in reg.served("echo")] == served
    assert reg.ready("echo").number == served[-1] and reg.ready("temporal-order").number == 1
    assert reg.ready("echo", str(served[0])).number == served[0]
    with pytest.raises(ServiceError) as err:
        reg.ready("echo", "7")
    assert err.value.status == 404 and f"versions: {', '.join(map(str, served))}" in err.value.message


def test_version_numbers_do_not_depend_on_load_order(tmp_path):
    _versioned_repo(tmp_path, {"all": {}}, versions=(10, 2, 1))
    a, b = ModelRegistry(tmp_path), ModelRegistry(tmp_path)
    a.load_all()
    for n in ("temporal-order", "echo"):
        b.load(n)
    assert [(e.number, e.version) for e in a.served("echo")] == [(e.number, e.version) for e in b.served("echo")]
    assert [e.number for e in a.served("echo")] == [1, 2, 10]


@pytest.mark.parametrize("config,needle", [
    ({"version_policy": {"latest": {"num_versions": 0}}}, "num_versions"),
    ({"version_policy": {"latest": {}, "all": {}}}, "choose one"),
    ({"version_policy": {"newest": {}}}, "newest"),
    ({"versions": [1]}, "versions"),
    ({"version_policy": {"specific": {"versions": [9]}}}, "selects none"),
])
def test_bad_version_config_fails_the_model_with_the_field(tmp_path, config, needle):
    _versioned_repo(tmp_path)
    (tmp_path / "echo" / "config.json").write_text(json.dumps(config))
    reg = ModelRegistry(tmp_path)
    reg.load_all()
    assert reg.get("echo").status == "failed" and needle in reg.get("echo").error
    assert reg.ready("temporal-order").status == "ready"


def test_only_ascii_int64_folders_are_versions(tmp_path):
    """'³' and '١' pass str.isdigit (int() refuses the first and reads the second as 1); a name past
    int64 is not a Triton version either. Such folders are not versions, and the model loads."""
    _versioned_repo(tmp_path, {"all": {}}, versions=(2,))
    for name in ("\u00b3", "\u0661", "9" * 19, "1" * 5000):
        try:
            shutil.copytree(DEFAULT_MODEL_DIR / "echo", tmp_path / "echo" / name)
        except OSError:                                   # a name longer than the file system takes
            continue
    reg = ModelRegistry(tmp_path)
    reg.load_all()
    assert [e.number for e in reg.served("echo")] == [2]


def test_flat_and_versioned_at_once_is_refused(tmp_path):
    _versioned_repo(tmp_path)
    shutil.copy(DEFAULT_MODEL_DIR / "echo" / "model.safetensors", tmp_path / "echo" / "model.safetensors")
    reg = ModelRegistry(tmp_path)
    reg.load_all()
    assert reg.get("echo").status == "failed" and "one layout" in reg.get("echo").error


# -- inference through the core (what HTTP and gRPC both call) --------------------------------------
@pytest.fixture(scope="module")
def app_client():
    with TestClient(create_app(Settings(max_batch_sequences=4, max_sequence_length=64,
                                        max_response_bytes=200_000))) as c:
        yield c


def _run(client, req: InferRequest):
    return client.portal.call(client.app.state.v2.infer, req)


def _ids(client, text):
    vocab = client.get("/v1/models/charlm").json()["vocab"]
    return np.array([[vocab.index(ch) for ch in text]], dtype=np.int32)


def test_input_text_equals_input_ids_and_v1(app_client):
    c = app_client
    ids = _ids(c, TEXT)
    by_ids = _run(c, InferRequest("charlm", None, [InferInput("INPUT_IDS", "INT32", ids.shape, ids)]))
    text = np.array([[TEXT.encode()]], dtype=object)
    by_text = _run(c, InferRequest("charlm", "1", [InferInput("INPUT_TEXT", "BYTES", (1, 1), text)]))
    assert by_text.model_version == "1"
    np.testing.assert_allclose(by_ids.outputs[0].data, by_text.outputs[0].data, atol=1e-6)
    v1 = c.post("/v1/models/charlm/predict", json={"inputs": [TEXT], "top_k": 1}).json()["outputs"][0]
    assert [s["top_k"][0]["index"] for s in v1] == by_text.outputs[0].data[0].argmax(-1).tolist()


@pytest.mark.parametrize("inputs,status,needle", [
    ([InferInput("INPUT_IDS", "INT64", (5, 1), np.zeros((5, 1), np.int64))], 413, "5 sequences"),
    ([InferInput("INPUT_IDS", "INT64", (1, 65), np.zeros((1, 65), np.int64))], 413, "65 steps"),
    ([InferInput("INPUT_TEXT", "BYTES", (1,), np.array([b"a" * 65], dtype=object))], 413, "65 steps"),
    ([InferInput("INPUT_TEXT", "BYTES", (1,), np.array([b"\xff"], dtype=object))], 400, "UTF-8"),
    ([InferInput("INPUT_TEXT", "BYTES", (1,), np.array(["€".encode()], dtype=object))], 400, "vocabulary"),
    ([InferInput("INPUT_IDS", "FP32", (1, 1), np.zeros((1, 1), np.float32))], 400, "integer datatype"),
    ([InferInput("INPUT_IDS", "UINT64", (1, 1), np.array([[2**63 + 5]], np.uint64))], 400, "must lie in"),
    ([InferInput("INPUT_IDS", "INT64", (1, 2), np.zeros((1, 2), np.int64)),
      InferInput("INPUT_TEXT", "BYTES", (1,), np.array([b"a"], dtype=object))], 400, "takes inputs"),
])
def test_v1_limits_and_checks_apply(app_client, inputs, status, needle):
    with pytest.raises(ServiceError) as err:
        _run(app_client, InferRequest("charlm", None, inputs))
    assert err.value.status == status and needle in err.value.message, err.value.message


def test_response_size_limit_is_checked_before_running(app_client):
    ids = np.zeros((4, 60), np.int64)                                # 4 * 60 * 81 probabilities, JSON: ~430 kB
    with pytest.raises(PayloadTooLarge, match="response would be"):
        _run(app_client, InferRequest("charlm", None, [InferInput("INPUT_IDS", "INT64", ids.shape, ids)]))


def test_features_accept_any_numeric_type_and_class_count(app_client):
    bits = np.array([[[1], [0], [1], [1], [0], [1]]], dtype=bool)
    as_bool = _run(app_client, InferRequest("echo", None, [InferInput("INPUT", "BOOL", bits.shape, bits)]))
    as_u8 = _run(app_client, InferRequest("echo", None, [InferInput("INPUT", "UINT8", bits.shape, bits.astype(np.uint8))]))
    np.testing.assert_array_equal(as_bool.outputs[0].data, as_u8.outputs[0].data)
    x = np.array([[1, 6, 2, 3, 7]], np.int64)                      # temporal-order ids
    r = _run(app_client, InferRequest("temporal-order", None, [InferInput("INPUT_IDS", "INT64", x.shape, x)],
                                      [RequestedOutput("PROBABILITIES", {"class_count": 2}), RequestedOutput("CLASS")]))
    top = r.outputs[0]
    assert top.datatype == "BYTES" and top.shape == (1, 2)
    score, index, label = top.data[0, 0].decode().split(":")
    assert int(index) == int(r.outputs[1].data[0]) and label in "QRSU"


def test_statistics_record_success_failure_and_phases(app_client):
    v2 = app_client.app.state.v2
    before = v2.stats.report(app_client.app.state.registry, "echo")["model_stats"][0]
    x = np.zeros((1, 3, 1), np.float32)
    _run(app_client, InferRequest("echo", None, [InferInput("INPUT", "FP32", x.shape, x)]))
    with pytest.raises(ServiceError):
        _run(app_client, InferRequest("echo", None, [InferInput("INPUT", "FP32", (1, 3, 2), np.zeros((1, 3, 2), np.float32))]))
    after = v2.stats.report(app_client.app.state.registry, "echo")["model_stats"][0]
    s0, s1 = before["inference_stats"], after["inference_stats"]
    assert after["version"] == "1" and after["inference_count"] == before["inference_count"] + 1
    for phase in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert s1[phase]["count"] == s0[phase]["count"] + 1, phase
    assert s1["compute_infer"]["ns"] > s0["compute_infer"]["ns"]
    from google.protobuf import json_format                            # the form gRPC converts
    from tritonclient.grpc import service_pb2
    json_format.ParseDict(v2.stats.report(app_client.app.state.registry), service_pb2.ModelStatisticsResponse())


def test_model_config_matches_settings_and_parses_as_tritons(app_client):
    reg, settings = app_client.app.state.registry, app_client.app.state.settings
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2
    for name in reg.names():
        cfg = model_config(reg.ready(name), reg.policy(name).as_triton(), settings)
        assert cfg["max_batch_size"] == settings.max_batch_sequences
        assert cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == settings.max_pending_requests
        seq = cfg["sequence_batching"]
        assert seq["max_sequence_idle_microseconds"] == int(settings.session_ttl_seconds * 1e6)
        assert {ci["name"] for ci in seq["control_input"]} == {"START", "END", "CORRID"}
        assert seq["state"] and seq["state"][0]["dims"][1] == reg.ready(name).config.hidden_size
        json_format.ParseDict(for_protobuf(cfg), model_config_pb2.ModelConfig())
    ids = next(t for t in model_config(reg.ready("charlm"), {}, settings)["input"] if t["name"] == "INPUT_IDS")
    assert ids["dims"] == [-1] and ids["data_type"] == "TYPE_INT64"


# -- priority and timeout in the batcher -----------------------------------------------------------
def test_priority_runs_first_and_a_queued_request_times_out_unrun():
    ran = []

    def run(items):
        time.sleep(0.05)
        ran.extend(items)
        return items

    async def main():
        b = DynamicBatcher(run, max_batch=1, max_delay=0)
        first = asyncio.ensure_future(b.submit("busy"))
        await asyncio.sleep(0.01)                                    # "busy" is running
        low = asyncio.ensure_future(b.submit("low", priority=9))
        high = asyncio.ensure_future(b.submit("high", priority=1))
        late = asyncio.ensure_future(b.submit("late", deadline=time.perf_counter() + 0.01))
        await asyncio.gather(first, low, high)
        with pytest.raises(RequestTimeout, match="nothing was computed"):
            await late
        await b.close()

    asyncio.run(main())
    assert ran == ["busy", "high", "low"]


def test_timeout_without_batching_does_no_work():
    ran = []

    async def main():
        b = DynamicBatcher(lambda items: ran.extend(items) or items, enabled=False)
        with pytest.raises(RequestTimeout):
            await b.submit("x", deadline=time.perf_counter() - 1)
        assert await b.submit("y") == "y"
        await b.close()

    asyncio.run(main())
    assert ran == ["y"]


# -- repository: index, load, unload ---------------------------------------------------------------
def test_repository_index_load_and_unload_with_live_sessions(tmp_path):
    _versioned_repo(tmp_path, {"latest": {"num_versions": 2}})
    with TestClient(create_app(Settings(model_dir=tmp_path))) as c:
        state = c.app.state
        rows = repository.index(state.registry)
        assert [(r["name"], r["version"], r["state"]) for r in rows] == [
            ("echo", "2", "READY"), ("echo", "3", "READY"), ("temporal-order", "1", "READY")]
        sid = c.post("/v1/sessions", json={"model": "echo"}).json()["session_id"]
        with pytest.raises(ServiceError) as err:
            c.portal.call(repository.unload, state.registry, state.sessions.store, "echo")
        assert err.value.status == 409 and "1 live session" in err.value.message
        c.portal.call(repository.unload, state.registry, state.sessions.store, "echo", True)
        assert repository.index(state.registry)[0] == {"name": "echo", "version": "", "state": "UNAVAILABLE",
                                                       "reason": "unloaded"}
        assert repository.index(state.registry, ready_only=True) == [
            {"name": "temporal-order", "version": "1", "state": "READY", "reason": ""}]
        assert c.post(f"/v1/sessions/{sid}/step", json={"input": [[1]]}).status_code in (404, 409)
        c.portal.call(repository.load, state.registry, "echo")
        assert [e.number for e in state.registry.served("echo")] == [2, 3]
        with pytest.raises(ServiceError) as err:
            c.portal.call(repository.load, state.registry, "nope")
        assert err.value.status == 404


def test_live_sequence_keeps_its_version_when_the_policy_moves(tmp_path):
    _versioned_repo(tmp_path, versions=(1,))
    with TestClient(create_app(Settings(model_dir=tmp_path))) as c:
        x = np.ones((1, 2, 1), np.float32)

        def req(params, version=None):
            return InferRequest("echo", version, [InferInput("INPUT", "FP32", x.shape, x)], parameters=params)

        first = _run(c, req({"sequence_id": 9, "sequence_start": True}))
        assert first.model_version == "1"
        shutil.copytree(DEFAULT_MODEL_DIR / "echo", tmp_path / "echo" / "2")
        c.portal.call(repository.load, c.app.state.registry, "echo")
        assert c.app.state.registry.ready("echo").number == 2
        assert _run(c, req({"sequence_id": 9})).model_version == "1"           # the live sequence stays on 1
        with pytest.raises(ServiceError, match="runs on version 1"):
            _run(c, req({"sequence_id": 9}, version="2"))
        assert _run(c, req({"sequence_id": 10, "sequence_start": True})).model_version == "2"
