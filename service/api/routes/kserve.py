"""KServe v2 inference and model metadata, with Triton's sequence extension (see ``service.kserve``)."""
from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import Registry, Sessions
from service.errors import ServiceError
from service.kserve import V2Error, build_outputs, model_metadata, parse_inputs, sequence_params
from service.sessions.store import SessionNotFound

router = APIRouter(prefix="/v2/models", tags=["kserve-v2"])


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    parameters: dict | None = None
    inputs: list[dict] = Field(min_length=1)
    outputs: list[dict] | None = None


def _v2(exc: ServiceError) -> V2Error:
    return exc if isinstance(exc, V2Error) else V2Error(exc.message, status=exc.status)


@router.get("/{name}")
@router.get("/{name}/versions/{version}")
async def metadata(name: str, registry: Registry, version: str | None = None) -> dict:
    """Tensor names, datatypes and shapes, as the protocol specifies."""
    try:
        entry = registry.ready(name)
    except ServiceError as exc:
        raise _v2(exc) from None
    if version not in (None, entry.version):
        raise V2Error(f"model {name!r} has version {entry.version!r}, not {version!r}", status=404)
    return model_metadata(entry)


@router.post("/{name}/infer")
@router.post("/{name}/versions/{version}/infer")
async def infer(name: str, body: InferRequest, registry: Registry, sessions: Sessions, request: Request,
                version: str | None = None):
    try:
        return await _infer(name, body, registry, sessions, request.app.state.stateless, version)
    except ServiceError as exc:
        raise _v2(exc) from None


async def _infer(name, body, registry, sessions, stateless, version):
    entry = registry.ready(name)
    if version not in (None, entry.version):
        raise V2Error(f"model {name!r} has version {entry.version!r}, not {version!r}", status=404)
    c = entry.config
    seqs, lengths = parse_inputs(c, body.inputs)
    seq_id, start, end = sequence_params(body.parameters)
    out = {"model_name": name, "model_version": entry.version, "outputs": None}
    if body.id is not None:
        out["id"] = body.id
    if seq_id is None:
        logits = await _stateless(stateless, entry, seqs, lengths)
    else:
        if len(seqs) != 1:
            raise V2Error("a sequence request must have batch size 1")
        logits = await _sequence_step(sessions, name, seq_id, start, end, seqs[0])
        out["parameters"] = {"sequence_id": body.parameters["sequence_id"]}
    out["outputs"] = build_outputs(c, logits, body.outputs)
    return out


async def _stateless(stateless, entry, seqs, lengths) -> np.ndarray:
    """Through the same batcher as v1: (B, C) for classifiers, (B, T, C) zero-padded otherwise."""
    if entry.config.task == "classify":
        return await stateless.run(entry, "classify", seqs)
    per_seq = await stateless.run(entry, "predict", seqs)
    out = np.zeros((len(seqs), int(lengths.max()), entry.config.output_size), dtype=np.float32)
    for b, lg in enumerate(per_seq):
        out[b, : len(lg)] = lg
    return out


async def _sequence_step(sessions, name, seq_id, start, end, inputs) -> np.ndarray:
    sid = f"v2:{name}:{seq_id}"
    if start:
        try:
            await sessions.end(sid)                       # a new start resets a sequence still held
        except ServiceError:
            pass
        await sessions.create(name, session_id=sid)
    try:
        session = await sessions.store.get(sid)
    except SessionNotFound:
        raise V2Error(f"sequence {seq_id!r} is not active on model {name!r}: its first request needs "
                      "parameters.sequence_start=true") from None
    if session.model != name:
        raise V2Error(f"sequence {seq_id!r} belongs to model {session.model!r}")
    _, logits = await sessions.step_logits(sid, inputs)
    if end:
        await sessions.store.delete(sid)
    model = sessions.registry.version(name, session.model_version).model
    return logits[-1:] if model.config.task == "classify" else logits[None]              # (1, C) or (1, T, C)
