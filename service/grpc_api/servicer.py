"""The RPCs of ``inference.GRPCInferenceService``: thin translations onto the service's own objects.

Every RPC reads the same registry, session manager and stateless batchers as HTTP, and every
inference goes through ``V2Inference``, so limits, sessions and batching are shared. A
``ServiceError`` becomes the gRPC status from ``status.grpc_code`` with the error's message.
"""
from __future__ import annotations

import functools
import logging

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from google.protobuf import json_format

from service.errors import ServiceError
from service.grpc_api import codec
from service.grpc_api.status import grpc_code
from service.grpc_api.stream import stream_infer
from service.kserve import V2Error, model_metadata
from service.openinference.types import InferenceBackend

log = logging.getLogger("service.grpc")
# Triton's RPCs for features this server does not have; each answers UNIMPLEMENTED saying so.
UNSUPPORTED = {
    "SystemSharedMemoryStatus": "shared memory", "SystemSharedMemoryRegister": "shared memory",
    "SystemSharedMemoryUnregister": "shared memory", "CudaSharedMemoryStatus": "CUDA shared memory",
    "CudaSharedMemoryRegister": "CUDA shared memory", "CudaSharedMemoryUnregister": "CUDA shared memory",
    "TraceSetting": "tracing", "LogSettings": "runtime log settings",
}


def _extension(method):
    """An extension RPC answers UNIMPLEMENTED when the app gave the servicer no extensions."""
    @functools.wraps(method)
    async def wrapper(self, request, context):
        if self.extensions is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method.__name__} is not available on this server")
        return await method(self, request, context)
    return wrapper


def _errors(method):
    """ServiceError -> the mapped gRPC status; anything else -> INTERNAL, logged, the server keeps serving."""
    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            await context.abort(grpc_code(exc), exc.message)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception:
            log.exception("unhandled error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the service keeps running")
    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry, sessions, backend: InferenceBackend, extensions, server_metadata):
        """``extensions``: the transport-neutral Triton extensions (config, statistics, repository) as
        Triton-JSON dicts; ``server_metadata``: the coroutine behind ``GET /v2``, so both list the same."""
        self.registry, self.sessions, self.backend = registry, sessions, backend
        self.extensions, self.server_metadata = extensions, server_metadata

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
            self._entry(request.name, request.version)
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(await self.server_metadata(), pb.ServerMetadataResponse(),
                                     ignore_unknown_fields=True)

    @_errors
    async def ModelMetadata(self, request, context):
        meta = model_metadata(self._entry(request.name, request.version))
        return json_format.ParseDict(meta, pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    # ---- inference -----------------------------------------------------------------------------

    @_errors
    async def ModelInfer(self, request, context):
        return codec.encode_response(await self.backend.infer(codec.decode_request(request)))

    async def ModelStreamInfer(self, request_iterator, context):
        async for response in stream_infer(self.backend, request_iterator):
            yield response

    # ---- Triton's extensions -------------------------------------------------------------------

    @_extension
    @_errors
    async def ModelConfig(self, request, context):
        config = await self.extensions.model_config(request.name, request.version or None)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfigResponse().config,
                                                                   ignore_unknown_fields=True))

    @_extension
    @_errors
    async def ModelStatistics(self, request, context):
        stats = await self.extensions.statistics(request.name or None, request.version or None)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    @_extension
    @_errors
    async def RepositoryIndex(self, request, context):
        index = await self.extensions.repository_index(request.ready)
        return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse(), ignore_unknown_fields=True)

    @_extension
    @_errors
    async def RepositoryModelLoad(self, request, context):
        await self.extensions.load(request.model_name, codec.params_to_dict(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_extension
    @_errors
    async def RepositoryModelUnload(self, request, context):
        await self.extensions.unload(request.model_name, codec.params_to_dict(request.parameters))
        return pb.RepositoryModelUnloadResponse()

    def _entry(self, name: str, version: str):
        entry = self.registry.ready(name)
        if version and version != entry.version:
            raise V2Error(f"model {name!r} has version {entry.version!r}, not {version!r}", status=404)
        return entry


def _unsupported(rpc: str, feature: str):
    async def method(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc}: rnn-serve does not support {feature}")
    method.__name__ = rpc
    return method


for _rpc, _feature in UNSUPPORTED.items():
    setattr(InferenceServicer, _rpc, _unsupported(_rpc, _feature))
