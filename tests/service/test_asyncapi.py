"""``/asyncapi.json`` describes the WebSocket protocol, and the server keeps to it: a session is
driven through every kind of server message (each step-output kind, the ``"state": true`` events
with and without a cell state, errors on connect and mid-stream), and each message received is
validated against the served document. The document's structure is checked too (no AsyncAPI
meta-schema is vendored: the checks below are the spec's rules that this document relies on)."""
from __future__ import annotations

import json
import re
import shutil

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError
from starlette.websockets import WebSocketDisconnect

import model_core
from model_core import ModelConfig, SequenceModel
from service.main import create_app
from service.settings import DEFAULT_MODEL_DIR, Settings

KEY = "asyncapi-key"
NAME = re.compile(r"^[A-Za-z0-9.\-_]+$")                       # AsyncAPI's rule for component keys


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for name in ("charlm", "echo", "temporal-order"):
        shutil.copytree(DEFAULT_MODEL_DIR / name, root / name)
    gru = ModelConfig(cell="gru", task="seq2seq", input_size=2, hidden_size=3, output_size=2, output="regression")
    model_core.save(SequenceModel(gru, seed=0), root / "regression" / "model.safetensors")    # values; c is null
    with TestClient(create_app(Settings(model_dir=root, api_keys=[KEY])), headers={"X-API-Key": KEY}) as c:
        yield c


@pytest.fixture(scope="module")
def doc(client):
    return client.get("/asyncapi.json").json()


def resolve(doc: dict, ref: str):
    node = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def refs(node):
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for v in node.values():
            yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def messages_of(doc: dict, action: str) -> list[dict]:
    """The payload schemas of what the server sends (``send`` and replies) or receives."""
    out = []
    for op in doc["operations"].values():
        if op["action"] == action:
            out += op["messages"]
        if action == "send" and "reply" in op:
            out += op["reply"]["messages"]
    payloads = {resolve(doc, resolve(doc, m["$ref"])["$ref"])["payload"]["$ref"] for m in out}
    return [{"$ref": p} for p in sorted(payloads)]


def validator(doc: dict, action: str) -> Draft7Validator:
    return Draft7Validator({"components": doc["components"], "oneOf": messages_of(doc, action)})


def test_the_document_is_well_formed_asyncapi_3(doc):
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] and doc["info"]["version"]
    for ref in refs(doc):                                           # every reference resolves, locally
        assert ref.startswith("#/"), ref
        resolve(doc, ref)
    for section in ("messages", "schemas", "securitySchemes"):
        assert all(NAME.match(k) for k in doc["components"][section]), section
    for name, channel in doc["channels"].items():
        assert channel["address"].startswith("/") and NAME.match(name)
        params = set(re.findall(r"{(\w+)}", channel["address"]))
        assert params == set(channel.get("parameters", {})), name
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel = op["channel"]["$ref"]
        for m in op["messages"] + op.get("reply", {}).get("messages", []):
            assert m["$ref"].startswith(channel + "/messages/"), (name, m)         # the channel's own messages
        for s in op.get("security", []):
            scheme = resolve(doc, s["$ref"])
            assert scheme["type"] == "httpApiKey" and scheme["in"] in ("header", "query")
    for name, message in doc["components"]["messages"].items():
        assert message["name"] == name and "$ref" in message["payload"]
    for name, schema in doc["components"]["schemas"].items():
        Draft7Validator.check_schema(schema)                       # AsyncAPI's default schema format
        assert "$defs" not in schema and "discriminator" not in schema, name   # nothing draft 7 does not read
    sent = {resolve(doc, r["$ref"])["title"] for r in messages_of(doc, "send")}
    received = {resolve(doc, r["$ref"])["title"] for r in messages_of(doc, "receive")}
    assert sent == {"SessionEvent", "OutputEvent", "CompletionEvent", "ResetEvent", "ClosedEvent", "ErrorEvent"}
    assert received == {"InputMessage", "CompleteMessage", "ResetMessage", "CloseMessage"}


class Recorder:
    """A socket whose every message, both ways, is kept for validation."""

    def __init__(self, ws, sent: list, received: list):
        self.ws, self.sent, self.received = ws, sent, received

    def recv(self) -> dict:
        text = self.ws.receive_text()
        msg = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in {text[:200]}"))
        self.received.append(msg)
        return msg

    def send(self, msg: dict, valid: bool = True) -> dict:
        if valid:
            self.sent.append(msg)
        self.ws.send_text(json.dumps(msg))
        return self.recv()


