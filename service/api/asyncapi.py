"""The WebSocket protocol as an AsyncAPI 3.0 document, generated from the message types.

One channel, ``/v1/models/{name}/stream``. Operations are the server's view (AsyncAPI's rule):
it *sends* the session event on connect and *receives* each client message, answering each with
exactly one reply (its own event, or an error). Schemas come from ``service.api.stream_protocol``
through pydantic; they are JSON Schema draft 7 compatible, AsyncAPI's default schema format.
"""
from __future__ import annotations

from functools import cache

from pydantic import TypeAdapter

from service.api.stream_protocol import (
    ClosedEvent,
    CloseMessage,
    CompleteMessage,
    CompletionEvent,
    ErrorEvent,
    InputMessage,
    OutputEvent,
    ResetEvent,
    ResetMessage,
    SessionEvent,
)

CHANNEL = "stream"
# each client message by its type, with its reply (any of them may instead be answered by an ErrorEvent)
OPERATIONS = {"input": (InputMessage, OutputEvent), "complete": (CompleteMessage, CompletionEvent),
              "reset": (ResetMessage, ResetEvent), "close": (CloseMessage, ClosedEvent)}
CLIENT = tuple(client for client, _ in OPERATIONS.values())
SERVER = (SessionEvent, OutputEvent, CompletionEvent, ResetEvent, ClosedEvent, ErrorEvent)
REF = "#/components/schemas/{model}"


def _schemas() -> dict:
    """Every message type and the types inside them, one component each (one tuple of them all:
    pydantic emits each class once, as a definition)."""
    schema = TypeAdapter(tuple[(*CLIENT, *SERVER)]).json_schema(ref_template=REF)
    return dict(sorted(schema["$defs"].items()))


def _message(cls, summary: str) -> dict:
    name = cls.__name__
    return {"name": name, "title": name, "summary": summary, "payload": {"$ref": REF.format(model=name)}}


def _summary(cls) -> str:
    return (cls.__doc__ or cls.__name__).strip().split("\n")[0]


def _ref(*names: str) -> list[dict]:
    return [{"$ref": f"#/channels/{CHANNEL}/messages/{n}"} for n in names]


@cache
def asyncapi_document(version: str) -> dict:
    messages = {cls.__name__: _message(cls, _summary(cls)) for cls in (*CLIENT, *SERVER)}
    security = [{"$ref": "#/components/securitySchemes/apiKeyHeader"},
                {"$ref": "#/components/securitySchemes/apiKeyQuery"}]
    channel_ref = {"$ref": f"#/channels/{CHANNEL}"}
    operations = {"connect": {
        "action": "send", "channel": channel_ref, "messages": _ref("SessionEvent", "ErrorEvent"), "security": security,
        "summary": "On connect: the session event, or an error event and a close (unknown or foreign session, "
                   "overload)."}}
    for kind, (client, reply) in OPERATIONS.items():
        operations[kind] = {
            "action": "receive", "channel": channel_ref, "messages": _ref(client.__name__), "security": security,
            "summary": _summary(client),
            "reply": {"channel": channel_ref, "messages": _ref(reply.__name__, "ErrorEvent")}}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "rnn-serve streaming", "version": version,
                 "description": "Streaming over a WebSocket: one connection is one session of a model's recurrent "
                                "state. Every client message gets exactly one reply. JSON text frames only; a "
                                "bad message gets an error event and the socket stays open. docs/service.md "
                                "has the protocol step by step."},
        "defaultContentType": "application/json",
        "channels": {CHANNEL: {
            "address": "/v1/models/{name}/stream",
            "title": "A model's stream",
            "parameters": {"name": {"description": "the model (GET /v1/models lists them)"}},
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
            "bindings": {"ws": {"bindingVersion": "0.1.0", "query": {"type": "object", "properties": {
                "session_id": {"type": "string", "description": "resume this session (it must not have expired)"},
                "api_key": {"type": "string", "description": "the API key, for browsers (unless "
                                                             "RNN_SERVE_WS_QUERY_API_KEY is off)"}}}}},
        }},
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": _schemas(),
            "securitySchemes": {
                "apiKeyHeader": {"type": "httpApiKey", "name": "X-API-Key", "in": "header",
                                 "description": "one of RNN_SERVE_API_KEYS, when set"},
                "apiKeyQuery": {"type": "httpApiKey", "name": "api_key", "in": "query",
                                "description": "the same key as a query parameter, for browsers"}},
        },
    }
