"""Dynamic batching for stateless requests: concurrent classify/predict calls share one forward."""
from __future__ import annotations

from service import inference
from service.registry import ModelEntry
from service.sessions.batcher import DynamicBatcher
from service.settings import Settings

RUNNERS = {"classify": inference.run_classify, "predict": inference.run_predict}


class StatelessBatchers:
    def __init__(self, settings: Settings, on_batch=None):
        self.settings, self._on_batch = settings, on_batch
        self._batchers: dict[tuple, DynamicBatcher] = {}

    async def run(self, entry: ModelEntry, kind: str, seqs: list, **queueing):
        """One request's sequences -> its slice of a batched result (``queueing``: see ``DynamicBatcher.submit``)."""
        key = (entry.name, entry.version, kind)
        b = self._batchers.get(key)
        if b is None:
            run, model = RUNNERS[kind], entry.model
            b = self._batchers[key] = DynamicBatcher(
                lambda items: run(model, items), max_batch=self.settings.max_batch_size,
                max_delay=self.settings.max_queue_delay_ms / 1000, enabled=self.settings.batching,
                on_batch=self._on_batch, max_pending=self.settings.max_pending_requests)
        return await b.submit(seqs, **queueing)

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close(self.settings.shutdown_timeout_seconds)
