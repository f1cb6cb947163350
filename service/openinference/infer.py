"""One v2 inference request against the registry, the session store and the batchers.

This is the only place that checks tensors against a model; the HTTP routes and the gRPC
servicer decode their wire format into ``types.InferRequest`` and encode the ``InferResponse``.
It applies the same limits as /v1 (``service.request_limits``), honours Triton's ``priority`` and
``timeout`` parameters (through the dynamic batchers) and records Triton's statistics.
"""
from __future__ import annotations

import time

import numpy as np

from service.errors import Overloaded, ServiceError
from service.outputs import labels_of
from service.request_limits import check_response
from service.openinference.datatypes import TensorError
from service.openinference.statistics import InferenceStatistics
from service.openinference.tensors import (build_outputs, optional_uint_param, parse_inputs, response_bytes, sequence_params,
                                           uint_param)
from service.openinference.types import InferRequest, InferResponse
from service.sessions.batcher import DEFAULT_PRIORITY, PRIORITY_LEVELS
from service.sessions.store import SessionNotFound


def v2_error(exc: ServiceError) -> ServiceError:
    """The v2 status for a service error: invalid input is 400 in the protocol (v1 says 422)."""
    if exc.status == 422 and not isinstance(exc, Overloaded):
        return ServiceError(exc.message, status=400, code=exc.code)
    return exc


class V2Inference:
    """Implements ``types.InferenceBackend`` over the app's registry, sessions and batchers (``service.batcher_registry``)."""

    def __init__(self, registry, sessions, batchers, settings, stats: InferenceStatistics | None = None):
        self.registry, self.sessions, self.batchers, self.settings = registry, sessions, batchers, settings
        self.stats = stats or InferenceStatistics()

    async def infer(self, request: InferRequest) -> InferResponse:
        arrival = request.arrival_ns or time.perf_counter_ns()
        entry = None
        try:
            entry = self.registry.ready(request.model_name, request.model_version)
            return await self._infer(request, entry, arrival)
        except ServiceError as exc:
            if entry is not None:
                self.stats.failure(entry.name, entry.number, time.perf_counter_ns() - arrival)
            raise v2_error(exc) from None

    def _queueing(self, req: InferRequest, arrival: int, timing: dict) -> dict:
        """Triton's ``priority`` (1 is first, 0 the default level) and ``timeout`` (µs from arrival)."""
        priority = uint_param(req.parameters, "priority", PRIORITY_LEVELS) or DEFAULT_PRIORITY
        timeout_us = uint_param(req.parameters, "timeout")
        deadline = arrival / 1e9 + timeout_us / 1e6 if timeout_us else None
        return {"priority": priority, "deadline": deadline, "timing": timing}

    async def _infer(self, req: InferRequest, entry, arrival: int) -> InferResponse:
        seq_id, start, end = sequence_params(req.parameters)
        timing: dict = {}
        queueing = self._queueing(req, arrival, timing)
        session_entry = None
        if seq_id is not None and not start:               # a running sequence stays on its own version
            session_entry = await self._session_entry(req, seq_id)
        c = (session_entry or entry).config
        seqs, lengths = parse_inputs(c, req.inputs, self.settings)
        binary = req.parameters.get("binary_data_output") is True
        check_response(response_bytes(c, lengths, req.outputs, binary), self.settings)
        params = {}
        if seq_id is None:
            logits = await self._stateless(entry, seqs, lengths, queueing)
        else:
            if len(seqs) != 1:
                raise TensorError("a sequence request must have batch size 1")
            entry, logits = await self._sequence_step(entry, req, seq_id, start, end, seqs[0], queueing)
            params["sequence_id"] = req.parameters["sequence_id"]
        done_infer = time.perf_counter_ns()
        outputs = build_outputs(c, logits, req.outputs, labels_of(c))
        now = time.perf_counter_ns()
        queue_ns, infer_ns = timing.get("queue_ns", 0), timing.get("infer_ns", 0)
        self.stats.success(entry.name, entry.number, len(seqs), total_ns=now - arrival,
                           input_ns=done_infer - arrival - queue_ns - infer_ns, queue_ns=queue_ns,
                           infer_ns=infer_ns, output_ns=now - done_infer)
        return InferResponse(entry.name, str(entry.number), outputs, id=req.id, parameters=params)

    async def _stateless(self, entry, seqs, lengths, queueing) -> np.ndarray:
        """Through the same batcher as v1: (B, C) for classifiers, (B, T, C) zero-padded otherwise."""
        if entry.config.task == "classify":
            return await self.batchers.run(entry, "classify", seqs, **queueing)
        per_seq = await self.batchers.run(entry, "predict", seqs, **queueing)
        out = np.zeros((len(seqs), int(lengths.max()), entry.config.output_size), dtype=np.float32)
        for b, lg in enumerate(per_seq):
            out[b, : len(lg)] = lg
        return out

    @staticmethod
    def _sid(name: str, seq_id: str) -> str:
        return f"v2:{name}:{seq_id}"

    async def _session_entry(self, req: InferRequest, seq_id: str):
        """The entry a running sequence started on; naming another version is an error."""
        name = req.model_name
        try:
            session = await self.sessions.store.get(self._sid(name, seq_id))
        except SessionNotFound:
            raise TensorError(f"sequence {seq_id!r} is not active on model {name!r}: its first request needs "
                              "parameters.sequence_start=true") from None
        entry = self.registry.version(name, session.model_version)
        if req.model_version not in (None, "") and str(req.model_version) != str(entry.number):
            raise TensorError(f"sequence {seq_id!r} runs on version {entry.number} of {name!r}, "
                              f"not {req.model_version!r}")
        return entry

    async def _sequence_step(self, entry, req, seq_id, start, end, inputs, queueing):
        """One request of a sequence. ``parameters.at`` (the step count the client expects the sequence
        to be at) makes a retry harmless: an input already applied is answered from the record."""
        sessions, name = self.sessions, entry.name
        sid = self._sid(name, seq_id)
        at = optional_uint_param(req.parameters, "at")
        if start and at is not None and await sessions.already_applied(sid, at, inputs):
            start = False                                   # a retried start: its first reply was lost
        if start:
            try:
                await sessions.end(sid)                       # a new start resets a sequence still held
            except ServiceError:
                pass
            await sessions.create(name, session_id=sid, version=str(entry.number))
        try:
            session, logits = await sessions.step_logits(sid, inputs, expect_at=at, **queueing)
        except SessionNotFound:
            raise TensorError(f"sequence {seq_id!r} is not active on model {name!r}: its first request needs "
                              "parameters.sequence_start=true") from None
        if end:
            await sessions.store.delete(sid)
        entry = self.registry.version(name, session.model_version)
        logits = logits[-1:] if entry.config.task == "classify" else logits[None]          # (1, C) or (1, T, C)
        return entry, logits
