"""Triton's statistics extension: per model version, counts and cumulative durations of v2 inferences.

Recorded on the real path by ``infer.V2Inference``: ``queue`` is the wait in the dynamic batcher,
``compute_input`` decoding and checking tensors (from the request's arrival), ``compute_infer``
the model's run (the whole batch it ran in), ``compute_output`` building the outputs. ``success``
and ``fail`` hold the requests' total durations. ``report`` gives Triton's JSON form
(``ModelStatisticsResponse``), which gRPC turns into protobuf with ``json_format``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from service.errors import NotFound

PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class _VersionStats:
    counts: dict[str, list[int]] = field(default_factory=lambda: {p: [0, 0] for p in PHASES})   # [count, ns]
    inference_count: int = 0                 # sequences inferred (a request's batch size B)
    execution_count: int = 0                 # model runs this version's requests took part in
    last_inference: int = 0                  # ms since the epoch

    def add(self, phase: str, ns: int) -> None:
        c = self.counts[phase]
        c[0] += 1
        c[1] += max(0, int(ns))

    def as_triton(self, name: str, version: int) -> dict:
        stats = {p: {"count": c, "ns": ns} for p, (c, ns) in self.counts.items()}
        stats.update({"cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}})
        return {"name": name, "version": str(version), "last_inference": self.last_inference,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": stats, "batch_stats": [], "memory_usage": []}


class InferenceStatistics:
    """Thread-safe counters keyed by (model, version number); one per app, shared by every transport."""

    def __init__(self):
        self._stats: dict[tuple[str, int], _VersionStats] = {}
        self._lock = threading.Lock()

    def _of(self, name: str, version: int) -> _VersionStats:
        return self._stats.setdefault((name, version), _VersionStats())

    def success(self, name: str, version: int, batch: int, total_ns: int, input_ns: int, queue_ns: int,
                infer_ns: int, output_ns: int) -> None:
        with self._lock:
            s = self._of(name, version)
            for phase, ns in (("success", total_ns), ("compute_input", input_ns), ("queue", queue_ns),
                              ("compute_infer", infer_ns), ("compute_output", output_ns)):
                s.add(phase, ns)
            s.inference_count += batch
            s.execution_count += 1
            s.last_inference = int(time.time() * 1000)

    def failure(self, name: str, version: int, total_ns: int) -> None:
        with self._lock:
            self._of(name, version).add("fail", total_ns)

    def report(self, registry, name: str | None = None, version: str | None = None) -> dict:
        """Every served version of every model, or of ``name`` (or only its ``version``)."""
        if name is None:
            targets = [(e.name, e.number) for n in registry.names() for e in registry.served(n)]
        elif version in (None, ""):
            registry.get(name)
            targets = [(name, e.number) for e in registry.served(name)]
        else:
            targets = [(name, registry.ready(name, version).number)]
        with self._lock:
            out = [self._stats.get(t, _VersionStats()).as_triton(*t) for t in targets]
        if name is not None and not out:
            raise NotFound(f"model {name!r} has no served versions")
        return {"model_stats": out}
