"""Sessions over plain HTTP: create, feed steps, complete, inspect, export/import state, end."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from model_core.state import VERSION as STATE_VERSION
from service.api.deps import Sessions
from service.api.schemas import CompleteResponse, CompletionOptions, Sequence
from service.errors import PayloadTooLarge, error_responses
from service.request_limits import StepAt, TopK

router = APIRouter(prefix="/v1/sessions", tags=["sessions"],
                   responses=error_responses(401, 404, 503))
MAX_STATE_BYTES = 16 * 1024 * 1024
# the state routes' bodies: the engine's versioned binary state (model_core.state), never JSON
STATE_BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="the model this session runs")


class StepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"input": "hello wor", "top_k": 3}]})
    input: Sequence = Field(description="new steps: text, token ids or feature vectors")
    top_k: TopK = 5
    at: StepAt | None = None


@router.post("", status_code=201, responses=error_responses(413, 422))
async def create_session(body: CreateSession, sessions: Sessions) -> dict:
    """Start a session; its recurrent state starts at zero."""
    return (await sessions.create(body.model)).info()


@router.post("/{session_id}/step", responses=error_responses(409, 410, 413, 422, 429))
async def step(session_id: str, body: StepRequest, sessions: Sessions) -> dict:
    """Feed one or more new steps; returns one output per step, in order, and keeps the state.

    With ``at`` (the step count the client expects the session to be at) a retry is safe: an input
    already applied is answered from the record, and one that does not fit gets a 409 step_mismatch.
    """
    session, outputs = await sessions.step(session_id, body.input, body.top_k, expect_at=body.at)
    return {"session_id": session_id, "steps": session.steps, "outputs": outputs}


@router.post("/{session_id}/complete", response_model=CompleteResponse,
             responses=error_responses(409, 410, 413, 422))
async def complete(session_id: str, body: CompletionOptions, sessions: Sessions):
    """Completions from the current state, without consuming them into it."""
    s = await sessions.store.get(session_id)
    completions = await sessions.complete(session_id, body.n, body.max_length, body.temperature, body.top_k,
                                          body.greedy or body.temperature == 0, body.stop, body.seed)
    return {"model": s.model, "version": s.model_version, "prompt": "", "completions": completions}


@router.post("/{session_id}/reset", responses=error_responses(409, 410))
async def reset(session_id: str, sessions: Sessions) -> dict:
    return (await sessions.reset(session_id)).info()


@router.get("/{session_id}", responses=error_responses(410))
async def info(session_id: str, sessions: Sessions) -> dict:
    """Model, steps consumed, created and last-used times, expiry (a use: it keeps the session alive)."""
    return (await sessions.store.touch(session_id)).info()


@router.delete("/{session_id}", status_code=204, responses=error_responses(410))
async def end(session_id: str, sessions: Sessions) -> Response:
    await sessions.end(session_id)
    return Response(status_code=204)


@router.get("/{session_id}/state", response_class=Response, responses={
    200: {"content": STATE_BYTES, "headers": {"X-State-Format-Version": {
        "description": "the state format's version", "schema": {"type": "integer"}}}},
    **error_responses(410)})
async def export_state(session_id: str, sessions: Sessions) -> Response:
    """The recurrent state as versioned, checksummed bytes (see the README's state format)."""
    return Response(await sessions.export_state(session_id), media_type="application/octet-stream",
                    headers={"X-State-Format-Version": str(STATE_VERSION)})


@router.put("/{session_id}/state", responses=error_responses(409, 410, 413, 422),
            openapi_extra={"requestBody": {"required": True, "content": STATE_BYTES}})
async def import_state(session_id: str, request: Request, sessions: Sessions) -> dict:
    """Restore a state exported from this or another replica (same model)."""
    blob = await request.body()
    if len(blob) > MAX_STATE_BYTES:
        raise PayloadTooLarge(f"state of {len(blob)} bytes is over the limit of {MAX_STATE_BYTES}")
    return (await sessions.import_state(session_id, blob)).info()
