"""Dynamic batching across sessions.

Pending steps from many sessions wait at most ``max_delay`` seconds, then run as one batched
``advance`` of at most ``max_batch`` sessions, in a worker thread so the event loop never blocks
on math. Callers serialise their own session (one request in flight per session), so a batch never
holds two requests of one session and order within a session is preserved. Requests are served
first come, first served.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.sessions.stepper import advance


@dataclass
class _Pending:
    state: bytes | None
    inputs: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(self, model, max_batch: int = 64, max_delay: float = 0.002, enabled: bool = True,
                 on_batch=None):
        self.model, self.max_batch, self.max_delay, self.enabled = model, max_batch, max_delay, enabled
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self._on_batch = on_batch or (lambda size, delay: None)

    async def submit(self, state: bytes | None, inputs: np.ndarray):
        """Advance one session by ``inputs``; returns (logits (K, C), new state bytes)."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            (result,) = await loop.run_in_executor(self._executor, advance, self.model, [state], [inputs])
            self._on_batch(1, 0.0)
            return result
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run())
        item = _Pending(state, inputs, loop.create_future())
        await self._queue.put(item)
        return await item.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = first.enqueued + self.max_delay
            while len(batch) < self.max_batch:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    while len(batch) < self.max_batch and not self._queue.empty():
                        batch.append(self._queue.get_nowait())
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, advance, self.model,
                                                     [p.state for p in batch], [p.inputs for p in batch])
            except Exception as exc:  # a bad batch fails its own requests, never the batcher
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self._on_batch(len(batch), started - first.enqueued)
            for p, r in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(r)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False)
