"""Server metadata (``GET /v2``, gRPC ServerMetadata): the Triton extensions this service implements.

Exactly the ones a client can rely on, in Triton's names; each is implemented for every transport.
"""
from __future__ import annotations

from service import __version__

SERVER_NAME = "rnn-serve"
EXTENSIONS = (
    "classification",            # class_count on an output
    "sequence",                  # sequence_id / sequence_start / sequence_end, integer and string ids
    "model_repository",          # repository index, load, unload
    "schedule_policy",           # priority and timeout parameters
    "model_configuration",       # GET .../config
    "binary_tensor_data",        # binary tensors in and out over HTTP
    "parameters",                # request, tensor and response parameters
    "statistics",                # GET .../stats
)


def server_metadata() -> dict:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}
