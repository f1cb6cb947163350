"""KServe v2 inference and model metadata, with Triton's sequence extension (see ``service.kserve``)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import Registry
from service.errors import ServiceError
from service.kserve import V2Error, decode_tensor, model_metadata
from service.openinference.infer import V2Inference
from service.openinference.types import InferInput, InferRequest, RequestedOutput

router = APIRouter(prefix="/v2/models", tags=["kserve-v2"])


class InferRequestBody(BaseModel):
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
async def infer(name: str, body: InferRequestBody, request: Request, version: str | None = None):
    state = request.app.state
    try:
        state.registry.ready(name)                     # an unknown model is a 404 before its tensors are read
    except ServiceError as exc:
        raise _v2(exc) from None
    req = InferRequest(name, version, [_decode(t) for t in body.inputs],
                       [RequestedOutput(o.get("name"), o.get("parameters") or {}) for o in body.outputs]
                       if body.outputs else None, id=body.id, parameters=body.parameters or {})
    resp = await V2Inference(state.registry, state.sessions, state.stateless).infer(req)
    out = {"model_name": resp.model_name, "model_version": resp.model_version,
           "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape),
                        "data": o.data.reshape(-1).tolist()} for o in resp.outputs]}
    if resp.id is not None:
        out["id"] = resp.id
    if resp.parameters:
        out["parameters"] = resp.parameters
    return out


def _decode(t: dict) -> InferInput:
    arr = decode_tensor(t)
    return InferInput(str(t.get("name")), str(t.get("datatype")), arr.shape, arr, t.get("parameters") or {})
