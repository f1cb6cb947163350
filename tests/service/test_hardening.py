"""Issue 13 through the real app: bounded work, strict numbers, idempotent steps, hardened edges."""
from __future__ import annotations

import json
import re
import shutil
import time
import tracemalloc

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save_file
from starlette.websockets import WebSocketDisconnect

from tests.helpers import err

import model_core
from model_core.checkpoint import CheckpointError
from model_core.state import state_to_bytes
from service.main import create_app
from service.settings import DEFAULT_MODEL_DIR, Settings


# -- 1. bounded work, 4. HTTP 500s -----------------------------------------------------------------
def test_the_320_mb_reply_is_refused_before_any_work(client):
    r = client.post("/v1/models/charlm/predict", json={"inputs": ["a" * 4096] * 16, "top_k": 81})
    msg = err(r, 413, "payload_too_large")
    assert "5308416 outputs" in msg and "smaller top_k" in msg
    err(client.post("/v1/models/charlm/predict", json={"inputs": ["ab"], "top_k": 101}), 422, "invalid_input")
    assert client.post("/v1/models/charlm/predict", json={"inputs": ["a" * 3000], "top_k": 50}).status_code == 200


@pytest.mark.parametrize("path, body", [
    ("/v1/models/temporal-order/predict", {"inputs": [[2**63]]}),                   # int64 overflow
    ("/v1/models/temporal-order/predict", {"inputs": [[10**400]]}),
    ("/v1/models/temporal-order/predict", {"inputs": [[False, 1]]}),                # a bool is not token 0
    ("/v1/models/echo/predict", {"inputs": [[[True]]]}),
    ("/v1/models/echo/predict", {"inputs": [[[10**400]]]}),
    ("/v1/models/charlm/predict", {"inputs": ["ab"], "top_k": True}),
    ("/v1/models/charlm/predict", {"inputs": ["ab"], "top_k": 2**64}),
    ("/v1/models/charlm/complete", {"prompt": "ab", "seed": -1}),
    ("/v1/models/charlm/complete", {"prompt": "ab", "seed": 2**64}),
    ("/v1/models/charlm/complete", {"prompt": "ab", "temperature": 1e-310}),
    ("/v1/models/charlm/complete", {"prompt": "ab", "n": True}),
    ("/v1/models/charlm/complete", {"prompt": "ab", "max_length": 2**70}),
])
def test_numbers_out_of_range_are_422_not_500(client, path, body):
    assert client.post(path, json=body).status_code == 422


def test_sampling_stays_finite_at_the_smallest_temperature(client):
    r = client.post("/v1/models/charlm/complete", json={"prompt": "ROMEO", "temperature": 1e-3, "seed": 0})
    assert r.status_code == 200 and r.json()["completions"][0]["tokens"] > 0