def drive(client, sent: list, received: list) -> None:
    """Every kind of server message, from a real session of each kind of model."""
    with client.websocket_connect("/v1/models/charlm/stream") as raw:
        ws = Recorder(raw, sent, received)
        assert ws.recv()["type"] == "session"
        assert "state" not in ws.send({"type": "input", "text": "ROMEO", "top_k": 3, "id": 1})
        with_state = ws.send({"type": "input", "text": ":", "state": True, "id": "s"})
        assert len(with_state["state"]["h"]) == 256 and len(with_state["state"]["c"]) == 256
        assert ws.send({"type": "input", "tokens": [5], "at": 99})["code"] == "step_mismatch"
        assert ws.send({"type": "complete", "n": 2, "max_length": 6, "seed": 1, "stop": ["\n"], "id": 2})["completions"]
        assert ws.send({"type": "reset", "id": 3}) == {"type": "reset", "id": 3, "steps": 0}
        raw.send_text("not json")
        raw.send_bytes(b"\x00binary")
        raw.send_text(json.dumps({"type": "dance"}))
        raw.send_text(json.dumps({"type": "input", "text": "\u00e9", "id": 4}))
        assert [ws.recv()["code"] for _ in range(4)] == ["invalid_request"] * 3 + ["invalid_input"]
        assert ws.send({"type": "input", "text": "x", "state": True})["steps"] == 1       # still serving
        assert ws.send({"type": "close", "id": None}) == {"type": "closed", "id": None}
    for model, message in [("echo", {"type": "input", "features": [[1], [0], [1]], "state": True}),
                           ("temporal-order", {"type": "input", "text": "BaXbY", "top_k": 2}),
                           ("regression", {"type": "input", "features": [[0.5, -1.0]], "state": True})]:
        with client.websocket_connect(f"/v1/models/{model}/stream") as raw:
            ws = Recorder(raw, sent, received)
            ws.recv()
            ws.send(message)
    with client.websocket_connect("/v1/models/charlm/stream?session_id=no-such-session") as raw:
        Recorder(raw, sent, received).recv()                     # an error event, then the server closes
        with pytest.raises(WebSocketDisconnect):
            raw.receive_text()


def test_every_message_the_server_sends_matches_the_document(client, doc):
    sent, received = [], []
    drive(client, sent, received)
    server, clients = validator(doc, "send"), validator(doc, "receive")
    for msg in received:
        server.validate(msg)
    for msg in sent:
        clients.validate(msg)
    kinds = {m["type"] for m in received}
    assert kinds == {"session", "output", "completion", "reset", "closed", "error"}
    steps = [step for m in received if m["type"] == "output" for step in m["outputs"]]
    assert {next(iter(s)) for s in steps} == {"top_k", "probabilities", "values"}      # every step-output kind
    states = [m["state"] for m in received if "state" in m]
    assert any(s["c"] is None for s in states) and any(s["c"] is not None for s in states)
    assert received[-1]["code"] == "session_not_found"


def test_the_schemas_are_strict_enough_to_catch_a_changed_message(doc):
    server, clients = validator(doc, "send"), validator(doc, "receive")
    good = {"type": "output", "id": None, "steps": 1, "outputs": [{"top_k": [{"label": "a", "index": 0,
                                                                             "probability": 0.5}]}]}
    server.validate(good)
    for bad in [{**good, "extra": 1}, {**good, "steps": "1"}, {**good, "type": "outputs"},
                {**good, "outputs": [{"top_k": [{"label": "a", "index": 0}]}]},
                {"type": "error", "id": None, "code": "x"}, {"type": "reset", "id": None, "steps": 3}]:
        with pytest.raises(ValidationError):
            server.validate(bad)
    clients.validate({"type": "input", "text": "a"})
    for bad in [{"type": "input", "text": "a", "top_k": 0}, {"type": "jump"}, {"type": "reset", "extra": 1}]:
        with pytest.raises(ValidationError):
            clients.validate(bad)


def test_the_document_needs_the_key_like_openapi(client):
    assert client.get("/asyncapi.json", headers={"X-API-Key": "wrong"}).status_code == 401
