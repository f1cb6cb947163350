"""Prometheus metrics: requests, latency, batches, sessions, steps, model load status."""
from __future__ import annotations

from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings


def value(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix) and not line.startswith("#"))


def test_metrics_cover_requests_sessions_batches_and_models():
    with TestClient(create_app(Settings(api_keys=["k"]))) as c:
        h = {"X-API-Key": "k"}
        c.post("/v1/models/temporal-order/classify", json={"inputs": ["BXYE"]}, headers=h)
        c.post("/v1/models/nope/classify", json={"inputs": ["x"]}, headers=h)
        sid = c.post("/v1/sessions", json={"model": "charlm"}, headers=h).json()["session_id"]
        c.post(f"/v1/sessions/{sid}/step", json={"input": "hello"}, headers=h)
        with c.websocket_connect("/v1/models/charlm/stream", headers=h) as ws:
            ws.receive_json()
            ws.send_json({"type": "input", "text": "abc"})
            ws.receive_json()
            ws.send_text("junk")
            ws.receive_json()
        assert c.get("/metrics").status_code == 401                      # behind the key (unless metrics_public)
        text = c.get("/metrics", headers=h).text
    cls = 'endpoint="/v1/models/{name}/classify",method="POST"'
    assert f'rnn_requests_total{{code="200",{cls},model="temporal-order"}} 1.0' in text
    assert f'rnn_requests_total{{code="404",{cls},model=""}} 1.0' in text           # unknown: never the client's name
    assert value(text, 'rnn_request_seconds_count{endpoint="/v1/models/{name}/classify"') == 2
    assert value(text, f'rnn_request_seconds_count{{{cls},model="temporal-order"}}') == 1
    assert value(text, "rnn_steps_total") == 8 and value(text, 'rnn_steps_total{model="charlm"}') == 8
    # 2 session steps + 1 classify
    assert value(text, "rnn_batch_size_count") == 3 and value(text, "rnn_batch_queue_delay_seconds_count") == 3
    assert value(text, 'rnn_sessions_events_total{event="created"}') == 2
    assert value(text, "rnn_sessions_active") == 2
    assert 'rnn_ws_messages_total{model="charlm",outcome="ok",type="input"} 1.0' in text
    assert 'rnn_ws_messages_total{model="charlm",outcome="error",type="invalid"} 1.0' in text
    assert value(text, 'rnn_ws_message_seconds_count{model="charlm",type="input"}') == 1
    assert value(text, 'rnn_model_loaded{model="charlm"') == 1
    # prometheus-client's standard collectors, as on its default registry
    assert value(text, "process_resident_memory_bytes") > 0 and value(text, "process_cpu_seconds_total") > 0
    assert "python_gc_collections_total{generation=" in text and "python_info{" in text
