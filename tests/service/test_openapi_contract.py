"""The OpenAPI document is the contract: every route declares its errors in the shape the service
really sends, the API-key scheme where a key is needed (and nowhere else), octet-stream state bodies,
and ``vocab`` with one type. Real error replies are validated against the schemas the document declares."""
from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from service.auth import ADMIN_PREFIX, OPEN_PATHS
from service.errors import is_v2
from service.main import create_app
from service.settings import Settings

KEY, ADMIN = "contract-key", "contract-admin"
LIMIT = 100_000
READINESS = {"#/components/schemas/Readiness", "#/components/schemas/ModelReadiness"}   # a body, not an error


@pytest.fixture(scope="module")
def client():
    settings = Settings(api_keys=[KEY], admin_keys=[ADMIN], max_request_bytes=LIMIT)
    with TestClient(create_app(settings), headers={"X-API-Key": KEY}) as c:
        yield c


@pytest.fixture(scope="module")
def doc(client):
    return client.get("/openapi.json").json()


def operations(doc):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def schema_of(op: dict, status: int) -> dict:
    """The JSON schema an operation declares for a status (or its ``default``)."""
    response = op["responses"].get(str(status)) or op["responses"]["default"]
    return response["content"]["application/json"]["schema"]


def validate(doc: dict, schema: dict, body) -> None:
    Draft202012Validator({"components": doc["components"], **schema}).validate(body)


def test_every_route_declares_its_errors_in_the_real_shape(doc):
    assert "HTTPValidationError" not in doc["components"]["schemas"]          # FastAPI's default 422 is gone
    seen = 0
    for path, method, op in operations(doc):
        where = f"{method.upper()} {path}"
        want = "#/components/schemas/" + ("V2ErrorResponse" if is_v2(path) else "ErrorResponse")
        errors = {s: r for s, r in op["responses"].items() if s == "default" or s[0] in "45"}
        assert "default" in errors, where                       # 500 and any status not listed: the same shape
        assert "404" in errors or "{" not in path, where        # a path naming a model or session: unknown is 404
        for status, response in errors.items():
            ref = response["content"]["application/json"]["schema"]["$ref"]
            assert ref == want or (status == "503" and ref in READINESS), (where, status, ref)
        if is_v2(path):
            assert "422" not in errors, where                                  # v2 calls a bad request 400
        elif "application/json" in op.get("requestBody", {}).get("content", {}):
            assert "422" in errors and "413" in errors, where
        seen += 1
    assert seen >= 30


def test_the_key_scheme_is_on_every_route_that_needs_a_key_and_only_there(doc):
    """The document says which operations need a key; the middleware, asked without one, agrees."""
    schemes = doc["components"]["securitySchemes"]
    assert {k: (v["type"], v["in"], v["name"]) for k, v in schemes.items()} == {
        "APIKey": ("apiKey", "header", "X-API-Key"), "AdminKey": ("apiKey", "header", "X-API-Key")}
    with TestClient(create_app(Settings(api_keys=[KEY], admin_keys=[ADMIN]))) as anonymous:
        for path, method, op in operations(doc):
            url = re.sub(r"\{[^}]+\}", "x", path)
            refused = anonymous.request(method.upper(), url).status_code == 401
            wrong_key = anonymous.request(method.upper(), url, headers={"X-API-Key": KEY if "admin" in path else ADMIN})
            if "security" not in op:
                assert path in OPEN_PATHS and not refused and "401" not in op["responses"], (method, path)
            else:
                scheme = "AdminKey" if path.startswith(ADMIN_PREFIX) else "APIKey"
                assert op["security"] == [{scheme: []}] and "401" in op["responses"], (method, path)
                assert refused and wrong_key.status_code == 401, (method, path)      # the other key won't do


