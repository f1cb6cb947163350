"""Dynamic batching: concurrent requests wait at most ``max_delay`` seconds, then run together.

``run(items) -> results`` does the math for a whole batch (at most ``max_batch`` items) in a worker
thread, so the event loop never blocks on it. For sessions, an item is (state, new steps) and
``run`` is one padded ``advance``; callers serialise their own session (one request in flight per
session), so a batch never holds two requests of one session and order within a session is kept.
Requests are served first come, first served. ``close`` drains: what was queued before it still
runs, and anything submitted after it gets a clear 503. Past ``max_pending`` requests waiting or
running, a new one is refused at once with a 429, so overload sheds load instead of growing latency.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.errors import Overloaded, Unavailable
from service.sessions.stepper import advance

_STOP = object()      # queued by close(): everything before it is still served


@dataclass
class _Pending:
    item: object
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(self, run, max_batch: int = 64, max_delay: float = 0.002, enabled: bool = True, on_batch=None,
                 max_pending: int = 4096):
        self.run, self.max_batch, self.max_delay, self.enabled = run, max_batch, max_delay, enabled
        self.max_pending, self._pending = max_pending, 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self._on_batch = on_batch or (lambda size, delay: None)
        self._closed = False

    @classmethod
    def for_sessions(cls, model, **kwargs) -> DynamicBatcher:
        """Items are (state bytes, new steps); results are (logits (K, C), new state bytes)."""
        return cls(lambda items: advance(model, [s for s, _ in items], [x for _, x in items]), **kwargs)

    async def submit(self, item):
        if self._closed:
            raise Unavailable("the server is shutting down; retry on another replica")
        if self._pending >= self.max_pending:
            raise Overloaded(f"overloaded: {self._pending} requests are already waiting for this model; retry shortly")
        self._pending += 1
        try:
            return await self._submit(item)
        finally:
            self._pending -= 1

    async def _submit(self, item):
        loop = asyncio.get_running_loop()
        if not self.enabled:
            (result,) = await loop.run_in_executor(self._executor, self.run, [item])
            self._on_batch(1, 0.0)
            return result
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._loop())
        pending = _Pending(item, loop.create_future())
        await self._queue.put(pending)
        return await pending.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = first.enqueued + self.max_delay
            while len(batch) < self.max_batch:
                timeout = deadline - time.perf_counter()
                try:
                    nxt = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run, [p.item for p in batch])
            except asyncio.CancelledError:             # close() timed out mid-batch: fail it, never hang
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(Unavailable("the server shut down while this step ran; retry"))
                raise
            except Exception as exc:  # a bad batch fails its own requests, never the batcher
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self._on_batch(len(batch), started - first.enqueued)
            for p, r in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(r)

    async def close(self, timeout: float = 10.0) -> None:
        """Serve what is queued (for at most ``timeout`` seconds), then stop; later submits get 503."""
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                pass                                   # wait_for cancelled the loop
            while not self._queue.empty():             # only after a timeout: fail, never hang
                p = self._queue.get_nowait()
                if p is not _STOP and not p.future.done():
                    p.future.set_exception(Unavailable("the server shut down before this step ran; retry"))
        self._executor.shutdown(wait=False)
