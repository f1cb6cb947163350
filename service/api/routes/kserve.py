"""KServe v2 inference and model metadata, with Triton's sequence extension (see ``service.openinference``)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import Registry
from service.errors import ServiceError
from service.openinference.datatypes import from_json
from service.openinference.infer import v2_error
from service.openinference.tensors import model_metadata
from service.openinference.types import InferInput, InferRequest, RequestedOutput

router = APIRouter(prefix="/v2/models", tags=["kserve-v2"])
MAX_ELEMENTS = 4_000_000


class InferRequestBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    parameters: dict | None = None
    inputs: list[dict] = Field(min_length=1)
    outputs: list[dict] | None = None


@router.get("/{name}")
@router.get("/{name}/versions/{version}")
async def metadata(name: str, registry: Registry, version: str | None = None) -> dict:
    """Tensor names, datatypes and shapes, as the protocol specifies."""
    try:
        entry = registry.ready(name, version)
    except ServiceError as exc:
        raise v2_error(exc) from None
    return model_metadata(entry, [str(e.number) for e in registry.served(name) if e.status == "ready"])


@router.post("/{name}/infer")
@router.post("/{name}/versions/{version}/infer")
async def infer(name: str, body: InferRequestBody, request: Request, version: str | None = None):
    state = request.app.state
    try:
        state.registry.ready(name, version)            # an unknown model is a 404 before its tensors are read
    except ServiceError as exc:
        raise v2_error(exc) from None
    req = InferRequest(name, version, [_decode(t) for t in body.inputs],
                       [RequestedOutput(o.get("name"), o.get("parameters") or {}) for o in body.outputs]
                       if body.outputs else None, id=body.id, parameters=body.parameters or {})
    resp = await state.v2.infer(req)
    out = {"model_name": resp.model_name, "model_version": resp.model_version,
           "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape),
                        "data": o.data.reshape(-1).tolist()} for o in resp.outputs]}
    if resp.id is not None:
        out["id"] = resp.id
    if resp.parameters:
        out["parameters"] = resp.parameters
    return out


def _decode(t: dict) -> InferInput:
    name = str(t.get("name"))
    arr = from_json(name, t.get("datatype"), t.get("shape"), t.get("data"), MAX_ELEMENTS)
    return InferInput(name, str(t.get("datatype")), arr.shape, arr, t.get("parameters") or {})
