"""One table from the service's HTTP statuses to gRPC status codes.

Where Triton's own gRPC endpoint answers differently from a naive HTTP mapping, Triton wins:
a message over the size limit is RESOURCE_EXHAUSTED (what grpcio itself answers at the transport),
a conflict (409: a busy session, a retired model version, unloading a model with live sessions) is
FAILED_PRECONDITION, and an expired or evicted session (410) is NOT_FOUND, as for an unknown sequence.
"""
from __future__ import annotations

import grpc

from service.errors import ServiceError

BY_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    410: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(exc: ServiceError) -> grpc.StatusCode:
    if exc.status in BY_STATUS:
        return BY_STATUS[exc.status]
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= exc.status < 500 else grpc.StatusCode.INTERNAL
