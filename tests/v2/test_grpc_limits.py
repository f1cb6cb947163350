"""The HTTP limits hold over gRPC (one app, in-process): sizes, batch and sequence caps, load shedding."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi.testclient import TestClient

import tritonclient.grpc as tritonclient_grpc
import tritonclient.grpc.aio as grpc_aio
from tritonclient.utils import InferenceServerException

from tests.helpers import free_port
from service.main import create_app
from service.settings import Settings


def ids(shape) -> tritonclient_grpc.InferInput:
    x = tritonclient_grpc.InferInput("INPUT_IDS", list(shape), "INT64")
    x.set_data_from_numpy(np.ones(shape, dtype=np.int64))
    return x


def test_v1_limits_apply_to_grpc_and_the_server_keeps_serving():
    port = free_port()
    settings = Settings(grpc_port=port, max_sequence_length=64, max_batch_sequences=4, max_steps_per_message=32)
    with TestClient(create_app(settings)):
        c = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        for shape, words in [((1, 65), "64"), ((5, 3), "4"), ((2, 100_000), "")]:
            with pytest.raises(InferenceServerException) as err:
                c.infer("charlm", [ids(shape)])
            assert err.value.status() in ("StatusCode.RESOURCE_EXHAUSTED", "StatusCode.INVALID_ARGUMENT"), shape
            assert words in err.value.message()
        with pytest.raises(InferenceServerException) as err:             # a sequence step: max_steps_per_message
            c.infer("charlm", [ids((1, 40))], sequence_id="long", sequence_start=True)
        assert "32" in err.value.message()
        assert c.infer("charlm", [ids((4, 64))]).as_numpy("PROBABILITIES").shape == (4, 64, 81)
        c.close()


def test_overload_is_resource_exhausted_not_a_queue_without_end():
    port = free_port()
    settings = Settings(grpc_port=port, max_pending_requests=1, max_queue_delay_ms=200, max_batch_size=64)
    with TestClient(create_app(settings)):
        async def burst():
            async with grpc_aio.InferenceServerClient(f"127.0.0.1:{port}") as c:
                return await asyncio.gather(*(c.infer("temporal-order", [ids((1, 8))]) for _ in range(12)),
                                            return_exceptions=True)
        results = asyncio.run(burst())
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    assert refused and all(r.status() == "StatusCode.RESOURCE_EXHAUSTED" for r in refused)
    assert len(refused) < len(results)                                 # the first ones were served