def test_the_state_routes_are_octet_stream_both_ways(client, doc):
    ops = doc["paths"]["/v1/sessions/{session_id}/state"]
    assert list(ops["get"]["responses"]["200"]["content"]) == ["application/octet-stream"]
    assert list(ops["put"]["requestBody"]["content"]) == ["application/octet-stream"]
    sid = client.post("/v1/sessions", json={"model": "charlm"}).json()["session_id"]
    client.post(f"/v1/sessions/{sid}/step", json={"input": "ROMEO"})
    exported = client.get(f"/v1/sessions/{sid}/state")
    assert exported.headers["content-type"] == "application/octet-stream"
    other = client.post("/v1/sessions", json={"model": "charlm"}).json()["session_id"]
    imported = client.put(f"/v1/sessions/{other}/state", content=exported.content,
                          headers={"content-type": "application/octet-stream"})
    assert imported.status_code == 200
    assert client.get(f"/v1/sessions/{other}/state").content == exported.content


def _session(client) -> str:
    sid = client.post("/v1/sessions", json={"model": "charlm"}).json()["session_id"]
    client.post(f"/v1/sessions/{sid}/step", json={"input": "ab"})
    return sid


# (method, path template, path, request kwargs, status): the real error replies, each checked against
# the schema its route declares for that status
CASES = [
    ("get", "/v1/models/{name}", "/v1/models/nope", {}, 404),
    ("get", "/v1/models", "/v1/models", {"headers": {"X-API-Key": "wrong"}}, 401),
    ("post", "/v1/models/{name}/classify", "/v1/models/charlm/classify", {"json": {"inputs": ["abc"]}}, 422),
    ("post", "/v1/models/{name}/predict", "/v1/models/charlm/predict", {"json": {"inputs": []}}, 422),
    ("post", "/v1/models/{name}/predict", "/v1/models/charlm/predict", {"json": {"inputs": ["a" * LIMIT]}}, 413),
    ("post", "/v1/sessions", "/v1/sessions", {"json": {"model": "nope"}}, 404),
    ("post", "/v1/sessions/{session_id}/step", "/v1/sessions/nope/step", {"json": {"input": "a"}}, 404),
    ("post", "/v1/sessions/{session_id}/step", "/v1/sessions/{sid}/step", {"json": {"input": "a", "at": 7}}, 409),
    ("put", "/v1/sessions/{session_id}/state", "/v1/sessions/{sid}/state", {"content": b"not a state"}, 422),
    ("get", "/v1/sessions/{session_id}/state", "/v1/sessions/nope/state", {}, 404),
    ("post", "/v1/admin/models/reload", "/v1/admin/models/reload", {}, 401),
    ("post", "/v1/admin/models/{name}/reload", "/v1/admin/models/nope/reload", {"headers": {"X-API-Key": ADMIN}}, 404),
    ("get", "/v2", "/v2", {"headers": {"X-API-Key": ""}}, 401),
    ("get", "/v2/models/{name}", "/v2/models/nope", {}, 404),
    ("post", "/v2/models/{name}/infer", "/v2/models/charlm/infer", {"content": b"{not json"}, 400),
    ("post", "/v2/models/{name}/infer", "/v2/models/charlm/infer", {"content": b"x" * (LIMIT + 1)}, 413),
    ("post", "/v2/repository/models/{name}/load", "/v2/repository/models/nope/load", {}, 404),
    ("post", "/v2/repository/index", "/v2/repository/index", {"json": {"ready": "yes"}}, 400),
]


@pytest.mark.parametrize("method, template, path, kwargs, status", CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[4]}" for c in CASES])
def test_real_error_replies_match_the_declared_schema(client, doc, method, template, path, kwargs, status):
    if "{sid}" in path:
        path = path.format(sid=_session(client))
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    op = doc["paths"][template][method]
    assert str(status) in op["responses"], f"{method} {template} does not declare {status}"
    validate(doc, schema_of(op, status), r.json())


def test_vocab_is_a_list_of_tokens_in_every_response(client):
    for m in client.get("/v1/models").json()["models"]:
        meta = client.get(f"/v1/models/{m['name']}").json()
        vocab = meta["vocab"]
        assert vocab is None or (isinstance(vocab, list) and all(isinstance(t, str) for t in vocab)), m["name"]
        v2 = client.get(f"/v2/models/{m['name']}").json()["parameters"]
        assert json.loads(v2["vocabulary"]) == vocab if vocab else "vocabulary" not in v2
    charlm = client.get("/v1/models/charlm").json()["vocab"]
    assert all(len(t) == 1 for t in charlm) and len(charlm) == 81           # characters, still a list
