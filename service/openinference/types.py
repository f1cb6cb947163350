"""Transport-neutral v2 requests and responses: HTTP/JSON, HTTP binary and gRPC all decode to these.

Tensors are NumPy arrays already in the datatype the wire named (``BYTES`` as an object array of
``bytes``); checking them against a model happens in one place, ``service.openinference.infer``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class InferInput:
    name: str
    datatype: str                       # a v2 datatype name: "INT64", "FP32", "BYTES", ...
    shape: tuple[int, ...]
    data: np.ndarray                    # already reshaped to ``shape``
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)     # e.g. class_count, binary_data


@dataclass(frozen=True)
class InferRequest:
    model_name: str
    model_version: str | None
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None = None                  # None: the model's default outputs
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)      # sequence_id, priority, timeout, ...
    arrival_ns: int | None = None       # time.perf_counter_ns() when the transport began reading it (statistics,
                                        # and where ``timeout`` counts from); None: when ``infer`` is called


@dataclass(frozen=True)
class InferOutput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[InferOutput]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


class InferenceBackend(Protocol):
    """What a transport (the HTTP routes, the gRPC servicer) needs from the service."""

    async def infer(self, request: InferRequest) -> InferResponse: ...
