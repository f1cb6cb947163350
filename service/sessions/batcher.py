"""Dynamic batching: concurrent requests wait at most ``max_delay`` seconds, then run together.

``run(items) -> results`` does the math for a whole batch (at most ``max_batch`` items) in a worker
thread, so the event loop never blocks on it. For sessions, an item is a ``StepItem`` and ``run``
is one ``advance``; callers serialise their own session (one request in flight per
session), so a batch never holds two requests of one session and order within a session is kept.
Requests are served by priority level (1 first; ``DEFAULT_PRIORITY`` unless the request names
one, Triton's ``priority``), first come, first served within a level. A request with a deadline
(Triton's ``timeout``) that is still queued when it passes fails with ``RequestTimeout`` and is
never run. ``close`` drains: what was queued before it still runs, and anything submitted after
it gets a clear 503. Past ``max_pending`` requests waiting or running, a new one is refused at
once with a 429, so overload sheds load instead of growing latency.

The batch window costs one timer per batch, not one per request: the loop sleeps until the first
request's ``max_delay`` has passed (or until ``max_batch`` are queued) and then takes what is there.
A small CPU batch (``INLINE_STEPS``) runs on the event loop: the trip to the worker thread and back
costs more CPU than its math.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import math
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.errors import Overloaded, ServiceError, Unavailable
from service.sessions.stepper import StepItem, Stepped, advance

PRIORITY_LEVELS = 10          # Triton's priority_levels: 1 is served first
DEFAULT_PRIORITY = 5          # the level of a request that names none (priority 0)
_STOP = object()      # queued by close() after every level: everything before it is still served


class RequestTimeout(ServiceError):
    """Still queued when its deadline passed: refused without running (Triton's "Request timeout expired")."""

    status, code = 503, "request_timeout"


@dataclass
class _Pending:
    item: object
    future: asyncio.Future
    deadline: float | None = None          # time.perf_counter() past which it must not start
    timing: dict | None = None             # filled with queue_ns and infer_ns when it runs
    enqueued: float = field(default_factory=time.perf_counter)
    started: bool = False

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


class DynamicBatcher:
    def __init__(self, run, max_batch: int = 64, max_delay: float = 0.002, enabled: bool = True, on_batch=None,
                 max_pending: int = 4096, inline=None):
        """``inline(items) -> bool``: run this batch on the event loop itself, because handing it to the
        worker thread and back (two thread wake-ups, a self-pipe write) costs more than its math."""
        self.run, self.max_batch, self.max_delay, self.enabled = run, max_batch, max_delay, enabled
        self.inline = inline or (lambda items: False)
        self.max_pending, self._pending = max_pending, 0
        self._queue: asyncio.PriorityQueue | None = None          # (level, arrival, _Pending)
        self._arrivals = itertools.count()
        self._task: asyncio.Task | None = None
        self._window: asyncio.Future | None = None                # set while the loop waits for a batch to fill
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self._on_batch = on_batch or (lambda size, delay: None)
        self._closed = False

    @classmethod
    def for_sessions(cls, model, **kwargs) -> DynamicBatcher:
        """Items are ``StepItem``s; results are ``Stepped``s."""
        run: typing.Callable[[list[StepItem]], list[Stepped]] = functools.partial(advance, model)
        return cls(run, inline=_few_steps if model.xp is np else None, **kwargs)     # a GPU batch waits on its device

    async def submit(self, item, *, priority: int = DEFAULT_PRIORITY, deadline: float | None = None,
                     timing: dict | None = None):
        """``priority``: a level in [1, PRIORITY_LEVELS]; ``deadline``: a ``time.perf_counter()`` value;
        ``timing``: a dict that gets ``queue_ns`` and ``infer_ns`` (the batch's compute time)."""
        if self._closed:
            raise Unavailable("the server is shutting down; retry on another replica")
        if self._pending >= self.max_pending:
            raise Overloaded(f"overloaded: {self._pending} requests are already waiting for this model; retry shortly")
        self._pending += 1
        try:
            return await self._submit(_Pending(item, asyncio.get_running_loop().create_future(), deadline, timing),
                                      priority)
        finally:
            self._pending -= 1

    async def _submit(self, pending: _Pending, priority: int):
        loop = asyncio.get_running_loop()
        if not self.enabled:
            def run_one():
                started = time.perf_counter()
                _start([pending], started)
                (result,) = self.run([pending.item])
                _finish([pending], started)
                return result
            result = await loop.run_in_executor(self._executor, run_one)
            self._on_batch(1, 0.0)
            return result
        if self._task is None:
            self._queue = asyncio.PriorityQueue()
            self._task = asyncio.create_task(self._loop())
        self._queue.put_nowait((priority, next(self._arrivals), pending))
        if self._window is not None and self._queue.qsize() >= self.max_batch - 1 and not self._window.done():
            self._window.set_result(None)                 # a full batch need not wait out the window
        if pending.deadline is None:
            return await pending.future
        done, _ = await asyncio.wait({pending.future}, timeout=max(0.0, pending.deadline - time.perf_counter()))
        if not done and not pending.started:          # still queued at its deadline: it will never run
            pending.future.cancel()
            raise _timed_out(pending)
        return await pending.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = (await self._queue.get())[2]
            if first is _STOP:
                return
            if not _runnable(first):
                continue
            batch = [first]
            wait = first.enqueued + self.max_delay - time.perf_counter()
            if wait > 0 and self._queue.qsize() < self.max_batch - 1:
                self._window = loop.create_future()
                timer = loop.call_later(wait, _settle, self._window)
                try:
                    await self._window
                finally:
                    timer.cancel()
                    self._window = None
            while len(batch) < self.max_batch and not self._queue.empty():
                nxt = self._queue.get_nowait()[2]
                if nxt is _STOP:
                    stopping = True
                    break
                if _runnable(nxt):
                    batch.append(nxt)
            started = time.perf_counter()
            batch = [p for p in batch if _runnable(p, started)]     # the wait for more may have outlived a deadline
            if not batch:
                continue
            _start(batch, started)
            items = [p.item for p in batch]
            try:
                if self.inline(items):
                    results = self.run(items)
                else:
                    results = await loop.run_in_executor(self._executor, self.run, items)
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
            _finish(batch, started)
            for p, r in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(r)

    async def close(self, timeout: float = 10.0) -> None:
        """Serve what is queued (for at most ``timeout`` seconds), then stop; later submits get 503."""
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait((math.inf, next(self._arrivals), _STOP))
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                pass                                   # wait_for cancelled the loop
            while not self._queue.empty():             # only after a timeout: fail, never hang
                p = self._queue.get_nowait()[2]
                if p is not _STOP and not p.future.done():
                    p.future.set_exception(Unavailable("the server shut down before this step ran; retry"))
        self._executor.shutdown(wait=False)


INLINE_STEPS = 16         # a batch of at most this many steps costs less than a trip to the worker thread


def _few_steps(items: list[StepItem]) -> bool:
    return sum(len(it.inputs) for it in items) <= INLINE_STEPS


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _timed_out(p: _Pending) -> RequestTimeout:
    waited = (time.perf_counter() - p.enqueued) * 1e6
    return RequestTimeout(f"request timeout expired: it waited {waited:.0f} us in the queue, past its timeout; "
                          "nothing was computed")


def _runnable(p: _Pending, now: float | None = None) -> bool:
    """False for a request whose waiter gave up, or whose deadline passed (it fails now, unrun)."""
    if p.future.done():
        return False
    if p.expired(time.perf_counter() if now is None else now):
        p.future.set_exception(_timed_out(p))
        return False
    return True


def _start(batch: list[_Pending], now: float) -> None:
    for p in batch:
        if p.expired(now):                             # only reachable without batching: refuse before any math
            raise _timed_out(p)
        p.started = True
        if p.timing is not None:
            p.timing["queue_ns"] = int((now - p.enqueued) * 1e9)


def _finish(batch: list[_Pending], started: float) -> None:
    infer_ns = int((time.perf_counter() - started) * 1e9)
    for p in batch:
        if p.timing is not None:
            p.timing["infer_ns"] = infer_ns
