"""Every dynamic batcher in the process, in one registry keyed by (model, version, kind).

``kind`` is ``"session"`` (a session's new steps: ``sessions.stepper.advance``), ``"classify"`` or
``"predict"`` (stateless requests: ``service.stateless``). A batcher runs one model version's
math, so when the model registry drops a version (retired past ``keep_versions``, unloaded, its
folder deleted) its batchers are closed: what is queued still runs, and the worker thread ends.
"""
from __future__ import annotations

import asyncio
import logging

from service import stateless
from service.registry import ModelEntry, ModelRegistry
from service.sessions.batcher import DynamicBatcher
from service.settings import Settings

log = logging.getLogger("service.batcher_registry")
RUNNERS = {"classify": stateless.run_classify, "predict": stateless.run_predict}
KINDS = ("session", *RUNNERS)


class BatcherRegistry:
    def __init__(self, settings: Settings, registry: ModelRegistry, on_batch=None):
        self.settings, self._on_batch = settings, on_batch
        self._batchers: dict[tuple[str, str, str], DynamicBatcher] = {}
        self._closing: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None     # the batchers' loop, seen at the first get()
        self._registry = registry
        registry.on_release(self._released)

    def get(self, entry: ModelEntry, kind: str) -> DynamicBatcher:
        key = (entry.name, entry.version, kind)
        b = self._batchers.get(key)
        if b is None:
            self._loop = asyncio.get_running_loop()
            s = self.settings
            options = dict(max_batch=s.max_batch_size, max_delay=s.max_queue_delay_ms / 1000, enabled=s.batching,
                           on_batch=self._on_batch, max_pending=s.max_pending_requests)
            if kind == "session":
                b = DynamicBatcher.for_sessions(entry.model, **options)
            else:
                run, model = RUNNERS[kind], entry.model
                b = DynamicBatcher(lambda items: run(model, items), **options)
            self._batchers[key] = b
        return b

    async def run(self, entry: ModelEntry, kind: str, item, **queueing):
        """One request's item -> its result from a batched run (``queueing``: see ``DynamicBatcher.submit``)."""
        return await self.get(entry, kind).submit(item, **queueing)

    def keys(self) -> list[tuple[str, str, str]]:
        return list(self._batchers)

    def _released(self) -> None:
        """The model registry dropped versions (any thread): close their batchers on the event loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.close_released)

    def close_released(self) -> None:
        live = self._registry.loaded_versions()
        for key in [k for k in self._batchers if k[:2] not in live]:
            b = self._batchers.pop(key)
            log.info("closing the %s batcher of %s version %s: the version is no longer loaded", key[2], *key[:2])
            task = asyncio.ensure_future(b.close(self.settings.shutdown_timeout_seconds))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """At shutdown: drain and close every batcher, and finish the closes already under way."""
        for b in self._batchers.values():
            await b.close(self.settings.shutdown_timeout_seconds)
        self._batchers.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
