"""ModelStreamInfer: the bidirectional stream, as Triton runs it for sequence models.

1. The client opens one stream and sends ``ModelInferRequest`` messages; a sequence's requests
   carry the ``sequence_id`` parameter, its first ``sequence_start=true``, its last ``sequence_end=true``
   (``tritonclient``'s ``async_stream_infer(..., sequence_id=, sequence_start=, sequence_end=)``).
2. Each request gets exactly one ``ModelStreamInferResponse`` with its ``infer_response``, in the order
   sent. A sequence is a session (the same one ``ModelInfer`` and ``/v2`` HTTP use), so the outputs of
   a text fed in chunks equal the whole text's and the WebSocket stream's.
3. A bad request gets a response with ``error_message`` (and its ``id``) and the stream stays open,
   as Triton does; the gRPC status of the stream stays OK.
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from tritonclient.grpc import service_pb2 as pb

from service.errors import ServiceError
from service.grpc_api import codec
from service.openinference.infer import v2_error
from service.openinference.types import InferenceBackend

log = logging.getLogger("service.grpc")


async def stream_infer(backend: InferenceBackend, requests: AsyncIterator[pb.ModelInferRequest],
                       max_request_bytes: int) -> AsyncIterator[pb.ModelStreamInferResponse]:
    async for request in requests:
        try:
            decoded = codec.decode_request(request, max_request_bytes, time.perf_counter_ns())
            response = codec.encode_response(await backend.infer(decoded))
            yield pb.ModelStreamInferResponse(infer_response=response)
        except ServiceError as exc:
            yield _error(request, v2_error(exc).message)
        except Exception:
            log.exception("unhandled error in ModelStreamInfer")
            yield _error(request, "internal error; the stream and the service keep running")


def _error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                             id=request.id))
