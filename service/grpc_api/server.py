"""The gRPC server's lifecycle: built and started in the app's lifespan, drained when it ends.

It runs on grpcio's asyncio server in the same event loop as uvicorn, so both transports share
one registry, one session manager and one set of batchers. Messages over ``max_request_bytes``
are refused by grpcio itself (RESOURCE_EXHAUSTED) before any of our code reads them.
"""
from __future__ import annotations

import logging

import grpc
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.auth import _key_ok
from service.grpc_api.servicer import InferenceServicer
from service.openinference.infer import V2Inference
from service.settings import Settings

log = logging.getLogger("service.grpc")
SERVICE = "/inference.GRPCInferenceService/"
OPEN_METHODS = (SERVICE + "ServerLive", SERVICE + "ServerReady")     # like /v2/health/live and /ready on HTTP


class APIKeyInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC but the health probes needs an ``x-api-key`` metadata entry that matches a key."""

    def __init__(self, keys: list[str]):
        self.keys = keys

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method in OPEN_METHODS:
            return handler
        presented = next((v for k, v in details.invocation_metadata or () if k == "x-api-key"), None)
        if _key_ok(presented if isinstance(presented, str) else None, self.keys):
            return handler
        return _denied(handler)


def _denied(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    message = "missing or invalid API key: send it in the x-api-key metadata"

    async def deny(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


async def start(settings: Settings, registry, sessions, v2: V2Inference) -> grpc.aio.Server | None:
    """Bind and start the server; None when ``grpc_port`` is 0. A port in use fails startup loudly."""
    if settings.grpc_port == 0:
        return None
    options = [("grpc.max_receive_message_length", settings.max_request_bytes),
               ("grpc.so_reuseport", 0)]       # grpcio's default would let a second server share the port
    server = grpc.aio.server(options=options,
                             interceptors=[APIKeyInterceptor(settings.api_keys)] if settings.api_keys else None)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(settings, registry, sessions, v2), server)
    address = f"{settings.grpc_host or settings.host}:{settings.grpc_port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC server cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise RuntimeError(f"gRPC server cannot listen on {address}")
    await server.start()
    log.info("grpc listening", extra={"address": address})
    return server


async def stop(server: grpc.aio.Server | None, grace_seconds: float) -> None:
    """Refuse new RPCs, let those in flight finish for up to ``grace_seconds``, then cancel the rest."""
    if server is not None:
        await server.stop(grace_seconds)
        log.info("grpc stopped")
