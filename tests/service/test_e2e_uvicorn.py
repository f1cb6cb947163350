"""Hundreds of concurrent WebSocket sessions against a real uvicorn: each equals its solo run."""
from __future__ import annotations

import asyncio

import httpx
import numpy as np

from tests.helpers import same, type_text


def test_hundreds_of_concurrent_sessions(live_server):
    rng = np.random.default_rng(1)
    letters = list("etaoinshrdlu ,.\n")
    texts = ["".join(rng.choice(letters, size=int(rng.integers(8, 40)))) for _ in range(200)]
    url = f"ws://{live_server}"

    async def main():
        return await asyncio.gather(*(type_text(url, t, chunk=int(1 + i % 5)) for i, t in enumerate(texts)))

    streamed = asyncio.run(main())
    solo = httpx.post(f"http://{live_server}/v1/models/charlm/predict", json={"inputs": texts[:50], "top_k": 2},
                      timeout=60).json()["outputs"]
    for got, ref in zip(streamed, solo):
        assert same(got, ref)
    for text, got in zip(texts[50:], streamed[50:]):                                # the rest one by one
        ref = httpx.post(f"http://{live_server}/v1/models/charlm/predict", json={"inputs": [text], "top_k": 2},
                         timeout=30).json()["outputs"][0]
        assert same(got, ref)
