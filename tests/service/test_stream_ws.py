"""WebSocket streaming through the real app, and auth on HTTP and WebSocket."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.helpers import same

from service.main import create_app
from service.settings import Settings


def feed(ws, text, msg_id=None, top_k=3):
    ws.send_json({"type": "input", "text": text, "id": msg_id, "top_k": top_k})
    reply = ws.receive_json()
    assert reply["type"] == "output" and reply["id"] == msg_id
    return reply


def test_protocol_and_chunking_invariance(client):
    with client.websocket_connect("/v1/models/charlm/stream") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "session" and not hello["resumed"] and hello["steps"] == 0
        a = feed(ws, "hello wor", 1)
        b = feed(ws, "ld", "two")
        assert len(a["outputs"]) == 9 and b["steps"] == 11
    with client.websocket_connect("/v1/models/charlm/stream") as ws:
        ws.receive_json()
        whole = feed(ws, "hello world")
    assert same(a["outputs"] + b["outputs"], whole["outputs"])


def test_errors_keep_the_socket_open(client):
    with client.websocket_connect("/v1/models/charlm/stream") as ws:
        ws.receive_json()
        for bad, code in [("not json", "invalid_request"), ('{"type": "dance"}', "invalid_request"),
                          ('{"type": "input"}', "invalid_request"),
                          ('{"type": "input", "text": "a", "tokens": [1]}', "invalid_request"),
                          ('{"type": "input", "text": "\\u00e9", "id": 5}', "invalid_input"),
                          ('{"type": "input", "tokens": [9999]}', "invalid_input"),
                          ('{"type": "complete"}', "invalid_input")]:            # nothing fed yet
            ws.send_text(bad)
            reply = ws.receive_json()
            assert reply["type"] == "error" and reply["code"] == code and reply["message"], bad
        assert feed(ws, "ok")["steps"] == 2                                         # still serving


def test_complete_reset_close_and_resume(client):
    with client.websocket_connect("/v1/models/charlm/stream") as ws:
        sid = ws.receive_json()["session_id"]
        feed(ws, "ROMEO")
        ws.send_json({"type": "complete", "n": 2, "max_length": 8, "seed": 1, "id": "c"})
        comp = ws.receive_json()
        assert comp["type"] == "completion" and comp["id"] == "c" and len(comp["completions"]) == 2
        after = feed(ws, ":")                                                      # completion consumed nothing
        assert after["steps"] == 6
    with client.websocket_connect(f"/v1/models/charlm/stream?session_id={sid}") as ws:
        hello = ws.receive_json()
        assert hello["resumed"] and hello["session_id"] == sid and hello["steps"] == 6
        ws.send_json({"type": "reset", "id": 1})
        assert ws.receive_json() == {"type": "reset", "id": 1, "steps": 0}
        ws.send_json({"type": "close"})
        assert ws.receive_json()["type"] == "closed"
    with client.websocket_connect(f"/v1/models/charlm/stream?session_id={sid}") as ws:
        err = ws.receive_json()
        assert err["type"] == "error" and err["code"] == "session_not_found"


def test_resume_with_another_models_session_and_unknown_model(client):
    with client.websocket_connect("/v1/models/echo/stream") as ws:
        sid = ws.receive_json()["session_id"]
    with client.websocket_connect(f"/v1/models/charlm/stream?session_id={sid}") as ws:
        assert ws.receive_json()["code"] == "session_model_mismatch"
    with client.websocket_connect("/v1/models/nope/stream") as ws:
        assert ws.receive_json()["code"] == "not_found"


def test_feature_and_token_inputs(client):
    with client.websocket_connect("/v1/models/echo/stream") as ws:
        ws.receive_json()
        ws.send_json({"type": "input", "features": [[1], [0], [1], [1]]})
        assert [o["bits"] for o in ws.receive_json()["outputs"]][3] == [1]
    with client.websocket_connect("/v1/models/temporal-order/stream") as ws:
        ws.receive_json()
        ws.send_json({"type": "input", "tokens": [6, 0, 2], "top_k": 4})
        assert len(ws.receive_json()["outputs"][-1]["top_k"]) == 4


def test_api_keys_cover_http_and_websocket():
    with TestClient(create_app(Settings(api_keys=["s3cret", "other"]))) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models").json()["error"]["code"] == "unauthorized"
        assert c.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v2/health/ready").status_code == 200                       # probes stay open
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect("/v1/models/charlm/stream") as ws:
                ws.receive_json()
        with c.websocket_connect("/v1/models/charlm/stream", headers={"X-API-Key": "other"}) as ws:
            assert ws.receive_json()["type"] == "session"
        with c.websocket_connect("/v1/models/charlm/stream?api_key=s3cret") as ws:
            assert ws.receive_json()["type"] == "session"
