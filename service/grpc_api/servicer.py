"""The RPCs of ``inference.GRPCInferenceService``: thin translations onto the service's own objects.

Every RPC reads the same registry, session manager, batchers and statistics as HTTP: inference goes
through the app's one ``V2Inference``, Triton's extensions through ``service.openinference``'s
transport-neutral functions, whose Triton-JSON answers become protobuf with ``json_format``. A
``ServiceError`` becomes the gRPC status from ``status.grpc_code``, with the error's message.
"""
from __future__ import annotations

import functools
import logging
import time

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.errors import ServiceError
from service.grpc_api import codec
from service.grpc_api.status import grpc_code
from service.grpc_api.stream import stream_infer
from service.openinference import repository
from service.openinference.infer import V2Inference, v2_error
from service.openinference.model_config import for_protobuf, model_config
from service.openinference.server import server_metadata
from service.openinference.tensors import model_metadata
from service.settings import Settings

log = logging.getLogger("service.grpc")
# Triton's RPCs for features this server does not have; each answers UNIMPLEMENTED saying so.
UNSUPPORTED = {
    "SystemSharedMemoryStatus": "shared memory", "SystemSharedMemoryRegister": "shared memory",
    "SystemSharedMemoryUnregister": "shared memory", "CudaSharedMemoryStatus": "CUDA shared memory",
    "CudaSharedMemoryRegister": "CUDA shared memory", "CudaSharedMemoryUnregister": "CUDA shared memory",
    "TraceSetting": "tracing", "LogSettings": "runtime log settings",
}


def _errors(method):
    """ServiceError -> the mapped gRPC status; anything else -> INTERNAL, logged, the server keeps serving."""
    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            exc = v2_error(exc)
            await context.abort(grpc_code(exc), exc.message)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception:
            log.exception("unhandled error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the service keeps running")
    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, settings: Settings, registry, sessions, v2: V2Inference):
        self.settings, self.registry, self.sessions, self.v2 = settings, registry, sessions, v2

    # ---- health and metadata -------------------------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        if not self.registry.all_ready:
            return pb.ServerReadyResponse(ready=False)
        try:
            await self.sessions.store.ping()
        except ServiceError:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        try:
            self.registry.ready(request.name, request.version or None)
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(server_metadata(), pb.ServerMetadataResponse())     # the same as GET /v2

    @_errors
    async def ModelMetadata(self, request, context):
        entry = self.registry.ready(request.name, request.version or None)
        versions = [str(e.number) for e in self.registry.served(request.name) if e.status == "ready"]
        meta = model_metadata(entry, versions)
        meta.pop("parameters", None)                      # ModelMetadataResponse has no parameters field
        return json_format.ParseDict(meta, pb.ModelMetadataResponse())

    # ---- inference -----------------------------------------------------------------------------

    @_errors
    async def ModelInfer(self, request, context):
        arrival = time.perf_counter_ns()
        req = codec.decode_request(request, self.settings.max_request_bytes, arrival)
        return codec.encode_response(await self.v2.infer(req))

    async def ModelStreamInfer(self, request_iterator, context):
        async for response in stream_infer(self.v2, request_iterator, self.settings.max_request_bytes):
            yield response

    # ---- Triton's extensions -------------------------------------------------------------------

    @_errors
    async def ModelConfig(self, request, context):
        entry = self.registry.ready(request.name, request.version or None)
        cfg = for_protobuf(model_config(entry, self.registry.policy(request.name).as_triton(), self.settings))
        return pb.ModelConfigResponse(config=json_format.ParseDict(cfg, pb.ModelConfigResponse().config))

    @_errors
    async def ModelStatistics(self, request, context):
        stats = self.v2.stats.report(self.registry, request.name or None, request.version or None)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    @_errors
    async def RepositoryIndex(self, request, context):
        rows = repository.index(self.registry, request.ready)
        return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse())

    @_errors
    async def RepositoryModelLoad(self, request, context):
        if unknown := sorted(set(request.parameters)):        # Triton's config/file overrides
            raise ServiceError(f"load parameters {unknown} are not supported: models load from the repository "
                               "folder as they are")
        await repository.load(self.registry, request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_errors
    async def RepositoryModelUnload(self, request, context):
        params = codec.params_to_dict(request.parameters)
        force = params.pop("force", False)
        params.pop("unload_dependents", None)                 # tritonclient always sends it; we have no ensembles
        if params or not isinstance(force, bool):
            raise ServiceError(f"unload takes only the boolean parameters 'force' and 'unload_dependents'; got "
                               f"{sorted(request.parameters)}")
        await repository.unload(self.registry, self.sessions.store, request.model_name, force=force)
        return pb.RepositoryModelUnloadResponse()


def _unsupported(rpc: str, feature: str):
    async def method(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc}: rnn-serve does not support {feature}")
    method.__name__ = rpc
    return method


for _rpc, _feature in UNSUPPORTED.items():
    setattr(InferenceServicer, _rpc, _unsupported(_rpc, _feature))
