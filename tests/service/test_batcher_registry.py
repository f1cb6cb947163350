"""One registry of batchers keyed (model, version, kind); a version the model registry drops has
its batchers closed (queued work still runs), not left running until shutdown."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

import model_core
from model_core import ModelConfig, SequenceModel
from service.batcher_registry import BatcherRegistry
from service.errors import Unavailable
from service.registry import ModelRegistry
from service.settings import Settings

CONFIG = ModelConfig(cell="gru", task="classify", input_size=3, hidden_size=4, output_size=2, labels=("a", "b"))


def _write(model_dir, seed: int) -> None:
    model_core.save(SequenceModel(CONFIG, seed=seed), model_dir / "m" / "model.safetensors")


async def _settled(batchers: BatcherRegistry) -> None:
    await asyncio.sleep(0)                                   # the registry's call_soon_threadsafe runs
    if batchers._closing:
        await asyncio.gather(*batchers._closing)


def test_batchers_of_a_dropped_version_are_closed_and_the_current_ones_serve(tmp_path):
    _write(tmp_path, seed=1)
    registry = ModelRegistry(tmp_path, keep_versions=1)
    registry.load("m")
    seq = [np.zeros((2, 3))]

    async def main():
        batchers = BatcherRegistry(Settings(), registry)
        v1 = registry.ready("m")
        first = batchers.get(v1, "classify")
        await batchers.run(v1, "classify", seq)
        session_batcher = batchers.get(v1, "session")
        _write(tmp_path, seed=2)
        registry.reload("m")                                 # v1 is retired but kept for its sessions
        await _settled(batchers)
        assert (v1.name, v1.version, "classify") in batchers.keys()
        v2 = registry.ready("m")
        assert v2.version != v1.version
        await batchers.run(v2, "classify", seq)
        _write(tmp_path, seed=3)
        registry.reload("m")                                 # keep_versions=1: v1 is dropped now
        await _settled(batchers)
        assert {k[1] for k in batchers.keys()} == {v2.version}
        for b in (first, session_batcher):
            with pytest.raises(Unavailable):
                await b.submit([np.zeros((1, 3))])
        registry.unload("m")                                 # every version goes, with its batchers
        await _settled(batchers)
        assert batchers.keys() == []
        await batchers.close()

    asyncio.run(main())