def test_a_tiny_checkpoint_declaring_a_huge_model_is_refused_before_allocating(tmp_path):
    config = json.loads(model_core.checkpoint.read(DEFAULT_MODEL_DIR / "charlm" / "model.safetensors")[0].to_json())
    config["hidden_size"] = 6000
    path = tmp_path / "model.safetensors"
    save_file({}, str(path), metadata={"format": "rnn-serve-checkpoint", "format_version": "1",
                                       "config": json.dumps(config), "extra": "{}"})
    assert path.stat().st_size < 2048
    tracemalloc.start()
    with pytest.raises(CheckpointError, match="declares .* parameters but the file holds 0") as info:
        model_core.load(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000, peak                  # the model it declares would take 580 MB
    assert str(tmp_path) not in str(info.value)    # no server paths in errors


def test_nan_state_with_a_valid_checksum_is_refused(client):
    sid = client.post("/v1/sessions", json={"model": "charlm"}).json()["session_id"]
    good = client.get(f"/v1/sessions/{sid}/state").content
    from model_core.state import state_from_bytes
    h, c = state_from_bytes(good)
    h[0, 0, 0] = np.nan
    msg = err(client.put(f"/v1/sessions/{sid}/state", content=state_to_bytes((h, c))), 422, "invalid_input")
    assert "NaN" in msg


# -- 2. exactly-once steps ------------------------------------------------------------------------
def test_a_retried_step_is_answered_from_the_record_not_applied_twice(client):
    sid = client.post("/v1/sessions", json={"model": "charlm"}).json()["session_id"]
    first = client.post(f"/v1/sessions/{sid}/step", json={"input": "hello", "at": 0, "top_k": 2}).json()
    again = client.post(f"/v1/sessions/{sid}/step", json={"input": "hello", "at": 0, "top_k": 2}).json()
    assert first == again and again["steps"] == 5
    assert client.get(f"/v1/sessions/{sid}").json()["steps"] == 5
    msg = err(client.post(f"/v1/sessions/{sid}/step", json={"input": "other", "at": 0}), 409, "step_mismatch")
    assert "at step 5" in msg
    err(client.post(f"/v1/sessions/{sid}/step", json={"input": "x", "at": 9}), 409, "step_mismatch")
    nxt = client.post(f"/v1/sessions/{sid}/step", json={"input": " wor", "at": 5}).json()
    assert nxt["steps"] == 9


def test_every_use_keeps_a_session_alive():
    with TestClient(create_app(Settings(session_ttl_seconds=1.0))) as c:
        sid = c.post("/v1/sessions", json={"model": "charlm"}).json()["session_id"]
        c.post(f"/v1/sessions/{sid}/step", json={"input": "ab"})
        for use in ("get", "complete", "state") * 2:
            time.sleep(0.4)
            r = {"get": lambda: c.get(f"/v1/sessions/{sid}"),
                 "complete": lambda: c.post(f"/v1/sessions/{sid}/complete", json={"max_length": 2}),
                 "state": lambda: c.get(f"/v1/sessions/{sid}/state")}[use]()
            assert r.status_code == 200, (use, r.text)
        time.sleep(1.2)
        err(c.get(f"/v1/sessions/{sid}"), 410, "session_expired")


# -- 3. WebSocket ---------------------------------------------------------------------------------
BAD_FRAMES = [
    b"\x00\x01binary",
    "[" * 1000 + "]" * 1000,
    '{"type": "input", "tokens": [9223372036854775808]}',
    '{"type": "input", "tokens": [true]}',
    '{"type": "input", "text": "a", "top_k": 1e999}',
    '{"type": "complete", "seed": -1}',
    '{"type": "complete", "temperature": 1e-310}',
    '{"type": "input", "text": "a", "at": -1}',
    '{"type": "input", "text": "a", "id": {"x": 1}}',
    "NaN",
    '{"type": "input", "text": "' + "a" * 1_100_000 + '"}',
]


def test_every_malformed_frame_gets_an_error_event_and_the_socket_stays_open(client):
    with client.websocket_connect("/v1/models/charlm/stream") as ws:
        ws.receive_json()
        for frame in BAD_FRAMES:
            ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_text(frame)
            reply = ws.receive_json()
            assert reply["type"] == "error" and reply["message"], frame[:40]
        ws.send_json({"type": "input", "text": "ok", "at": 0})
        assert ws.receive_json()["steps"] == 2
        ws.send_json({"type": "input", "text": "ok", "at": 0})                  # the retry: answered, not applied
        assert ws.receive_json()["steps"] == 2


def test_idle_sockets_are_closed():
    with TestClient(create_app(Settings(ws_idle_timeout_seconds=0.3))) as c:
        with c.websocket_connect("/v1/models/charlm/stream") as ws:
            ws.receive_json()
            with pytest.raises(WebSocketDisconnect) as info:
                ws.receive_json()
            assert info.value.code == 1001


def test_the_idle_clock_restarts_with_every_message():
    # the one timer per socket fires early while messages keep coming: it must re-arm, not close
    with TestClient(create_app(Settings(ws_idle_timeout_seconds=0.5))) as c:
        with c.websocket_connect("/v1/models/charlm/stream") as ws:
            ws.receive_json()
            start = time.monotonic()
            for _ in range(7):                                      # 1.4 s of typing, well past 0.5 s
                time.sleep(0.2)
                ws.send_json({"type": "input", "text": "a"})
                assert ws.receive_json()["type"] == "output"
            with pytest.raises(WebSocketDisconnect) as info:        # then silence: closed as idle
                ws.receive_json()
            assert info.value.code == 1001 and time.monotonic() - start >= 1.4 + 0.5


def test_origin_allow_list():
    with TestClient(create_app(Settings(cors_origins=["https://app.example"]))) as c:
        for origin, ok in [("https://evil.example", False), ("https://app.example", True),
                           ("http://testserver", True), (None, True)]:
            headers = {"Origin": origin} if origin else {}
            if ok:
                with c.websocket_connect("/v1/models/charlm/stream", headers=headers) as ws:
                    assert ws.receive_json()["type"] == "session"
            else:
                with pytest.raises(WebSocketDisconnect), c.websocket_connect("/v1/models/charlm/stream",
                                                                              headers=headers) as ws:
                    ws.receive_json()


# -- 5. HTTP auth and CORS ------------------------------------------------------------------------
def test_cors_preflight_before_auth_and_cors_headers_on_errors():
    origin = {"Origin": "https://app.example"}
    with TestClient(create_app(Settings(api_keys=["k"], cors_origins=["https://app.example"]))) as c:
        pre = c.options("/v1/models/charlm/predict", headers={**origin, "Access-Control-Request-Method": "POST",
                                                               "Access-Control-Request-Headers": "x-api-key"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        denied = c.get("/v1/models", headers=origin)
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://app.example"
        bad = c.post("/v1/models/charlm/predict", json={"inputs": []}, headers={**origin, "X-API-Key": "k"})
        assert bad.status_code == 422 and "access-control-allow-origin" in bad.headers


def test_keys_only_in_the_header_on_http_metrics_and_admin():
    with TestClient(create_app(Settings(api_keys=["k"], ws_query_api_key=False, admin_keys=["adm"]))) as c:
        assert c.get("/v1/models?api_key=k").status_code == 401
        assert c.get("/metrics").status_code == 401 and c.get("/metrics", headers={"X-API-Key": "k"}).status_code == 200
        with pytest.raises(WebSocketDisconnect), c.websocket_connect("/v1/models/charlm/stream?api_key=k") as ws:
            ws.receive_json()
        assert c.post("/v1/admin/models/reload", headers={"X-API-Key": "k"}).status_code == 401
        assert c.post("/v1/admin/models/reload", headers={"X-API-Key": "adm"}).status_code == 200
    with TestClient(create_app(Settings(metrics_public=True, api_keys=["k"]))) as c:
        assert c.get("/metrics").status_code == 200
        err(c.post("/v1/admin/models/reload", headers={"X-API-Key": "k"}), 404, "not_found")     # admin off


# -- 7. readiness policy and rescans --------------------------------------------------------------
def test_one_failed_model_does_not_take_the_replica_out_of_rotation(tmp_path):
    shutil.copytree(DEFAULT_MODEL_DIR / "echo", tmp_path / "echo")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"garbage")
    with TestClient(create_app(Settings(model_dir=tmp_path, admin_keys=["a"]))) as c:
        assert c.get("/v2/health/ready").status_code == 200
        listed = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert listed["broken"]["status"] == "failed" and "truncated or corrupt" in listed["broken"]["error"]
        assert str(tmp_path) not in json.dumps(listed)
        shutil.rmtree(tmp_path / "broken")
        c.post("/v1/admin/models/reload", headers={"X-API-Key": "a"})
        assert [m["name"] for m in c.get("/v1/models").json()["models"]] == ["echo"]
    for policy, status in [("all", 503), ("echo", 200), ("echo,charlm", 503), ("any", 200)]:
        (tmp_path / "broken").mkdir(exist_ok=True)
        (tmp_path / "broken" / "model.safetensors").write_bytes(b"garbage")
        with TestClient(create_app(Settings(model_dir=tmp_path, ready_when=policy))) as c:
            assert c.get("/v2/health/ready").status_code == status, policy


# -- 8. the model-card field blamed is the one to fix ---------------------------------------------
@pytest.mark.parametrize("change, field", [
    (lambda c: c["state"][0].update(batch_axis=0), "state[0].batch_axis"),
    (lambda c: c.update(state=c["state"][:1]), "'state'"),
    (lambda c: c["state"][0].update(shape=[1, None, 7]), "state[0].shape"),
])
def test_a_card_error_names_the_field_to_fix(tmp_path, change, field):
    from service.registry import _load_onnx
    src = DEFAULT_MODEL_DIR.parent / "tests" / "golden" / "onnx_serving" / "sentiment"
    card = json.loads((src / "model-card.json").read_text())
    change(card)
    shutil.copy(src / "model.onnx", tmp_path / "model.onnx")
    (tmp_path / "model-card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=re.escape(f"field {field}" if field.startswith("'") else f"field '{field}'")):
        _load_onnx(tmp_path, tmp_path / "model-card.json", "cpu")
